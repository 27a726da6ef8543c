/**
 * The whole pipeline at speed (issue 10): commands in, the five example projections' read
 * models and the live feed out, Strand as `npm start` runs it against a raw pipeline doing the
 * same work with no framework, in one run against one private nats-server and one throwaway
 * embedded PostgreSQL (a database of its own per system).
 *
 * Systems, one after the other, each a child process so its CPU can be read from /proc:
 *   raw       the raw command loop (bench/raw-service.ts) plus one raw consumer
 *             (bench/raw-pipeline-consumer.ts) writing the same read models with batched
 *             upserts in one statement per batch, and publishing the changed rows on NATS;
 *   strand    `node --import tsx src/main.ts` with every role (STRAND_ROLES unset, as
 *             `npm start`), the five example projections, and the live feed: one WebSocket
 *             client on /live subscribed to a view of each projection, and the bench announced
 *             as another instance's gateway (so each runner publishes its batches on
 *             strand.live.changes.<projection>, where the bench reads the lag);
 *   commands  the same with STRAND_ROLES=commands: the write path alone.
 *
 * Load: an open loop paced every ~1 ms, CreateTask on new ids and AssignTask on tasks created
 * earlier, alternating (each task is assigned once). Every reply is checked; its `seq` is kept.
 * Lag of a projection = when the bench received the first live-feed message (sent by the
 * runner, or the raw consumer, right after the commit) whose checkpoint reaches the command's
 * seq − when the command's reply arrived (the event was appended by then).
 *
 * Per system: a warmup (--warmup-seconds at 1,000/s), a step at the fixed --rate (2,000/s), then
 * the saturation search: steps from --start-rate up by --factor until one fails (down until one
 * passes when the first fails), then --refine bisections between the last pass and the first
 * failure. A step passes when every command succeeded, the replies kept up with the offered
 * rate (>= 95 %), no more than --max-outstanding were in flight, command p99 <= --max-p99-ms
 * (1,000) and every projection's lag p99 <= --max-lag-ms (1,000) and it caught up within 10 s
 * of the last reply. Saturation = the highest rate that passed. The write path alone also runs
 * one step at the all-in-one's saturation rate: a p99 ratio at a rate both carry.
 *
 * After the warmup, 3 s with no commands give each process's idle CPU (share of one core).
 * CPU per command over a step (from before its first send to its projections' catch-up): the
 * service process(es), nats-server, PostgreSQL (postmaster and every child), the load generator.
 * PostgreSQL's CPU is split by backend: Strand's runners each hold one connection, named by
 * the projection their last statement names (pg_stat_activity); the raw consumer has one. With
 * pg_stat_statements (loaded by default, --no-pgss to leave it out) the statements' execution
 * time per event is printed per projection too.
 *
 *   npm run bench:pipeline -- [--sync default|always] [--systems raw,strand,commands]
 *       [--rate 2000] [--rate-seconds 8] [--seconds 5] [--warmup-seconds 3] [--start-rate 2000]
 *       [--factor 1.5] [--refine 1] [--max-rate 40000] [--min-rate 200] [--max-steps 8] [--max-lag-ms 1000]
 *       [--max-p99-ms 1000] [--max-outstanding 4000] [--no-pgss] [--profile] [--time-limit 600]
 *
 * --profile runs the Strand process and the raw consumer under `node --cpu-prof` and prints the
 * top self-time functions of each (bench/cpuprofile.ts); the profiles are kept in a temp folder.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { WebSocket } from 'ws';
import { connect } from '@nats-io/transport-node';
import type { Msg, NatsConnection, Subscription } from '@nats-io/nats-core';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { projections } from '../actors/index.js';
import { LIVE_INTEREST } from '../subjects/index.js';
import { mainThreadProfile, summarizeCpuProfile, type CpuProfile } from './cpuprofile.js';
import { checkReply, cpuProfArgs, deleteStream, freshRawStream, startRawService, startStrandService } from './command-loop.js';
import { startService, stopAllServices, waitReady, type ServiceProcess } from './service.js';
import {
  LeanRequester,
  childrenCpuMicros,
  fmt1,
  fmt2,
  fmtInt,
  freePort,
  hardLimit,
  intArg,
  machineLine,
  parseArgs,
  percentile,
  postgresCpuMicros,
  processCpuMicros,
  runBenchMain,
  sleep,
  startBenchDatabase,
  startBenchServer,
  syncArg,
  syncLabel,
  type BenchDatabase,
  type BenchServer,
} from './support.js';

const args = parseArgs();
const sync = syncArg(args);
const SYSTEMS = (args.get('systems') ?? 'raw,strand,commands').split(',').map((s) => s.trim()) as Kind[];
for (const s of SYSTEMS) if (!['raw', 'strand', 'commands'].includes(s)) throw new Error(`--systems: unknown system ${JSON.stringify(s)} (raw, strand, commands)`);
const FIXED_RATE = intArg(args, 'rate', 2_000);
const FIXED_SECONDS = intArg(args, 'rate-seconds', 8);
const STEP_SECONDS = intArg(args, 'seconds', 5);
const WARMUP_SECONDS = intArg(args, 'warmup-seconds', 3, 0);
const START_RATE = intArg(args, 'start-rate', 2_000);
const FACTOR = Number(args.get('factor') ?? 1.5);
if (!(FACTOR > 1)) throw new Error('--factor must be > 1');
const REFINE = intArg(args, 'refine', 1, 0);
const MAX_RATE = intArg(args, 'max-rate', 40_000);
const MAX_STEPS = intArg(args, 'max-steps', 8);
const MIN_RATE = intArg(args, 'min-rate', 200);
const MAX_LAG_MS = intArg(args, 'max-lag-ms', 1_000);
const MAX_P99_MS = intArg(args, 'max-p99-ms', 1_000);
const MAX_OUTSTANDING = intArg(args, 'max-outstanding', 4_000);
const PGSS = !args.has('no-pgss');
const PROFILE = args.has('profile');
const TIME_LIMIT_S = intArg(args, 'time-limit', 600);
const CATCH_UP_MS = 10_000;
/** Set when the benchmark is being stopped (a signal, the time limit): no more commands are sent. */
let aborting = false;
/** Strand's data directories not yet removed. */
const tempDirs = new Set<string>();
const IDLE_SECONDS = 3;

type Kind = 'raw' | 'strand' | 'commands';
const LABEL: Record<Kind, string> = { raw: 'raw pipeline', strand: 'strand (all roles)', commands: 'strand STRAND_ROLES=commands' };
/** The projections task commands feed (order_list and eligibility_metrics get none of these events). */
const LAG_PROJECTIONS = ['task_list_view', 'member_task_history', 'task_analytics'] as const;
const COORDINATORS = 50;
const STREAM = 'EVENTS';
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * Which projection a statement belongs to: Strand's name their projection's schema
 * (`proj_<name>_g<generation>`) or, for a checkpoint, pass its name as the first argument of
 * strand_advance (a literal in pg_stat_activity, a parameter once pg_stat_statements has
 * normalised it); the raw consumer's by the tables they name (first match).
 */
const STATEMENT_OWNER: [RegExp, string][] = [
  [/raw_checkpoints/, 'raw consumer (all read models, one statement)'],
  [/member_task_history|task_member\b/, 'member_task_history'],
  [/task_analytics_days|task_created_at/, 'task_analytics'],
  [/task_list_view/, 'task_list_view'],
  [/order_list/, 'order_list'],
  [/eligibility_metrics/, 'eligibility_metrics'],
  [/strand_advance|strand_checkpoints/, 'checkpoints (all projections)'],
];
function ownerOf(text: string): string | undefined {
  const m = /strand_advance\('([^']+)'/.exec(text) ?? /"proj_([a-z0-9_]+?)_g\d+"/.exec(text);
  if (m) return m[1]!;
  for (const [re, name] of STATEMENT_OWNER) if (re.test(text)) return name;
  return undefined;
}

interface System {
  readonly kind: Kind;
  readonly database: string;
  /** The processes whose CPU is the service's. */
  readonly pids: () => number[];
  readonly subject: (id: string, command: 'CreateTask' | 'AssignTask') => string;
  /** Live-feed subject prefix carrying `{"projection","checkpoint",…}` after each commit; none for the write path alone. */
  readonly feed?: string;
  stop(): Promise<void>;
}

interface Ctx {
  readonly bench: BenchServer;
  readonly nc: NatsConnection;
  readonly jsm: JetStreamManager;
  readonly db: BenchDatabase;
  readonly requester: LeanRequester;
  /** --profile: each service runs under `node --cpu-prof` into a folder of its own here. */
  readonly profileDir: string | undefined;
}

// ---------------------------------------------------------------------------------------------
// Starting the systems

async function createDatabase(ctx: Ctx, name: string): Promise<string> {
  const admin = ctx.db.admin;
  await admin.query(`DROP DATABASE IF EXISTS ${admin.escapeIdentifier(name)} WITH (FORCE)`);
  await admin.query(`CREATE DATABASE ${admin.escapeIdentifier(name)}`);
  const u = new URL(ctx.db.pgServer.url);
  u.pathname = `/${name}`;
  return u.toString();
}

async function startRaw(ctx: Ctx): Promise<System> {
  const url = await createDatabase(ctx, 'pipeline_raw');
  await freshRawStream(ctx.jsm);
  const consumer = startService('raw pipeline consumer', 'bench/raw-pipeline-consumer.ts', { NATS_URL: ctx.bench.url, DATABASE_URL: url }, cpuProfArgs(ctx.profileDir, 'raw-consumer'));
  let ready = false;
  consumer.child.stdout!.on('data', (s: string) => {
    if (s.includes('ready')) ready = true;
  });
  await waitReady(consumer, () => ready, 30_000);
  const loop = await startRawService(ctx.bench.url);
  return {
    kind: 'raw',
    database: 'pipeline_raw',
    pids: () => [loop.child.pid!, consumer.child.pid!],
    subject: (id, command) => `rawcmd.${id}.${command}`,
    feed: 'rawpipe.changes.',
    async stop() {
      await report(loop, await loop.stop());
      await report(consumer, await consumer.stop());
    },
  };
}

/** A WebSocket client on Strand's /live subscribed to a view of every projection: each runner then publishes its batches. */
async function openLiveClient(port: number): Promise<{ ws: WebSocket; received: () => number; errors: string[] }> {
  // The command path answers before the HTTP server listens: try until it does.
  let ws: WebSocket | undefined;
  for (const end = Date.now() + 30_000; !ws; ) {
    const w = new WebSocket(`ws://127.0.0.1:${port}/live`, { perMessageDeflate: false });
    try {
      await new Promise<void>((resolve, reject) => {
        w.once('open', () => resolve());
        w.once('error', reject);
      });
      ws = w;
    } catch (err) {
      w.terminate();
      if (Date.now() > end) throw err;
      await sleep(200);
    }
  }
  let received = 0;
  const errors: string[] = [];
  ws.on('message', (data) => {
    received++;
    const text = String(data);
    if (text.startsWith('{"type":"error"')) errors.push(text.slice(0, 300));
  });
  ws.on('error', (err) => errors.push(err.message));
  const subs: Record<string, Record<string, string> | undefined> = {
    task_list_view: { assignedTo: 'CC1' },
    member_task_history: { memberId: 'member-1' },
    task_analytics: undefined,
    order_list: undefined,
    eligibility_metrics: undefined,
  };
  for (const [view, filter] of Object.entries(subs)) ws.send(JSON.stringify({ type: 'subscribe', id: view, view, ...(filter ? { filter } : {}), limit: 20 }));
  return { ws, received: () => received, errors };
}

async function startStrand(ctx: Ctx, kind: 'strand' | 'commands'): Promise<System> {
  const database = kind === 'strand' ? 'pipeline_strand' : 'pipeline_commands';
  const url = await createDatabase(ctx, database);
  await deleteStream(ctx.jsm, STREAM);
  await deleteStream(ctx.jsm, `KV_${STREAM}_snapshots`);
  const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'strand-bench-pipeline-'));
  tempDirs.add(dataDir);
  const port = await freePort();
  let svc: ServiceProcess | undefined;
  let live: Awaited<ReturnType<typeof openLiveClient>> | undefined;
  let observer: NodeJS.Timeout | undefined;
  const stop = async (): Promise<void> => {
    clearInterval(observer);
    live?.ws.terminate();
    if (svc) await report(svc, await svc.stop());
    await fs.rm(dataDir, { recursive: true, force: true }).catch(() => undefined);
    tempDirs.delete(dataDir);
  };
  try {
    svc = await startStrandService(
      `strand (src/main.ts${kind === 'commands' ? ', STRAND_ROLES=commands' : ''})`,
      {
        NATS_URL: ctx.bench.url,
        DATABASE_URL: url,
        PORT: String(port),
        HOST: '127.0.0.1',
        LOG_LEVEL: 'warn',
        STRAND_STREAM: STREAM,
        STRAND_DATA_DIR: dataDir,
        ...(kind === 'commands' ? { STRAND_ROLES: 'commands' } : {}),
      },
      ctx.requester,
      `probe-${kind}-`,
      cpuProfArgs(ctx.profileDir, kind),
    );
    if (kind === 'strand') {
      live = await openLiveClient(port);
      // The lag is read from the feed on NATS, which runners publish only while another
      // instance's gateway watches: the bench announces itself as one, every second as gateways do.
      const announce = (): void => ctx.nc.publish(LIVE_INTEREST, JSON.stringify({ projections: projections.map((p) => p.name), instance: 'bench-pipeline-observer' }));
      announce();
      observer = setInterval(announce, 1000);
    }
  } catch (err) {
    await stop();
    throw err;
  }
  const child = svc;
  const client = live;
  return {
    kind,
    database,
    pids: () => [child.child.pid!],
    subject: (id, command) => `cmd.task.${id}.${command}`,
    ...(kind === 'strand' ? { feed: 'strand.live.changes.' } : {}),
    async stop() {
      if (client && client.errors.length > 0) console.log(`  live client got errors: ${client.errors.slice(0, 3).join(' | ')}`);
      await stop();
    },
  };
}

async function report(svc: ServiceProcess, exit: { code: number | null; signal: NodeJS.Signals | null }): Promise<void> {
  const out = svc.output().trim();
  if (exit.code !== 0) console.log(`  ${svc.name} exited with ${exit.code ?? exit.signal}; last output:\n${out.slice(-2_000)}`);
  else if (out) console.log(`  ${svc.name} logged (last 1,500 characters):\n${out.slice(-1_500)}`);
}

// ---------------------------------------------------------------------------------------------
// One step: an open loop at `rate` for `seconds`

interface CpuSnapshot {
  service: number;
  /** The raw pipeline's consumer alone (part of `service`). */
  consumer: number;
  nats: number;
  pg: number;
  backends: Map<number, number>;
  load: NodeJS.CpuUsage;
}

function cpuSnapshot(ctx: Ctx, sys: System): CpuSnapshot {
  return {
    service: sys.pids().reduce((t, p) => t + (processCpuMicros(p) ?? 0), 0),
    consumer: sys.kind === 'raw' ? (processCpuMicros(sys.pids()[1]) ?? 0) : 0,
    nats: processCpuMicros(ctx.bench.server.pid) ?? 0,
    pg: postgresCpuMicros(ctx.db.pgServer.pid) ?? 0,
    backends: childrenCpuMicros(ctx.db.pgServer.pid),
    load: process.cpuUsage(),
  };
}

interface Lag {
  p50: number;
  p99: number;
  max: number;
}

interface StepResult {
  readonly rate: number;
  readonly commands: number;
  /** Replies per second from the first send to the last reply. */
  readonly achieved: number;
  readonly p50: number;
  readonly p99: number;
  readonly lags: Map<string, Lag>;
  readonly caughtUpMs: number;
  /** CPU microseconds per command. */
  readonly cpu: { service: number; consumer: number; nats: number; pg: number; load: number };
  /** PostgreSQL CPU microseconds per command, by backend owner. */
  readonly pgBy: Map<string, number>;
  /** Statement execution ms per 1,000 events, by owner (pg_stat_statements). */
  readonly execBy?: Map<string, { ms: number; calls: number }>;
  readonly topStatements?: { owner: string; calls: number; ms: number; rows: number; text: string }[];
  readonly problems: string[];
  readonly pass: boolean;
}

/** A system's state across steps: the next ids, tasks waiting for their AssignTask, the feed. */
interface Driver {
  readonly sys: System;
  next: number;
  /** The highest seq a reply named so far. */
  lastSeq: number;
  /** Commands answered ok, by kind: what the read models must hold. */
  created: number;
  assigned: number;
  readonly toAssign: string[];
  readonly advances: Map<string, { t: number[]; seq: number[] }>;
  readonly sub?: Subscription;
}

function driver(ctx: Ctx, sys: System): Driver {
  const advances = new Map<string, { t: number[]; seq: number[] }>();
  let sub: Subscription | undefined;
  if (sys.feed) {
    const prefix = sys.feed;
    sub = ctx.nc.subscribe(`${prefix}*`, {
      callback: (err, m) => {
        if (err) return;
        const name = m.subject.slice(prefix.length);
        const head = decoder.decode(m.data.subarray(0, 200));
        const cp = /"checkpoint":(\d+)/.exec(head);
        if (!cp) return;
        const seq = Number(cp[1]);
        let a = advances.get(name);
        if (!a) advances.set(name, (a = { t: [], seq: [] }));
        if (a.seq.length === 0 || seq > a.seq[a.seq.length - 1]!) {
          a.t.push(performance.now());
          a.seq.push(seq);
        }
      },
    });
  }
  return { sys, next: 0, lastSeq: 0, created: 0, assigned: 0, toAssign: [], advances, ...(sub ? { sub } : {}) };
}

/** Waits (up to 30 s) until every projection's feed has reached the last seq a reply named. */
async function waitCaughtUp(d: Driver): Promise<void> {
  if (!d.sys.feed) return;
  for (const end = Date.now() + 30_000; Date.now() < end; ) {
    if (LAG_PROJECTIONS.every((n) => (d.advances.get(n)?.seq.at(-1) ?? 0) >= d.lastSeq)) return;
    await sleep(20);
  }
}

async function pgActivity(ctx: Ctx, database: string): Promise<Map<number, string>> {
  const r = await ctx.db.admin.query('SELECT pid, application_name, query FROM pg_stat_activity WHERE datname = $1', [database]);
  const out = new Map<number, string>();
  for (const row of r.rows as { pid: number; application_name: string; query: string | null }[]) {
    out.set(row.pid, ownerOf(row.query ?? '') ? (row.application_name === 'raw-pipeline' ? 'raw consumer' : `runner ${ownerOf(row.query ?? '')}`) : `other backends (${row.application_name || '?'})`);
  }
  return out;
}

async function runStep(ctx: Ctx, d: Driver, rate: number, seconds: number): Promise<StepResult> {
  if (aborting) throw new Error('stopped');
  const sys = d.sys;
  const total = Math.max(1, Math.round(rate * seconds));
  const sentAt = new Float64Array(total);
  const replyAt = new Float64Array(total);
  const seqOf = new Float64Array(total);
  for (const a of d.advances.values()) {
    // Keep only the last advance: it still answers for seqs it covers.
    a.t.splice(0, a.t.length - 1);
    a.seq.splice(0, a.seq.length - 1);
  }
  let sent = 0;
  let replies = 0;
  let failures = 0;
  let firstFailure: string | undefined;
  let capped = false;
  if (PGSS) await ctx.db.admin.query('SELECT pg_stat_statements_reset()');
  const cpu0 = cpuSnapshot(ctx, sys);
  const t0 = performance.now();

  const sendOne = (i: number): void => {
    let id: string;
    let command: 'CreateTask' | 'AssignTask';
    let body: string;
    if (i % 2 === 1 && d.toAssign.length > 0) {
      id = d.toAssign.shift()!;
      command = 'AssignTask';
      body = `{"assignedTo":"CC${(Number(id.slice(id.lastIndexOf('-') + 1)) + 7) % COORDINATORS}"}`;
    } else {
      const k = d.next++;
      id = `${sys.kind}-${k}`;
      command = 'CreateTask';
      body = `{"title":"Benchmark task ${k}","memberId":"member-${k % 1000}","assignedTo":"CC${k % COORDINATORS}"}`;
    }
    sentAt[i] = performance.now();
    ctx.requester.send(sys.subject(id, command), encoder.encode(body), (m: Msg) => {
      replyAt[i] = performance.now();
      replies++;
      const text = decoder.decode(m.data);
      if (!text.startsWith('{"ok":true')) {
        failures++;
        firstFailure ??= `${command} ${id}: ${checkReply(m) ?? text.slice(0, 200)}`;
        return;
      }
      seqOf[i] = Number(/"seq":(\d+)/.exec(text)?.[1] ?? 0);
      if (seqOf[i]! > d.lastSeq) d.lastSeq = seqOf[i]!;
      if (command === 'CreateTask') {
        d.created++;
        d.toAssign.push(id);
      } else d.assigned++;
    });
  };
  await new Promise<void>((resolve) => {
    const tick = setInterval(() => {
      const due = Math.min(total, Math.floor(((performance.now() - t0) * rate) / 1000));
      while (sent < due && !aborting) {
        if (sent - replies >= MAX_OUTSTANDING) {
          capped = true;
          break;
        }
        sendOne(sent++);
      }
      if (sent >= total || capped || aborting) {
        clearInterval(tick);
        resolve();
      }
    }, 1);
  });
  for (const end = Date.now() + 30_000; replies < sent && Date.now() < end; ) await sleep(2);
  const lastReply = performance.now();
  let maxSeq = 0;
  for (let i = 0; i < sent; i++) if (seqOf[i]! > maxSeq) maxSeq = seqOf[i]!;
  const lastOf = (name: string): number => {
    const a = d.advances.get(name);
    return a && a.seq.length > 0 ? a.seq[a.seq.length - 1]! : 0;
  };
  const lagNames = sys.feed ? [...LAG_PROJECTIONS] : [];
  for (const end = Date.now() + CATCH_UP_MS; lagNames.some((n) => lastOf(n) < maxSeq) && Date.now() < end; ) await sleep(2);
  const caughtUpMs = performance.now() - lastReply;
  const cpu1 = cpuSnapshot(ctx, sys);
  const owners = await pgActivity(ctx, sys.database);

  const problems: string[] = [];
  if (failures > 0) problems.push(`${failures} failed, first: ${firstFailure}`);
  if (capped) problems.push(`more than ${MAX_OUTSTANDING} outstanding: stopped sending after ${sent}`);
  if (replies < sent) problems.push(`${sent - replies} replies missing after 30 s`);
  const lat = new Float64Array(sent);
  for (let i = 0; i < sent; i++) lat[i] = (replyAt[i] || lastReply) - sentAt[i]!;
  lat.sort();
  const achieved = sent / ((lastReply - t0) / 1000);
  if (achieved < rate * 0.95) problems.push(`replies ${fmtInt(achieved)}/s < 95% of offered`);
  const p99 = percentile(lat, 0.99);
  if (p99 > MAX_P99_MS) problems.push(`command p99 ${fmt1(p99)} ms > ${MAX_P99_MS}`);
  const lags = new Map<string, Lag>();
  for (const name of lagNames) {
    const a = d.advances.get(name);
    if (!a || lastOf(name) < maxSeq) {
      problems.push(`${name} at ${lastOf(name)} < ${maxSeq} ${fmt1(CATCH_UP_MS / 1000)} s after the last reply`);
      continue;
    }
    const v = new Float64Array(sent);
    let n = 0;
    for (let i = 0; i < sent; i++) {
      const s = seqOf[i]!;
      if (!s) continue;
      let lo = 0;
      let hi = a.seq.length - 1;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (a.seq[mid]! >= s) hi = mid;
        else lo = mid + 1;
      }
      v[n++] = Math.max(0, a.t[lo]! - replyAt[i]!);
    }
    const sorted = v.subarray(0, n).sort();
    const lag = { p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99), max: sorted[n - 1] ?? Number.NaN };
    lags.set(name, lag);
    if (lag.p99 > MAX_LAG_MS) problems.push(`${name} lag p99 ${fmt1(lag.p99)} ms > ${MAX_LAG_MS}`);
  }
  const loadCpu = process.cpuUsage(cpu0.load);
  const per = (a: number, b: number): number => (b - a) / sent;
  const pgBy = new Map<string, number>();
  let backendsTotal = 0;
  for (const [pid, c1] of cpu1.backends) {
    const c = c1 - (cpu0.backends.get(pid) ?? 0);
    backendsTotal += c;
    const owner = owners.get(pid) ?? 'background (WAL writer, checkpointer, …)';
    pgBy.set(owner, (pgBy.get(owner) ?? 0) + c / sent);
  }
  const postmaster = cpu1.pg - cpu0.pg - backendsTotal;
  if (postmaster > 0) pgBy.set('background (WAL writer, checkpointer, …)', (pgBy.get('background (WAL writer, checkpointer, …)') ?? 0) + postmaster / sent);

  let execBy: StepResult['execBy'];
  let topStatements: StepResult['topStatements'];
  if (PGSS) {
    const r = await ctx.db.admin.query(
      'SELECT query, calls::int AS calls, total_exec_time AS ms, rows::int AS rows FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1',
      [sys.database],
    );
    execBy = new Map();
    const all: NonNullable<StepResult['topStatements']> = [];
    for (const row of r.rows as { query: string; calls: number; ms: number; rows: number }[]) {
      const owner = ownerOf(row.query) ?? 'other statements';
      const e = execBy.get(owner) ?? { ms: 0, calls: 0 };
      e.ms += row.ms;
      e.calls += row.calls;
      execBy.set(owner, e);
      all.push({ owner, calls: row.calls, ms: row.ms, rows: row.rows, text: row.query.replace(/\s+/g, ' ').slice(0, 110) });
    }
    topStatements = all.sort((a, b) => b.ms - a.ms).slice(0, 8);
  }
  return {
    rate,
    commands: sent,
    achieved,
    p50: percentile(lat, 0.5),
    p99,
    lags,
    caughtUpMs,
    cpu: { service: per(cpu0.service, cpu1.service), consumer: per(cpu0.consumer, cpu1.consumer), nats: per(cpu0.nats, cpu1.nats), pg: per(cpu0.pg, cpu1.pg), load: (loadCpu.user + loadCpu.system) / sent },
    pgBy,
    ...(execBy ? { execBy } : {}),
    ...(topStatements ? { topStatements } : {}),
    problems,
    pass: problems.length === 0,
  };
}

const SHORT: Record<string, string> = { task_list_view: 'tlv', member_task_history: 'mth', task_analytics: 'ta' };

function stepLine(kind: Kind, s: StepResult): string {
  const lags = [...s.lags].map(([n, l]) => `${SHORT[n] ?? n} ${fmt1(l.p50)}/${fmt1(l.p99)}`).join(', ');
  return (
    `  ${kind.padEnd(8)} ${fmtInt(s.rate).padStart(6)}/s: replies ${fmtInt(s.achieved).padStart(6)}/s  p50 ${fmt1(s.p50).padStart(6)}  p99 ${fmt1(s.p99).padStart(7)} ms` +
    (lags ? ` | lag p50/p99 ms ${lags}` : '') +
    ` | cpu/cmd: service ${fmtInt(s.cpu.service)}${kind === 'raw' ? ` (consumer ${fmtInt(s.cpu.consumer)})` : ''}, nats ${fmtInt(s.cpu.nats)}, pg ${fmtInt(s.cpu.pg)}, load ${fmtInt(s.cpu.load)} us` +
    ` | ${s.pass ? 'ok' : `FAIL (${s.problems.join('; ')})`}`
  );
}

function detail(s: StepResult): string {
  const lines: string[] = [];
  lines.push(`      PostgreSQL CPU per event by backend: ${[...s.pgBy].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${fmtInt(v)} us`).join(', ')}`);
  if (s.execBy) {
    lines.push(
      `      statement execution per event (pg_stat_statements): ${[...s.execBy].sort((a, b) => b[1].ms - a[1].ms).map(([k, v]) => `${k} ${fmtInt((v.ms * 1000) / s.commands)} us (${fmtInt(v.calls)} calls)`).join(', ')}`,
    );
    for (const t of s.topStatements ?? []) lines.push(`        ${fmtInt((t.ms * 1000) / s.commands).padStart(5)} us/event ${fmtInt(t.calls).padStart(6)} calls ${fmtInt(t.rows).padStart(7)} rows  ${t.text}`);
  }
  return lines.join('\n');
}

/**
 * What the read models hold once caught up, against the commands answered ok: every CreateTask
 * a task (Strand's start probe adds one or a few) and a `created` count, every command a history
 * row. Both pipelines must have done the same work.
 */
async function checkReadModels(ctx: Ctx, d: Driver): Promise<string> {
  const u = new URL(ctx.db.pgServer.url);
  u.pathname = `/${d.sys.database}`;
  const c = new pg.Client({ connectionString: u.toString(), application_name: 'bench-check' });
  c.on('error', () => undefined);
  await c.connect();
  try {
    const r = await c.query(
      'SELECT (SELECT count(*) FROM task_list_view)::int AS tasks, (SELECT count(*) FROM member_task_history)::int AS history, ' +
        "(SELECT coalesce(sum(created), 0) FROM task_analytics)::int AS created, (SELECT count(*) FROM task_list_view WHERE version = 2)::int AS reassigned",
    );
    const got = r.rows[0] as { tasks: number; history: number; created: number; reassigned: number };
    const slack = d.sys.kind === 'raw' ? 0 : 5; // Strand's readiness probes
    const ok =
      got.tasks >= d.created && got.tasks <= d.created + slack && got.created === got.tasks && got.reassigned === d.assigned && got.history === got.tasks + d.assigned;
    return (
      `  read models: ${fmtInt(got.tasks)} tasks, ${fmtInt(got.reassigned)} reassigned, ${fmtInt(got.history)} history rows, analytics created ${fmtInt(got.created)} ` +
      `(commands ok: ${fmtInt(d.created)} CreateTask, ${fmtInt(d.assigned)} AssignTask) ${ok ? 'consistent' : 'MISMATCH'}`
    );
  } finally {
    await c.end().catch(() => undefined);
  }
}

interface SystemResult {
  readonly kind: Kind;
  readonly fixed: StepResult;
  readonly saturation?: StepResult;
  readonly firstFail?: StepResult;
  /** The write path alone at the all-in-one's saturation rate (when strand ran first). */
  readonly atStrandSaturation?: StepResult;
}

async function runSystem(ctx: Ctx, kind: Kind, strandSaturation?: number): Promise<SystemResult> {
  console.log(`\n== ${LABEL[kind]} ==`);
  const sys = kind === 'raw' ? await startRaw(ctx) : await startStrand(ctx, kind);
  const d = driver(ctx, sys);
  try {
    if (WARMUP_SECONDS > 0) {
      const w = await runStep(ctx, d, 1_000, WARMUP_SECONDS);
      console.log(`  warmup: ${fmtInt(w.commands)} commands at 1,000/s ${w.pass ? 'ok' : `(${w.problems.join('; ')})`}`);
      await waitCaughtUp(d);
    }
    // What the system costs with no commands at all (heartbeats, polls, consumers waiting), after a second to settle.
    await sleep(1_000);
    const idle0 = cpuSnapshot(ctx, sys);
    const idleT0 = performance.now();
    await sleep(IDLE_SECONDS * 1000);
    const idle1 = cpuSnapshot(ctx, sys);
    const share = (a: number, b: number): string => `${fmt1(((b - a) / 1e3 / (performance.now() - idleT0)) * 100)}%`;
    console.log(`  idle ${IDLE_SECONDS} s, share of one core: service ${share(idle0.service, idle1.service)}, nats-server ${share(idle0.nats, idle1.nats)}, PostgreSQL ${share(idle0.pg, idle1.pg)}`);
    const fixed = await runStep(ctx, d, FIXED_RATE, FIXED_SECONDS);
    console.log(stepLine(kind, fixed) + '  [fixed rate]');
    console.log(detail(fixed));
    let best: StepResult | undefined;
    let firstFail: StepResult | undefined;
    // Up by --factor from --start-rate until a step fails; when the first one fails, down until one passes.
    let rate = START_RATE;
    for (let i = 0; i < MAX_STEPS && rate <= MAX_RATE && rate >= MIN_RATE; i++) {
      const s = await runStep(ctx, d, rate, STEP_SECONDS);
      console.log(stepLine(kind, s));
      await sleep(500);
      if (s.pass) {
        best = s;
        if (firstFail) break;
        rate = Math.round(rate * FACTOR);
      } else {
        firstFail = s;
        if (best) break;
        await waitCaughtUp(d); // what the failed step left behind must not count against the next
        rate = Math.round(rate / FACTOR);
      }
    }
    for (let i = 0; i < REFINE && firstFail; i++) {
      if (!best) break;
      const r = Math.round(Math.sqrt(best.rate * firstFail.rate));
      if (r <= best.rate || r >= firstFail.rate) break;
      await waitCaughtUp(d);
      const s = await runStep(ctx, d, r, STEP_SECONDS);
      console.log(stepLine(kind, s) + '  [refine]');
      if (s.pass) best = s;
      else firstFail = s;
    }
    let atStrandSaturation: StepResult | undefined;
    if (strandSaturation !== undefined) {
      await waitCaughtUp(d);
      atStrandSaturation = await runStep(ctx, d, strandSaturation, STEP_SECONDS);
      console.log(stepLine(kind, atStrandSaturation) + "  [the all-in-one's saturation rate]");
    }
    if (sys.feed) {
      await waitCaughtUp(d);
      console.log(await checkReadModels(ctx, d));
    }
    if (best) {
      console.log(`  saturation ${fmtInt(best.rate)}/s (first failure at ${firstFail ? `${fmtInt(firstFail.rate)}/s` : `none up to ${fmtInt(best.rate)}/s`})`);
      console.log(detail(best));
    } else console.log(`  no step passed from ${fmtInt(START_RATE)}/s`);
    return { kind, fixed, ...(best ? { saturation: best } : {}), ...(firstFail ? { firstFail } : {}), ...(atStrandSaturation ? { atStrandSaturation } : {}) };
  } finally {
    d.sub?.unsubscribe();
    await sys.stop();
    if (ctx.profileDir) {
      const file = await mainThreadProfile(path.join(ctx.profileDir, kind === 'raw' ? 'raw-consumer' : kind));
      if (file) {
        console.log(`\n  CPU profile of the ${kind === 'raw' ? 'raw consumer' : 'Strand process'} (whole life, start included): ${file}`);
        console.log(summarizeCpuProfile(JSON.parse(await fs.readFile(file, 'utf8')) as CpuProfile, 25));
      }
    }
  }
}

function summary(results: SystemResult[]): void {
  const by = new Map(results.map((r) => [r.kind, r]));
  console.log(`\n== Summary | sync_interval: ${sync} | load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')} ==`);
  for (const r of results) {
    const s = r.saturation;
    const lagText = (x: StepResult): string => (x.lags.size ? ` lag p99 ${[...x.lags].map(([n, l]) => `${SHORT[n] ?? n} ${fmt1(l.p99)}`).join(', ')} ms;` : '');
    console.log(
      `  ${LABEL[r.kind].padEnd(28)}: saturation ${s ? `${fmtInt(s.rate)}/s (p50 ${fmt1(s.p50)}, p99 ${fmt1(s.p99)} ms;${lagText(s)} cpu/cmd service ${fmtInt(s.cpu.service)}, nats ${fmtInt(s.cpu.nats)}, pg ${fmtInt(s.cpu.pg)} us)` : 'none'}`,
    );
    console.log(
      `  ${''.padEnd(28)}  at ${fmtInt(FIXED_RATE)}/s: p50 ${fmt1(r.fixed.p50)}, p99 ${fmt1(r.fixed.p99)} ms;${lagText(r.fixed)} cpu/cmd service ${fmtInt(r.fixed.cpu.service)}, nats ${fmtInt(r.fixed.cpu.nats)}, pg ${fmtInt(r.fixed.cpu.pg)} us${r.fixed.pass ? '' : ` (FAIL: ${r.fixed.problems.join('; ')})`}`,
    );
  }
  const raw = by.get('raw');
  const strand = by.get('strand');
  const commands = by.get('commands');
  const mark = (ok: boolean): string => (ok ? 'met' : 'MISSED');
  if (raw?.saturation && strand?.saturation) {
    const r = strand.saturation.rate / raw.saturation.rate;
    console.log(`  target all-in-one saturation / raw pipeline >= 0.60: ${fmt2(r)} ${mark(r >= 0.6)}`);
  } else if (raw && strand) console.log('  target all-in-one saturation / raw pipeline >= 0.60: not measurable (a system passed no step)');
  /** Whether a step carried its offered rate (a failed lag or p99 limit still counts as carried). */
  const carried = (x: StepResult): boolean => !x.problems.some((p) => p.startsWith('replies') || p.startsWith('more than'));
  if (strand && commands) {
    const r = strand.fixed.p99 / commands.fixed.p99;
    const why = !carried(strand.fixed) || !carried(commands.fixed) ? ` (not measurable: ${!carried(strand.fixed) ? 'the all-in-one' : 'the write path alone'} did not carry ${fmtInt(FIXED_RATE)}/s here)` : ` ${mark(r <= 1.5)}`;
    console.log(`  target at ${fmtInt(FIXED_RATE)}/s all-in-one p99 / commands-only p99 <= 1.5: ${fmt1(strand.fixed.p99)} / ${fmt1(commands.fixed.p99)} ms = ${fmt2(r)}${why}`);
    const at = commands.atStrandSaturation;
    if (strand.saturation && at) {
      console.log(
        `  at ${fmtInt(at.rate)}/s (the all-in-one's saturation): all-in-one p99 ${fmt1(strand.saturation.p99)} / commands-only p99 ${fmt1(at.p99)} ms = ${fmt2(strand.saturation.p99 / at.p99)}`,
      );
    }
  }
  if (strand) {
    const worst = Math.max(...[...strand.fixed.lags.values()].map((l) => l.p99));
    console.log(`  target at ${fmtInt(FIXED_RATE)}/s all-in-one lag p99 <= 50 ms: worst projection ${fmt1(worst)} ms ${carried(strand.fixed) ? mark(worst <= 50) : `MISSED (and ${fmtInt(FIXED_RATE)}/s not carried)`}`);
    if (strand.saturation) {
      console.log(`  (at the all-in-one's saturation, ${fmtInt(strand.saturation.rate)}/s: lag p99 worst ${fmt1(Math.max(...[...strand.saturation.lags.values()].map((l) => l.p99)))} ms)`);
    }
  }
  if (raw) {
    const worst = Math.max(...[...raw.fixed.lags.values()].map((l) => l.p99));
    console.log(`  (raw pipeline at ${fmtInt(FIXED_RATE)}/s: lag p99 worst ${fmt1(worst)} ms, command p99 ${fmt1(raw.fixed.p99)} ms)`);
  }
  if (strand && commands) {
    console.log(
      `  nats-server CPU per command at ${fmtInt(FIXED_RATE)}/s: ${fmtInt(strand.fixed.cpu.nats)} us with the read side, ${fmtInt(commands.fixed.cpu.nats)} us without` +
        (raw ? `, ${fmtInt(raw.fixed.cpu.nats)} us raw pipeline` : '') +
        `; Strand process ${fmtInt(strand.fixed.cpu.service)} us vs ${fmtInt(commands.fixed.cpu.service)} us` +
        (raw ? ` (raw loop + consumer ${fmtInt(raw.fixed.cpu.service)} us, the consumer ${fmtInt(raw.fixed.cpu.consumer)})` : '') +
        `; PostgreSQL ${fmtInt(strand.fixed.cpu.pg)} us` +
        (raw ? ` vs raw ${fmtInt(raw.fixed.cpu.pg)} us` : ''),
    );
  }
}

async function main(): Promise<number> {
  let bench: BenchServer | undefined;
  let nc: NatsConnection | undefined;
  let db: BenchDatabase | undefined;
  // One cleanup, however many callers (a signal, the time limit, main's own finally): all wait for it.
  let cleaning: Promise<void> | undefined;
  const cleanup = (): Promise<void> =>
    (cleaning ??= (async () => {
      aborting = true;
      await stopAllServices();
      for (const dir of tempDirs) await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
      await nc?.close().catch(() => undefined);
      await bench?.cleanup();
      await db?.cleanup();
    })());
  const limit = hardLimit(TIME_LIMIT_S * 1000, cleanup);
  // Ctrl-C, a kill, or a throw in a callback: the servers and temporary folders go too.
  const abort = (why: string, code: number): void => {
    if (cleaning) return;
    process.stderr.write(`pipeline.bench: ${why}; cleaning up\n`);
    void cleanup().finally(() => process.exit(code));
  };
  // `on`, not `once`: the embedded PostgreSQL's own handler re-raises a signal it believes nobody
  // else listens to, which would end this process before its cleanup.
  process.on('SIGINT', () => abort('SIGINT', 130));
  process.on('SIGTERM', () => abort('SIGTERM', 143));
  process.once('uncaughtException', (err) => abort(`uncaught ${err.stack ?? err.message}`, 1));
  const started = performance.now();
  try {
    db = await startBenchDatabase('strand-bench-pipeline-', PGSS ? { shared_preload_libraries: 'pg_stat_statements' } : undefined);
    if (PGSS) await db.admin.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
    bench = await startBenchServer(sync);
    nc = await connect({ servers: bench.url, name: 'bench-pipeline', noAsyncTraces: true });
    const profileDir = PROFILE ? await fs.mkdtemp(path.join(os.tmpdir(), 'strand-cpuprof-')) : undefined;
    const ctx: Ctx = { bench, nc, jsm: await jetstreamManager(nc), db, requester: new LeanRequester(nc), profileDir };
    const version = ((await db.admin.query('SELECT version() AS v')).rows[0] as { v: string }).v.split(' on ')[0];
    console.log(`pipeline.bench: ${machineLine()}`);
    console.log(`nats-server ${nc.info?.version} on ${bench.url} | sync_interval: ${syncLabel(sync)} | ${version} (embedded, server defaults${PGSS ? ' + pg_stat_statements' : ''})`);
    console.log(
      `projections: ${projections.map((p) => p.name).join(', ')} (task commands feed the first three) | load: open loop, CreateTask/AssignTask alternating | ` +
        `warmup ${WARMUP_SECONDS} s at 1,000/s, fixed ${fmtInt(FIXED_RATE)}/s for ${FIXED_SECONDS} s, then steps of ${STEP_SECONDS} s from ${fmtInt(START_RATE)}/s x${FACTOR} (refine ${REFINE}); ` +
        `pass: p99 <= ${MAX_P99_MS} ms, lag p99 <= ${MAX_LAG_MS} ms, replies >= 95% of offered`,
    );
    console.log('  columns: replies/s, command latency, lag per projection (tlv task_list_view, mth member_task_history, ta task_analytics), CPU per command (us)');
    const results: SystemResult[] = [];
    for (const kind of SYSTEMS) {
      const strandSaturation = kind === 'commands' ? results.find((r) => r.kind === 'strand')?.saturation?.rate : undefined;
      results.push(await runSystem(ctx, kind, strandSaturation));
    }
    summary(results);
    console.log(`\ntotal ${fmt1((performance.now() - started) / 1000)} s`);
    return 0;
  } finally {
    clearTimeout(limit);
    await cleanup();
  }
}

runBenchMain(main);
