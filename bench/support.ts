import { startEmbeddedPostgres, type RunningPostgres } from '../src/postgres/embedded.js';
import pg from 'pg';
/**
 * Shared helpers of the benchmarks: argument parsing, a private nats-server in a temporary
 * store, a lean request-reply client (one wildcard reply subscription, a pending map keyed by
 * a counter in the reply subject, no per-request timers), and percentile arithmetic.
 *
 * Nothing here imports Strand's own code except the nats-server launcher.
 */
import { readFileSync, readdirSync } from 'node:fs';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { nuid, type Msg, type MsgHdrs, type NatsConnection, type Subscription } from '@nats-io/nats-core';
import { startNatsServer, type RunningNatsServer } from '../src/nats/server.js';

export type SyncMode = 'always' | 'default';

/** `--name value` / `--name=value` flags; bare `--flag` is "true". */
export function parseArgs(argv: readonly string[] = process.argv.slice(2)): Map<string, string> {
  const out = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) continue;
    const eq = a.indexOf('=');
    if (eq > 0) {
      out.set(a.slice(2, eq), a.slice(eq + 1));
    } else {
      const next = argv[i + 1];
      if (next !== undefined && !next.startsWith('--')) {
        out.set(a.slice(2), next);
        i++;
      } else {
        out.set(a.slice(2), 'true');
      }
    }
  }
  return out;
}

export function syncArg(args: Map<string, string>): SyncMode {
  const s = args.get('sync') ?? 'default';
  if (s !== 'always' && s !== 'default') throw new Error(`--sync must be "always" or "default", got ${JSON.stringify(s)}`);
  return s;
}

/** `--commit async|sync`: STRAND_PROJECTION_COMMIT of the read sides under test (Strand's default: async). */
export function commitArg(args: Map<string, string>): 'async' | 'sync' {
  const c = args.get('commit') ?? 'async';
  if (c !== 'async' && c !== 'sync') throw new Error(`--commit must be "async" or "sync", got ${JSON.stringify(c)}`);
  return c;
}

export function intArg(args: Map<string, string>, name: string, dflt: number, min = 1): number {
  const v = args.get(name);
  if (v === undefined) return dflt;
  const n = Number(v.replace(/_/g, ''));
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
  return n;
}

/** The line every benchmark prints: which durability mode the server ran with. */
export function syncLabel(sync: SyncMode): string {
  return sync === 'always' ? 'always' : 'default (nats-server flushes every 2 min)';
}

export interface BenchServer {
  readonly server: RunningNatsServer;
  readonly url: string;
  readonly storeDir: string;
  /** Stops the server and removes its store. Idempotent, never throws. */
  cleanup(): Promise<void>;
}

/** A private nats-server on a free port with a temporary store (never the machine's own 4222), with optional subject mappings. */
export async function startBenchServer(sync: SyncMode, mappings?: Readonly<Record<string, string>>): Promise<BenchServer> {
  const storeDir = await fs.mkdtemp(path.join(os.tmpdir(), 'strand-bench-'));
  let server: RunningNatsServer;
  try {
    server = await startNatsServer({ storeDir, sync, ...(mappings ? { mappings } : {}) });
  } catch (err) {
    await fs.rm(storeDir, { recursive: true, force: true }).catch(() => undefined);
    throw err;
  }
  // One cleanup, however many callers (a time-limit abort can race main's own): all wait for it.
  let cleaning: Promise<void> | undefined;
  return {
    server,
    url: server.url,
    storeDir,
    cleanup() {
      cleaning ??= (async () => {
        await server.stop().catch(() => undefined);
        await fs.rm(storeDir, { recursive: true, force: true }).catch(() => undefined);
      })();
      return cleaning;
    },
  };
}

/**
 * Request-reply with the least client-side cost: one wildcard reply subscription, replies
 * matched by a counter in the reply subject, no timer and no Error allocated per request.
 * A request that never gets a reply is found by the caller's own watchdog.
 */
export class LeanRequester {
  private readonly prefix = `_INBOX.${nuid.next()}.`;
  private readonly pending = new Map<number, (m: Msg) => void>();
  private readonly sub: Subscription;
  private next = 1;

  constructor(private readonly nc: NatsConnection) {
    this.sub = nc.subscribe(`${this.prefix}*`, {
      callback: (err, msg) => {
        if (err) return;
        const id = Number(msg.subject.slice(this.prefix.length));
        const cb = this.pending.get(id);
        if (!cb) return;
        this.pending.delete(id);
        cb(msg);
      },
    });
  }

  get outstanding(): number {
    return this.pending.size;
  }

  /** Sends one request; `cb` runs with its (single) reply. Returns the request's number (for {@link forget}). */
  send(subject: string, payload: string | Uint8Array, cb: (m: Msg) => void, headers?: MsgHdrs): number {
    const id = this.next++;
    this.pending.set(id, cb);
    this.nc.publish(subject, payload, headers ? { reply: this.prefix + id, headers } : { reply: this.prefix + id });
    return id;
  }

  /** Stops waiting for a request's reply (the caller gave up on it); a late reply is dropped. */
  forget(id: number): void {
    this.pending.delete(id);
  }

  /** Sends one request and feeds every reply to `onMsg` until it returns true (batch direct get). */
  sendMany(subject: string, payload: string | Uint8Array, onMsg: (m: Msg) => boolean): void {
    const id = this.next++;
    const cb = (m: Msg): void => {
      if (!onMsg(m)) this.pending.set(id, cb);
    };
    this.pending.set(id, cb);
    this.nc.publish(subject, payload, { reply: this.prefix + id });
  }

  request(subject: string, payload: string | Uint8Array, timeoutMs = 10_000): Promise<Msg> {
    return new Promise<Msg>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no reply from ${subject} within ${timeoutMs} ms`)), timeoutMs);
      this.send(subject, payload, (m) => {
        clearTimeout(t);
        resolve(m);
      });
    });
  }

  close(): void {
    this.sub.unsubscribe();
    this.pending.clear();
  }
}

export interface OpenLoopResult {
  readonly commands: number;
  readonly seconds: number;
  readonly perSecond: number;
  readonly p50: number;
  readonly p99: number;
  readonly failures: number;
  readonly firstFailure?: string;
}

/**
 * Sends `count` requests keeping exactly `outstanding` of them in flight; `plan(i)` gives the
 * i-th request. Every reply is checked with `check` (returns an error text or undefined).
 * Fails when nothing completes for `stallMs`. With `durationMs`, stops sending once that much
 * time has passed (or `count` were sent) and resolves when the requests in flight are answered.
 * With `ratePerSecond`, sends no faster than that (at most `outstanding` in flight): a fixed
 * load, so that CPU per request can be compared between setups that differ in speed.
 */
export function runClosedLoop(
  requester: LeanRequester,
  count: number,
  outstanding: number,
  plan: (i: number) => { subject: string; body: string },
  check: (m: Msg) => string | undefined,
  stallMs = 20_000,
  recordLatency = true,
  durationMs = Number.POSITIVE_INFINITY,
  ratePerSecond = Number.POSITIVE_INFINITY,
): Promise<OpenLoopResult> {
  const encoder = new TextEncoder();
  const started = recordLatency ? new Float64Array(count) : undefined;
  const latency = recordLatency ? new Float64Array(count) : undefined;
  const timed = durationMs !== Number.POSITIVE_INFINITY;
  const paced = ratePerSecond !== Number.POSITIVE_INFINITY;
  let sent = 0;
  let done = 0;
  let failures = 0;
  let firstFailure: string | undefined;
  let lastProgress = Date.now();
  return new Promise<OpenLoopResult>((resolve, reject) => {
    const t0 = performance.now();
    const sendUntil = t0 + durationMs;
    /** Whether sending is over (all sent, or the time is up). */
    const over = (): boolean => sent >= count || (timed && performance.now() >= sendUntil);
    /** Whether one more may go now. */
    const may = (): boolean => !over() && (!paced || sent < ((performance.now() - t0) / 1000) * ratePerSecond);
    let pacer: NodeJS.Timeout | undefined;
    const finish = (): void => {
      clearInterval(watchdog);
      clearInterval(pacer);
      const seconds = (performance.now() - t0) / 1000;
      const sorted = latency ? Float64Array.from(latency.subarray(0, done)).sort() : new Float64Array(0);
      resolve({
        commands: done,
        seconds,
        perSecond: done / seconds,
        p50: percentile(sorted, 0.5),
        p99: percentile(sorted, 0.99),
        failures,
        ...(firstFailure !== undefined ? { firstFailure } : {}),
      });
    };
    const watchdog = setInterval(() => {
      if (Date.now() - lastProgress > stallMs) {
        clearInterval(watchdog);
        clearInterval(pacer);
        reject(new Error(`stalled: ${done}/${count} replies after ${sent} sent, nothing for ${stallMs} ms`));
      }
    }, 500);
    const sendOne = (): void => {
      const i = sent++;
      const { subject, body } = plan(i);
      if (started) started[i] = performance.now();
      requester.send(subject, encoder.encode(body), (m) => {
        if (latency && started) latency[i] = performance.now() - started[i]!;
        const problem = check(m);
        if (problem !== undefined) {
          failures++;
          firstFailure ??= `#${i} ${subject}: ${problem}`;
        }
        done++;
        lastProgress = Date.now();
        if (may()) sendOne();
        else if (done === sent && over()) finish();
      });
    };
    if (paced) {
      pacer = setInterval(() => {
        lastProgress = Math.max(lastProgress, done === sent ? Date.now() : lastProgress);
        while (sent - done < outstanding && may()) sendOne();
        if (done === sent && over()) finish();
      }, 2);
    } else {
      for (let k = 0; k < Math.min(outstanding, count); k++) sendOne();
    }
  });
}

/** Nearest-rank percentile of an ascending array (NaN when empty). */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1));
  return sorted[idx]!;
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export const fmtInt = (n: number): string => Math.round(n).toLocaleString('en-US');
export const fmt1 = (n: number): string => n.toFixed(1);
export const fmt2 = (n: number): string => n.toFixed(2);

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A hard limit on a benchmark's total run time: exits non-zero (after cleanup) when hit. */
export function hardLimit(ms: number, cleanup: () => Promise<void>): NodeJS.Timeout {
  const t = setTimeout(() => {
    process.stderr.write(`benchmark exceeded its time limit of ${Math.round(ms / 1000)} s; aborting\n`);
    void cleanup().finally(() => process.exit(3));
  }, ms);
  t.unref();
  return t;
}

/**
 * CPU time (user + system, all threads) a process has used so far, in microseconds, from
 * /proc/<pid>/stat; undefined where there is no /proc.
 */
export function processCpuMicros(pid: number | undefined, reapedChildren = false): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15, cutime and cstime
    // (children that exited and were waited for) 16 and 17.
    const ticks = Number(fields[11]) + Number(fields[12]) + (reapedChildren ? Number(fields[13]) + Number(fields[14]) : 0);
    return Number.isFinite(ticks) ? (ticks * 1e6) / CLOCK_TICKS : undefined;
  } catch {
    return undefined;
  }
}

/** USER_HZ: 100 on every Linux this runs on (getconf CLK_TCK). */
const CLOCK_TICKS = 100;

/** CPU time so far of each current child of `parent` (pid -> microseconds), from /proc. */
export function childrenCpuMicros(parent: number): Map<number, number> {
  const out = new Map<number, number>();
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return out;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid !== parent) continue;
      const cpu = processCpuMicros(Number(entry));
      if (cpu !== undefined) out.set(Number(entry), cpu);
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/**
 * CPU time of a PostgreSQL server: the postmaster, its current children (backends, WAL
 * writer, …) and those that have exited, microseconds; undefined where there is no /proc.
 */
export function postgresCpuMicros(postmaster: number): number | undefined {
  // With the backends that have exited (the postmaster waits for them): the total only grows.
  const own = processCpuMicros(postmaster, true);
  if (own === undefined) return undefined;
  let total = own;
  for (const cpu of childrenCpuMicros(postmaster).values()) total += cpu;
  return total;
}

/** The machine, for the printed header. */
export function machineLine(): string {
  const cpus = os.cpus();
  const load = os.loadavg().map((x) => x.toFixed(2)).join(' ');
  return `node ${process.version} | ${cpus.length} cores (${cpus[0]?.model.trim() ?? '?'}) | ${Math.round(os.totalmem() / 2 ** 30)} GiB | load average ${load} (other processes skew absolute figures; ratios less so)`;
}

/** Runs a benchmark's main and exits with its code (1 and the error on a throw). */
export function runBenchMain(main: () => Promise<number>): void {
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}

/** A TCP port free on 127.0.0.1 right now (for a child service that must be told its port). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const a = srv.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** A throwaway embedded PostgreSQL for a benchmark, in a temp folder, with an admin connection. */
export interface BenchDatabase {
  readonly tmp: string;
  readonly pgServer: RunningPostgres;
  readonly admin: pg.Client;
  cleanup(): Promise<void>;
}

/** Starts one; the folder holds the cluster and whatever else the benchmark puts there. */
export async function startBenchDatabase(prefix: string, settings?: Record<string, string | number | boolean>): Promise<BenchDatabase> {
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), prefix));
  // As root the embedded PostgreSQL runs as the OS user `postgres`, which must be able to enter it.
  await fs.chmod(tmp, 0o711);
  let pgServer: RunningPostgres | undefined;
  let admin: pg.Client | undefined;
  const cleanup = async (): Promise<void> => {
    await admin?.end().catch(() => undefined);
    await pgServer?.stop().catch(() => undefined);
    await fs.rm(tmp, { recursive: true, force: true }).catch(() => undefined);
  };
  try {
    pgServer = await startEmbeddedPostgres({ dataDir: path.join(tmp, 'pg'), database: 'postgres', persistent: false, ...(settings ? { settings } : {}) });
    admin = new pg.Client({ connectionString: pgServer.url, application_name: 'bench-admin' });
    admin.on('error', () => undefined);
    await admin.connect();
  } catch (err) {
    await cleanup();
    throw err;
  }
  return { tmp, pgServer, admin, cleanup };
}
