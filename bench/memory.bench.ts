/**
 * Memory per idle actor over 100,000 live actors (target: <= 1 KB beyond its state).
 *
 * In one process (run with --expose-gc): a private nats-server, Strand with
 * STRAND_MAX_ACTORS=200000 and a 10-hour idle timeout, and a lean command client.
 *   1. Warm Strand up (2,000 commands on other ids, then passivate them: 0 actors), gc, heap.
 *   2. CreateTask to 100,000 distinct ids (256 outstanding); check strand.actors.size; gc, heap.
 *      per actor = heap delta / 100,000.
 *   3. "Its state": 100,000 task states built by the aggregate's own evolve from the same kind
 *      of data (JSON-parsed bodies, a distinct ISO time each), held in an array.
 *   4. Baseline: a plain Map<string, state> of 100,000 entries keyed like Strand's registry,
 *      the least a registry of live states could cost.
 *   5. (--history-actors, default 5,000) actors that took --history-commands commands each
 *      (default 20: CreateTask + 19 AssignTask), to show what remembered command IDs cost.
 *
 *   npm run bench:memory -- [--sync always|default] [--actors 100000] [--history-actors 5000]
 *                           [--history-commands 20]
 */
import { connect } from '@nats-io/transport-node';
import type { Msg, NatsConnection } from '@nats-io/nats-core';
import pino from 'pino';
import { aggregates, task } from '../actors/index.js';
import type { EventContext } from '../src/aggregate/types.js';
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
  parseArgs,
  runClosedLoop,
  sleep,
  startBenchServer,
  syncArg,
  type BenchServer,
  runBenchMain,
} from './support.js';

const args = parseArgs();
const sync = syncArg(args);
const ACTORS = intArg(args, 'actors', 100_000);
const HISTORY_ACTORS = intArg(args, 'history-actors', 5_000, 0);
const HISTORY_COMMANDS = intArg(args, 'history-commands', 20, 2);
const OUTSTANDING = intArg(args, 'outstanding', 256);
const TIME_LIMIT_S = intArg(args, 'time-limit', 290);
const WARM = 2_000;
const decoder = new TextDecoder();

const gcFn = (globalThis as { gc?: () => void }).gc;
if (!gcFn) {
  process.stderr.write('memory.bench needs --expose-gc: run `npm run bench:memory` (node --expose-gc --import tsx bench/memory.bench.ts)\n');
  process.exit(2);
}
const collect: () => void = gcFn;

/** Full collections until the heap stops shrinking; returns heapUsed. */
async function settledHeap(): Promise<number> {
  let last = Number.POSITIVE_INFINITY;
  for (let i = 0; i < 10; i++) {
    collect();
    await new Promise((r) => setImmediate(r));
    const h = process.memoryUsage().heapUsed;
    if (i >= 3 && Math.abs(last - h) < 64 * 1024) return h;
    last = h;
  }
  return process.memoryUsage().heapUsed;
}

function checkReply(m: Msg): string | undefined {
  if (m.headers?.code === 503) return 'no responders';
  const r = JSON.parse(decoder.decode(m.data)) as { ok?: boolean; error?: { code?: string; message?: string } };
  return r.ok === true ? undefined : `${r.error?.code}: ${r.error?.message}`;
}

const createBody = (n: number): string => `{"title":"Memory task ${n}","memberId":"member-${n % 1000}","assignedTo":"user-${n % 100}"}`;

async function send(requester: LeanRequester, what: string, count: number, plan: (i: number) => { subject: string; body: string }): Promise<void> {
  const r = await runClosedLoop(requester, count, OUTSTANDING, plan, checkReply, 30_000, false);
  if (r.failures > 0) throw new Error(`${what}: ${r.failures} failed commands, first: ${r.firstFailure}`);
  console.log(`  ${what}: ${fmtInt(count)} commands in ${fmt1(r.seconds)} s (${fmtInt(r.perSecond)} cmd/s)`);
}

/** A task state as evolve builds it from a CreateTask's data, with strings made the way Strand gets them. */
function taskState(n: number): unknown {
  const data = JSON.parse(createBody(n)) as unknown;
  const ctx: EventContext = { type: 'TaskCreated', version: 1, time: new Date(Date.UTC(2026, 0, 1) + n).toISOString(), metadata: {} };
  return task.evolve(task.initialState(), 'TaskCreated', data, ctx);
}

const kb = (bytes: number): string => `${fmtInt(bytes)} B`;

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
    const config = loadConfig({ STRAND_MAX_ACTORS: '200000', STRAND_ACTOR_IDLE_MS: '36000000', STRAND_STREAM: 'EVENTS', LOG_LEVEL: 'warn' });
    strand = await Strand.start({ config, aggregates, natsUrl: bench.url, log: pino({ level: 'warn' }), defaultMetrics: false });
    nc = await connect({ servers: bench.url, name: 'bench-memory', noAsyncTraces: true });
    const requester = new LeanRequester(nc);

    console.log(`memory.bench: ${machineLine()}`);
    console.log(`nats-server ${nc.info?.version} on ${bench.url} | sync_interval: ${sync}`);
    console.log(`plan: ${fmtInt(ACTORS)} actors with one command each; state-only and Map<string, state> baselines; ${HISTORY_ACTORS > 0 ? `then ${fmtInt(HISTORY_ACTORS)} actors with ${HISTORY_COMMANDS} commands each` : 'no history phase'}`);

    // 1. Warm up everything on the command path, then drop those actors again.
    await send(requester, 'warmup', WARM, (i) => ({ subject: `cmd.task.warm-${i}.CreateTask`, body: createBody(i) }));
    for (let i = 0; i < WARM; i++) strand.actors.passivate('task', `warm-${i}`);
    if (strand.actors.size !== 0) throw new Error(`after warmup ${strand.actors.size} actors are still live`);
    const before = await settledHeap();
    const rssBefore = process.memoryUsage().rss;

    // 2. 100,000 live actors.
    await send(requester, 'create', ACTORS, (i) => ({ subject: `cmd.task.m-${i}.CreateTask`, body: createBody(i) }));
    await sleep(200);
    if (strand.actors.size !== ACTORS) throw new Error(`strand.actors.size is ${strand.actors.size}, expected ${ACTORS}`);
    const after = await settledHeap();
    const rssAfter = process.memoryUsage().rss;
    const perActor = (after - before) / ACTORS;

    // 5. (before the baselines, while the 100,000 are live) actors with a history of commands.
    let perHistoryActor: number | undefined;
    if (HISTORY_ACTORS > 0) {
      const h0 = await settledHeap();
      await send(requester, `history (${HISTORY_COMMANDS} per actor)`, HISTORY_ACTORS * HISTORY_COMMANDS, (i) => {
        const round = Math.floor(i / HISTORY_ACTORS);
        const n = i % HISTORY_ACTORS;
        return round === 0
          ? { subject: `cmd.task.h-${n}.CreateTask`, body: createBody(n) }
          : { subject: `cmd.task.h-${n}.AssignTask`, body: `{"assignedTo":"user-${round}-${n % 100}"}` };
      });
      await sleep(200);
      if (strand.actors.size !== ACTORS + HISTORY_ACTORS) throw new Error(`strand.actors.size is ${strand.actors.size}, expected ${ACTORS + HISTORY_ACTORS}`);
      perHistoryActor = ((await settledHeap()) - h0) / HISTORY_ACTORS;
    }
    const liveActors = strand.actors.size;

    // Baselines, with Strand stopped (its actors dropped) so nothing else moves the heap.
    await strand.stop();
    strand = undefined;

    // 3. The state alone.
    const s0 = await settledHeap();
    const states: unknown[] = new Array(ACTORS);
    for (let i = 0; i < ACTORS; i++) states[i] = taskState(i);
    const s1 = await settledHeap();
    const perState = (s1 - s0) / ACTORS;
    if (states.length !== ACTORS) throw new Error('unreachable');
    states.length = 0;

    // 4. A plain Map<string, state>, keyed like Strand's registry.
    const m0 = await settledHeap();
    const map = new Map<string, unknown>();
    for (let i = 0; i < ACTORS; i++) map.set(`task/m-${i}`, taskState(i));
    const m1 = await settledHeap();
    const perEntry = (m1 - m0) / ACTORS;
    if (map.size !== ACTORS) throw new Error('unreachable');
    map.clear();

    const overhead = perActor - perState;
    console.log('');
    console.log(`sync_interval: ${sync} | live actors: ${fmtInt(ACTORS)} (strand.actors.size verified) | node ${process.version}`);
    console.log(`strand, per idle actor (1 command)  : ${kb(perActor)}   (heap ${fmt1(before / 2 ** 20)} -> ${fmt1(after / 2 ** 20)} MiB; rss +${fmt1((rssAfter - rssBefore) / 2 ** 20)} MiB)`);
    console.log(`its state alone (task after Created): ${kb(perState)}`);
    console.log(`Map<string, state>, per entry      : ${kb(perEntry)}   (key + map slot: ${kb(perEntry - perState)})`);
    console.log(`overhead beyond its state          : ${kb(overhead)}   (target <= 1,024 B: ${overhead <= 1024 ? 'met' : 'NOT MET'})`);
    console.log(`ratio strand per actor / Map entry : ${fmt2(perActor / perEntry)}   (overhead vs the Map's key + slot: ${fmt2(overhead / (perEntry - perState))}x)`);
    if (perHistoryActor !== undefined) {
      const perRemembered = (perHistoryActor - perActor) / (HISTORY_COMMANDS - 1);
      console.log(
        `strand, per actor after ${HISTORY_COMMANDS} commands : ${kb(perHistoryActor)}   (+${kb(perRemembered)} per further command: the remembered command IDs; ` +
          `capped at ${task.rememberCommands} per actor, i.e. about ${fmtInt((perRemembered * task.rememberCommands) / 1024)} KiB)`,
      );
    }
    console.log(`(${fmtInt(liveActors)} actors were live at the end)`);
    return 0;
  } finally {
    clearTimeout(limit);
    await cleanup();
  }
}

runBenchMain(main);
