/**
 * Durable command intake against request-reply, on one nats-server and one Strand instance
 * (in this process, commands role, no database), 256 outstanding over 1,000 aggregates.
 *
 * Per run, on fresh aggregate IDs:
 *   request-reply — `cmd.task.<id>.<Command>` with 256 requests outstanding: commands/s;
 *   durable       — the same commands published to `cmdq.task.<id>.<Command>` with 256 PubAcks
 *                   outstanding while the instance runs: commands/s from the first publish until
 *                   the stream `EVENTS_COMMANDS` is empty (every outcome recorded);
 *   publish only  — the raw JetStream baseline: the same publishes with the instance stopped
 *                   (what nats-server alone does with them), then the backlog: the instance
 *                   started again, seconds from its start until the stream is empty.
 * Printed: commands/s of each, the ratios durable/request-reply and durable/publish-only, and
 * CPU per command of this process (Strand and the load generator together) and of nats-server.
 *
 *   npx tsx bench/durable.bench.ts [--sync always|default] [--commands 10000] [--aggregates 1000] [--runs 2] [--time-limit 290]
 */
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { headers, type Msg } from '@nats-io/nats-core';
import { connect } from '@nats-io/transport-node';
import pino from 'pino';
import { aggregates } from '../actors/index.js';
import { Strand } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { commandStreamName } from '../subjects/index.js';
import { LeanRequester, fmt2, fmtInt, hardLimit, intArg, machineLine, median, parseArgs, processCpuMicros, runBenchMain, runClosedLoop, sleep, startBenchServer, syncArg, syncLabel } from './support.js';

const args = parseArgs();
const sync = syncArg(args);
const COMMANDS = intArg(args, 'commands', 10_000);
const AGGREGATES = intArg(args, 'aggregates', 1_000);
const RUNS = intArg(args, 'runs', 2);
const TIME_LIMIT_S = intArg(args, 'time-limit', 290);
const OUTSTANDING = 256;
const decoder = new TextDecoder();

/** The i-th command over `ids` aggregates: round 0 creates each, later rounds reassign. */
function plan(prefix: string, i: number): { id: string; command: string; body: string } {
  const round = Math.floor(i / AGGREGATES);
  const n = i % AGGREGATES;
  return round === 0
    ? { id: `${prefix}${n}`, command: 'CreateTask', body: `{"title":"Benchmark task ${n}","memberId":"m-${n % 100}","assignedTo":"u-${n % 100}"}` }
    : { id: `${prefix}${n}`, command: 'AssignTask', body: `{"assignedTo":"u-${round}-${n % 100}"}` };
}

/** Publishes every command to cmdq with `OUTSTANDING` PubAcks awaited at once. */
async function publishAll(js: JetStreamClient, prefix: string): Promise<number> {
  const t0 = performance.now();
  const inFlight = new Set<Promise<unknown>>();
  for (let i = 0; i < COMMANDS; i++) {
    while (inFlight.size >= OUTSTANDING) await Promise.race(inFlight);
    const c = plan(prefix, i);
    const h = headers();
    h.set('Strand-Command-Id', `${prefix}${i}`);
    const p: Promise<unknown> = js.publish(`cmdq.task.${c.id}.${c.command}`, c.body, { headers: h }).finally(() => inFlight.delete(p));
    inFlight.add(p);
  }
  await Promise.all(inFlight);
  return (performance.now() - t0) / 1000;
}

async function untilDrained(jsm: JetStreamManager): Promise<void> {
  while ((await jsm.streams.info(commandStreamName('EVENTS'))).state.messages > 0) await sleep(20);
}

function check(m: Msg): string | undefined {
  const r = JSON.parse(decoder.decode(m.data)) as { ok?: boolean; error?: { code?: string } };
  return r.ok === true ? undefined : r.error?.code ?? 'unreadable';
}

interface Run {
  requestReply: number;
  durable: number;
  publishOnly: number;
  backlogSeconds: number;
  cpu: { rr: [number, number]; durable: [number, number] };
}

async function main(): Promise<number> {
  const server = await startBenchServer(sync);
  let strand: Strand | undefined;
  const cleanup = async (): Promise<void> => {
    await strand?.stop().catch(() => undefined);
    await server.cleanup();
  };
  const limit = hardLimit(TIME_LIMIT_S * 1000, cleanup);
  try {
    const nc = await connect({ servers: server.url, noAsyncTraces: true });
    const js = jetstream(nc);
    const jsm = await jetstreamManager(nc);
    const requester = new LeanRequester(nc);
    const config = loadConfig({ STRAND_ROLES: 'commands', LOG_LEVEL: 'warn', STRAND_DURABLE_INTAKE: 'true' });
    const start = () => Strand.start({ config, aggregates, natsUrl: server.url, log: pino({ level: 'warn' }), defaultMetrics: false });
    const cpu = () => [process.cpuUsage(), processCpuMicros(server.server.pid) ?? 0] as const;
    const perCommand = (c0: ReturnType<typeof cpu>): [number, number] => {
      const u = process.cpuUsage(c0[0]);
      return [(u.user + u.system) / COMMANDS, ((processCpuMicros(server.server.pid) ?? 0) - c0[1]) / COMMANDS];
    };
    console.log(`durable.bench: ${machineLine()}`);
    console.log(`nats-server ${nc.info?.version} | sync_interval: ${syncLabel(sync)} | ${fmtInt(COMMANDS)} commands over ${fmtInt(AGGREGATES)} aggregates, ${OUTSTANDING} outstanding, ${RUNS} run(s)`);
    const runs: Run[] = [];
    for (let r = 1; r <= RUNS; r++) {
      strand = await start();
      while (!strand.region!.ready) await sleep(20);
      let c0 = cpu();
      const rr = await runClosedLoop(requester, COMMANDS, OUTSTANDING, (i) => {
        const c = plan(`rr${r}-`, i);
        return { subject: `cmd.task.${c.id}.${c.command}`, body: c.body };
      }, check, 20_000, false);
      if (rr.failures > 0) throw new Error(`request-reply: ${rr.failures} failures, first ${rr.firstFailure}`);
      const cpuRr = perCommand(c0);
      c0 = cpu();
      const t0 = performance.now();
      await publishAll(js, `dq${r}-`);
      await untilDrained(jsm);
      const durableSeconds = (performance.now() - t0) / 1000;
      const cpuDurable = perCommand(c0);
      await strand.stop();
      strand = undefined;
      const publishSeconds = await publishAll(js, `bk${r}-`);
      const t1 = performance.now();
      strand = await start();
      await untilDrained(jsm);
      const backlogSeconds = (performance.now() - t1) / 1000;
      await strand.stop();
      strand = undefined;
      const run: Run = { requestReply: rr.perSecond, durable: COMMANDS / durableSeconds, publishOnly: COMMANDS / publishSeconds, backlogSeconds, cpu: { rr: cpuRr, durable: cpuDurable } };
      runs.push(run);
      console.log(
        `  run ${r}: request-reply ${fmtInt(run.requestReply)} cmd/s | durable ${fmtInt(run.durable)} cmd/s | publish only ${fmtInt(run.publishOnly)} msg/s | backlog of ${fmtInt(COMMANDS)} drained ${fmt2(backlogSeconds)} s after start` +
          `\n         cpu per command (us): request-reply this process ${fmtInt(cpuRr[0])}, nats-server ${fmtInt(cpuRr[1])} | durable this process ${fmtInt(cpuDurable[0])}, nats-server ${fmtInt(cpuDurable[1])}`,
      );
    }
    const m = (f: (r: Run) => number): number => median(runs.map(f));
    console.log('');
    console.log(`medians: request-reply ${fmtInt(m((r) => r.requestReply))} cmd/s, durable ${fmtInt(m((r) => r.durable))} cmd/s, publish only ${fmtInt(m((r) => r.publishOnly))} msg/s`);
    console.log(`ratio durable/request-reply: ${fmt2(m((r) => r.durable / r.requestReply))} (per run ${runs.map((r) => fmt2(r.durable / r.requestReply)).join(', ')})`);
    console.log(`ratio durable/publish only: ${fmt2(m((r) => r.durable / r.publishOnly))} (per run ${runs.map((r) => fmt2(r.durable / r.publishOnly)).join(', ')})`);
    console.log(`ratio nats-server cpu per command durable/request-reply: ${fmt2(m((r) => r.cpu.durable[1] / r.cpu.rr[1]))}; this process: ${fmt2(m((r) => r.cpu.durable[0] / r.cpu.rr[0]))}`);
    requester.close();
    await nc.close();
    return 0;
  } finally {
    clearTimeout(limit);
    await cleanup();
  }
}

runBenchMain(main);
