/**
 * The read side of bench/pipeline.bench.ts's raw pipeline: one consumer, no framework, that
 * keeps the example projections' read models (their own migrations: the same tables and
 * indexes) from the raw command loop's events (bench/raw-service.ts: stream `RAW`, subject
 * `rawevt.<id>.E`, the body is the command's body as sent: `{"title","memberId","assignedTo"}`
 * for a CreateTask, `{"assignedTo"}` for an AssignTask).
 *
 *  - One ordered pull consumer over the whole stream (no acks: the checkpoint is in PostgreSQL).
 *  - Each event decoded once. Whatever arrived while the previous batch was being written (at
 *    most RAW_BATCH, default 500, as Strand's STRAND_PROJECTION_BATCH_SIZE) is the next batch; no
 *    lingering.
 *  - Per batch: one prefetch of the task_member rows its AssignTasks need (as Strand's
 *    `prefetch`), then ONE statement: data-modifying CTEs upserting task_list_view,
 *    task_member, member_task_history, task_created_at, task_analytics_days from `unnest`
 *    parameter arrays (rows merged per key first), moving every projection's checkpoint in
 *    raw_checkpoints, and returning the changed rows as JSON text. One statement is one
 *    transaction: the writes and checkpoints commit together (exactly once).
 *    synchronous_commit off, as Strand's default STRAND_PROJECTION_COMMIT=async.
 *  - The live feed: after the commit, one message per task projection (even with no changed row) on core NATS
 *    `rawpipe.changes.<projection>`: `{"projection","checkpoint","prev","views":{<view>:[rows]}}`.
 *
 * order_list and eligibility_metrics get no events from this workload (task commands only), in
 * Strand too (their consumers filter on their own aggregates' subjects); their tables are
 * created and their checkpoints move with the others.
 *
 * Env: NATS_URL, DATABASE_URL (required), RAW_BATCH. Prints "ready" once it consumes; SIGTERM stops.
 */
import pg from 'pg';
import { connect } from '@nats-io/transport-node';
import { jetstream, type JsMsg } from '@nats-io/jetstream';
import { projections } from '../actors/index.js';
import { RAW_STREAM } from './command-loop.js';

const natsUrl = process.env['NATS_URL'];
const databaseUrl = process.env['DATABASE_URL'];
if (!natsUrl || !databaseUrl) {
  process.stderr.write('raw-pipeline-consumer: NATS_URL and DATABASE_URL are required\n');
  process.exit(2);
}
const BATCH = Number(process.env['RAW_BATCH'] ?? 500);

const db = new pg.Client({ connectionString: databaseUrl, application_name: 'raw-pipeline' });
db.on('error', (err) => {
  process.stderr.write(`raw-pipeline-consumer: ${err.message}\n`);
  process.exit(1);
});
await db.connect();
for (const p of projections) for (const m of p.migrations) await db.query(m);
await db.query('CREATE TABLE raw_checkpoints (projection text PRIMARY KEY, seq bigint NOT NULL)');
await db.query('SET synchronous_commit TO off');
const NAMES = projections.map((p) => p.name);

const BATCH_SQL = `
WITH
tlv_new AS (
  INSERT INTO task_list_view AS t (task_id, title, description, status, assigned_to, member_id, created_at, version, updated_at)
  SELECT id, title, NULL, 'pending', a, m, c, v, u
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::int[], $7::timestamptz[]) AS x(id, title, a, m, c, v, u)
  ON CONFLICT (task_id) DO UPDATE SET title = EXCLUDED.title, status = EXCLUDED.status, assigned_to = EXCLUDED.assigned_to,
    member_id = EXCLUDED.member_id, created_at = EXCLUDED.created_at, version = EXCLUDED.version, updated_at = EXCLUDED.updated_at
  RETURNING t.*),
tlv_upd AS (
  -- INSERT … ON CONFLICT, not UPDATE … FROM unnest(): a prepared statement's generic plan does
  -- not know the array's length and hash-joins a sequential scan of the whole table.
  INSERT INTO task_list_view AS t (task_id, assigned_to, version, updated_at)
  SELECT * FROM unnest($8::text[], $9::text[], $10::int[], $11::timestamptz[])
  ON CONFLICT (task_id) DO UPDATE SET assigned_to = EXCLUDED.assigned_to, version = t.version + EXCLUDED.version, updated_at = EXCLUDED.updated_at
  RETURNING t.*),
tm AS (
  INSERT INTO task_member AS t (task_id, member_id, assigned_to)
  SELECT * FROM unnest($12::text[], $13::text[], $14::text[])
  ON CONFLICT (task_id) DO UPDATE SET member_id = EXCLUDED.member_id, assigned_to = EXCLUDED.assigned_to),
mth AS (
  INSERT INTO member_task_history (seq, member_id, task_id, event_type, at, actor, assigned_to, status, detail)
  SELECT s, m, id, ty, at, NULL, a, 'pending', d
  FROM unnest($15::bigint[], $16::text[], $17::text[], $18::text[], $19::timestamptz[], $20::text[], $21::text[]) AS x(s, m, id, ty, at, a, d)
  ON CONFLICT (seq) DO NOTHING
  RETURNING *),
tca AS (
  INSERT INTO task_created_at (task_id, created_at)
  SELECT * FROM unnest($22::text[], $23::timestamptz[])
  ON CONFLICT (task_id) DO NOTHING),
tad AS (
  INSERT INTO task_analytics_days AS d (day, created)
  SELECT * FROM unnest($24::text[], $25::int[])
  ON CONFLICT (day) DO UPDATE SET created = d.created + EXCLUDED.created
  RETURNING d.*),
cp AS (
  INSERT INTO raw_checkpoints AS c (projection, seq)
  SELECT unnest($26::text[]), $27::bigint
  ON CONFLICT (projection) DO UPDATE SET seq = EXCLUDED.seq)
SELECT
  (SELECT coalesce(json_agg(x), '[]') FROM (SELECT * FROM tlv_new UNION ALL SELECT * FROM tlv_upd) x)::text AS tlv,
  (SELECT coalesce(json_agg(mth), '[]') FROM mth)::text AS mth,
  (SELECT coalesce(json_agg(tad), '[]') FROM tad)::text AS tad`;

interface TaskState {
  /** Created in this batch: the whole row is written. */
  created?: { title: string; createdAt: string };
  member: string;
  assignedTo: string;
  /** AssignTasks in this batch. */
  assigns: number;
  updatedAt: string;
}

const decoder = new TextDecoder();
const nc = await connect({ servers: natsUrl, name: 'raw-pipeline-consumer', noAsyncTraces: true });
let buffer: JsMsg[] = [];
let writing = false;
let checkpoint = 0;
let failed = false;

async function writeBatch(msgs: JsMsg[]): Promise<void> {
  const events = msgs.map((m) => {
    const s = m.subject; // rawevt.<id>.E
    const id = s.slice(s.indexOf('.') + 1, s.lastIndexOf('.'));
    const body = JSON.parse(decoder.decode(m.data)) as { title?: string; memberId?: string; assignedTo: string };
    return { seq: m.seq, id, body, time: new Date(Number(m.info.timestampNanos) / 1e6).toISOString() };
  });
  // The members (and current assignees) of tasks assigned here but created in an earlier batch.
  const earlier = [...new Set(events.filter((e) => e.body.title === undefined).map((e) => e.id))].filter((id) => !events.some((e) => e.id === id && e.body.title !== undefined));
  const tasks = new Map<string, TaskState>();
  if (earlier.length > 0) {
    const r = await db.query('SELECT task_id, member_id, assigned_to FROM task_member WHERE task_id = ANY($1)', [earlier]);
    for (const row of r.rows as { task_id: string; member_id: string; assigned_to: string }[]) {
      tasks.set(row.task_id, { member: row.member_id, assignedTo: row.assigned_to, assigns: 0, updatedAt: '' });
    }
  }
  const hist: [number[], string[], string[], string[], string[], string[], string[]] = [[], [], [], [], [], [], []];
  const days = new Map<string, number>();
  const createdAt: [string[], string[]] = [[], []];
  for (const e of events) {
    let t = tasks.get(e.id);
    if (e.body.title !== undefined) {
      t = { created: { title: e.body.title, createdAt: e.time }, member: e.body.memberId!, assignedTo: e.body.assignedTo, assigns: 0, updatedAt: e.time };
      tasks.set(e.id, t);
      createdAt[0].push(e.id);
      createdAt[1].push(e.time);
      const day = e.time.slice(0, 10);
      days.set(day, (days.get(day) ?? 0) + 1);
      pushHistory(hist, e.seq, t.member, e.id, 'TaskCreated', e.time, t.assignedTo, e.body.title);
    } else {
      if (!t) throw new Error(`task ${e.id} has no TaskCreated before it`);
      const previous = t.assignedTo;
      t.assignedTo = e.body.assignedTo;
      t.assigns++;
      t.updatedAt = e.time;
      pushHistory(hist, e.seq, t.member, e.id, 'TaskAssigned', e.time, t.assignedTo, `from ${previous}`);
    }
  }
  const full: [string[], string[], string[], string[], string[], number[], string[]] = [[], [], [], [], [], [], []];
  const upd: [string[], string[], number[], string[]] = [[], [], [], []];
  const member: [string[], string[], string[]] = [[], [], []];
  for (const [id, t] of tasks) {
    if (t.created) {
      full[0].push(id), full[1].push(t.created.title), full[2].push(t.assignedTo), full[3].push(t.member), full[4].push(t.created.createdAt), full[5].push(1 + t.assigns), full[6].push(t.updatedAt);
    } else if (t.assigns > 0) {
      upd[0].push(id), upd[1].push(t.assignedTo), upd[2].push(t.assigns), upd[3].push(t.updatedAt);
    } else continue;
    member[0].push(id), member[1].push(t.member), member[2].push(t.assignedTo);
  }
  const prev = checkpoint;
  const to = msgs[msgs.length - 1]!.seq;
  const r = await db.query({
    name: 'raw-batch',
    text: BATCH_SQL,
    values: [...full, ...upd, ...member, ...hist, ...createdAt, [...days.keys()], [...days.values()], NAMES, to],
  });
  checkpoint = to;
  const row = r.rows[0] as { tlv: string; mth: string; tad: string };
  // Every batch moves every checkpoint: announced even with no changed row, as Strand's runners
  // do, so a listener sees each projection reach the batch's last sequence.
  const publish = (projection: string, view: string, rows: string): void => {
    nc.publish(`rawpipe.changes.${projection}`, `{"projection":"${projection}","checkpoint":${to},"prev":${prev},"views":{"${view}":${rows}}}`);
  };
  publish('task_list_view', 'task_list_view', row.tlv);
  publish('member_task_history', 'member_task_history', row.mth);
  publish('task_analytics', 'task_analytics', row.tad);
}

function pushHistory(h: [number[], string[], string[], string[], string[], string[], string[]], seq: number, member: string, id: string, type: string, at: string, assignedTo: string, detail: string): void {
  h[0].push(seq), h[1].push(member), h[2].push(id), h[3].push(type), h[4].push(at), h[5].push(assignedTo), h[6].push(detail);
}

function pump(): void {
  if (writing || failed || buffer.length === 0) return;
  writing = true;
  const msgs = buffer.length <= BATCH ? buffer : buffer.slice(0, BATCH);
  buffer = buffer.length <= BATCH ? [] : buffer.slice(BATCH);
  writeBatch(msgs).then(
    () => {
      writing = false;
      pump();
    },
    (err: unknown) => {
      failed = true;
      process.stderr.write(`raw-pipeline-consumer: batch failed: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}

const consumer = await jetstream(nc).consumers.get(RAW_STREAM);
const messages = await consumer.consume({
  max_messages: Math.max(1000, BATCH * 4),
  callback: (m) => {
    buffer.push(m);
    pump();
  },
});
process.stdout.write('ready\n');

let stopping = false;
const stop = async (): Promise<void> => {
  if (stopping) return;
  stopping = true;
  await messages.close().catch(() => undefined);
  for (const end = Date.now() + 5_000; writing && Date.now() < end; ) await new Promise((r) => setTimeout(r, 10));
  await db.end().catch(() => undefined);
  await nc.drain().catch(() => undefined);
  process.exit(0);
};
process.on('SIGTERM', () => void stop());
process.on('SIGINT', () => void stop());
