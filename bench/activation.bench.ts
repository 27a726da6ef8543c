/**
 * Cold activation of an aggregate with 10,000 events, with and without a snapshot
 * (target: <= 20 ms with one).
 *
 * In one process: a private nats-server, Strand (STRAND_SNAPSHOT_EVERY=100), and a command
 * client. Task `big-1` gets CreateTask then 9,999 AssignTask (64 outstanding; one actor runs
 * them in order), so its snapshot is at version 10,000 with no tail. Task `big-2` gets 10,050
 * events: the snapshot at 10,000 plus a 50-event tail. Then, N times each, interleaved:
 *   - strand.actors.rehydrate(task, id, { useSnapshot: true })   (snapshot + tail)
 *   - strand.actors.rehydrate(task, id, { useSnapshot: false })  (replays every event)
 *   - raw baseline: the same 10,000 messages by batch direct get ($JS.API.DIRECT.GET.EVENTS,
 *     batch 1000, next_by_subj), counted but not decoded.
 * The ratio full-replay / raw-fetch says what decoding and folding cost over the bare fetch.
 *
 *   npm run bench:activation -- [--sync always|default] [--events 10000] [--n 20] [--tail 50]
 *                               [--outstanding 64]       (--tail 0 skips big-2)
 */
import { isDeepStrictEqual } from 'node:util';
import { connect } from '@nats-io/transport-node';
import type { Msg, NatsConnection } from '@nats-io/nats-core';
import { Kvm } from '@nats-io/kv';
import pino from 'pino';
import { aggregates, task } from '../actors/index.js';
import { Strand } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import {
  LeanRequester,
  fmt1,
  fmt2,
  fmtInt,
  hardLimit,
  intArg,
  machineLine,
  median,
  parseArgs,
  percentile,
  runClosedLoop,
  sleep,
  startBenchServer,
  syncArg,
  type BenchServer,
  runBenchMain,
} from './support.js';

const args = parseArgs();
const sync = syncArg(args);
const EVENTS = intArg(args, 'events', 10_000, 2);
const N = intArg(args, 'n', 20);
const TAIL = intArg(args, 'tail', 50, 0);
const OUTSTANDING = intArg(args, 'outstanding', 64);
const TIME_LIMIT_S = intArg(args, 'time-limit', 290);
const SNAPSHOT_EVERY = 100;
const STREAM = 'EVENTS';
const decoder = new TextDecoder();

function checkReply(m: Msg): string | undefined {
  if (m.headers?.code === 503) return 'no responders';
  const r = JSON.parse(decoder.decode(m.data)) as { ok?: boolean; error?: { code?: string; message?: string } };
  return r.ok === true ? undefined : `${r.error?.code}: ${r.error?.message}`;
}

/** Writes `events` events to task `id` through Strand: CreateTask, then AssignTask. */
async function fill(requester: LeanRequester, id: string, events: number): Promise<void> {
  const t0 = performance.now();
  const r = await runClosedLoop(
    requester,
    events,
    OUTSTANDING,
    (i) =>
      i === 0
        ? { subject: `cmd.task.${id}.CreateTask`, body: '{"title":"A long-lived task","memberId":"member-1","assignedTo":"user-0"}' }
        : { subject: `cmd.task.${id}.AssignTask`, body: `{"assignedTo":"user-${i % 97}"}` },
    checkReply,
    30_000,
    false,
  );
  if (r.failures > 0) throw new Error(`filling ${id}: ${r.failures} failed commands, first: ${r.firstFailure}`);
  const s = (performance.now() - t0) / 1000;
  console.log(`wrote ${fmtInt(events)} events to task/${id} through Strand in ${fmt1(s)} s (${fmtInt(events / s)} cmd/s, one actor, ${OUTSTANDING} outstanding)`);
}

async function waitSnapshot(nc: NatsConnection, id: string, version: number): Promise<void> {
  const kv = await new Kvm(nc).open(`${STREAM}_snapshots`);
  const end = Date.now() + 30_000;
  for (;;) {
    const e = await kv.get(`task.${id}`);
    const v = e && e.length > 0 ? e.json<{ version: number }>().version : 0;
    if (v === version) return;
    if (Date.now() > end) throw new Error(`snapshot of task/${id} at version ${version} not written within 30 s (latest: ${v})`);
    await sleep(50);
  }
}

/** Fetches the messages of `filter` (all, or the first `limit`) by batch direct get, counting without decoding. */
function rawFetch(requester: LeanRequester, filter: string, limit = Number.MAX_SAFE_INTEGER, fromSeq = 1): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    let count = 0;
    const page = (from: number): void => {
      let last: Msg | undefined;
      let got = 0;
      const batch = Math.min(1000, limit - count);
      requester.sendMany(`$JS.API.DIRECT.GET.${STREAM}`, JSON.stringify({ seq: from, batch, next_by_subj: filter }), (m) => {
        if (m.data.length > 0) {
          count++;
          got++;
          last = m;
          return false;
        }
        // Empty body: end of batch (204), nothing found (404) or an error.
        const code = m.headers?.code ?? 0;
        if (code === 204) {
          const pending = Number(m.headers?.get('Nats-Num-Pending') || 0);
          if (pending > 0 && got > 0 && count < limit) page(Number(last!.headers!.get('Nats-Sequence')) + 1);
          else resolve(count);
        } else if (code === 404) {
          resolve(count);
        } else {
          reject(new Error(`direct get: ${code} ${m.headers?.description ?? ''}`));
        }
        return true;
      });
    };
    page(fromSeq);
  });
}

/** The latest value of a KV key by direct get, without decoding; resolves with its size in bytes. */
function rawKvGet(requester: LeanRequester, bucket: string, key: string): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    requester.sendMany(`$JS.API.DIRECT.GET.KV_${bucket}`, JSON.stringify({ last_by_subj: `$KV.${bucket}.${key}` }), (m) => {
      if (m.data.length > 0) resolve(m.data.length);
      else reject(new Error(`kv direct get: ${m.headers?.code} ${m.headers?.description ?? ''}`));
      return true;
    });
  });
}

/**
 * What a snapshot activation reads, fetched raw and in the same order: the first
 * `every` events (activation reads those first: a short history needs no snapshot), the
 * snapshot, then the events after the snapshot's sequence.
 */
async function rawSnapshotPath(requester: LeanRequester, id: string, every: number, snapSeq: number): Promise<number> {
  const filter = `evt.task.${id}.*`;
  await rawFetch(requester, filter, every);
  const size = await rawKvGet(requester, `${STREAM}_snapshots`, `task.${id}`);
  await rawFetch(requester, filter, Number.MAX_SAFE_INTEGER, snapSeq + 1);
  return size;
}

interface Series {
  readonly name: string;
  readonly ms: number[];
  source: string;
}

function row(s: Series, extra = ''): string {
  const sorted = [...s.ms].sort((a, b) => a - b);
  return `${s.name.padEnd(40)} median ${fmt2(median(s.ms)).padStart(7)} ms   p90 ${fmt2(percentile(sorted, 0.9)).padStart(7)} ms   source: ${s.source.padEnd(8)} ${extra}`;
}

async function main(): Promise<number> {
  let bench: BenchServer | undefined;
  let strand: Strand | undefined;
  let nc: NatsConnection | undefined;
  const cleanup = async (): Promise<void> => {
    await strand?.stop().catch(() => undefined);
    await nc?.close().catch(() => undefined);
    await bench?.cleanup();
  };
  const limit = hardLimit(TIME_LIMIT_S * 1000, cleanup);
  try {
    bench = await startBenchServer(sync);
    const config = loadConfig({ STRAND_SNAPSHOT_EVERY: String(SNAPSHOT_EVERY), STRAND_ACTOR_IDLE_MS: '3600000', STRAND_STREAM: STREAM, LOG_LEVEL: 'warn' });
    strand = await Strand.start({ config, aggregates, natsUrl: bench.url, log: pino({ level: 'warn' }), defaultMetrics: false });
    nc = await connect({ servers: bench.url, name: 'bench-activation', noAsyncTraces: true });
    const requester = new LeanRequester(nc);

    console.log(`activation.bench: ${machineLine()}`);
    console.log(`nats-server ${nc.info?.version} on ${bench.url} | sync_interval: ${sync}`);
    console.log(`plan: task/big-1 with ${fmtInt(EVENTS)} events${TAIL > 0 ? `, task/big-2 with ${fmtInt(EVENTS + TAIL)}` : ''}; snapshot every ${SNAPSHOT_EVERY}; N=${N} activations of each kind, interleaved`);

    await fill(requester, 'big-1', EVENTS);
    const snapVersion = Math.floor(EVENTS / SNAPSHOT_EVERY) * SNAPSHOT_EVERY;
    await waitSnapshot(nc, 'big-1', snapVersion);
    if (TAIL > 0) {
      await fill(requester, 'big-2', EVENTS + TAIL);
      await waitSnapshot(nc, 'big-2', Math.floor((EVENTS + TAIL) / SNAPSHOT_EVERY) * SNAPSHOT_EVERY);
    }
    console.log(`snapshots present (task.big-1 at version ${snapVersion}${TAIL > 0 ? `, task.big-2 at ${Math.floor((EVENTS + TAIL) / SNAPSHOT_EVERY) * SNAPSHOT_EVERY}` : ''})`);
    strand.actors.passivate('task', 'big-1');
    strand.actors.passivate('task', 'big-2');

    // Correctness first: both ways reach the same state at the same version.
    const a = await strand.actors.rehydrate(task, 'big-1', { useSnapshot: true });
    const b = await strand.actors.rehydrate(task, 'big-1', { useSnapshot: false });
    if (a.version !== EVENTS || b.version !== EVENTS || !isDeepStrictEqual(a.state, b.state) || a.seq !== b.seq) {
      throw new Error(`snapshot and replay disagree: snapshot v${a.version} seq ${a.seq}, replay v${b.version} seq ${b.seq}`);
    }
    const fetched = await rawFetch(requester, 'evt.task.big-1.*');
    if (fetched !== EVENTS) throw new Error(`raw fetch got ${fetched} messages, expected ${EVENTS}`);

    const withSnap: Series = { name: 'rehydrate, snapshot (big-1)', ms: [], source: '' };
    const full: Series = { name: 'rehydrate, full replay (big-1)', ms: [], source: '' };
    const raw: Series = { name: 'raw batch direct get, no decoding', ms: [], source: 'raw' };
    const rawSnap: Series = { name: 'raw snapshot path, no decoding', ms: [], source: 'raw' };
    const rawFirst: Series = { name: `  of which: first ${SNAPSHOT_EVERY} events`, ms: [], source: 'raw' };
    const rawKv: Series = { name: '  of which: KV get of the snapshot', ms: [], source: 'raw' };
    const rawTail: Series = { name: '  of which: tail after the snapshot', ms: [], source: 'raw' };
    const rawFirst2: Series = { name: `raw first ${SNAPSHOT_EVERY} events of big-2`, ms: [], source: 'raw' };
    const snapSeq = a.seq; // big-1's snapshot is at its last event
    const snapBytes = await rawKvGet(requester, `${STREAM}_snapshots`, 'task.big-1');
    const tail: Series = { name: `rehydrate, snapshot + ${TAIL} tail (big-2)`, ms: [], source: '' };
    const tailFull: Series = { name: `rehydrate, full replay (big-2)`, ms: [], source: '' };
    const time = async <T>(s: Series, f: () => Promise<T>, src?: (r: T) => string): Promise<void> => {
      const t0 = performance.now();
      const r = await f();
      s.ms.push(performance.now() - t0);
      if (src) s.source = src(r);
    };
    for (let i = 0; i < N; i++) {
      await time(raw, () => rawFetch(requester, 'evt.task.big-1.*'));
      await time(rawSnap, () => rawSnapshotPath(requester, 'big-1', SNAPSHOT_EVERY, snapSeq));
      await time(rawFirst, () => rawFetch(requester, 'evt.task.big-1.*', SNAPSHOT_EVERY));
      await time(rawKv, () => rawKvGet(requester, `${STREAM}_snapshots`, 'task.big-1'));
      await time(rawTail, () => rawFetch(requester, 'evt.task.big-1.*', Number.MAX_SAFE_INTEGER, snapSeq + 1));
      await time(withSnap, () => strand!.actors.rehydrate(task, 'big-1', { useSnapshot: true }), (r) => r.source);
      await time(full, () => strand!.actors.rehydrate(task, 'big-1', { useSnapshot: false }), (r) => r.source);
      if (TAIL > 0) {
        await time(rawFirst2, () => rawFetch(requester, 'evt.task.big-2.*', SNAPSHOT_EVERY));
        await time(tail, () => strand!.actors.rehydrate(task, 'big-2', { useSnapshot: true }), (r) => `${r.source} v${r.version}`);
        if (i < Math.min(N, 5)) await time(tailFull, () => strand!.actors.rehydrate(task, 'big-2', { useSnapshot: false }), (r) => r.source);
      }
    }

    const ratio = median(full.ms) / median(raw.ms);
    console.log('');
    console.log(`sync_interval: ${sync} | events: ${EVENTS} | snapshot every: ${SNAPSHOT_EVERY} | N: ${N}`);
    console.log(row(withSnap, `(target <= 20 ms: ${median(withSnap.ms) <= 20 ? 'met' : 'NOT MET'})`));
    console.log(row(full));
    console.log(row(raw, `(${fmtInt(EVENTS)} messages)`));
    console.log(row(rawSnap, `(first ${SNAPSHOT_EVERY} events, snapshot of ${fmtInt(snapBytes)} bytes, empty tail)`));
    console.log(row(rawFirst));
    console.log(row(rawKv));
    console.log(row(rawTail, '(no events: the snapshot is at the last one)'));
    if (TAIL > 0) {
      console.log(row(tail));
      console.log(row(rawFirst2, `(its first event is behind big-1's ${fmtInt(EVENTS)}: compare with big-1's first ${SNAPSHOT_EVERY})`));
      console.log(row(tailFull, `(N=${tailFull.ms.length})`));
    }
    console.log(`ratio full-replay/raw-fetch: ${fmt2(ratio)}   ratio snapshot/raw-snapshot-path: ${fmt2(median(withSnap.ms) / median(rawSnap.ms))}   ratio snapshot/full-replay: ${fmt2(median(withSnap.ms) / median(full.ms))}`);
    return 0;
  } finally {
    clearTimeout(limit);
    await cleanup();
  }
}

runBenchMain(main);
