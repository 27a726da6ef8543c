/**
 * Projections and views: how fast the read side applies events, how far behind the stream it
 * runs under a steady command load, and how fast GET /views answers. One private nats-server
 * and one throwaway embedded PostgreSQL (its default settings) serve all three parts.
 *
 *  1. Projection throughput. N OrderPlaced events (distinct order ids) are published straight
 *     to the stream in Strand's envelope format with its headers (what the event store sends),
 *     then a read side (STRAND_ROLES=projections, in this process) with only `order_list`
 *     starts on a fresh database; timed from Strand.start until its checkpoint is the last
 *     sequence. Baseline, same PostgreSQL: the same rows as 500-row
 *     `INSERT … ON CONFLICT (order_id) DO UPDATE` through `pg` into a table made by
 *     order_list's own migrations (same columns and indexes), committed with the same
 *     synchronous_commit as the read side (--commit). Order raw, strand × --pairs.
 *     Target: strand/raw >= 0.6.
 *  2. Projection lag. A command service (`src/main.ts`, STRAND_ROLES=commands) and a read side
 *     (bench/readside-service.ts, STRAND_ROLES=projections, all five example projections by
 *     default) as child processes; this process sends CreateTask/AssignTask at a steady rate
 *     (open loop) and records each reply's seq and time. The read side publishes every
 *     checkpoint advance (runner.onAdvance) on NATS; lag = when task_list_view's checkpoint
 *     reached the command's seq − when the reply came. Target: p99 <= 100 ms. Context: the
 *     same commands' reply latency.
 *  3. GET /views/task_list_view?assignedTo=CC1&status=pending&limit=20 against the read side's
 *     HTTP server (keep-alive, --concurrency at once), on part 2's data. Baseline: the very
 *     SQL ViewReader sends (captured from it), through `pg` with the same concurrency.
 *
 *   npx tsx bench/projections.bench.ts [--sync always|default] [--events 60000] [--pairs 2]
 *       [--rate 2000] [--seconds 20] [--warmup-seconds 2] [--projections all|task_list_view]
 *       [--batch-ms 20] [--commit async|sync] [--raw parameters|literals] [--requests 5000] [--concurrency 32] [--parts 1,2,3]
 *       [--profile] [--sql-timing] [--time-limit 290]
 *
 * With --sync always, --events defaults to 20,000 and --rate to 500 (each append waits for an
 * fsync; on this machine's disk an open loop of 1,000/s already overloads the command path).
 * --batch-ms is STRAND_PROJECTION_BATCH_MS of both read sides (Strand's default 20); --commit
 * their STRAND_PROJECTION_COMMIT (Strand's default async). --raw literals builds part 1's raw
 * upsert with SQL literals, as Strand does, instead of parameters (the default baseline).
 * --profile: CPU profile of part 1's first Strand run (in-process, node:inspector, only while
 * it applies) and of part 2's read side and command service (node --cpu-prof, whole life),
 * each summarised by bench/cpuprofile.ts; implies --sql-timing.
 * --sql-timing: every statement the read sides send is timed (bench/pg-timing.ts) and the
 * totals per statement are printed for part 1's Strand runs and part 2's load window.
 */
import type { ReadSide } from '../src/projections/host.js';
import fs from 'node:fs/promises';
import http from 'node:http';
import { Session } from 'node:inspector/promises';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import pino from 'pino';
import { connect } from '@nats-io/transport-node';
import { headers, type Msg, type NatsConnection } from '@nats-io/nats-core';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { aggregates, order, orderList, taskListView } from '../actors/index.js';
import { EventHeader, JetStreamHeader, eventSubject, instanceEvents } from '../subjects/index.js';
import { Strand } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { ensureEventStream } from '../src/eventstore/jetstream.js';
import type { RunningPostgres } from '../src/postgres/embedded.js';
import { literal } from '../src/projections/sql.js';
import { ViewReader } from '../src/projections/views.js';
import { watchCheckpoints } from './checkpoints.js';
import { formatStatements, timeStatements, type StatementStat } from './pg-timing.js';
import { mainThreadProfile, summarizeCpuProfile, type CpuProfile } from './cpuprofile.js';
import { checkReply, cpuProfArgs, deleteStream, startStrandService } from './command-loop.js';
import { startService, stopAllServices, waitReady, type ServiceProcess } from './service.js';
import {
  LeanRequester,
  fmt1,
  fmt2,
  fmtInt,
  hardLimit,
  commitArg,
  intArg,
  machineLine,
  median,
  parseArgs,
  percentile,
  postgresCpuMicros,
  processCpuMicros,
  sleep,
  startBenchServer,
  syncArg,
  syncLabel,
  type BenchServer,
  runBenchMain,
  startBenchDatabase,
  type BenchDatabase,
} from './support.js';

const args = parseArgs();
const sync = syncArg(args);
// With sync_interval: always every publish waits for an fsync (about 2k events/s here): fewer
// events to write, and a command rate the command path can sustain.
const EVENTS = intArg(args, 'events', sync === 'always' ? 20_000 : 60_000);
const PAIRS = intArg(args, 'pairs', 2);
const RATE = intArg(args, 'rate', sync === 'always' ? 500 : 2_000);
const SECONDS = intArg(args, 'seconds', 20);
const WARMUP_SECONDS = intArg(args, 'warmup-seconds', 2, 0);
const LAG_PROJECTIONS = args.get('projections') ?? 'all';
if (LAG_PROJECTIONS !== 'all' && LAG_PROJECTIONS !== 'task_list_view') throw new Error('--projections must be "all" or "task_list_view"');
const BATCH_MS = intArg(args, 'batch-ms', 20, 0);
const COMMIT = commitArg(args);
/** `--raw literals`: the raw upsert carries its values as SQL literals (as Strand does) instead of parameters. */
const RAW_LITERALS = (args.get('raw') ?? 'parameters') === 'literals';
if (!['parameters', 'literals'].includes(args.get('raw') ?? 'parameters')) throw new Error('--raw must be "parameters" or "literals"');
const REQUESTS = intArg(args, 'requests', 5_000);
const CONCURRENCY = intArg(args, 'concurrency', 32);
const PARTS = new Set((args.get('parts') ?? '1,2,3').split(',').map((s) => s.trim()));
if (PARTS.has('3') && !PARTS.has('2')) throw new Error('part 3 reads the data part 2 writes: --parts must include 2');
const PROFILE = args.has('profile');
/** Time every statement the read side sends (implied by --profile). */
const SQL_TIMING = PROFILE || args.has('sql-timing');
const TIME_LIMIT_S = intArg(args, 'time-limit', 290);

const STREAM = 'EVENTS';
const UPSERT_ROWS = 500;
/** Coordinators tasks are assigned to: CC0..CC49, so `assignedTo=CC1` matches about 1/50 of them. */
const COORDINATORS = 50;
const VIEW_PATH = '/views/task_list_view?assignedTo=CC1&status=pending&limit=20';
const decoder = new TextDecoder();
const encoder = new TextEncoder();

// ---------------------------------------------------------------------------------------------
// Shared plumbing

interface Ctx {
  readonly bench: BenchServer;
  readonly nc: NatsConnection;
  readonly jsm: JetStreamManager;
  readonly pgServer: RunningPostgres;
  readonly admin: pg.Client;
  readonly tmp: string;
  readonly profileDir: string | undefined;
}

async function freshStream(ctx: Ctx): Promise<void> {
  await deleteStream(ctx.jsm, STREAM);
  await deleteStream(ctx.jsm, `KV_${STREAM}_snapshots`);
}

/** Creates an empty database on the benchmark's PostgreSQL and returns its URL. */
async function createDatabase(ctx: Ctx, name: string): Promise<string> {
  await ctx.admin.query(`DROP DATABASE IF EXISTS ${ctx.admin.escapeIdentifier(name)} WITH (FORCE)`);
  await ctx.admin.query(`CREATE DATABASE ${ctx.admin.escapeIdentifier(name)}`);
  const u = new URL(ctx.pgServer.url);
  u.pathname = `/${name}`;
  return u.toString();
}

const PG_SETTINGS = ['fsync', 'synchronous_commit', 'full_page_writes', 'wal_level', 'shared_buffers', 'wal_buffers', 'max_wal_size', 'checkpoint_timeout', 'work_mem', 'max_connections'];

async function describePostgres(admin: pg.Client): Promise<string> {
  const v = (await admin.query('SELECT version() AS v')).rows[0] as { v: string };
  const s = await admin.query('SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1) ORDER BY name', [PG_SETTINGS]);
  const settings = (s.rows as { name: string; setting: string; unit: string | null }[]).map((r) => `${r.name}=${r.setting}${r.unit ? ` ${r.unit}` : ''}`).join(', ');
  return `${v.v.split(' on ')[0]} (embedded, throwaway cluster, server defaults: nothing changed but listen address) | ${settings}`;
}

function pct(sorted: Float64Array, p: number): number {
  return percentile(sorted, p);
}

const quiet = pino({ level: 'warn' });

// ---------------------------------------------------------------------------------------------
// Part 1: projection throughput

interface OrderRow {
  order_id: string;
  customer_id: string;
  status: string;
  item_count: number;
  total_cents: number;
  placed_at: string;
  version: number;
  updated_at: string;
}

/** Publishes N OrderPlaced envelopes exactly as the event store would; returns the rows order_list should end with, and the last seq. */
async function writeOrders(ctx: Ctx, n: number): Promise<{ rows: OrderRow[]; lastSeq: number; seconds: number }> {
  await freshStream(ctx);
  await ensureEventStream(ctx.nc, { name: STREAM, replicas: 1, duplicateWindowMs: 120_000 });
  const placed = order.events.get('OrderPlaced');
  if (!placed) throw new Error('order has no OrderPlaced event');
  const base = Date.parse('2026-11-22T00:00:00.000Z');
  const rows: OrderRow[] = new Array<OrderRow>(n);
  const requester = new LeanRequester(ctx.nc);
  const outstanding = 1_024;
  let sent = 0;
  let acked = 0;
  let lastSeq = 0;
  let failure: string | undefined;
  let lastProgress = Date.now();
  const t0 = performance.now();
  await new Promise<void>((resolve, reject) => {
    const watchdog = setInterval(() => {
      if (Date.now() - lastProgress > 20_000) {
        clearInterval(watchdog);
        reject(new Error(`writing events stalled at ${acked}/${n} acks`));
      }
    }, 500);
    const sendOne = (): void => {
      const i = sent++;
      const id = `o-${i}`;
      const time = new Date(base + i).toISOString();
      const items = [
        { sku: `sku-${i % 100}`, quantity: 1 + (i % 3), priceCents: 100 + (i % 1000) },
        { sku: `sku-${(i + 7) % 100}`, quantity: 1, priceCents: 250 },
      ];
      const totalCents = items.reduce((t, x) => t + x.quantity * x.priceCents, 0);
      const env = {
        id: randomUUID(),
        type: 'OrderPlaced',
        aggregate: 'order',
        aggregateId: id,
        version: 1,
        schemaVersion: placed.version,
        time,
        data: { customerId: `cust-${i % 5_000}`, items, totalCents },
        metadata: { commandId: randomUUID() },
      };
      rows[i] = { order_id: id, customer_id: env.data.customerId, status: 'placed', item_count: items.length, total_cents: totalCents, placed_at: time, version: 1, updated_at: time };
      const h = headers();
      h.set(JetStreamHeader.MsgId, env.id);
      h.set(EventHeader.EventType, env.type);
      h.set(EventHeader.Version, '1');
      h.set(JetStreamHeader.ExpectedLastSubjectSequence, '0');
      h.set(JetStreamHeader.ExpectedLastSubjectSequenceSubject, instanceEvents('order', id));
      requester.send(eventSubject('order', id, env.type), encoder.encode(JSON.stringify(env)), (m: Msg) => {
        const ack = JSON.parse(decoder.decode(m.data)) as { seq?: number; error?: { description?: string } };
        if (ack.error || !ack.seq) failure ??= `${id}: ${ack.error?.description ?? decoder.decode(m.data)}`;
        else if (ack.seq > lastSeq) lastSeq = ack.seq;
        acked++;
        lastProgress = Date.now();
        if (sent < n) sendOne();
        else if (acked === n) {
          clearInterval(watchdog);
          resolve();
        }
      }, h);
    };
    for (let k = 0; k < Math.min(outstanding, n); k++) sendOne();
  });
  requester.close();
  if (failure) throw new Error(`publishing events failed: ${failure}`);
  return { rows, lastSeq, seconds: (performance.now() - t0) / 1000 };
}

interface RateResult {
  readonly seconds: number;
  readonly perSecond: number;
}

/** The raw baseline: the rows as 500-row INSERT … ON CONFLICT DO UPDATE, one connection, autocommit. */
async function rawUpsert(ctx: Ctx, url: string, rows: readonly OrderRow[]): Promise<RateResult> {
  const c = new pg.Client({ connectionString: url, application_name: 'bench-raw' });
  c.on('error', () => undefined);
  await c.connect();
  try {
    await c.query('DROP SCHEMA IF EXISTS raw_baseline CASCADE');
    await c.query('CREATE SCHEMA raw_baseline');
    await c.query('SET search_path TO raw_baseline');
    for (const m of orderList.migrations) await c.query(m); // the projection's own table and indexes
    await c.query('SET search_path TO public');
    // The same commit durability as the read side under test (STRAND_PROJECTION_COMMIT).
    await c.query(`SET synchronous_commit TO ${COMMIT === 'async' ? 'off' : 'on'}`);
    await ctx.admin.query('CHECKPOINT');
    const cols = ['order_id', 'customer_id', 'status', 'item_count', 'total_cents', 'placed_at', 'version', 'updated_at'] as const;
    const update = cols.slice(1).map((x) => `${x} = EXCLUDED.${x}`).join(', ');
    const t0 = performance.now();
    for (let start = 0; start < rows.length; start += UPSERT_ROWS) {
      const chunk = rows.slice(start, start + UPSERT_ROWS);
      if (RAW_LITERALS) {
        const tuples = chunk.map((r) => `(${cols.map((col) => literal(r[col])).join(', ')})`);
        await c.query(`INSERT INTO raw_baseline.order_list (${cols.join(', ')}) VALUES ${tuples.join(', ')} ON CONFLICT (order_id) DO UPDATE SET ${update}`);
        continue;
      }
      const params: unknown[] = [];
      const tuples = chunk.map((r) => `(${cols.map((col) => (params.push(r[col]), `$${params.length}`)).join(', ')})`);
      await c.query(`INSERT INTO raw_baseline.order_list (${cols.join(', ')}) VALUES ${tuples.join(', ')} ON CONFLICT (order_id) DO UPDATE SET ${update}`, params);
    }
    const seconds = (performance.now() - t0) / 1000;
    const n = Number(((await c.query('SELECT count(*) AS n FROM raw_baseline.order_list')).rows[0] as { n: string }).n);
    if (n !== rows.length) throw new Error(`raw baseline wrote ${n} rows, expected ${rows.length}`);
    return { seconds, perSecond: rows.length / seconds };
  } finally {
    await c.end().catch(() => undefined);
  }
}

interface StrandApplyResult extends RateResult {
  /** Strand.start itself (connect, bookkeeping, migrations, consumer), included in `seconds`. */
  readonly startSeconds: number;
  /** Events applied after Strand.start returned, and their rate. */
  readonly afterStart: { events: number; perSecond: number };
  readonly batches: number;
  readonly meanBatchMs: number;
  readonly watch: string;
  /** CPU of this process (the read side, in it) from Strand.start to the last checkpoint, per event. */
  readonly cpuMicrosPerEvent: number;
}

let liveApp: Strand | undefined;

async function strandApply(ctx: Ctx, url: string, rows: readonly OrderRow[], lastSeq: number, profile: boolean): Promise<StrandApplyResult> {
  const config = loadConfig({
    NATS_URL: ctx.bench.url,
    DATABASE_URL: url,
    STRAND_ROLES: 'projections',
    STRAND_STREAM: STREAM,
    LOG_LEVEL: 'warn',
    STRAND_PROJECTION_BATCH_MS: String(BATCH_MS),
    STRAND_PROJECTION_COMMIT: COMMIT,
  });
  await ctx.admin.query('CHECKPOINT');
  let session: Session | undefined;
  if (profile) {
    session = new Session();
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.setSamplingInterval', { interval: 200 });
    await session.post('Profiler.start');
  }
  const timer = SQL_TIMING ? timeStatements() : undefined;
  let reachedAt = 0;
  let onReached: () => void = () => undefined;
  const reached = new Promise<void>((r) => (onReached = r));
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const app = await Strand.start({ config, aggregates, projections: [orderList], natsUrl: ctx.bench.url, databaseUrl: url, log: quiet, defaultMetrics: false });
  liveApp = app;
  const tStarted = performance.now();
  let checkpointAtStart = -1;
  const watch = watchCheckpoints(app.readSide as ReadSide, ['order_list'], (_name, cp) => {
    if (checkpointAtStart < 0) checkpointAtStart = cp;
    if (cp >= lastSeq && reachedAt === 0) {
      reachedAt = performance.now();
      onReached();
    }
  });
  const timeout = setTimeout(() => onReached(), 120_000);
  await reached;
  const cpu = process.cpuUsage(cpu0);
  clearTimeout(timeout);
  watch.stop();
  const statements = timer?.stop();
  if (reachedAt === 0) throw new Error(`order_list did not reach seq ${lastSeq} within 120 s`);
  if (session) {
    const { profile: prof } = await session.post('Profiler.stop');
    session.disconnect();
    const file = path.join(ctx.profileDir!, 'part1-strand-read-side.cpuprofile');
    await fs.writeFile(file, JSON.stringify(prof));
    console.log(`\n  CPU profile of this process while order_list applied (from Strand.start to the last checkpoint): ${file}`);
    console.log(indent(summarizeCpuProfile(prof as unknown as CpuProfile, 25), 4));
    console.log('');
  }
  if (statements) {
    console.log(`  statements awaited from Strand.start to the last checkpoint (${fmt1(reachedAt - t0)} ms; bench/pg-timing.ts):`);
    console.log(formatStatements(statements));
  }
  const batch = (await app.metrics.projectionBatch.get()).values;
  const count = batch.find((v) => v.metricName?.endsWith('_count') && v.labels['projection'] === 'order_list')?.value ?? 0;
  const sum = batch.find((v) => v.metricName?.endsWith('_sum') && v.labels['projection'] === 'order_list')?.value ?? 0;
  const check = await app.pool!.query('SELECT count(*)::int AS n, sum(total_cents)::bigint AS cents FROM public.order_list');
  const got = check.rows[0] as { n: number; cents: number | string };
  const wantCents = rows.reduce((t, r) => t + r.total_cents, 0);
  if (got.n !== rows.length || Number(got.cents) !== wantCents) throw new Error(`order_list has ${got.n} rows / ${got.cents} cents, expected ${rows.length} / ${wantCents}`);
  await app.stop();
  liveApp = undefined;
  const seconds = (reachedAt - t0) / 1000;
  const afterEvents = lastSeq - Math.max(0, checkpointAtStart); // the stream holds only these events
  const afterSeconds = (reachedAt - tStarted) / 1000;
  return {
    seconds,
    perSecond: rows.length / seconds,
    startSeconds: (tStarted - t0) / 1000,
    afterStart: { events: afterEvents, perSecond: afterEvents / afterSeconds },
    batches: count,
    meanBatchMs: count > 0 ? (sum / count) * 1000 : Number.NaN,
    watch: Object.values(watch.modes).join(','),
    cpuMicrosPerEvent: (cpu.user + cpu.system) / rows.length,
  };
}

function indent(s: string, n: number): string {
  const pad = ' '.repeat(n);
  return s.split('\n').map((l) => pad + l).join('\n');
}

async function part1(ctx: Ctx): Promise<void> {
  console.log(`\n== Part 1: projection throughput (order_list only), ${fmtInt(EVENTS)} events ==`);
  const w = await writeOrders(ctx, EVENTS);
  console.log(
    `  wrote ${fmtInt(EVENTS)} OrderPlaced events (distinct order ids) straight to stream ${STREAM} in Strand's envelope format with its headers ` +
      `(Nats-Msg-Id, Strand-Event-Type, Strand-Version, expected last subject seq 0): ${fmt2(w.seconds)} s, ${fmtInt(EVENTS / w.seconds)} events/s; last seq ${w.lastSeq}`,
  );
  console.log(`  STRAND_PROJECTION_BATCH_SIZE=500 (default), STRAND_PROJECTION_BATCH_MS=${BATCH_MS}, STRAND_PROJECTION_COMMIT=${COMMIT}; CHECKPOINT before every timed run; order raw, strand x${PAIRS}`);
  const raws: RateResult[] = [];
  const strands: StrandApplyResult[] = [];
  for (let p = 1; p <= PAIRS; p++) {
    const rawUrl = await createDatabase(ctx, `bench_raw_${p}`);
    const r = await rawUpsert(ctx, rawUrl, w.rows);
    raws.push(r);
    console.log(
      `  run ${p} raw   : ${fmtInt(r.perSecond).padStart(7)} rows/s   (${fmtInt(EVENTS)} rows as ${Math.ceil(EVENTS / UPSERT_ROWS)} x ${UPSERT_ROWS}-row INSERT … ON CONFLICT DO UPDATE in ${fmt2(r.seconds)} s; ` +
        `values as ${RAW_LITERALS ? 'literals' : 'parameters'}; synchronous_commit ${COMMIT === 'async' ? 'off' : 'on'}, as Strand's)`,
    );
    const url = await createDatabase(ctx, `bench_orders_${p}`);
    const s = await strandApply(ctx, url, w.rows, w.lastSeq, PROFILE && p === 1);
    strands.push(s);
    console.log(
      `  run ${p} strand: ${fmtInt(s.perSecond).padStart(7)} events/s (${fmt2(s.seconds)} s from Strand.start to checkpoint ${w.lastSeq}; Strand.start ${fmt2(s.startSeconds)} s; ` +
        `after start ${fmtInt(s.afterStart.perSecond)} events/s; ${s.batches} batches, mean ${fmt1(s.meanBatchMs)} ms each; ` +
        `CPU of the read side ${fmt1(s.cpuMicrosPerEvent)} us per event; checkpoint watched by ${s.watch})`,
    );
  }
  const raw = median(raws.map((r) => r.perSecond));
  const strand = median(strands.map((r) => r.perSecond));
  const ratio = strand / raw;
  console.log(`  raw upsert     : ${fmtInt(raw)} rows/s (median)`);
  console.log(`  strand apply   : ${fmtInt(strand)} events/s (median; from Strand.start), ${fmtInt(median(strands.map((s) => s.afterStart.perSecond)))} events/s after start`);
  console.log(`  ratio strand/raw: ${fmt2(ratio)} (target >= 0.60)${ratio >= 0.6 ? '' : '  BELOW TARGET'}; per pair ${raws.map((r, i) => fmt2(strands[i]!.perSecond / r.perSecond)).join(', ')}`);
}

// ---------------------------------------------------------------------------------------------
// Part 2: lag under a steady command load

function profileArgs(ctx: Ctx, name: string): string[] {
  return cpuProfArgs(ctx.profileDir, name);
}

/** Services started in part 2, for their logs at the end. */
const liveServices: ServiceProcess[] = [];

async function startReadSide(ctx: Ctx, url: string): Promise<{ svc: ServiceProcess; port: number; watch: string }> {
  const svc = startService(
    'read side (bench/readside-service.ts)',
    'bench/readside-service.ts',
    {
      NATS_URL: ctx.bench.url,
      DATABASE_URL: url,
      PORT: '0',
      HOST: '127.0.0.1',
      LOG_LEVEL: 'warn',
      STRAND_STREAM: STREAM,
      STRAND_ROLES: 'projections',
      STRAND_PROJECTION_BATCH_MS: String(BATCH_MS),
      STRAND_PROJECTION_COMMIT: COMMIT,
      BENCH_PROJECTIONS: LAG_PROJECTIONS,
      ...(SQL_TIMING ? { BENCH_SQL_TIMING: '1' } : {}),
      STRAND_DATA_DIR: path.join(ctx.tmp, 'readside-data'),
    },
    profileArgs(ctx, 'readside'),
  );
  liveServices.push(svc);
  let line = '';
  let out = '';
  svc.child.stdout!.on('data', (s: string) => {
    out += s;
    const m = /^ready port=(\d+) watch=(.*)$/m.exec(out);
    if (m) line = m[0];
  });
  await waitReady(svc, () => line !== '', 60_000);
  const m = /^ready port=(\d+) watch=(.*)$/.exec(line)!;
  return { svc, port: Number(m[1]), watch: m[2]! };
}

async function startCommandService(ctx: Ctx, url: string, requester: LeanRequester): Promise<ServiceProcess> {
  const svc = await startStrandService(
    'command service (src/main.ts)',
    {
      NATS_URL: ctx.bench.url,
      DATABASE_URL: url,
      PORT: '0',
      LOG_LEVEL: 'warn',
      STRAND_STREAM: STREAM,
      STRAND_ROLES: 'commands',
      STRAND_DATA_DIR: path.join(ctx.tmp, 'command-data'),
    },
    requester,
    'ready-',
    profileArgs(ctx, 'commands'),
  );
  liveServices.push(svc);
  return svc;
}

/** Reads the read side's /metrics: batches and time applying them, per projection. */
async function batchMetrics(port: number): Promise<Map<string, { count: number; sum: number; applied: number }>> {
  const text = (await httpGet(new http.Agent({ keepAlive: false }), port, '/metrics')).body;
  const out = new Map<string, { count: number; sum: number; applied: number }>();
  const get = (name: string) => {
    let e = out.get(name);
    if (!e) out.set(name, (e = { count: 0, sum: 0, applied: 0 }));
    return e;
  };
  for (const m of text.matchAll(/^strand_projection_batch_duration_seconds_(count|sum)\{projection="([^"]+)"\} (\S+)$/gm)) get(m[2]!)[m[1] as 'count' | 'sum'] = Number(m[3]);
  for (const m of text.matchAll(/^strand_projection_events_applied_total\{projection="([^"]+)"\} (\S+)$/gm)) get(m[1]!).applied = Number(m[2]);
  return out;
}

interface LoadOutcome {
  readonly readSide: { svc: ServiceProcess; port: number };
  readonly commandService: ServiceProcess;
}

async function part2(ctx: Ctx): Promise<LoadOutcome> {
  const lagNames = LAG_PROJECTIONS === 'all' ? ['task_list_view', 'member_task_history'] : ['task_list_view'];
  console.log(`\n== Part 2: projection lag at ${fmtInt(RATE)} commands/s for ${SECONDS} s (after ${WARMUP_SECONDS} s warmup) ==`);
  await freshStream(ctx);
  const url = await createDatabase(ctx, 'bench_tasks');
  const requester = new LeanRequester(ctx.nc);
  const readSide = await startReadSide(ctx, url);
  const commandService = await startCommandService(ctx, url, requester);
  console.log(
    `  command service: src/main.ts STRAND_ROLES=commands | read side: bench/readside-service.ts STRAND_ROLES=projections, projections: ${LAG_PROJECTIONS === 'all' ? 'all five examples' : 'task_list_view only'}, ` +
      `STRAND_PROJECTION_BATCH_MS=${BATCH_MS}, STRAND_PROJECTION_BATCH_SIZE=500, STRAND_PROJECTION_COMMIT=${COMMIT}; checkpoints watched by ${readSide.watch}`,
  );
  console.log(`  load: open loop, paced every ~1 ms; CreateTask on new ids and AssignTask on created ones, alternating; assignees CC0..CC${COORDINATORS - 1}`);

  // Checkpoint advances, as they arrive.
  const advances = new Map<string, { t: number[]; seq: number[] }>();
  const cpSub = ctx.nc.subscribe('bench.checkpoint.>', {
    callback: (err, m) => {
      if (err) return;
      const name = m.subject.slice('bench.checkpoint.'.length);
      let a = advances.get(name);
      if (!a) advances.set(name, (a = { t: [], seq: [] }));
      const seq = Number(decoder.decode(m.data));
      if (a.seq.length === 0 || seq > a.seq[a.seq.length - 1]!) {
        a.t.push(performance.now());
        a.seq.push(seq);
      }
    },
  });
  await ctx.nc.flush();

  const total = RATE * (WARMUP_SECONDS + SECONDS);
  const sentAt = new Float64Array(total);
  const replyAt = new Float64Array(total);
  const seqOf = new Float64Array(total);
  const created: string[] = [];
  let nextTask = 0;
  let sent = 0;
  let replies = 0;
  let failures = 0;
  let firstFailure: string | undefined;
  let maxOutstanding = 0;
  const cpu0 = {
    read: processCpuMicros(readSide.svc.child.pid),
    cmd: processCpuMicros(commandService.child.pid),
    nats: processCpuMicros(ctx.bench.server.pid),
    pg: postgresCpuMicros(ctx.pgServer.pid),
    load: process.cpuUsage(),
  };
  const metrics0 = await batchMetrics(readSide.port);
  if (SQL_TIMING) await ctx.nc.request('bench.sql-timing', 'reset', { timeout: 5_000 });
  const t0 = performance.now();
  const measureFrom = t0 + WARMUP_SECONDS * 1000;
  let firstMeasured = -1;

  const sendOne = (i: number): void => {
    let subject: string;
    let body: string;
    let createdId: string | undefined;
    if (i % 2 === 0 || created.length === 0) {
      const k = nextTask++;
      createdId = `t-${k}`;
      subject = `cmd.task.${createdId}.CreateTask`;
      body = `{"title":"Benchmark task ${k}","memberId":"member-${k % 1000}","assignedTo":"CC${k % COORDINATORS}"}`;
    } else {
      const id = created[Math.floor(Math.random() * created.length)]!;
      subject = `cmd.task.${id}.AssignTask`;
      body = `{"assignedTo":"CC${Math.floor(Math.random() * COORDINATORS)}"}`;
    }
    sentAt[i] = performance.now();
    if (firstMeasured < 0 && sentAt[i]! >= measureFrom) firstMeasured = i;
    requester.send(subject, encoder.encode(body), (m) => {
      replyAt[i] = performance.now();
      replies++;
      const problem = checkReply(m);
      if (problem !== undefined) {
        failures++;
        firstFailure ??= `${subject}: ${problem}`;
        return;
      }
      seqOf[i] = (JSON.parse(decoder.decode(m.data)) as { seq: number }).seq;
      if (createdId) created.push(createdId);
    });
    const out = sent - replies;
    if (out > maxOutstanding) maxOutstanding = out;
  };

  await new Promise<void>((resolve) => {
    const tick = setInterval(() => {
      const due = Math.min(total, Math.floor(((performance.now() - t0) * RATE) / 1000));
      while (sent < due) sendOne(sent++);
      if (sent >= total) {
        clearInterval(tick);
        resolve();
      }
    }, 1);
  });
  const sendSeconds = (performance.now() - t0) / 1000;
  // Every reply, then every checkpoint up to the last seq.
  for (const end = Date.now() + 30_000; replies < total && Date.now() < end; ) await sleep(5);
  if (replies < total) throw new Error(`only ${replies}/${total} replies within 30 s of the last command`);
  const loadCpu = process.cpuUsage(cpu0.load);
  const cpu1 = {
    read: processCpuMicros(readSide.svc.child.pid),
    cmd: processCpuMicros(commandService.child.pid),
    nats: processCpuMicros(ctx.bench.server.pid),
    pg: postgresCpuMicros(ctx.pgServer.pid),
  };
  let maxSeq = 0;
  for (let i = 0; i < total; i++) if (seqOf[i]! > maxSeq) maxSeq = seqOf[i]!;
  const lastOf = (name: string): number => {
    const a = advances.get(name);
    return a && a.seq.length > 0 ? a.seq[a.seq.length - 1]! : 0;
  };
  for (const end = Date.now() + 30_000; lagNames.some((n) => lastOf(n) < maxSeq) && Date.now() < end; ) await sleep(5);
  const caughtUpAfter = (performance.now() - t0) / 1000 - sendSeconds;
  const metrics1 = await batchMetrics(readSide.port);
  let statements: Map<string, StatementStat> | undefined;
  if (SQL_TIMING) {
    const r = await ctx.nc.request('bench.sql-timing', 'get', { timeout: 5_000 });
    statements = new Map((JSON.parse(r.string()) as [string, number, number][]).map(([k, n, ms]) => [k, { n, ms }]));
  }
  cpSub.unsubscribe();
  requester.close();
  if (failures > 0) throw new Error(`${failures} command(s) failed, first: ${firstFailure}`);

  const from = Math.max(0, firstMeasured);
  const measured = total - from;
  const latencies = new Float64Array(measured);
  for (let i = from; i < total; i++) latencies[i - from] = replyAt[i]! - sentAt[i]!;
  latencies.sort();
  const windowSeconds = (sentAt[total - 1]! - sentAt[from]!) / 1000;
  console.log(
    `  sent ${fmtInt(total)} commands in ${fmt2(sendSeconds)} s (${fmtInt(measured)} measured over ${fmt2(windowSeconds)} s = ${fmtInt(measured / windowSeconds)}/s); ` +
      `failed 0; most outstanding ${maxOutstanding}; last seq ${maxSeq}; projections caught up ${fmt2(Math.max(0, caughtUpAfter))} s after the last send`,
  );
  console.log(`  command reply latency (baseline, context): p50 ${fmt1(pct(latencies, 0.5))} ms  p99 ${fmt1(pct(latencies, 0.99))} ms  max ${fmt1(latencies[latencies.length - 1]!)} ms`);
  for (const name of lagNames) {
    const a = advances.get(name);
    if (!a || lastOf(name) < maxSeq) throw new Error(`${name} did not reach seq ${maxSeq} within 30 s (at ${lastOf(name)})`);
    const lags = new Float64Array(measured);
    const visible = new Float64Array(measured);
    let early = 0;
    for (let i = from; i < total; i++) {
      const s = seqOf[i]!;
      // First advance at or past s (advances are in seq order).
      let lo = 0;
      let hi = a.seq.length - 1;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (a.seq[mid]! >= s) hi = mid;
        else lo = mid + 1;
      }
      const lag = a.t[lo]! - replyAt[i]!;
      if (lag < 0) early++;
      lags[i - from] = Math.max(0, lag);
      visible[i - from] = a.t[lo]! - sentAt[i]!;
    }
    lags.sort();
    visible.sort();
    const m0 = metrics0.get(name) ?? { count: 0, sum: 0, applied: 0 };
    const m1 = metrics1.get(name) ?? { count: 0, sum: 0, applied: 0 };
    const batches = m1.count - m0.count;
    const p99 = pct(lags, 0.99);
    console.log(
      `  lag ${name.padEnd(19)}: p50 ${fmt1(pct(lags, 0.5)).padStart(5)} ms  p99 ${fmt1(p99).padStart(5)} ms  max ${fmt1(lags[lags.length - 1]!).padStart(6)} ms` +
        `${name === 'task_list_view' ? `  (target p99 <= 100 ms${p99 <= 100 ? '' : ', ABOVE TARGET'})` : ''}; ` +
        `${batches} batches (mean ${fmt1((m1.applied - m0.applied) / Math.max(1, batches))} events, ${fmt1(((m1.sum - m0.sum) / Math.max(1, batches)) * 1000)} ms to apply+commit)` +
        (early > 0 ? `; ${early} checkpoint(s) seen before the reply (counted as 0)` : ''),
    );
    console.log(`      ${''.padEnd(19)}  from send to visible: p50 ${fmt1(pct(visible, 0.5))} ms  p99 ${fmt1(pct(visible, 0.99))} ms  max ${fmt1(visible[visible.length - 1]!)} ms`);
  }
  const per = (a: number | undefined, b: number | undefined): string => (a !== undefined && b !== undefined ? `${fmt1(((b - a) / 1e6 / sendSeconds) * 100)}%` : '?');
  console.log(
    `  CPU over the load (share of one core): read side ${per(cpu0.read, cpu1.read)}, command service ${per(cpu0.cmd, cpu1.cmd)}, nats-server ${per(cpu0.nats, cpu1.nats)}, PostgreSQL ${per(cpu0.pg, cpu1.pg)}, ` +
      `load generator ${fmt1(((loadCpu.user + loadCpu.system) / 1e6 / sendSeconds) * 100)}%`,
  );
  if (statements) {
    console.log(`  statements the read side awaited from the start of the load until caught up (bench/pg-timing.ts; all its projections together):`);
    console.log(formatStatements(statements, 16));
  }
  return { readSide, commandService };
}

// ---------------------------------------------------------------------------------------------
// Part 3: GET /views

function httpGet(agent: http.Agent, port: number, urlPath: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

interface ConcurrentResult extends RateResult {
  readonly p50: number;
  readonly p99: number;
}

async function runConcurrent(n: number, concurrency: number, op: () => Promise<void>): Promise<ConcurrentResult> {
  const lat = new Float64Array(n);
  let next = 0;
  const t0 = performance.now();
  const worker = async (): Promise<void> => {
    for (;;) {
      const i = next++;
      if (i >= n) return;
      const s = performance.now();
      await op();
      lat[i] = performance.now() - s;
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  const seconds = (performance.now() - t0) / 1000;
  lat.sort();
  return { seconds, perSecond: n / seconds, p50: pct(lat, 0.5), p99: pct(lat, 0.99) };
}

/** The SQL ViewReader.page sends for this request, captured from it (nothing reimplemented). */
async function capturedViewSql(): Promise<{ text: string; params: unknown[] }> {
  let captured: { text: string; params: unknown[] } | undefined;
  const fakePool = {
    query: async (text: string, params: unknown[]) => {
      captured = { text, params };
      return { rows: [] };
    },
  } as unknown as pg.Pool;
  await new ViewReader(fakePool, [taskListView]).page('task_list_view', { assignedTo: 'CC1', status: 'pending' }, 20);
  if (!captured) throw new Error('ViewReader sent no query');
  return captured;
}

async function part3(ctx: Ctx, load: LoadOutcome): Promise<void> {
  console.log(`\n== Part 3: GET ${VIEW_PATH}, ${fmtInt(REQUESTS)} requests, ${CONCURRENCY} concurrent ==`);
  await load.commandService.stop(); // idle now; its CPU is not part of this
  const port = load.readSide.port;
  const url = new URL(ctx.pgServer.url);
  url.pathname = '/bench_tasks';
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  const pool = new pg.Pool({ connectionString: url.toString(), max: CONCURRENCY, application_name: 'bench-views-raw' });
  pool.on('error', () => undefined);
  try {
    const matching = Number(((await pool.query("SELECT count(*)::int AS n FROM public.task_list_view WHERE assigned_to = 'CC1' AND status = 'pending'")).rows[0] as { n: number }).n);
    const first = await httpGet(agent, port, VIEW_PATH);
    if (first.status !== 200) throw new Error(`GET ${VIEW_PATH}: ${first.status} ${first.body.slice(0, 300)}`);
    const page = JSON.parse(first.body) as { rows: { assignedTo: string; status: string }[]; checkpoint: number; next?: string };
    if (page.rows.length !== Math.min(20, matching) || page.rows.some((r) => r.assignedTo !== 'CC1' || r.status !== 'pending')) {
      throw new Error(`GET ${VIEW_PATH} returned ${page.rows.length} rows (of ${matching} matching) or wrong ones`);
    }
    const sql = await capturedViewSql();
    const explain = await pool.query(`EXPLAIN ${sql.text}`, sql.params);
    const plan = (explain.rows as { 'QUERY PLAN': string }[]).map((r) => r['QUERY PLAN']).filter((l) => /Scan/.test(l)).map((l) => l.trim().replace(/\s+\(cost.*$/, ''));
    console.log(`  task_list_view: ${matching} rows match (of ${fmtInt(Number(((await pool.query('SELECT count(*)::int AS n FROM public.task_list_view')).rows[0] as { n: number }).n))}); a page has ${page.rows.length} rows and a cursor; plan: ${plan.join(' | ')}`);
    console.log(`  HTTP: node:http keep-alive agent, ${CONCURRENCY} sockets, to the read side's fastify; raw: pg.Pool(max ${CONCURRENCY}) with ViewReader's own SQL and parameters; Strand's pool is STRAND_PG_POOL_SIZE (10) + 2 per projection`);
    let bad = 0;
    const httpOp = async (): Promise<void> => {
      const r = await httpGet(agent, port, VIEW_PATH);
      if (r.status !== 200) bad++;
    };
    const pgOp = async (): Promise<void> => {
      await pool.query(sql.text, sql.params);
    };
    await runConcurrent(Math.min(1_000, REQUESTS), CONCURRENCY, httpOp); // warmup
    await runConcurrent(Math.min(1_000, REQUESTS), CONCURRENCY, pgOp);
    const https: ConcurrentResult[] = [];
    const raws: ConcurrentResult[] = [];
    for (let p = 1; p <= PAIRS; p++) {
      const r = await runConcurrent(REQUESTS, CONCURRENCY, pgOp);
      raws.push(r);
      console.log(`  run ${p} raw pg : ${fmtInt(r.perSecond).padStart(6)} queries/s  p50 ${fmt2(r.p50)} ms  p99 ${fmt2(r.p99)} ms`);
      const cpu0 = processCpuMicros(load.readSide.svc.child.pid);
      const h = await runConcurrent(REQUESTS, CONCURRENCY, httpOp);
      const cpu1 = processCpuMicros(load.readSide.svc.child.pid);
      https.push(h);
      const cpuPer = cpu0 !== undefined && cpu1 !== undefined ? `; read side CPU ${fmtInt((cpu1 - cpu0) / REQUESTS)} us per request` : '';
      console.log(`  run ${p} HTTP   : ${fmtInt(h.perSecond).padStart(6)} req/s      p50 ${fmt2(h.p50)} ms  p99 ${fmt2(h.p99)} ms${cpuPer}`);
    }
    if (bad > 0) throw new Error(`${bad} GET ${VIEW_PATH} did not answer 200`);
    const h = median(https.map((r) => r.perSecond));
    const r = median(raws.map((x) => x.perSecond));
    console.log(`  GET /views : ${fmtInt(h)} req/s (median)  p50 ${fmt2(median(https.map((x) => x.p50)))} ms  p99 ${fmt2(median(https.map((x) => x.p99)))} ms`);
    console.log(`  raw pg     : ${fmtInt(r)} queries/s (median)  p50 ${fmt2(median(raws.map((x) => x.p50)))} ms  p99 ${fmt2(median(raws.map((x) => x.p99)))} ms`);
    console.log(`  ratio HTTP/raw: ${fmt2(h / r)}`);
  } finally {
    agent.destroy();
    await pool.end().catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------------

async function summariseChildProfiles(dir: string): Promise<void> {
  for (const name of ['readside', 'commands']) {
    const file = await mainThreadProfile(path.join(dir, name));
    if (!file) continue;
    console.log(`\nCPU profile of the ${name === 'readside' ? 'read side' : 'command service'} (whole process life, parts 2 and 3): ${file}`);
    console.log(summarizeCpuProfile(JSON.parse(await fs.readFile(file, 'utf8')) as CpuProfile, 30));
  }
}

async function main(): Promise<number> {
  let bench: BenchServer | undefined;
  let nc: NatsConnection | undefined;
  let db: BenchDatabase | undefined;
  const cleanup = async (): Promise<void> => {
    await stopAllServices();
    await liveApp?.stop().catch(() => undefined);
    await db?.cleanup();
    await nc?.close().catch(() => undefined);
    await bench?.cleanup();
  };
  const limit = hardLimit(TIME_LIMIT_S * 1000, cleanup);
  const started = performance.now();
  try {
    db = await startBenchDatabase('strand-bench-proj-');
    const { tmp, pgServer, admin } = db;
    const profileDir = PROFILE ? await fs.mkdtemp(path.join(os.tmpdir(), 'strand-cpuprof-')) : undefined;
    bench = await startBenchServer(sync);
    nc = await connect({ servers: bench.url, name: 'bench-projections', noAsyncTraces: true });
    const ctx: Ctx = { bench, nc, jsm: await jetstreamManager(nc), pgServer, admin, tmp, profileDir };

    console.log(`projections.bench: ${machineLine()}`);
    console.log(`nats-server ${nc.info?.version} on ${bench.url} | sync_interval: ${syncLabel(sync)}`);
    console.log(`PostgreSQL: ${await describePostgres(admin)}`);

    if (PARTS.has('1')) await part1(ctx);
    if (PARTS.has('2')) {
      let load: LoadOutcome | undefined;
      try {
        load = await part2(ctx);
        if (PARTS.has('3')) await part3(ctx, load);
      } finally {
        // What the services logged (LOG_LEVEL=warn: warnings and errors only).
        for (const svc of liveServices) {
          const logged = svc.output().replace(/^ready port=.*\n/m, '').trim();
          if (logged) console.log(`\n  ${svc.name} logged (last 3,000 characters):\n${logged.slice(-3_000)}`);
        }
      }
    }
    await stopAllServices();
    if (profileDir) await summariseChildProfiles(profileDir);
    console.log(`\ntotal ${fmt1((performance.now() - started) / 1000)} s | sync_interval: ${sync}`);
    return 0;
  } finally {
    clearTimeout(limit);
    await cleanup();
  }
}

runBenchMain(main);
