import { AckPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, headers } from '@nats-io/transport-node';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { order, projections as exampleProjections, taskListView } from '../actors/index.js';
import { defineAggregate } from '../src/aggregate/index.js';
import type { Strand } from '../src/app.js';
import type { CommandAccepted, CommandReply } from '../src/commands/types.js';
import type { EventEnvelope } from '../src/eventstore/types.js';
import { startEmbeddedPostgres } from '../src/postgres/embedded.js';
import { defineProjection, on } from '../src/projections/define.js';
import { R3, startTestCluster, type TestCluster } from './support/cluster.js';
import { startTestNats, type TestNats } from './support/nats.js';
import { createTestDatabase, type TestDatabase } from './support/postgres.js';
import { LiveClient } from './support/live.js';
import { alive, childPids } from './support/process.js';
import { CommandClient, eventually, startStrand, startStrandWithDb } from './support/strand.js';

const root = fileURLToPath(new URL('..', import.meta.url));

/** Where the tests run: a NATS server or cluster, a write side on it, and a client. */
interface Backend {
  /** NATS_URL of the server, or every node of the cluster. */
  url: string;
  /** Configuration every Strand started here needs (R3 on a cluster). */
  env: Record<string, string>;
  /** The nodes, on a cluster. */
  cluster?: TestCluster;
  writer: Strand;
  client: CommandClient;
}
const ctx = {} as Backend;
const databases: TestDatabase[] = [];

async function database(): Promise<TestDatabase> {
  const db = await createTestDatabase();
  databases.push(db);
  return db;
}

/** Starts the describe block's NATS (one server, or a 3-node cluster with R3 streams) and the write side alone on it. */
function useBackend(kind: 'server' | 'cluster'): void {
  let stopNats: () => Promise<void>;
  beforeAll(async () => {
    if (kind === 'server') {
      const nats: TestNats = await startTestNats();
      ctx.url = nats.url;
      ctx.env = {};
      stopNats = () => nats.cleanup();
    } else {
      const cluster: TestCluster = await startTestCluster();
      ctx.url = cluster.urls;
      ctx.cluster = cluster;
      ctx.env = { ...R3 };
      stopNats = () => cluster.cleanup();
    }
    // The write side alone: commands in, events out. Read sides below come and go.
    ctx.writer = await startStrand(ctx.url, ctx.env);
    ctx.client = await CommandClient.connect(ctx.url);
  });
  afterAll(async () => {
    await ctx.client?.close();
    await ctx.writer?.stop();
    for (const db of databases.splice(0)) await db.drop().catch(() => undefined);
    await stopNats?.();
  });
}

/** A mixed workload over tasks, orders and eligibility checks; returns the last sequence written. */
async function workload(prefix: string, tasks: number): Promise<number> {
  let last = 0;
  const ok = (r: unknown) => {
    expect(r, JSON.stringify(r)).toMatchObject({ ok: true });
    last = Math.max(last, (r as CommandAccepted).seq);
  };
  const batch = async (fns: (() => Promise<unknown>)[]) => {
    for (let i = 0; i < fns.length; i += 64) (await Promise.all(fns.slice(i, i + 64).map((f) => f()))).forEach(ok);
  };
  await batch(Array.from({ length: tasks }, (_, i) => () => ctx.client.send(`cmd.task.${prefix}-t${i}.CreateTask`, { title: `Task ${i}`, memberId: `M${i % 7}`, assignedTo: `CC${i % 5}` })));
  await batch(Array.from({ length: Math.floor(tasks / 3) }, (_, i) => () => ctx.client.send(`cmd.task.${prefix}-t${i * 3}.AssignTask`, { assignedTo: `CC${(i + 1) % 5}` })));
  await batch(
    Array.from({ length: Math.floor(tasks / 2) }, (_, i) => () => {
      const n = i * 2;
      const assignee = n % 3 === 0 ? `CC${(n / 3 + 1) % 5}` : `CC${n % 5}`;
      return ctx.client.send(`cmd.task.${prefix}-t${n}.CompleteTask`, { notes: `done ${n}` }, { 'Strand-Actor': `user:${assignee}` });
    }),
  );
  await batch(Array.from({ length: Math.floor(tasks / 10) }, (_, i) => () => ctx.client.send(`cmd.task.${prefix}-t${i * 10 + 1}.CancelTask`, { reason: 'no longer needed' })));
  await batch(Array.from({ length: Math.floor(tasks / 4) }, (_, i) => () => ctx.client.send(`cmd.order.${prefix}-o${i}.PlaceOrder`, { customerId: `C${i % 3}`, items: [{ sku: 'A', quantity: 1, priceCents: 100 + i }] })));
  await batch(Array.from({ length: Math.floor(tasks / 8) }, (_, i) => () => ctx.client.send(`cmd.order.${prefix}-o${i}.AddItem`, { sku: 'B', quantity: 2, priceCents: 50 })));
  await batch(Array.from({ length: Math.floor(tasks / 10) }, (_, i) => () => ctx.client.send(`cmd.eligibility-check.${prefix}-e${i}.Initiate`, { accountId: `A${i}` })));
  await batch(
    Array.from({ length: Math.floor(tasks / 10) }, (_, i) => () =>
      ctx.client.send(`cmd.eligibility-check.${prefix}-e${i}.RecordResponse`, { requestId: `R${i}`, responseCode: 'AAA', latencyMs: 10 + i, ...(i % 2 === 0 ? { eligible: true } : {}) }),
    ),
  );
  return last;
}

/** Every row of every public view, in key order: what a from-scratch rebuild must reproduce. */
async function dumpViews(url: string): Promise<Record<string, unknown[]>> {
  const c = new pg.Client({ connectionString: url });
  c.on('error', () => undefined);
  await c.connect();
  try {
    const out: Record<string, unknown[]> = {};
    for (const p of exampleProjections) {
      for (const [name, v] of Object.entries(p.views)) {
        const cols = Object.values(v.columns).filter((col) => col !== 'updated_at');
        out[name] = (await c.query(`SELECT ${cols.map((x) => `"${x}"`).join(', ')} FROM public."${name}" ORDER BY "${v.columns[v.key]}"`)).rows;
      }
    }
    return out;
  } finally {
    await c.end();
  }
}

/** The value of one labelled series of a metric, summed over series matching `labels`. */
async function metric(s: Strand, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  const m = (await s.metrics.registry.getMetricsAsJSON()).find((x) => x.name === name);
  // Histograms list their buckets, sum and count under one name: count the `_count` series.
  const values = ((m?.values ?? []) as { value: number; labels: Record<string, unknown>; metricName?: string }[]).filter(
    (v) => Object.entries(labels).every(([k, val]) => String(v.labels[k]) === val) && !('le' in v.labels) && (!v.metricName || v.metricName === name || v.metricName === `${name}_count`),
  );
  if (values.length === 0) return undefined;
  return values.reduce((n, v) => n + v.value, 0);
}

async function waitCaughtUp(s: Strand, seq: number): Promise<void> {
  for (const p of exampleProjections) {
    const r = await s.readSide!.waitFor(p.name, seq, 60_000);
    expect(r.reached, `${p.name} reached ${seq}`).toBe(true);
  }
}

/** Builds the example read models from the start of the stream in a fresh database. */
async function rebuildFromScratch(upTo: number): Promise<Record<string, unknown[]>> {
  const db = await database();
  const s = await startStrandWithDb(ctx.url, db.url, { ...ctx.env, STRAND_ROLES: 'projections' });
  try {
    await waitCaughtUp(s, upTo);
    return await dumpViews(db.url);
  } finally {
    await s.stop();
  }
}
/** The proofs of exactly-once: they run on one server and on a 3-node cluster. */
function exactlyOnce(): void {
    it('count task_analytics exactly as recomputed from the stream after thousands of commands', async () => {
      const db = await database();
      const s = await startStrandWithDb(ctx.url, db.url, { ...ctx.env,  STRAND_ROLES: 'projections' });
      try {
        const last = await workload('an', 1200);
        await waitCaughtUp(s, last);
        // Recompute from the stream, as any outside consumer could.
        const created = new Map<string, number>();
        const completed = new Map<string, { n: number; hours: number }>();
        const createdAt = new Map<string, number>();
        const js = jetstream(ctx.client.nc);
        const consumer = await js.consumers.get('EVENTS', { filter_subjects: ['evt.task.>'] });
        const info = await consumer.info();
        let remaining = info.num_pending;
        const iter = await consumer.consume();
        for await (const m of iter) {
          const e = m.json<EventEnvelope>();
          if (e.type === 'TaskCreated') {
            created.set(e.time.slice(0, 10), (created.get(e.time.slice(0, 10)) ?? 0) + 1);
            createdAt.set(e.aggregateId, Date.parse(e.time));
          } else if (e.type === 'TaskCompleted') {
            const at = (e.data as { completedAt: string }).completedAt;
            const c = completed.get(at.slice(0, 10)) ?? { n: 0, hours: 0 };
            c.n++;
            c.hours += (Date.parse(at) - createdAt.get(e.aggregateId)!) / 3_600_000;
            completed.set(at.slice(0, 10), c);
          }
          if (--remaining === 0) break;
        }
        await iter.close();
        const rows = (await s.views!.page('task_analytics', {}, 500)).rows;
        const days = [...new Set([...created.keys(), ...completed.keys()])].sort().reverse();
        expect(rows.map((r) => r['day'])).toEqual(days);
        for (const r of rows) {
          const d = r['day'] as string;
          expect(r['created']).toBe(created.get(d) ?? 0);
          expect(r['completed']).toBe(completed.get(d)?.n ?? 0);
          const c = completed.get(d);
          if (c) expect(r['avgHoursToComplete'] as number).toBeCloseTo(c.hours / c.n, 9);
          else expect(r['avgHoursToComplete']).toBeNull();
        }
        expect(rows.reduce((n, r) => n + (r['created'] as number), 0)).toBeGreaterThanOrEqual(1200);
      } finally {
        await s.stop();
      }
    });
    it('apply every event exactly once while commands stream in, each projection reaching the end of the stream', async () => {
      // The checkpoint moves past events a projection does not handle (the watermark). On a
      // cluster it once moved past events of its own that its consumer had not delivered yet,
      // and stopped moving for projections that saw no events of their own.
      const db = await database();
      const s = await startStrandWithDb(ctx.url, db.url, { ...ctx.env, STRAND_ROLES: 'projections', STRAND_PROJECTION_STANDBY_MS: '200' });
      try {
        const senders = await Promise.all(Array.from({ length: 12 }, () => CommandClient.connect(ctx.url)));
        let last = 0;
        try {
          await Promise.all(
            senders.map(async (c, w) => {
              for (let i = 0; i < 30; i++) {
                const id = `stream-${w}-${i}`;
                for (const [cmd, body, h] of [
                  ['CreateTask', { title: 't', memberId: `M${w}`, assignedTo: 'CC0' }, {}],
                  ['AssignTask', { assignedTo: `CC${w}` }, {}],
                  ['CompleteTask', { notes: 'n' }, { 'Strand-Actor': `user:CC${w}` }],
                ] as const) {
                  const r = await c.send(`cmd.task.${id}.${cmd}`, body, h);
                  expect(r, JSON.stringify(r)).toMatchObject({ ok: true });
                  last = Math.max(last, (r as CommandAccepted).seq);
                }
              }
            }),
          );
        } finally {
          await Promise.all(senders.map((c) => c.close()));
        }
        // Every projection gets there, those that saw none of these events too.
        await waitCaughtUp(s, last);
        // Every projection applied from one reading of the stream (each event decoded once).
        await eventually(async () => s.readSide!.streamReaders === 1, 'one stream reader', 10_000);
        const rows = (await s.pool!.query("SELECT status, count(*)::int AS n FROM task_list_view WHERE task_id LIKE 'stream-%' GROUP BY status")).rows;
        expect(rows).toEqual([{ status: 'completed', n: 12 * 30 }]);
        expect(await dumpViews(db.url)).toEqual(await rebuildFromScratch(last));
      } finally {
        await s.stop();
      }
    });
    for (const point of ['projection.afterCommit:3', 'projection.beforeCommit:3']) {
      it(`end equal to a from-scratch rebuild after a crash at ${point.split(':')[0]}`, async () => {
        const last = await workload(`crash${point.length}`, 300);
        const db = await database();
        // A real process, killed with SIGKILL at the failpoint in the middle of catching up.
        const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
          cwd: root,
          env: { ...process.env, ...ctx.env, NATS_URL: ctx.url, DATABASE_URL: db.url, PORT: '0', LOG_LEVEL: 'warn', STRAND_ROLES: 'projections', STRAND_PROJECTION_BATCH_SIZE: '40', STRAND_FAILPOINT: point },
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let out = '';
        child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
        const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
        expect(exit.signal, `${JSON.stringify(exit)} ${out}`).toBe('SIGKILL');
        expect(out).toContain(`failpoint ${point.split(':')[0]} reached`);
        // Restart on the same database: it resumes from its checkpoint.
        const s = await startStrandWithDb(ctx.url, db.url, { ...ctx.env,  STRAND_ROLES: 'projections', STRAND_PROJECTION_BATCH_SIZE: '40' });
        try {
          await waitCaughtUp(s, last);
          const resumed = await dumpViews(db.url);
          const scratch = await rebuildFromScratch(last);
          expect(resumed).toEqual(scratch);
        } finally {
          await s.stop();
        }
      });
    }
    it('rebuild a projection whose version changed into new tables, serving the old ones throughout, then switch', async () => {
      const db = await database();
      const last = await workload('rb', 150);
      const v1 = await startStrandWithDb(ctx.url, db.url, { ...ctx.env,  STRAND_ROLES: 'projections' });
      let before: Record<string, unknown[]>;
      try {
        await waitCaughtUp(v1, last);
        before = await dumpViews(db.url);
      } finally {
        await v1.stop();
      }
      const v2 = defineProjection({ ...taskListView, version: 2 });
      const projections = exampleProjections.map((p) => (p.name === 'task_list_view' ? v2 : p));
      const s = await startStrandWithDb(ctx.url, db.url, { ...ctx.env,  STRAND_ROLES: 'projections', STRAND_PROJECTION_BATCH_SIZE: '20' }, projections);
      try {
        const status = await s.readSide!.status();
        expect(status.find((x) => x.name === 'task_list_view')).toMatchObject({ activeGeneration: 1, buildingGeneration: 2 });
        const served: number[] = [];
        const errors: unknown[] = [];
        let switched = false;
        while (!switched) {
          try {
            served.push((await s.views!.page('task_list_view', {}, 500)).rows.length);
          } catch (err) {
            errors.push(err);
          }
          switched = (await s.readSide!.status()).find((x) => x.name === 'task_list_view')!.activeGeneration === 2;
        }
        expect(errors).toEqual([]);
        expect(served.length).toBeGreaterThan(0);
        expect(await metric(s, 'strand_projection_rebuild_progress', { projection: 'task_list_view', generation: '2' })).toBe(1);
        expect(served.every((n) => n === before['task_list_view']!.length || n === Math.min(500, before['task_list_view']!.length))).toBe(true);
        expect(await dumpViews(db.url)).toEqual(before);
        // One reading of the stream again: the rebuild's feed merged with the others' once it caught up.
        await eventually(async () => s.readSide!.streamReaders === 1, 'one stream reader', 10_000);
        // The old generation's schema is dropped once nobody applies it.
        await eventually(async () => (await s.pool!.query("SELECT 1 FROM pg_namespace WHERE nspname = 'proj_task_list_view_g1'")).rowCount === 0, 'generation 1 dropped');

        // Older code still running (a rolling deploy) stands by: it does not rebuild its own version back.
        const old = await startStrandWithDb(ctx.url, db.url, { ...ctx.env,  STRAND_ROLES: 'projections' });
        try {
          const mine = (await old.readSide!.status()).find((x) => x.name === 'task_list_view')!;
          expect(mine).toMatchObject({ activeGeneration: 2, buildingGeneration: null, local: false });
        } finally {
          await old.stop();
        }

        // A rebuild on command (same version) ends the same way.
        const generation = await s.readSide!.rebuild('order_list');
        expect(generation).toBe(2);
        await eventually(async () => (await s.readSide!.status()).find((x) => x.name === 'order_list')!.activeGeneration === 2, 'order_list switched', 20_000);
        expect(await dumpViews(db.url)).toEqual(before);
      } finally {
        await s.stop();
      }
    });
    it('apply a backlog exactly once when batches fail while later ones are already sent', async () => {
      // Batches are pipelined: while one commits, the next is sent behind it. A batch that fails
      // in PostgreSQL (a NOT NULL violation) or in its handler must take every later batch down
      // with it, and each of their events must then be applied once: counted, never twice.
      const poison = defineProjection({
        name: 'pipeline_orders',
        version: 1,
        migrations: ['CREATE TABLE po_rows (order_id text PRIMARY KEY, customer_id text NOT NULL)', 'CREATE TABLE po_count (k text PRIMARY KEY, n integer NOT NULL DEFAULT 0)'],
        tables: { po_rows: { key: ['order_id'] }, po_count: { key: ['k'] } },
        views: { po_rows: { relation: 'po_rows', key: 'orderId', columns: { orderId: 'order_id', customerId: 'customer_id' }, filters: [] } },
        handlers: [
          on(order, {
            OrderPlaced: (e, db) => {
              if (e.data.customerId === 'POISON-JS') throw new Error('handler refuses');
              db.upsert('po_rows', { order_id: e.aggregateId, customer_id: e.data.customerId === 'POISON-SQL' ? null : e.data.customerId });
              db.increment('po_count', { k: e.aggregateId.startsWith('pipe-') ? 'pipe' : 'other' }, { n: 1 }); // the stream holds other tests' orders too
            },
          }),
        ],
      });
      const total = 1200;
      const poisonAt = new Map([
        [400, 'POISON-SQL'],
        [401, 'POISON-JS'],
        [830, 'POISON-SQL'],
      ]);
      let last = 0;
      const seqs = new Map<string, number>();
      for (let i = 0; i < total; i += 64) {
        const replies = await Promise.all(
          Array.from({ length: Math.min(64, total - i) }, (_, j) => {
            const n = i + j;
            return ctx.client.send(`cmd.order.pipe-${n}.PlaceOrder`, { customerId: poisonAt.get(n) ?? `C${n % 9}`, items: [{ sku: 'A', quantity: 1, priceCents: 1 }] });
          }),
        );
        replies.forEach((r, j) => {
          expect(r, JSON.stringify(r)).toMatchObject({ ok: true });
          seqs.set(`pipe-${i + j}`, (r as CommandAccepted).seq);
          last = Math.max(last, (r as CommandAccepted).seq);
        });
      }
      const db = await database();
      const s = await startStrandWithDb(ctx.url, db.url, { ...ctx.env,  STRAND_ROLES: 'projections', STRAND_PROJECTION_BATCH_SIZE: '25', STRAND_PROJECTION_MAX_ATTEMPTS: '1' }, [poison]);
      try {
        expect((await s.readSide!.waitFor('pipeline_orders', last, 60_000)).reached).toBe(true);
        const c = await s.pool!.query(
          `SELECT (SELECT n FROM proj_pipeline_orders_g1.po_count WHERE k = 'pipe') AS n,
                  (SELECT count(*)::int FROM proj_pipeline_orders_g1.po_rows WHERE order_id LIKE 'pipe-%') AS rows,
                  (SELECT count(*)::int FROM proj_pipeline_orders_g1.po_rows) AS "allRows"`,
        );
        expect(c.rows[0]).toMatchObject({ n: total - poisonAt.size, rows: total - poisonAt.size });
        const parked = await s.readSide!.deadLetters('pipeline_orders');
        expect(parked.map((d) => d.seq)).toEqual([...poisonAt.keys()].map((n) => seqs.get(`pipe-${n}`)));
        expect(parked[0]!.error).toMatch(/null value/);
        expect(parked[1]!.error).toContain('handler refuses');
        expect(await metric(s, 'strand_projection_events_applied_total', { projection: 'pipeline_orders' })).toBe((c.rows[0] as { allRows: number }).allRows);
      } finally {
        await s.stop();
      }
    });
}

describe('projections on one server', { timeout: 120_000 }, () => {
  useBackend('server');
    it('apply the stream to PostgreSQL and serve a write as soon as its sequence is applied (minSeq)', async () => {
      const db = await database();
      const s = await startStrandWithDb(ctx.url, db.url, { ...ctx.env,  STRAND_ROLES: 'projections' });
      try {
        const r = (await ctx.client.send('cmd.task.ryw-1.CreateTask', { title: 'Read your write', memberId: 'M1', assignedTo: 'CC456' })) as CommandAccepted;
        const waited = await s.readSide!.waitFor('task_list_view', r.seq, 10_000);
        expect(waited.reached).toBe(true);
        const row = await s.views!.row('task_list_view', 'ryw-1');
        expect(row.row).toMatchObject({ taskId: 'ryw-1', title: 'Read your write', status: 'pending', assignedTo: 'CC456', memberId: 'M1', version: 1 });
        expect(row.checkpoint).toBeGreaterThanOrEqual(r.seq);
        const page = await s.views!.page('task_list_view', { assignedTo: 'CC456', status: 'pending' }, 10);
        expect(page.rows.map((x) => x['taskId'])).toContain('ryw-1');
        // Lag metrics: applied events, batch durations, and (once the runner has looked) nothing pending.
        expect(await metric(s, 'strand_projection_events_applied_total', { projection: 'task_list_view' })).toBeGreaterThan(0);
        expect(await metric(s, 'strand_projection_batch_duration_seconds', { projection: 'task_list_view' })).toBeGreaterThan(0);
        await eventually(async () => (await metric(s, 'strand_projection_pending_events', { projection: 'task_list_view' })) === 0, 'pending 0');
        expect(await metric(s, 'strand_projection_lag_seconds', { projection: 'task_list_view' })).toBe(0);
        expect(await metric(s, 'strand_projection_checkpoint', { projection: 'task_list_view' })).toBeGreaterThanOrEqual(r.seq);
      } finally {
        await s.stop();
      }
    });

  exactlyOnce();

    for (const commit of ['async', 'sync'] as const) {
      it(`end equal to a from-scratch rebuild after PostgreSQL is killed (-9, every process) mid-apply, with ${commit} commits`, async () => {
        // A server of its own: the run's shared one must not be killed.
        const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'strand-pgcrash-'));
        await fs.chmod(dir, 0o711); // as root, PostgreSQL runs as `postgres`, which must enter it
        const dataDir = path.join(dir, 'data');
        let server = await startEmbeddedPostgres({ dataDir, database: 'crash' });
        const s = await startStrandWithDb(ctx.url, server.url, { ...ctx.env,  STRAND_ROLES: 'projections', STRAND_PROJECTION_COMMIT: commit, STRAND_PROJECTION_BATCH_SIZE: '10', STRAND_PROJECTION_STANDBY_MS: '200' });
        try {
          const sent = workload(`pgcrash-${commit}`, 300);
          // Once some batches are in, kill the postmaster and every backend and helper at once:
          // an unflushed asynchronous commit is lost, as on a power cut of the database alone.
          await eventually(async () => (await s.readSide!.checkpoint('task_list_view')) > 0, 'some batches applied', 20_000);
          const pids = [server.pid, ...childPids(server.pid)];
          for (const pid of pids) process.kill(pid, 'SIGKILL');
          await eventually(async () => pids.every((pid) => !alive(pid)), 'PostgreSQL gone');
          await server.stop();
          const last = await sent; // commands do not need PostgreSQL
          server = await startEmbeddedPostgres({ dataDir, database: 'crash', port: server.port });
          await waitCaughtUp(s, last);
          const resumed = await dumpViews(server.url);
          expect(resumed).toEqual(await rebuildFromScratch(last));
        } finally {
          await s.stop();
          await server.stop();
          await fs.rm(dir, { recursive: true, force: true });
        }
      });
    }
    it('park a poison event after bounded tries, apply the rest, and retry it once fixed', async () => {
      let broken = true;
      const poison = defineProjection({
        name: 'poison_orders',
        version: 1,
        migrations: ['CREATE TABLE poison_orders (order_id text PRIMARY KEY, customer_id text NOT NULL)'],
        tables: { poison_orders: { key: ['order_id'] } },
        views: { poison_orders: { relation: 'poison_orders', key: 'orderId', columns: { orderId: 'order_id', customerId: 'customer_id' }, filters: [] } },
        handlers: [
          on(order, {
            OrderPlaced: (e, db) => {
              if (broken && e.data.customerId === 'POISON') throw new Error('cannot handle this customer');
              db.upsert('poison_orders', { order_id: e.aggregateId, customer_id: e.data.customerId });
            },
          }),
        ],
      });
      const db = await database();
      const s = await startStrandWithDb(ctx.url, db.url, { ...ctx.env,  STRAND_ROLES: 'projections', STRAND_PROJECTION_MAX_ATTEMPTS: '2' }, [poison]);
      try {
        let last = 0;
        for (const [i, customer] of ['C1', 'POISON', 'C2'].entries()) {
          last = ((await ctx.client.send(`cmd.order.poison-${i}.PlaceOrder`, { customerId: customer, items: [{ sku: 'A', quantity: 1, priceCents: 1 }] })) as CommandAccepted).seq;
        }
        expect((await s.readSide!.waitFor('poison_orders', last, 20_000)).reached).toBe(true);
        const parked = await s.readSide!.deadLetters('poison_orders');
        expect(parked).toHaveLength(1);
        expect(parked[0]).toMatchObject({ attempts: 2, event: { aggregateId: 'poison-1', type: 'OrderPlaced' } });
        expect(parked[0]!.error).toContain('cannot handle this customer');
        expect(await metric(s, 'strand_projection_dead_letters_total', { projection: 'poison_orders' })).toBe(1);
        expect((await s.views!.row('poison_orders', 'poison-0')).row).toEqual({ orderId: 'poison-0', customerId: 'C1' });
        expect((await s.views!.row('poison_orders', 'poison-2')).row).toEqual({ orderId: 'poison-2', customerId: 'C2' });
        expect((await s.views!.row('poison_orders', 'poison-1')).row).toBeUndefined();

        expect(await s.readSide!.retryDeadLetter('poison_orders', parked[0]!.seq, 10_000)).toMatchObject({ found: true, ok: false });
        broken = false;
        expect(await s.readSide!.retryDeadLetter('poison_orders', parked[0]!.seq, 10_000)).toEqual({ found: true, ok: true });
        expect(await s.readSide!.deadLetters('poison_orders')).toEqual([]);
        expect((await s.views!.row('poison_orders', 'poison-1')).row).toEqual({ orderId: 'poison-1', customerId: 'POISON' });
      } finally {
        await s.stop();
      }
    });
    it("apply handlers that run their own SQL (db.sql) in the batch's transaction, exactly once, parking one that fails", async () => {
      const own = defineProjection({
        name: 'sql_orders',
        version: 1,
        migrations: ['CREATE TABLE so_rows (order_id text PRIMARY KEY, customer_id text NOT NULL)', 'CREATE TABLE so_count (k text PRIMARY KEY, n integer NOT NULL)'],
        tables: { so_rows: { key: ['order_id'] }, so_count: { key: ['k'] } },
        views: { so_rows: { relation: 'so_rows', key: 'orderId', columns: { orderId: 'order_id', customerId: 'customer_id' }, filters: [] } },
        handlers: [
          on(order, {
            OrderPlaced: async (e, db) => {
              if (!e.aggregateId.startsWith('sqlo-')) return;
              db.upsert('so_rows', { order_id: e.aggregateId, customer_id: e.data.customerId });
              // Sees the pending upsert (written first), in the same transaction.
              const [{ n }] = (await db.sql('SELECT count(*)::int AS n FROM so_rows WHERE order_id = $1', [e.aggregateId])) as [{ n: number }];
              if (n !== 1) throw new Error(`own row not visible to sql(): ${n}`);
              if (e.data.customerId === 'BAD-SQL') await db.sql('SELECT 1 / 0');
              await db.sql('INSERT INTO so_count (k, n) VALUES ($1, 1) ON CONFLICT (k) DO UPDATE SET n = so_count.n + 1', ['all']);
            },
          }),
        ],
      });
      const total = 200;
      let last = 0;
      for (let i = 0; i < total; i += 50) {
        const replies = await Promise.all(
          Array.from({ length: 50 }, (_, j) => ctx.client.send(`cmd.order.sqlo-${i + j}.PlaceOrder`, { customerId: i + j === 77 ? 'BAD-SQL' : 'C1', items: [{ sku: 'A', quantity: 1, priceCents: 1 }] })),
        );
        for (const r of replies) last = Math.max(last, (r as CommandAccepted).seq);
      }
      const db = await database();
      const s = await startStrandWithDb(ctx.url, db.url, { ...ctx.env,  STRAND_ROLES: 'projections', STRAND_PROJECTION_BATCH_SIZE: '15', STRAND_PROJECTION_MAX_ATTEMPTS: '1' }, [own]);
      try {
        expect((await s.readSide!.waitFor('sql_orders', last, 60_000)).reached).toBe(true);
        const c = await s.pool!.query('SELECT (SELECT n FROM proj_sql_orders_g1.so_count) AS n, (SELECT count(*)::int FROM proj_sql_orders_g1.so_rows) AS rows');
        expect(c.rows[0]).toEqual({ n: total - 1, rows: total - 1 });
        const parked = await s.readSide!.deadLetters('sql_orders');
        expect(parked.map((d) => d.event.aggregateId)).toEqual(['sqlo-77']);
        expect(parked[0]!.error).toMatch(/division by zero/);
      } finally {
        await s.stop();
      }
    });
    it('apply at once, however long a batch may wait to fill, when a reader waits (minSeq) or a live client watches', async () => {
      // Batches of an unwatched projection wait up to a minute here: only the rules under test
      // can make these changes visible within the tests' waits.
      const db = await database();
      const s = await startStrandWithDb(ctx.url, db.url, { ...ctx.env,  STRAND_ROLES: 'projections', STRAND_PROJECTION_BATCH_MS: '60000', STRAND_MIN_SEQ_WAIT_MS: '20000' });
      try {
        const created = (await ctx.client.send('cmd.task.urgent-1.CreateTask', { title: 'Now', memberId: 'M1', assignedTo: 'URG1' })) as CommandAccepted;
        // A reader waits for the command's sequence: the runner stops lingering until it is applied.
        const page = await s.views!.page('task_list_view', { assignedTo: 'URG1' }, 10);
        expect(page.rows).toEqual([]); // not yet: nobody waited so far
        expect((await s.readSide!.waitFor('task_list_view', created.seq, 20_000)).reached).toBe(true);
        expect((await s.views!.row('task_list_view', 'urgent-1')).row).toMatchObject({ assignedTo: 'URG1' });

        // A live client watches the view: each change is applied and pushed at once.
        const url = `${(await s.http.listen({ port: 0, host: '127.0.0.1' })).replace('http', 'ws')}/live`;
        const w = await LiveClient.connect(url);
        try {
          w.send({ type: 'subscribe', id: 'urgent', view: 'task_list_view', filter: { assignedTo: 'URG1' } });
          await w.until((c) => c.of('snapshot').length === 1, 'the snapshot');
          await ctx.client.send('cmd.task.urgent-2.CreateTask', { title: 'Also now', memberId: 'M1', assignedTo: 'URG1' });
          await w.until((c) => c.copies.get('urgent')?.has('urgent-2') === true, 'the change, long before a minute', 20_000);
        } finally {
          await w.close();
        }
      } finally {
        await s.stop();
      }
    });
    it('park a message on an event subject that is not an envelope, as it came, and go on', async () => {
      // Any NATS client may publish on evt.>: an aggregate of this test's own, so no other
      // projection here ever reads these messages.
      const probe = defineAggregate<{ n: number }>()({
        name: 'probe',
        commands: { Probe: z.object({ note: z.string() }) },
        events: { Probed: z.object({ note: z.string() }) },
        initialState: () => ({ n: 0 }),
        decide: { Probe: (c) => [{ type: 'Probed', data: { note: c.note } }] },
        evolve: { Probed: (s) => ({ n: s.n + 1 }) },
      });
      const rows = defineProjection({
        name: 'probe_rows',
        version: 1,
        migrations: ['CREATE TABLE probe_rows (id text PRIMARY KEY, note text NOT NULL)'],
        tables: { probe_rows: { key: ['id'] } },
        views: { probe_rows: { relation: 'probe_rows', key: 'id', columns: { id: 'id', note: 'note' }, filters: [] } },
        handlers: [on(probe, { Probed: (e, db) => db.upsert('probe_rows', { id: e.aggregateId, note: e.data.note }) })],
      });
      const js = jetstream(ctx.client.nc);
      const garbage = await js.publish('evt.probe.p-1.Probed', 'not json {');
      // PostgreSQL stores no NUL: parking this one once failed for ever, and the projection stood still.
      const nul = await js.publish('evt.probe.p-3.Probed', '\u0000 not JSON');
      const envelope: EventEnvelope = { id: 'probe-event-2', type: 'Probed', aggregate: 'probe', aggregateId: 'p-2', version: 1, schemaVersion: 1, time: new Date().toISOString(), data: { note: 'fine' }, metadata: {} };
      const good = await js.publish('evt.probe.p-2.Probed', JSON.stringify(envelope));
      const db = await database();
      const s = await startStrandWithDb(ctx.url, db.url, { ...ctx.env,  STRAND_ROLES: 'projections', STRAND_PROJECTION_MAX_ATTEMPTS: '1' }, [rows], [probe]);
      try {
        expect((await s.readSide!.waitFor('probe_rows', good.seq, 20_000)).reached).toBe(true);
        expect((await s.views!.row('probe_rows', 'p-2')).row).toEqual({ id: 'p-2', note: 'fine' });
        const parked = await s.readSide!.deadLetters('probe_rows');
        expect(parked).toHaveLength(2);
        expect(parked[0]).toMatchObject({ seq: garbage.seq, subject: 'evt.probe.p-1.Probed', event: { aggregate: 'probe', aggregateId: 'p-1', type: 'Probed', data: 'not json {' } });
        expect(parked[0]!.error).toMatch(/JSON/);
        expect(parked[1]).toMatchObject({ seq: nul.seq, subject: 'evt.probe.p-3.Probed', event: { data: '\ufffd not JSON' } });
      } finally {
        await s.stop();
      }
    });
    it('spread the projections over the instances that apply them, and move them when one leaves', async () => {
      const db = await database();
      const env = { ...ctx.env, STRAND_ROLES: 'projections', STRAND_PROJECTION_STANDBY_MS: '300' };
      const all = [await startStrandWithDb(ctx.url, db.url, env), await startStrandWithDb(ctx.url, db.url, env), await startStrandWithDb(ctx.url, db.url, env)];
      const local = async (s: Strand) => (await s.readSide!.status()).filter((x) => x.local).map((x) => x.name);
      try {
        // The example projections over 3 instances as evenly as they go (6: 2, 2, 2), each applied once.
        const spread = (n: number, k: number) => Array.from({ length: k }, (_, i) => Math.floor(n / k) + (i < n % k ? 1 : 0)).sort().join(',');
        await eventually(async () => {
          const counts = await Promise.all(all.map(async (s) => (await local(s)).length));
          return counts.sort().join(',') === spread(exampleProjections.length, 3);
        }, 'the projections to spread evenly', 20_000);
        const names = (await Promise.all(all.map(local))).flat().sort();
        expect(names).toEqual(exampleProjections.map((p) => p.name).sort());
        // One leaves: the other two apply everything, evenly, and go on applying.
        await all[0]!.stop();
        const rest = all.slice(1);
        await eventually(async () => {
          const counts = await Promise.all(rest.map(async (s) => (await local(s)).length));
          return counts.sort().join(',') === spread(exampleProjections.length, 2);
        }, 'the projections to move to the others', 20_000);
        const r = (await ctx.client.send('cmd.order.spread-1.PlaceOrder', { customerId: 'C9', items: [{ sku: 'A', quantity: 1, priceCents: 1 }] })) as CommandAccepted;
        const task = (await ctx.client.send('cmd.task.spread-1.CreateTask', { title: 't', memberId: 'M1', assignedTo: 'CC1' })) as CommandAccepted;
        for (const p of exampleProjections) expect((await rest[0]!.readSide!.waitFor(p.name, Math.max(r.seq, task.seq), 15_000)).reached, p.name).toBe(true);
      } finally {
        await Promise.all(all.map((s) => s.stop()));
      }
    });

    it('run each projection on one instance at a time, and hand over when it stops', async () => {
      const db = await database();
      const a = await startStrandWithDb(ctx.url, db.url, { ...ctx.env,  STRAND_ROLES: 'projections', STRAND_PROJECTION_STANDBY_MS: '200' });
      const b = await startStrandWithDb(ctx.url, db.url, { ...ctx.env,  STRAND_ROLES: 'projections', STRAND_PROJECTION_STANDBY_MS: '200' });
      try {
        const local = async (s: Strand) => (await s.readSide!.status()).filter((x) => x.local).map((x) => x.name);
        await eventually(async () => [...(await local(a)), ...(await local(b))].sort().join() === exampleProjections.map((p) => p.name).sort().join(), 'the two to apply every projection between them', 20_000);
        await a.stop();
        await eventually(async () => (await local(b)).length === exampleProjections.length, 'b to take over every projection', 10_000);
        const r = (await ctx.client.send('cmd.order.handover-1.PlaceOrder', { customerId: 'C9', items: [{ sku: 'A', quantity: 1, priceCents: 1 }] })) as CommandAccepted;
        expect((await b.readSide!.waitFor('order_list', r.seq, 10_000)).reached).toBe(true);
        expect((await b.views!.row('order_list', 'handover-1')).row).toMatchObject({ customerId: 'C9', status: 'placed', itemCount: 1 });
      } finally {
        await a.stop();
        await b.stop();
      }
    });
});

describe('projections on a 3-node cluster (R3)', { timeout: 180_000 }, () => {
  useBackend('cluster');
  exactlyOnce();

  it('go on applying after kill -9 of the node serving their feed’s consumer', async () => {
    // The feed reads through an ordered consumer, which lives on one node. With that node dead,
    // a fetch from it stayed open while the client asked after the consumer: nothing was applied
    // until the node came back.
    const nc = await connect({ servers: ctx.url.split(','), maxReconnectAttempts: -1, reconnectTimeWait: 100 });
    const jsm = await jetstreamManager(nc);
    // Consumers left by the instances of earlier tests (a crashed one's stay until inactive).
    const before = new Set<string>();
    for await (const c of jsm.consumers.list('EVENTS')) before.add(c.name);
    const db = await database();
    const s = await startStrandWithDb(ctx.url, db.url, { ...ctx.env, STRAND_ROLES: 'projections' });
    let killed: TestCluster['nodes'][number] | undefined;
    // Resent with its command ID until answered: the stream may be electing a leader.
    const create = async (id: string): Promise<number> => {
      let seq = 0;
      await eventually(async () => {
        const h = headers();
        h.set('Strand-Command-Id', `${id}-create`);
        try {
          const r = (await nc.request(`cmd.task.${id}.CreateTask`, JSON.stringify({ title: 't', memberId: 'M1', assignedTo: 'CC0' }), { headers: h, timeout: 2000 })).json<CommandReply>();
          if (r.ok) seq = r.seq;
          return r.ok;
        } catch {
          return false;
        }
      }, `${id} created`, 30_000);
      return seq;
    };
    try {
      let last = 0;
      for (let i = 0; i < 10; i++) last = Math.max(last, await create(`feedkill-a${i}`));
      await waitCaughtUp(s, last);
      const hosts: string[] = [];
      for await (const c of jsm.consumers.list('EVENTS')) {
        // The feed's: made since this instance started, ephemeral and unacknowledged.
        if (!before.has(c.name) && !c.config.durable_name && c.config.ack_policy === AckPolicy.None && c.cluster?.leader) hosts.push(c.cluster.leader);
      }
      expect(hosts, 'where the feed’s consumer lives').toHaveLength(1);
      killed = ctx.cluster!.nodes.find((n) => n.name === hosts[0])!;
      await killed.kill9();
      for (let i = 0; i < 10; i++) last = Math.max(last, await create(`feedkill-b${i}`));
      for (const p of exampleProjections) {
        const r = await s.readSide!.waitFor(p.name, last, 30_000);
        expect(r.reached, `${p.name} reached ${last} after the kill`).toBe(true);
      }
      const rows = (await s.pool!.query("SELECT count(*)::int AS n FROM task_list_view WHERE task_id LIKE 'feedkill-%'")).rows;
      expect(rows).toEqual([{ n: 20 }]);
    } finally {
      await s.stop();
      await nc.close();
      await killed?.start();
    }
  });
});
