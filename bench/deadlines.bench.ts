/**
 * Deadline accuracy: N deadlines (default 10,000) due at times spread evenly over a window
 * (default 5-20 s from the start), on one nats-server.
 *
 *   strand — Strand's deadline store (src/processes/deadlines.ts): `set` (schedule publish, then
 *            the purge of older generations) with 64 outstanding, and `consume` with its durable
 *            consumer (ack confirmed per deadline);
 *   raw    — the raw nats.js baseline: the same schedules published with `js.publish` and the
 *            `Nats-Schedule` headers (one subject each, no purge) into a work-queue stream of
 *            its own, and read back with a plain `consume` and `ack`.
 *
 * Printed per run and path: sets/s, and the lateness of each deadline's first delivery to its
 * handler (received − due: p50, p99, max), the server's own lateness (the fired message's
 * stream timestamp − due, p50/p99/max), and how many fired exactly once, more than once, never.
 *
 * With `--cluster`, both run on a 3-node loopback cluster, the streams at R3.
 *
 *   npx tsx bench/deadlines.bench.ts [--deadlines 10000] [--from 5] [--to 20] [--runs 1] [--cluster] [--sync always|default] [--time-limit 290]
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { AckPolicy, jetstream, jetstreamManager, type JetStreamClient } from '@nats-io/jetstream';
import { headers, type NatsConnection } from '@nats-io/nats-core';
import { connect } from '@nats-io/transport-node';
import pino from 'pino';
import { startNatsCluster } from '../src/nats/cluster.js';
import { Deadlines } from '../src/processes/deadlines.js';
import { fmt1, fmtInt, hardLimit, intArg, machineLine, parseArgs, percentile, runBenchMain, sleep, startBenchServer, syncArg, syncLabel } from './support.js';

const args = parseArgs();
const sync = syncArg(args);
const N = intArg(args, 'deadlines', 10_000);
const FROM_S = intArg(args, 'from', 5);
const TO_S = intArg(args, 'to', 20);
const RUNS = intArg(args, 'runs', 1);
const TIME_LIMIT_S = intArg(args, 'time-limit', 290);
const CLUSTER = args.get('cluster') === 'true';
const REPLICAS = CLUSTER ? 3 : 1;
const OUTSTANDING = 64;
/** After the last due time, how long to wait for stragglers (and duplicates). */
const GRACE_MS = 5_000;
const RAW_STREAM = 'RAWDL';

interface Result {
  readonly setsPerSecond: number;
  /** received − due of each deadline's first delivery, ms, sorted. */
  readonly late: number[];
  /** fired message's stream timestamp − due, ms, sorted. */
  readonly serverLate: number[];
  readonly once: number;
  readonly twice: number;
  readonly never: number;
}

/** The i-th deadline's due time: evenly over [FROM_S, TO_S] from `t0`. */
const dueOf = (t0: number, i: number): number => t0 + FROM_S * 1000 + Math.floor(((TO_S - FROM_S) * 1000 * i) / N);

class Tally {
  readonly count = new Map<number, number>();
  readonly late: number[] = [];
  readonly serverLate: number[] = [];
  see(i: number, due: number, firedAt: number): void {
    const n = (this.count.get(i) ?? 0) + 1;
    this.count.set(i, n);
    if (n === 1) {
      this.late.push(Date.now() - due);
      this.serverLate.push(firedAt - due);
    }
  }
  async settle(t0: number): Promise<Omit<Result, 'setsPerSecond'>> {
    const end = dueOf(t0, N - 1) + GRACE_MS;
    while (Date.now() < end && this.count.size < N) await sleep(50);
    await sleep(Math.min(2_000, Math.max(0, end - Date.now()))); // duplicates, if any
    let once = 0;
    let twice = 0;
    for (const n of this.count.values()) n === 1 ? once++ : twice++;
    return { late: [...this.late].sort((a, b) => a - b), serverLate: [...this.serverLate].sort((a, b) => a - b), once, twice, never: N - this.count.size };
  }
}

/** Runs `f(i)` for i in [0, N) with OUTSTANDING at once; resolves with the per-second rate. */
async function all(f: (i: number) => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < N) await f(next++);
  };
  await Promise.all(Array.from({ length: OUTSTANDING }, worker));
  return N / ((performance.now() - t0) / 1000);
}

async function strandRun(nc: NatsConnection, run: number): Promise<Result> {
  const deadlines = await Deadlines.open(nc, { stream: 'BENCH', replicas: REPLICAS }, pino({ level: 'warn' }));
  const tally = new Tally();
  const t0 = Date.now();
  const owner = `bench${run}`;
  const consumer = await deadlines.consume([owner], async (d) => tally.see(Number(d.id.slice(1)), d.due.getTime(), d.firedAt.getTime()));
  const setsPerSecond = await all((i) => deadlines.set({ owner, id: `d${i}`, name: 'due' }, new Date(dueOf(t0, i)), { token: `t${i}` }));
  const r = await tally.settle(t0);
  await consumer.stop();
  return { setsPerSecond, ...r };
}

async function rawRun(nc: NatsConnection, js: JetStreamClient, run: number): Promise<Result> {
  const jsm = await jetstreamManager(nc);
  const tally = new Tally();
  const t0 = Date.now();
  const name = `raw${run}`;
  await jsm.consumers.add(RAW_STREAM, { durable_name: name, filter_subject: `raw.fire.${run}.>`, ack_policy: AckPolicy.Explicit, max_ack_pending: 256 });
  const messages = await (await js.consumers.get(RAW_STREAM, name)).consume({
    max_messages: 256,
    callback: (m) => {
      const i = Number(m.subject.slice(m.subject.lastIndexOf('.') + 1));
      tally.see(i, Date.parse(m.headers!.get('Due')), m.info.timestampNanos / 1e6);
      m.ack();
    },
  });
  const setsPerSecond = await all((i) => {
    const due = new Date(dueOf(t0, i)).toISOString();
    const h = headers();
    h.set('Due', due);
    h.set('Nats-Schedule', `@at ${due}`);
    h.set('Nats-Schedule-Target', `raw.fire.${run}.${i}`);
    return js.publish(`raw.at.${run}.${i}`, '', { headers: h });
  });
  const r = await tally.settle(t0);
  messages.stop();
  return { setsPerSecond, ...r };
}

const stats = (xs: number[]): string => `p50 ${fmtInt(percentile(xs, 0.5))} ms, p99 ${fmtInt(percentile(xs, 0.99))} ms, max ${fmtInt(xs[xs.length - 1] ?? NaN)} ms`;

function line(label: string, r: Result): string {
  return (
    `  ${label.padEnd(6)} sets ${fmtInt(r.setsPerSecond)}/s | received − due: ${stats(r.late)} | fired − due (server): ${stats(r.serverLate)}` +
    ` | fired once ${fmtInt(r.once)}/${fmtInt(N)}, more than once ${r.twice}, never ${r.never}`
  );
}

async function main(): Promise<number> {
  if (TO_S <= FROM_S) throw new Error('--to must be after --from');
  const server = CLUSTER ? await benchCluster() : await startBenchServer(sync);
  const limit = hardLimit(TIME_LIMIT_S * 1000, () => server.cleanup());
  const nc = await connect({ servers: server.url.split(',') });
  try {
    const js = jetstream(nc);
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: RAW_STREAM, subjects: ['raw.at.>', 'raw.fire.>'], retention: 'workqueue' as never, allow_msg_schedules: true, allow_rollup_hdrs: true, num_replicas: REPLICAS });
    console.log(`deadlines.bench: ${machineLine()}`);
    console.log(`nats-server ${nc.info?.version}${CLUSTER ? ' | 3-node cluster, streams at R3' : ''} | sync_interval: ${syncLabel(sync)} | ${fmtInt(N)} deadlines due ${FROM_S}-${TO_S} s after the start, set ${OUTSTANDING} at a time, ${RUNS} run(s)`);
    const ratios: string[] = [];
    for (let run = 1; run <= RUNS; run++) {
      const s = await strandRun(nc, run);
      console.log(line('strand', s));
      const raw = await rawRun(nc, js, run);
      console.log(line('raw', raw));
      const p99 = percentile(s.late, 0.99) / Math.max(1, percentile(raw.late, 0.99));
      ratios.push(`run ${run}: sets strand/raw ${fmt1((s.setsPerSecond / raw.setsPerSecond) * 100)} %, received − due p99 strand/raw ${p99.toFixed(2)}`);
    }
    console.log('');
    for (const r of ratios) console.log(r);
    await nc.close();
    return 0;
  } finally {
    clearTimeout(limit);
    await server.cleanup();
  }
}

/** A 3-node loopback cluster in a temporary folder, removed by cleanup. */
async function benchCluster(): Promise<{ url: string; cleanup(): Promise<void> }> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'strand-bench-deadlines-'));
  let cleaning: Promise<void> | undefined;
  try {
    const c = await startNatsCluster({ dir, sync });
    return {
      url: c.urls,
      cleanup: () =>
        (cleaning ??= (async () => {
          await c.stop().catch(() => undefined);
          await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
        })()),
    };
  } catch (err) {
    await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
    throw err;
  }
}

runBenchMain(main);
