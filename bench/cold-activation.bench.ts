/**
 * Cold activation in a large stream: what a failover costs per aggregate. Every partition that
 * moves activates its aggregates anew on the next owner, so the figures here bound the failover.
 *
 * In one process: a private nats-server, Strand (STRAND_SNAPSHOT_EVERY=--snapshot-every), and a
 * client. The stream is filled with --aggregates tasks of --per events each (default 100,000 ×
 * 10 = 1,000,000 events), written round by round (every task's first event, then every task's
 * second, …) so each task's events are spread over the whole stream, as years of traffic leave
 * them. The events are copies of ones Strand wrote for a template task (same envelope and data
 * shape), published straight to the stream: filling through commands would take minutes.
 * Then, on disjoint samples of tasks never touched since (cold in Strand and in the server's
 * caches as far as a sample can be), one at a time:
 *   - rehydrate, replay:        strand.actors.rehydrate(task, id, { useSnapshot: false })
 *   - rehydrate, snapshot:      the same with a snapshot at version per-2 (a tail of 2 events)
 *   - cold command:             AssignTask on a task not in memory (activation + decide + append)
 *   - cold command, snapshot:   the same on tasks with a snapshot
 *   - raw baseline:             the task's events by batch direct get (next_by_subj), not decoded
 *   - raw command baseline:     a request-reply round trip to a bare responder
 *
 *   npm run bench:cold -- [--aggregates 100000] [--per 10] [--sample 1000] [--snapshot-every 8]
 *                         [--sync always|default]
 */
import { jetstream } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import type { Msg, NatsConnection } from '@nats-io/nats-core';
import pino from 'pino';
import { aggregates, task } from '../actors/index.js';
import { Strand } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { KvSnapshotStore } from '../src/eventstore/snapshots.js';
import type { EventEnvelope } from '../src/eventstore/types.js';
import {
  LeanRequester,
  fmt1,
  fmt2,
  fmtInt,
  hardLimit,
  intArg,
  machineLine,
  parseArgs,
  percentile,
  processCpuMicros,
  runBenchMain,
  startBenchServer,
  syncArg,
  type BenchServer,
} from './support.js';

const args = parseArgs();
const sync = syncArg(args);
const AGGREGATES = intArg(args, 'aggregates', 100_000, 10);
const PER = intArg(args, 'per', 10, 3);
const SAMPLE = intArg(args, 'sample', 1000);
const SNAPSHOT_EVERY = intArg(args, 'snapshot-every', 8);
const TIME_LIMIT_S = intArg(args, 'time-limit', 900);
const STREAM = 'EVENTS';
const decoder = new TextDecoder();

/** The stored envelope of the last event on `subject`, by direct get. */
async function lastEnvelope(nc: NatsConnection, subject: string): Promise<EventEnvelope> {
  const m = await nc.request(`$JS.API.DIRECT.GET.${STREAM}`, JSON.stringify({ last_by_subj: subject }), { timeout: 5000 });
  if (m.data.length === 0) throw new Error(`no message on ${subject}: ${m.headers?.code} ${m.headers?.description}`);
  return JSON.parse(decoder.decode(m.data)) as EventEnvelope;
}

/** Messages of `filter` by batch direct get, counted, not decoded. */
function rawFetch(requester: LeanRequester, filter: string): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    let count = 0;
    const page = (from: number): void => {
      let last: Msg | undefined;
      requester.sendMany(`$JS.API.DIRECT.GET.${STREAM}`, JSON.stringify({ seq: from, batch: 1000, next_by_subj: filter }), (m) => {
        if (m.data.length > 0) {
          count++;
          last = m;
          return false;
        }
        const code = m.headers?.code ?? 0;
        if (code === 204) {
          const pending = Number(m.headers?.get('Nats-Num-Pending') || 0);
          if (pending > 0 && last) page(Number(last.headers!.get('Nats-Sequence')) + 1);
          else resolve(count);
        } else if (code === 404) resolve(count);
        else reject(new Error(`direct get: ${code} ${m.headers?.description ?? ''}`));
        return true;
      });
    };
    page(1);
  });
}

function request(requester: LeanRequester, subject: string, body: string): Promise<Msg> {
  return new Promise<Msg>((resolve) => requester.sendMany(subject, body, (m) => (resolve(m), true)));
}

interface Series {
  readonly name: string;
  readonly ms: number[];
  note: string;
}

function row(s: Series): string {
  const sorted = [...s.ms].sort((a, b) => a - b);
  return `${s.name.padEnd(34)} p50 ${fmt2(percentile(sorted, 0.5)).padStart(7)} ms   p99 ${fmt2(percentile(sorted, 0.99)).padStart(7)} ms   n=${s.ms.length}  ${s.note}`;
}

const p50 = (s: Series): number => percentile([...s.ms].sort((a, b) => a - b), 0.5);
const p99 = (s: Series): number => percentile([...s.ms].sort((a, b) => a - b), 0.99);

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
    if (SAMPLE * 5 > AGGREGATES) throw new Error(`--sample ${SAMPLE} needs at least ${SAMPLE * 5} aggregates (five disjoint samples)`);
    if (SNAPSHOT_EVERY >= PER) throw new Error(`--snapshot-every ${SNAPSHOT_EVERY} must be below --per ${PER}: a shorter history never reads its snapshot`);
    bench = await startBenchServer(sync);
    const config = loadConfig({ STRAND_SNAPSHOT_EVERY: String(SNAPSHOT_EVERY), STRAND_ACTOR_IDLE_MS: '3600000', STRAND_STREAM: STREAM, LOG_LEVEL: 'warn' });
    strand = await Strand.start({ config, aggregates, natsUrl: bench.url, log: pino({ level: 'warn' }), defaultMetrics: false });
    nc = await connect({ servers: bench.url, name: 'bench-cold-activation', noAsyncTraces: true });
    const requester = new LeanRequester(nc);
    console.log(`cold-activation.bench: ${machineLine()}`);
    console.log(`nats-server ${nc.info?.version} on ${bench.url} | sync_interval: ${sync}`);
    console.log(`plan: ${fmtInt(AGGREGATES)} tasks × ${PER} events = ${fmtInt(AGGREGATES * PER)} events, interleaved; snapshot every ${SNAPSHOT_EVERY}; samples of ${fmtInt(SAMPLE)} tasks`);

    // Templates: one task through Strand, its events read back.
    const ok = async (subject: string, body: string): Promise<void> => {
      const r = JSON.parse(decoder.decode((await request(requester, subject, body)).data)) as { ok?: boolean; error?: unknown };
      if (r.ok !== true) throw new Error(`${subject}: ${JSON.stringify(r)}`);
    };
    await ok('cmd.task.template.CreateTask', '{"title":"A task","memberId":"member-1","assignedTo":"user-0"}');
    await ok('cmd.task.template.AssignTask', '{"assignedTo":"user-1"}');
    const created = await lastEnvelope(nc, 'evt.task.template.TaskCreated');
    const assigned = await lastEnvelope(nc, 'evt.task.template.TaskAssigned');

    // Fill, round by round, with JetStream publishes (acknowledged; a plain publish beyond the
    // stream's ingest queue is dropped by the server) and a window of outstanding ones.
    const js = jetstream(nc);
    const t0 = performance.now();
    const serverCpu0 = processCpuMicros(bench.server.pid);
    const window = new Set<Promise<unknown>>();
    for (let v = 1; v <= PER; v++) {
      for (let i = 0; i < AGGREGATES; i++) {
        const id = `t-${i}`;
        const base = v === 1 ? created : assigned;
        const e: EventEnvelope = {
          ...base,
          id: `${id}-${v}`,
          aggregateId: id,
          version: v,
          data: v === 1 ? base.data : { assignedTo: `user-${v}` },
          metadata: { ...base.metadata, commandId: `${id}-c${v}` },
        };
        const p: Promise<unknown> = js.publish(`evt.task.${id}.${e.type}`, JSON.stringify(e), { timeout: 30_000 }).finally(() => window.delete(p));
        window.add(p);
        if (window.size >= 2000) await Promise.race(window);
      }
    }
    await Promise.all(window);
    const want = AGGREGATES * PER + 2;
    const fillS = (performance.now() - t0) / 1000;
    console.log(`filled ${fmtInt(want)} events in ${fmt1(fillS)} s (${fmtInt(want / fillS)} events/s; nats-server CPU ${fmt1(((processCpuMicros(bench.server.pid) ?? 0) - (serverCpu0 ?? 0)) / 1e6)} s)`);

    // Five disjoint samples spread over the whole key space.
    const stride = Math.floor(AGGREGATES / (SAMPLE * 5));
    const sample = (k: number): string[] => Array.from({ length: SAMPLE }, (_, j) => `t-${(j * 5 + k) * stride}`);
    const [replayIds, snapIds, coldIds, coldSnapIds, rawIds] = [0, 1, 2, 3, 4].map(sample) as [string[], string[], string[], string[], string[]];

    // Snapshots at version PER-2, as Strand writes them, for two of the samples.
    const snapshots = await KvSnapshotStore.open(nc, STREAM, 1);
    for (const id of [...snapIds, ...coldSnapIds]) {
      const at = await strand.actors.stateAt(task, id, { version: PER - 2 });
      await snapshots.save('task', id, { fingerprint: task.fingerprint, version: at.version, seq: at.seq, state: at.state, recent: [], takenAt: new Date().toISOString() });
    }

    const replay: Series = { name: 'rehydrate, replay', ms: [], note: '' };
    const snap: Series = { name: `rehydrate, snapshot + 2 tail`, ms: [], note: '' };
    const cold: Series = { name: 'cold command, replay', ms: [], note: '' };
    const coldSnap: Series = { name: 'cold command, snapshot + 2 tail', ms: [], note: '' };
    const raw: Series = { name: 'raw: batch direct get', ms: [], note: `(${PER} messages, not decoded)` };
    const rawReq: Series = { name: 'raw: request-reply round trip', ms: [], note: '(bare responder)' };
    const sources = new Map<string, number>();
    const time = async <T>(s: Series, f: () => Promise<T>): Promise<T> => {
      const t = performance.now();
      const r = await f();
      s.ms.push(performance.now() - t);
      return r;
    };
    const echo = nc.subscribe('bench.echo', { callback: (_e, m) => void m.respond(m.data) });
    const strandCpu0 = processCpuMicros(process.pid);
    for (let j = 0; j < SAMPLE; j++) {
      const r1 = await time(replay, () => strand!.actors.rehydrate(task, replayIds[j]!, { useSnapshot: false }));
      if (r1.version !== PER) throw new Error(`${replayIds[j]}: replay reached version ${r1.version}, not ${PER}`);
      const r2 = await time(snap, () => strand!.actors.rehydrate(task, snapIds[j]!, { useSnapshot: true }));
      if (r2.version !== PER) throw new Error(`${snapIds[j]}: snapshot activation reached version ${r2.version}, not ${PER}`);
      sources.set(r2.source, (sources.get(r2.source) ?? 0) + 1);
      await time(cold, () => ok(`cmd.task.${coldIds[j]}.AssignTask`, '{"assignedTo":"user-new"}'));
      await time(coldSnap, () => ok(`cmd.task.${coldSnapIds[j]}.AssignTask`, '{"assignedTo":"user-new"}'));
      const n = await time(raw, () => rawFetch(requester, `evt.task.${rawIds[j]}.*`));
      if (n !== PER) throw new Error(`raw fetch of ${rawIds[j]}: ${n} messages, not ${PER}`);
      await time(rawReq, () => request(requester, 'bench.echo', '{"assignedTo":"user-new"}'));
    }
    const strandCpu = ((processCpuMicros(process.pid) ?? 0) - (strandCpu0 ?? 0)) / 1000;
    echo.unsubscribe();
    snap.note = `(sources: ${[...sources].map(([k, v]) => `${k} ${v}`).join(', ')})`;

    console.log('');
    console.log(`stream: ${fmtInt(want)} events over ${fmtInt(AGGREGATES)} tasks | sync_interval: ${sync} | snapshot every ${SNAPSHOT_EVERY}`);
    for (const s of [replay, snap, cold, coldSnap, raw, rawReq]) console.log(row(s));
    console.log(`ratio replay/raw-fetch: p50 ${fmt2(p50(replay) / p50(raw))}, p99 ${fmt2(p99(replay) / p99(raw))}   ratio cold-command/(raw fetch + raw round trip): p50 ${fmt2(p50(cold) / (p50(raw) + p50(rawReq)))}`);
    console.log(`this process's CPU (Strand and the client) during the measured loop: ${fmt1(strandCpu / (SAMPLE * 6))} ms per operation`);
    console.log('Strand activates on demand: after a failover each aggregate of a moved partition pays one cold command, not the whole partition up front.');
    return 0;
  } finally {
    clearTimeout(limit);
    await cleanup();
  }
}

runBenchMain(main);
