/**
 * Live views over WebSocket (`/live`): push latency under load, and memory per idle connection.
 *
 * One private nats-server (free port, temporary store) and one throwaway embedded PostgreSQL
 * (its default settings; a fresh database per Strand run) serve both parts. Every server under
 * test is a child process, so the WebSocket clients and the command generator (this process)
 * never share its event loop.
 *
 *  1. Latency. --clients WebSocket clients (1,000) each subscribe to `task_list_view` with the
 *     filter `assignedTo = coord-<c>`, over --coordinators (100) coordinators: --clients /
 *     --coordinators (10) clients per coordinator. An open-loop generator sends --rate (1,000)
 *     `CreateTask`/s for --seconds (15), after --warmup-seconds (3) of the same on other ids,
 *     with `assignedTo` cycling over the coordinators, so each command's row goes to 10 clients.
 *     For every command the reply time is recorded; every client records when the `change`
 *     carrying that task arrives. Latency = arrival - reply, over all client deliveries
 *     (p50, p99, max). Target: p99 <= 25 ms.
 *     Strand: `node --import tsx src/main.ts` (what `npm start` runs) with NATS_URL,
 *     DATABASE_URL, PORT, STRAND_AUTH=dev, LOG_LEVEL=warn, all five example projections. This
 *     process also listens to the projection runner's feed to the gateways
 *     (`liveChanges('task_list_view')`), which splits the latency into reply -> feed (JetStream
 *     delivery to the projection, the batch wait of STRAND_PROJECTION_BATCH_MS, the
 *     transaction, the re-read of the changed rows) and feed -> client (the gateway's fan-out
 *     and the WebSocket).
 *     Baseline, same run, same clients and generator: bench/live-raw-service.ts in relay mode:
 *     a trivial `ws` server that answers the command request at once, publishes the row on a
 *     core NATS subject, and relays its own subscription of that subject to the 10 connections
 *     subscribed to the row's assignee: the NATS hop and the WebSocket fan-out with nothing in
 *     between (no event store, no projection, no PostgreSQL). Chosen over 1,000 plain NATS
 *     subscribers because it costs the clients, and the server's sends, what Strand's do.
 *     Order: raw, then strand.
 *  2. Memory. --idle (10,000) WebSocket connections, each subscribed to one `task_list_view`
 *     row by key (rows that exist, and never change afterwards). The server's RSS
 *     (/proc/<pid>/status VmRSS) before and after, as it is and after a full GC (forced through
 *     the inspector: the child runs with --inspect on a free local port), and its V8 heap
 *     (process.memoryUsage() and, for Strand, /metrics). Target: <= 300 MB for the process.
 *     Baseline: bench/live-raw-service.ts in bare mode, a `ws` server holding the same
 *     connections with nothing else (it answers the subscribe with a one-row snapshot). Both get
 *     200 warmup connections (opened, subscribed, closed) before the "before" figure.
 *     STRAND_WS_HEARTBEAT_MS stays at its default (30 s; the baseline pings as often).
 *
 *   node --expose-gc --import tsx bench/live.bench.ts [--sync always|default]
 *       [--clients 1000] [--coordinators 100] [--rate 1000] [--seconds 15] [--warmup-seconds 3]
 *       [--idle 10000] [--idle-seconds 5] [--parts 1,2] [--batch-ms N] [--commit async|sync] [--profile]
 *       [--sql-timing] [--projections all|task_list_view,…] [--time-limit 290]
 *
 * --batch-ms sets STRAND_PROJECTION_BATCH_MS of the Strand child (unset: Strand's default, 20);
 * --commit its STRAND_PROJECTION_COMMIT (default async, Strand's default).
 * --profile runs part 1's Strand child under `node --cpu-prof` and prints its top functions.
 * --sql-timing runs part 1's Strand child as bench/readside-service.ts (the same Strand.start
 * with the example aggregates and projections, allowAll access instead of actors/access.ts;
 * an admin principal passes both) with every SQL statement timed, and prints the totals per
 * statement over the measured window: how long the projection runner waits on its commit and
 * on the re-read of the changed rows.
 * --projections other than `all` also runs part 1's Strand child as bench/readside-service.ts,
 * with only those projections (BENCH_PROJECTIONS): what the other four cost the live path.
 * The file descriptor limit must cover --idle connections (this process holds the client
 * ends, the server the others): when `ulimit -n` is too low, the benchmark re-executes itself
 * under `bash -c 'ulimit -n …'` (up to the hard limit); the children inherit it.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import pg from 'pg';
import { WebSocket } from 'ws';
import { connect } from '@nats-io/transport-node';
import type { Msg, NatsConnection, Subscription } from '@nats-io/nats-core';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import type { RunningPostgres } from '../src/postgres/embedded.js';
import { LIVE_INTEREST, liveChanges } from '../subjects/index.js';
import { summarizeCpuProfile, type CpuProfile } from './cpuprofile.js';
import { formatStatements, type StatementStat } from './pg-timing.js';
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
const CLIENTS = intArg(args, 'clients', 1000);
const COORDINATORS = intArg(args, 'coordinators', 100);
const RATE = intArg(args, 'rate', 1000);
const SECONDS = intArg(args, 'seconds', 15);
const WARMUP_S = intArg(args, 'warmup-seconds', 3, 0);
const IDLE = intArg(args, 'idle', 10_000);
const IDLE_HOLD_S = intArg(args, 'idle-seconds', 5, 0);
const PARTS = new Set((args.get('parts') ?? '1,2').split(',').map((s) => s.trim()));
const BATCH_MS = args.has('batch-ms') ? String(intArg(args, 'batch-ms', 20, 0)) : undefined;
const COMMIT = commitArg(args);
const PROFILE = args.has('profile');
const SQL_TIMING = args.has('sql-timing');
/** Projections of part 1's Strand child: `all` runs src/main.ts; a list runs bench/readside-service.ts with BENCH_PROJECTIONS. */
const PROJECTIONS = args.get('projections') ?? 'all';
const TIME_LIMIT_S = intArg(args, 'time-limit', 290);
if (CLIENTS % COORDINATORS !== 0) throw new Error(`--clients (${CLIENTS}) must be a multiple of --coordinators (${COORDINATORS})`);
const FANOUT = CLIENTS / COORDINATORS;
const STREAM = 'EVENTS';
/** Warmup connections opened and closed before the memory "before" figure. */
const IDLE_WARMUP = 200;
/** Rows the idle subscriptions point at (each connection one of them). */
const IDLE_ROWS = 1000;
/** Connections being opened at once. */
const OPEN_CONCURRENCY = 200;
const decoder = new TextDecoder();
/** The projection runner's live feed of task_list_view, which the gateways listen to. */
const FEED_SUBJECT = liveChanges('task_list_view');

// ---- file descriptors -------------------------------------------------------------------------

function ulimit(flag: '-Sn' | '-Hn'): number {
  const out = spawnSync('sh', ['-c', `ulimit ${flag}`], { encoding: 'utf8' }).stdout.trim();
  return out === 'unlimited' ? Number.POSITIVE_INFINITY : Number(out);
}

/** Re-executes this benchmark under a higher `ulimit -n` when the current one is too low; returns its exit code, or undefined to go on here. */
function ensureFileLimit(): number | undefined {
  const need = (PARTS.has('2') ? IDLE + IDLE_WARMUP : 0) + CLIENTS + 1024;
  const soft = ulimit('-Sn');
  if (soft >= need) return undefined;
  const hard = ulimit('-Hn');
  const want = Math.min(hard, Math.max(need, 65_536));
  if (want < need || process.env['STRAND_BENCH_ULIMIT_REEXEC'] === '1') {
    throw new Error(`open files limit ${soft} (hard ${hard}) is below the ${need} this run needs; raise it (ulimit -n) or lower --idle/--clients`);
  }
  console.log(`live.bench: ulimit -n is ${soft}, below the ${need} needed: running again under ulimit -n ${want}`);
  const r = spawnSync('bash', ['-c', `ulimit -n ${want} && exec "$0" "$@"`, process.execPath, ...process.execArgv, ...process.argv.slice(1)], {
    stdio: 'inherit',
    env: { ...process.env, STRAND_BENCH_ULIMIT_REEXEC: '1' },
  });
  return r.status ?? 1;
}

// ---- small helpers ----------------------------------------------------------------------------

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** Resident set size of a process in bytes (VmRSS), and its peak (VmHWM). */
function rssOf(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN) * 1024;
  return { rss: kb('VmRSS'), peak: kb('VmHWM') };
}

function openFilesLimitOf(pid: number): string {
  try {
    const line = readFileSync(`/proc/${pid}/limits`, 'utf8').split('\n').find((l) => l.startsWith('Max open files'));
    return line ? line.replace(/\s+/g, ' ').replace('Max open files ', '').replace(' files', '').trim().replace(' ', '/') : '?';
  } catch {
    return '?';
  }
}

const MB = (b: number): string => `${fmt1(b / 2 ** 20)} MB`;

function stats(values: Float64Array): { n: number; p50: number; p90: number; p99: number; p999: number; max: number; negative: number } {
  const sorted = Float64Array.from(values).sort();
  let negative = 0;
  for (const v of sorted) if (v < 0) negative++;
  return {
    n: sorted.length,
    p50: percentile(sorted, 0.5),
    p90: percentile(sorted, 0.9),
    p99: percentile(sorted, 0.99),
    p999: percentile(sorted, 0.999),
    max: sorted.length ? sorted[sorted.length - 1]! : Number.NaN,
    negative,
  };
}

const statLine = (s: ReturnType<typeof stats>, negative = 'the change came before the reply'): string =>
  `p50 ${fmt1(s.p50)} ms, p90 ${fmt1(s.p90)}, p99 ${fmt1(s.p99)}, p99.9 ${fmt1(s.p999)}, max ${fmt1(s.max)} (n=${fmtInt(s.n)}${s.negative ? `, ${fmtInt(s.negative)} below 0: ${negative}` : ''})`;

function connectWs(url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    const fail = (err: unknown): void => {
      ws.removeAllListeners();
      ws.on('error', () => undefined);
      reject(err instanceof Error ? err : new Error(`connection closed before it opened (${String(err)})`));
    };
    ws.once('open', () => {
      ws.off('error', fail);
      ws.off('close', fail);
      ws.on('error', () => undefined);
      resolve(ws);
    });
    ws.once('error', fail);
    ws.once('close', fail);
  });
}

/** Runs `fn(i)` for i in [0, n) with at most `concurrency` at once. */
async function pool(n: number, concurrency: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < n) await fn(next++);
  };
  await Promise.all(Array.from({ length: Math.min(n, concurrency) }, worker));
}

function httpText(port: number, pathname: string): Promise<{ status: number; body: string }> {
  return fetch(`http://127.0.0.1:${port}${pathname}`).then(async (r) => ({ status: r.status, body: await r.text() }));
}

/** Sums the samples of a metric in Prometheus text whose labels contain `labels` (all of them when empty). */
function metric(text: string, name: string, labels = ''): number {
  let sum = 0;
  let found = false;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== ' ' && rest[0] !== '{') continue;
    if (labels && !rest.includes(labels)) continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1));
    found = true;
  }
  return found ? sum : Number.NaN;
}

function checkReply(m: Msg): string | undefined {
  if (m.headers?.code === 503) return 'no responders';
  try {
    const r = JSON.parse(decoder.decode(m.data)) as { ok?: boolean; error?: { code?: string; message?: string } };
    return r.ok === true ? undefined : `${r.error?.code ?? '?'}: ${r.error?.message ?? ''}`;
  } catch {
    return `unreadable reply ${decoder.decode(m.data).slice(0, 200)}`;
  }
}

/** Inspector session of a child started with --inspect: full GCs and expressions in its main thread. */
class Inspector {
  private next = 1;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const m = JSON.parse(String(data)) as { id?: number; result?: unknown; error?: { message: string } };
      if (m.id === undefined) return;
      const w = this.waiting.get(m.id);
      if (!w) return;
      this.waiting.delete(m.id);
      if (m.error) w.reject(new Error(m.error.message));
      else w.resolve(m.result);
    });
  }

  static async open(svc: ServiceProcess): Promise<Inspector> {
    let url: string | undefined;
    await waitReady(svc, () => (url = /ws:\/\/127\.0\.0\.1:\d+\/[0-9a-f-]+/.exec(svc.output())?.[0]) !== undefined, 30_000);
    return new Inspector(await connectWs(url!));
  }

  call(method: string, params: Record<string, unknown> = {}): Promise<unknown> {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ id, method, params }));
    });
  }

  async gc(): Promise<void> {
    await this.call('HeapProfiler.collectGarbage');
    await this.call('HeapProfiler.collectGarbage');
  }

  async memoryUsage(): Promise<NodeJS.MemoryUsage> {
    const r = (await this.call('Runtime.evaluate', { expression: 'JSON.stringify(process.memoryUsage())', returnByValue: true })) as { result: { value: string } };
    return JSON.parse(r.result.value) as NodeJS.MemoryUsage;
  }

  close(): void {
    this.ws.terminate();
  }
}

// ---- the context ------------------------------------------------------------------------------

interface Ctx {
  readonly bench: BenchServer;
  readonly nc: NatsConnection;
  readonly jsm: JetStreamManager;
  readonly requester: LeanRequester;
  readonly pgServer: RunningPostgres;
  readonly admin: pg.Client;
  readonly tmp: string;
  readonly profileDir: string | undefined;
}

let dbCounter = 0;

/** A fresh database for one Strand run, and a fresh event stream. */
async function freshState(ctx: Ctx): Promise<string> {
  for (const name of [STREAM, `KV_${STREAM}_snapshots`]) {
    try {
      await ctx.jsm.streams.delete(name);
    } catch (err) {
      const e = err as { name?: string; api_error?: { err_code?: number } };
      if (!(e.name === 'StreamNotFoundError' || e.api_error?.err_code === 10059)) throw err;
    }
  }
  const db = `live_${++dbCounter}`;
  await ctx.admin.query(`CREATE DATABASE ${db}`);
  const u = new URL(ctx.pgServer.url);
  u.pathname = `/${db}`;
  return u.toString();
}

interface StrandChild {
  readonly svc: ServiceProcess;
  readonly port: number;
  readonly script: string;
}

async function startStrand(ctx: Ctx, name: string, opts: { nodeArgs?: string[]; sqlTiming?: boolean; projections?: string } = {}): Promise<StrandChild> {
  const databaseUrl = await freshState(ctx);
  const port = await freePort();
  const projections = opts.projections ?? 'all';
  const script = opts.sqlTiming || projections !== 'all' ? 'bench/readside-service.ts' : 'src/main.ts';
  const svc = startService(
    `strand (${script})`,
    script,
    {
      NATS_URL: ctx.bench.url,
      DATABASE_URL: databaseUrl,
      PORT: String(port),
      HOST: '127.0.0.1',
      STRAND_AUTH: 'dev',
      NODE_ENV: 'development',
      LOG_LEVEL: 'warn',
      STRAND_STREAM: STREAM,
      STRAND_DATA_DIR: path.join(ctx.tmp, `data-${name}`),
      ...(BATCH_MS !== undefined ? { STRAND_PROJECTION_BATCH_MS: BATCH_MS } : {}),
      STRAND_PROJECTION_COMMIT: COMMIT,
      ...(script === 'bench/readside-service.ts' ? { BENCH_PROJECTIONS: projections } : {}),
      ...(opts.sqlTiming ? { BENCH_SQL_TIMING: '1' } : {}),
    },
    opts.nodeArgs ?? [],
  );
  let probe = 0;
  await waitReady(svc, async () => {
    try {
      if ((await httpText(port, '/health/ready')).status !== 200) return false;
      const m = await ctx.requester.request(`cmd.task.probe-${name}-${probe++}.CreateTask`, '{"title":"ready?","memberId":"m","assignedTo":"nobody"}', 1_000);
      return checkReply(m) === undefined;
    } catch {
      return false;
    }
  });
  return { svc, port, script };
}

async function startRaw(ctx: Ctx, mode: 'relay' | 'bare', nodeArgs: string[] = []): Promise<{ svc: ServiceProcess; port: number }> {
  const svc = startService(`raw ws server (bench/live-raw-service.ts, ${mode})`, 'bench/live-raw-service.ts', { NATS_URL: ctx.bench.url, RAW_LIVE_MODE: mode, PORT: '0', HOST: '127.0.0.1' }, nodeArgs);
  let port = 0;
  await waitReady(svc, () => (port = Number(/ready port=(\d+)/.exec(svc.output())?.[1] ?? 0)) > 0, 30_000);
  return { svc, port };
}

async function stopChild(svc: ServiceProcess): Promise<void> {
  const exit = await svc.stop();
  const logged = svc.output().replace(/^ready port=.*\n/m, '').replace(/^(Debugger (listening|ending|attached)|For help, see|Waiting for the debugger).*\n?/gm, '').trim();
  if (exit.code !== 0 && exit.signal !== 'SIGTERM') console.log(`  ${svc.name} exited with ${exit.code ?? exit.signal}; last output:\n${logged.slice(-2_000)}`);
  else if (logged) console.log(`  ${svc.name} logged (last 1,500 characters):\n${logged.slice(-1_500)}`);
}

// ---- part 1: latency --------------------------------------------------------------------------

const coordName = (c: number): string => `coord-${c}`;

/** What the clients and the feed tap record for the measured commands. */
class Recorder {
  readonly reply: Float64Array;
  readonly sentAt: Float64Array;
  readonly arrival: Float64Array;
  readonly feed: Float64Array;
  received = 0;
  duplicates = 0;
  misrouted = 0;
  lastArrival = 0;

  constructor(
    readonly prefix: string,
    readonly n: number,
  ) {
    this.reply = new Float64Array(n).fill(Number.NaN);
    this.sentAt = new Float64Array(n).fill(Number.NaN);
    this.arrival = new Float64Array(n * FANOUT).fill(Number.NaN);
    this.feed = new Float64Array(n).fill(Number.NaN);
  }

  index(key: unknown): number {
    if (typeof key !== 'string' || !key.startsWith(this.prefix)) return -1;
    const i = Number(key.slice(this.prefix.length));
    return Number.isInteger(i) && i >= 0 && i < this.n ? i : -1;
  }

  arrive(key: unknown, coord: number, slot: number, t: number): void {
    const i = this.index(key);
    if (i < 0) return;
    if (i % COORDINATORS !== coord) {
      this.misrouted++;
      return;
    }
    const j = i * FANOUT + slot;
    if (!Number.isNaN(this.arrival[j]!)) {
      this.duplicates++;
      return;
    }
    this.arrival[j] = t;
    this.received++;
    this.lastArrival = t;
  }

  fed(key: unknown, t: number): void {
    const i = this.index(key);
    if (i >= 0 && Number.isNaN(this.feed[i]!)) this.feed[i] = t;
  }
}

interface LatencyResult {
  readonly kind: 'raw' | 'strand';
  readonly sent: number;
  readonly seconds: number;
  readonly failures: number;
  readonly firstFailure?: string;
  readonly expected: number;
  readonly received: number;
  readonly duplicates: number;
  readonly misrouted: number;
  readonly latency: ReturnType<typeof stats>;
  readonly reply: ReturnType<typeof stats>;
  readonly spread: ReturnType<typeof stats>;
  readonly toFeed?: ReturnType<typeof stats>;
  readonly feedToClient?: ReturnType<typeof stats>;
  readonly loopDelayP99: number;
  readonly cpu: Record<string, number | undefined>;
}

/**
 * Sends `count` commands at `rate` per second (open loop: on schedule whatever the replies do),
 * `subjectOf(i)` / `bodyOf(i)`. Resolves when every reply is in.
 */
function paced(ctx: Ctx, count: number, rate: number, subjectOf: (i: number) => string, bodyOf: (i: number) => string, onReply: (i: number, t: number, m: Msg) => void): Promise<{ seconds: number }> {
  const encoder = new TextEncoder();
  return new Promise((resolve, reject) => {
    if (count === 0) return resolve({ seconds: 0 });
    const t0 = performance.now();
    let sent = 0;
    let done = 0;
    let lastProgress = Date.now();
    const finish = (): void => {
      clearInterval(tick);
      clearInterval(watchdog);
    };
    const tick = setInterval(() => {
      if (ctx.nc.isClosed()) {
        // Closed under us (the time limit's cleanup): stop sending.
        finish();
        reject(new Error(`NATS connection closed after ${sent}/${count} commands`));
        return;
      }
      const due = Math.min(count, Math.floor(((performance.now() - t0) * rate) / 1000) + 1);
      while (sent < due) {
        const i = sent++;
        ctx.requester.send(subjectOf(i), encoder.encode(bodyOf(i)), (m) => {
          onReply(i, performance.now(), m);
          done++;
          lastProgress = Date.now();
          if (done === count) {
            finish();
            resolve({ seconds: (performance.now() - t0) / 1000 });
          }
        });
      }
    }, 2);
    const watchdog = setInterval(() => {
      if (Date.now() - lastProgress > 20_000) {
        finish();
        reject(new Error(`stalled: ${done}/${count} replies after ${sent} sent, nothing for 20 s`));
      }
    }, 500);
  });
}

/** Opens the latency clients: client k follows coordinator k % COORDINATORS (slot k / COORDINATORS). */
async function openLatencyClients(url: string, sink: { current: Recorder | undefined }, errors: string[]): Promise<WebSocket[]> {
  const clients: WebSocket[] = new Array<WebSocket>(CLIENTS);
  let snapshots = 0;
  let onSnapshot: () => void = () => undefined;
  await pool(CLIENTS, OPEN_CONCURRENCY, async (k) => {
    const coord = k % COORDINATORS;
    const slot = Math.floor(k / COORDINATORS);
    const ws = await connectWs(url);
    clients[k] = ws;
    ws.on('message', (data) => {
      const t = performance.now();
      const m = JSON.parse(String(data)) as { type: string; changes?: { op: string; key: unknown }[]; code?: string; message?: string };
      if (m.type === 'change') {
        const r = sink.current;
        if (r) for (const c of m.changes!) if (c.op === 'upsert') r.arrive(c.key, coord, slot, t);
      } else if (m.type === 'snapshot') {
        snapshots++;
        onSnapshot();
      } else if (m.type === 'error') {
        errors.push(`client ${k}: ${m.code}: ${m.message}`);
      }
    });
    ws.on('close', (code, reason) => {
      if (code !== 1001 && code !== 1005 && code !== 1006) errors.push(`client ${k} closed ${code} ${String(reason)}`);
    });
    ws.send(JSON.stringify({ type: 'subscribe', id: 'board', view: 'task_list_view', filter: { assignedTo: coordName(coord) } }));
  });
  const end = Date.now() + 60_000;
  while (snapshots < CLIENTS) {
    if (errors.length > 0) throw new Error(`subscribing failed: ${errors.slice(0, 3).join('; ')}`);
    if (Date.now() > end) throw new Error(`only ${snapshots}/${CLIENTS} snapshots within 60 s`);
    await new Promise<void>((r) => {
      onSnapshot = r;
      setTimeout(r, 200);
    });
  }
  return clients;
}

async function latencyRun(ctx: Ctx, kind: 'raw' | 'strand'): Promise<LatencyResult> {
  const tag = kind === 'raw' ? 'r' : 's';
  let svc: ServiceProcess | undefined;
  let port: number;
  let strand: StrandChild | undefined;
  let feedSub: Subscription | undefined;
  let observer: NodeJS.Timeout | undefined;
  const clients: WebSocket[] = [];
  try {
    if (kind === 'raw') {
      ({ svc, port } = await startRaw(ctx, 'relay'));
    } else {
      const nodeArgs = ctx.profileDir ? ['--cpu-prof', '--cpu-prof-dir', path.join(ctx.profileDir, 'strand')] : [];
      strand = await startStrand(ctx, 'latency', { nodeArgs, sqlTiming: SQL_TIMING, projections: PROJECTIONS });
      console.log(`  strand child: ${strand.script}${strand.script === 'src/main.ts' ? ' (all five example projections)' : ` with BENCH_PROJECTIONS=${PROJECTIONS}${SQL_TIMING ? ', BENCH_SQL_TIMING=1' : ''}`}`);
      ({ svc, port } = strand);
    }
    const sink: { current: Recorder | undefined } = { current: undefined };
    const errors: string[] = [];
    const t0 = performance.now();
    clients.push(...(await openLatencyClients(`ws://127.0.0.1:${port}/live`, sink, errors)));
    console.log(`  ${kind}: ${fmtInt(CLIENTS)} clients connected and subscribed in ${fmt1((performance.now() - t0) / 1000)} s`);
    if (kind === 'strand') {
      // Runners publish the feed on NATS only while another instance's gateway watches: the bench
      // announces itself as one (every second, as gateways do), as with a second instance.
      const announce = (): void => ctx.nc.publish(LIVE_INTEREST, JSON.stringify({ projections: ['task_list_view'], instance: 'bench-live-observer' }));
      announce();
      observer = setInterval(announce, 1000);
      feedSub = ctx.nc.subscribe(FEED_SUBJECT, {
        callback: (err, m) => {
          if (err) return;
          const t = performance.now();
          const r = sink.current;
          if (!r) return;
          const feed = m.json<{ views: Record<string, { key: unknown }[]> }>();
          for (const c of feed.views['task_list_view'] ?? []) r.fed(c.key, t);
        },
      });
    }
    const subject = (prefix: string) => (i: number): string => (kind === 'raw' ? `rawcmd.${prefix}${i}.CreateTask` : `cmd.task.${prefix}${i}.CreateTask`);
    const body = (i: number): string => `{"title":"Live benchmark task ${i}","memberId":"member-${i % 1000}","assignedTo":"${coordName(i % COORDINATORS)}"}`;

    // Warmup: the same load on other ids (its deliveries are not recorded).
    let warmFailures = 0;
    if (WARMUP_S > 0) {
      await paced(ctx, WARMUP_S * RATE, RATE, subject(`w${tag}-`), body, (_i, _t, m) => {
        if (checkReply(m) !== undefined) warmFailures++;
      });
      await sleep(500);
      if (warmFailures > 0) throw new Error(`${kind} warmup: ${warmFailures} failed replies`);
    }

    const n = SECONDS * RATE;
    const rec = new Recorder(`m${tag}-`, n);
    sink.current = rec;
    const metrics0 = strand ? (await httpText(strand.port, '/metrics')).body : undefined;
    if (strand && SQL_TIMING) await ctx.nc.request('bench.sql-timing', 'reset');
    const loop = monitorEventLoopDelay({ resolution: 5 });
    loop.enable();
    const cpu0 = {
      server: processCpuMicros(svc.child.pid),
      nats: processCpuMicros(ctx.bench.server.pid),
      postgres: postgresCpuMicros(ctx.pgServer.pid),
      bench: process.cpuUsage(),
    };
    const tWindow = performance.now();
    let failures = 0;
    let firstFailure: string | undefined;
    const sendSubject = subject(`m${tag}-`);
    const sent = await paced(
      ctx,
      n,
      RATE,
      (i) => {
        rec.sentAt[i] = performance.now();
        return sendSubject(i);
      },
      body,
      (i, t, m) => {
        rec.reply[i] = t;
        const problem = checkReply(m);
        if (problem !== undefined) {
          failures++;
          firstFailure ??= `#${i}: ${problem}`;
        }
      },
    );
    // The last deliveries: until all are in, or nothing new for 3 s.
    const expected = (n - failures) * FANOUT;
    const waitEnd = Date.now() + 15_000;
    while (rec.received < expected && Date.now() < waitEnd) {
      await sleep(50);
      if (rec.lastArrival > 0 && performance.now() - rec.lastArrival > 3_000) break;
    }
    loop.disable();
    const cpu1 = {
      server: processCpuMicros(svc.child.pid),
      nats: processCpuMicros(ctx.bench.server.pid),
      postgres: postgresCpuMicros(ctx.pgServer.pid),
      bench: process.cpuUsage(cpu0.bench),
    };
    const perCmd = (a: number | undefined, b: number | undefined): number | undefined => (a !== undefined && b !== undefined ? (b - a) / n : undefined);
    const cpu = {
      server: perCmd(cpu0.server, cpu1.server),
      'nats-server': perCmd(cpu0.nats, cpu1.nats),
      ...(kind === 'strand' ? { postgres: perCmd(cpu0.postgres, cpu1.postgres) } : {}),
      'bench (clients+generator)': (cpu1.bench.user + cpu1.bench.system) / n,
    };
    const windowS = (performance.now() - tWindow) / 1000;

    const lat: number[] = [];
    const spread: number[] = [];
    const toFeed: number[] = [];
    const feedToClient: number[] = [];
    const replyLat: number[] = [];
    for (let i = 0; i < n; i++) {
      const r = rec.reply[i]!;
      if (Number.isNaN(r)) continue;
      replyLat.push(r - rec.sentAt[i]!);
      const f = rec.feed[i]!;
      if (!Number.isNaN(f)) toFeed.push(f - r);
      let lo = Number.POSITIVE_INFINITY;
      let hi = Number.NEGATIVE_INFINITY;
      for (let s = 0; s < FANOUT; s++) {
        const a = rec.arrival[i * FANOUT + s]!;
        if (Number.isNaN(a)) continue;
        lat.push(a - r);
        if (!Number.isNaN(f)) feedToClient.push(a - f);
        lo = Math.min(lo, a);
        hi = Math.max(hi, a);
      }
      if (hi >= lo) spread.push(hi - lo);
    }

    let metricsNote = '';
    if (strand && metrics0) {
      const m1 = (await httpText(strand.port, '/metrics')).body;
      const d = (name: string, labels = ''): number => metric(m1, name, labels) - metric(metrics0, name, labels);
      const batches = d('strand_projection_batch_duration_seconds_count', 'projection="task_list_view"');
      const batchSum = d('strand_projection_batch_duration_seconds_sum', 'projection="task_list_view"');
      const applied = d('strand_projection_events_applied_total', 'projection="task_list_view"');
      const pushN = d('strand_live_push_latency_seconds_count');
      const pushSum = d('strand_live_push_latency_seconds_sum');
      const sentMsgs = d('strand_live_messages_sent_total');
      // prom-client resets its event-loop histogram at every scrape: these cover the window.
      const lag = (q: string): string => fmt1(metric(m1, `strand_nodejs_eventloop_lag_${q}_seconds`) * 1000);
      const gcN = d('strand_nodejs_gc_duration_seconds_count', 'kind="minor"');
      const gcSum = d('strand_nodejs_gc_duration_seconds_sum', 'kind="minor"');
      const gcMajorN = d('strand_nodejs_gc_duration_seconds_count', 'kind="major"');
      const gcMajorSum = d('strand_nodejs_gc_duration_seconds_sum', 'kind="major"');
      metricsNote =
        `    Strand's /metrics over the window: task_list_view applied ${fmtInt(applied)} events in ${fmtInt(batches)} batches (${fmt1(applied / batches)} per batch), ` +
        `mean batch transaction ${fmt1((batchSum / batches) * 1000)} ms; ${fmtInt(sentMsgs)} WebSocket messages sent; ` +
        `strand_live_push_latency (event time -> sent) mean ${fmt1((pushSum / pushN) * 1000)} ms over ${fmtInt(pushN)}; ` +
        `event-loop delay of the Strand child p50 ${lag('p50')} ms, p99 ${lag('p99')} ms, max ${lag('max')} ms; ` +
        `garbage collection: ${fmtInt(gcN)} young-generation (mean ${fmt2((gcSum / gcN) * 1000)} ms), ${fmtInt(gcMajorN || 0)} full (${fmt1((gcMajorSum || 0) * 1000)} ms in all)`;
    }
    let sqlNote = '';
    if (strand && SQL_TIMING) {
      const raw = JSON.parse((await ctx.nc.request('bench.sql-timing', 'get')).string()) as [string, number, number][];
      sqlNote = `    SQL awaited by the Strand child over the window (bench/pg-timing.ts):\n${formatStatements(new Map<string, StatementStat>(raw.map(([k, c, ms]) => [k, { n: c, ms }])), 10, '      ')}`;
    }

    const res: LatencyResult = {
      kind,
      sent: n,
      seconds: sent.seconds,
      failures,
      ...(firstFailure !== undefined ? { firstFailure } : {}),
      expected,
      received: rec.received,
      duplicates: rec.duplicates,
      misrouted: rec.misrouted,
      latency: stats(Float64Array.from(lat)),
      reply: stats(Float64Array.from(replyLat)),
      spread: stats(Float64Array.from(spread)),
      ...(kind === 'strand' ? { toFeed: stats(Float64Array.from(toFeed)), feedToClient: stats(Float64Array.from(feedToClient)) } : {}),
      loopDelayP99: loop.percentile(99) / 1e6,
      cpu,
    };
    console.log(
      `  ${kind}: ${fmtInt(n)} commands in ${fmt2(sent.seconds)} s (${fmtInt(n / sent.seconds)}/s), failed replies ${failures}${firstFailure ? ` (first: ${firstFailure})` : ''}; ` +
        `deliveries ${fmtInt(rec.received)}/${fmtInt(expected)}${rec.duplicates ? `, duplicates ${rec.duplicates}` : ''}${rec.misrouted ? `, MISROUTED ${rec.misrouted}` : ''}${errors.length ? `, client errors: ${errors.slice(0, 3).join('; ')}` : ''}`,
    );
    console.log(`    reply -> client: ${statLine(res.latency)}`);
    if (res.toFeed && res.toFeed.n === 0) console.log(`      (no message of the feed ${FEED_SUBJECT} seen here: no split)`);
    else if (res.toFeed && res.feedToClient) {
      console.log(`      reply -> feed (${FEED_SUBJECT} seen here): ${statLine(res.toFeed, 'the feed came before the reply')}`);
      console.log(`      feed -> client:                                     ${statLine(res.feedToClient, 'this process saw the change before the feed message')}`);
    }
    console.log(`    first to last of the ${FANOUT} clients of one command: ${statLine(res.spread)}`);
    console.log(`    command send -> reply (context): ${statLine(res.reply)}`);
    console.log(`    this process's event-loop delay p99 ${fmt1(res.loopDelayP99)} ms (it adds to every figure above)`);
    console.log(`    CPU per command (and share of one core over the ${fmt1(windowS)} s window): ${Object.entries(cpu).map(([k, v]) => (v === undefined ? `${k} ?` : `${k} ${fmtInt(v)} us (${fmtInt((v * n) / windowS / 1e4)}%)`)).join(', ')}`);
    if (metricsNote) console.log(metricsNote);
    if (sqlNote) console.log(sqlNote);
    return res;
  } finally {
    clearInterval(observer);
    feedSub?.unsubscribe();
    if (svc) await stopChild(svc);
    for (const ws of clients) ws?.terminate();
  }
}

async function part1(ctx: Ctx): Promise<LatencyResult[]> {
  console.log(
    `\n== Part 1: latency, ${fmtInt(CLIENTS)} clients (${COORDINATORS} coordinators x ${FANOUT}), ${fmtInt(RATE)} CreateTask/s for ${SECONDS} s after ${WARMUP_S} s warmup; ` +
      `STRAND_PROJECTION_BATCH_MS=${BATCH_MS ?? '20 (default)'}, STRAND_PROJECTION_COMMIT=${COMMIT}; order raw, strand`,
  );
  const raw = await latencyRun(ctx, 'raw');
  const strand = await latencyRun(ctx, 'strand');
  return [raw, strand];
}

// ---- part 2: memory of idle connections -------------------------------------------------------

interface MemoryResult {
  readonly kind: 'bare' | 'strand';
  readonly before: { rss: number; heap: number };
  readonly afterAsIs: { rss: number; peak: number };
  readonly after: { rss: number; heap: number; external: number };
  readonly openSeconds: number;
  readonly metricsHeap?: number;
  readonly metricsRss?: number;
  readonly metricsConnections?: number;
}

async function openIdle(url: string, n: number, key: (i: number) => string, extra: Record<string, unknown> = {}): Promise<WebSocket[]> {
  const out: WebSocket[] = new Array<WebSocket>(n);
  await pool(n, OPEN_CONCURRENCY, async (i) => {
    const ws = await connectWs(url);
    out[i] = ws;
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`connection ${i}: no snapshot within 30 s`)), 30_000);
      ws.once('message', (data) => {
        clearTimeout(t);
        const m = JSON.parse(String(data)) as { type: string; code?: string; message?: string };
        if (m.type === 'snapshot') resolve();
        else reject(new Error(`connection ${i}: ${m.type} ${m.code ?? ''} ${m.message ?? ''}`));
      });
      ws.send(JSON.stringify({ type: 'subscribe', id: 's', view: 'task_list_view', key: key(i), ...extra }));
    });
  });
  return out;
}

async function memoryRun(ctx: Ctx, kind: 'bare' | 'strand'): Promise<MemoryResult> {
  let svc: ServiceProcess | undefined;
  let inspector: Inspector | undefined;
  let clients: WebSocket[] = [];
  let warm: WebSocket[] = [];
  try {
    let port: number;
    let lastSeq = 0;
    if (kind === 'bare') {
      ({ svc, port } = await startRaw(ctx, 'bare', ['--inspect=127.0.0.1:0']));
    } else {
      ({ svc, port } = await startStrand(ctx, 'memory', { nodeArgs: ['--inspect=127.0.0.1:0'] }));
      // The rows the connections follow (they exist, and do not change afterwards).
      await pool(IDLE_ROWS, 64, async (i) => {
        const m = await ctx.requester.request(`cmd.task.idle-${i}.CreateTask`, `{"title":"Idle row ${i}","memberId":"member-${i}","assignedTo":"${coordName(i % COORDINATORS)}"}`);
        if (checkReply(m) !== undefined) throw new Error(`seeding idle-${i}: ${checkReply(m)}`);
        lastSeq = Math.max(lastSeq, (JSON.parse(m.string()) as { seq: number }).seq);
      });
    }
    inspector = await Inspector.open(svc);
    const pid = svc.child.pid!;
    const url = `ws://127.0.0.1:${port}/live`;
    const key = (i: number): string => `idle-${i % IDLE_ROWS}`;
    // Warmup: the code paths of a connection and a subscription, then everything closed again.
    // (For Strand, minSeq also waits until the projection has applied the seeded rows.)
    warm = await openIdle(url, IDLE_WARMUP, key, kind === 'strand' ? { minSeq: lastSeq } : {});
    for (const ws of warm) ws.close();
    warm = [];
    await sleep(1_000);
    await inspector.gc();
    await sleep(500);
    const mem0 = await inspector.memoryUsage();
    const before = { rss: rssOf(pid).rss, heap: mem0.heapUsed };

    const t0 = performance.now();
    clients = await openIdle(url, IDLE, key);
    const openSeconds = (performance.now() - t0) / 1000;
    await sleep(IDLE_HOLD_S * 1000);
    const afterAsIs = rssOf(pid);
    await inspector.gc();
    await sleep(500);
    const mem1 = await inspector.memoryUsage();
    const after = { rss: rssOf(pid).rss, heap: mem1.heapUsed, external: mem1.external };
    let metricsHeap: number | undefined;
    let metricsRss: number | undefined;
    let metricsConnections: number | undefined;
    if (kind === 'strand') {
      const text = (await httpText(port, '/metrics')).body;
      metricsHeap = metric(text, 'strand_nodejs_heap_size_used_bytes');
      metricsRss = metric(text, 'strand_process_resident_memory_bytes');
      metricsConnections = metric(text, 'strand_live_connections');
    }
    const res: MemoryResult = {
      kind,
      before,
      afterAsIs,
      after,
      openSeconds,
      ...(metricsHeap !== undefined ? { metricsHeap } : {}),
      ...(metricsRss !== undefined ? { metricsRss } : {}),
      ...(metricsConnections !== undefined ? { metricsConnections } : {}),
    };
    const per = (a: number, b: number): string => `${fmtInt((b - a) / IDLE)} B`;
    console.log(`  ${kind}: ${fmtInt(IDLE)} connections opened and subscribed in ${fmt1(openSeconds)} s (${fmtInt(IDLE / openSeconds)}/s); open files limit of the server ${openFilesLimitOf(pid)} (soft/hard)`);
    console.log(`    RSS before ${MB(before.rss)} (after GC) | after ${IDLE_HOLD_S} s idle: ${MB(afterAsIs.rss)} as is, ${MB(after.rss)} after GC; peak (VmHWM) ${MB(afterAsIs.peak)}`);
    console.log(`    per connection: RSS ${per(before.rss, after.rss)} after GC (${per(before.rss, afterAsIs.rss)} as is), V8 heap used ${per(before.heap, after.heap)} (${MB(before.heap)} -> ${MB(after.heap)}), external ${MB(after.external)}`);
    if (kind === 'strand') {
      console.log(`    /metrics: strand_live_connections ${metricsConnections}, strand_nodejs_heap_size_used_bytes ${MB(metricsHeap!)}, strand_process_resident_memory_bytes ${MB(metricsRss!)}`);
    }
    return res;
  } finally {
    inspector?.close();
    if (svc) await stopChild(svc);
    for (const ws of [...clients, ...warm]) ws?.terminate();
  }
}

async function part2(ctx: Ctx): Promise<MemoryResult[]> {
  console.log(`\n== Part 2: memory of ${fmtInt(IDLE)} idle connections, one task_list_view key subscription each (STRAND_WS_HEARTBEAT_MS default, 30 s); order bare, strand`);
  const bare = await memoryRun(ctx, 'bare');
  const strand = await memoryRun(ctx, 'strand');
  return [bare, strand];
}

// ---- main -------------------------------------------------------------------------------------

async function summariseProfile(dir: string): Promise<void> {
  const sub = path.join(dir, 'strand');
  let files: string[] = [];
  try {
    files = await fs.readdir(sub);
  } catch {
    return;
  }
  const main = files.find((f) => /^CPU\.\d+\.\d+\.\d+\.0\.\d+\.cpuprofile$/.test(f));
  if (!main) return;
  const file = path.join(sub, main);
  console.log(`\nCPU profile of part 1's Strand child (whole life: start, subscribing, warmup, load): ${file}`);
  console.log(summarizeCpuProfile(JSON.parse(await fs.readFile(file, 'utf8')) as CpuProfile, 30));
}

async function main(): Promise<number> {
  const reexec = ensureFileLimit();
  if (reexec !== undefined) return reexec;

  let bench: BenchServer | undefined;
  let nc: NatsConnection | undefined;
  let db: BenchDatabase | undefined;
  // One cleanup, however many ask (the time limit and the finally below): each waits for all of it.
  let cleaning: Promise<void> | undefined;
  const cleanup = (): Promise<void> =>
    (cleaning ??= (async () => {
      await stopAllServices();
      await db?.cleanup();
      await nc?.close().catch(() => undefined);
      await bench?.cleanup();
    })());
  const limit = hardLimit(TIME_LIMIT_S * 1000, cleanup);
  const started = performance.now();
  try {
    db = await startBenchDatabase('strand-bench-live-');
    const { tmp, pgServer, admin } = db;
    const profileDir = PROFILE ? await fs.mkdtemp(path.join(os.tmpdir(), 'strand-cpuprof-')) : undefined;
    bench = await startBenchServer(sync);
    nc = await connect({ servers: bench.url, name: 'bench-live', noAsyncTraces: true });
    const ctx: Ctx = { bench, nc, jsm: await jetstreamManager(nc), requester: new LeanRequester(nc), pgServer, admin, tmp, profileDir };

    console.log(`live.bench: ${machineLine()}`);
    console.log(`nats-server ${nc.info?.version} on ${bench.url} | sync_interval: ${syncLabel(sync)}`);
    console.log(`PostgreSQL ${(await admin.query('SHOW server_version')).rows[0].server_version} (embedded, default settings) | open files limit of this process ${openFilesLimitOf(process.pid)} (soft/hard)`);

    const latency = PARTS.has('1') ? await part1(ctx) : [];
    const memory = PARTS.has('2') ? await part2(ctx) : [];

    console.log(`\n== Summary | sync_interval: ${sync} | STRAND_PROJECTION_BATCH_MS=${BATCH_MS ?? '20 (default)'} | STRAND_PROJECTION_COMMIT=${COMMIT}`);
    let failed = false;
    const raw = latency.find((r) => r.kind === 'raw');
    const strand = latency.find((r) => r.kind === 'strand');
    if (raw && strand) {
      const ok = strand.latency.p99 <= 25;
      console.log(`latency reply -> client, raw relay: p50 ${fmt1(raw.latency.p50)} ms, p99 ${fmt1(raw.latency.p99)} ms, max ${fmt1(raw.latency.max)} ms`);
      console.log(`latency reply -> client, Strand:    p50 ${fmt1(strand.latency.p50)} ms, p99 ${fmt1(strand.latency.p99)} ms, max ${fmt1(strand.latency.max)} ms  (target p99 <= 25 ms: ${ok ? 'met' : 'MISSED'})`);
      console.log(`  ratio strand/raw: p50 ${fmt1(strand.latency.p50 / raw.latency.p50)}x, p99 ${fmt1(strand.latency.p99 / raw.latency.p99)}x`);
      if (strand.toFeed && strand.feedToClient && strand.toFeed.n > 0) {
        console.log(`  Strand split: reply -> feed p50 ${fmt1(strand.toFeed.p50)} / p99 ${fmt1(strand.toFeed.p99)} ms (projection: batch wait, transaction, re-read), feed -> client p50 ${fmt1(strand.feedToClient.p50)} / p99 ${fmt1(strand.feedToClient.p99)} ms (gateway fan-out, WebSocket)`);
      }
      for (const r of latency) {
        if (r.failures > 0 || r.received < r.expected || r.misrouted > 0) {
          failed = true;
          console.log(`  ${r.kind}: ${r.failures} failed replies, ${fmtInt(r.expected - r.received)} deliveries missing, ${r.misrouted} misrouted`);
        }
      }
    }
    const bare = memory.find((r) => r.kind === 'bare');
    const sm = memory.find((r) => r.kind === 'strand');
    if (bare && sm) {
      const perB = (bare.after.rss - bare.before.rss) / IDLE;
      const perS = (sm.after.rss - sm.before.rss) / IDLE;
      const ok = sm.afterAsIs.rss <= 300 * 2 ** 20 && sm.after.rss <= 300 * 2 ** 20;
      console.log(`memory with ${fmtInt(IDLE)} idle connections, bare ws server: RSS ${MB(bare.afterAsIs.rss)} (${MB(bare.after.rss)} after GC), ${fmtInt(perB)} B per connection`);
      console.log(`memory with ${fmtInt(IDLE)} idle connections, Strand:         RSS ${MB(sm.afterAsIs.rss)} (${MB(sm.after.rss)} after GC), ${fmtInt(perS)} B per connection  (target <= 300 MB: ${ok ? 'met' : 'MISSED'})`);
      console.log(`  ratio strand/bare: total RSS ${fmt2(sm.after.rss / bare.after.rss)}, per connection ${fmt2(perS / perB)}; Strand with no connection: ${MB(sm.before.rss)}`);
    }
    await stopAllServices();
    if (profileDir) await summariseProfile(profileDir);
    console.log(`\ntotal ${fmt1((performance.now() - started) / 1000)} s`);
    return failed ? 1 : 0;
  } finally {
    clearTimeout(limit);
    await cleanup();
  }
}

runBenchMain(main);
