/**
 * Command throughput: 256 commands outstanding over 10,000 aggregates, one event each.
 *
 * One nats-server (private port, temporary store). Two services run one after the other as
 * child processes, so the load generator never shares an event loop with them:
 *   raw    — bench/raw-service.ts: request -> JetStream publish with the expected subject
 *            sequence -> reply, no framework;
 *   strand — `node --import tsx src/main.ts` (what `npm start` runs) against the same server.
 * Order raw, strand, raw, strand; each run starts on an empty stream with fresh ids. The
 * figure that matters is the ratio strand/raw of the medians (target >= 0.6).
 *
 *   npm run bench -- [--sync always|default] [--commands 60000] [--outstanding 256]
 *                    [--aggregates 10000] [--warmup 3000] [--pairs 3] [--profile]
 *                    [--roles commands|commands,projections]
 *
 * --commands defaults to 15,000 with --sync always (each append waits for an fsync).
 * --roles is the Strand service's STRAND_ROLES: `commands` by default, the same work as the raw
 * loop; `commands,projections` also runs the read side (its embedded PostgreSQL is started in
 * a temporary data directory either way, since src/main.ts starts one when DATABASE_URL is unset).
 *
 * --profile runs the Strand service under `node --cpu-prof` and prints the top self-time
 * functions of each profile (see bench/cpuprofile.ts).
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { mainThreadProfile, summarizeCpuProfile } from './cpuprofile.js';
import { checkReply, cpuProfArgs, deleteStream, freshRawStream, planner, startRawService, startStrandService, type Kind } from './command-loop.js';
import { stopAllServices, type ServiceProcess } from './service.js';
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
  processCpuMicros,
  runClosedLoop,
  startBenchServer,
  syncArg,
  type BenchServer,
  type OpenLoopResult,
  runBenchMain,
} from './support.js';

const args = parseArgs();
const sync = syncArg(args);
// With sync_interval: always every append waits for an fsync (about 1-2k cmd/s here): fewer
// commands by default keep the run within a few minutes.
const COMMANDS = intArg(args, 'commands', sync === 'always' ? 15_000 : 60_000);
const OUTSTANDING = intArg(args, 'outstanding', 256);
const AGGREGATES = intArg(args, 'aggregates', 10_000);
const WARMUP = intArg(args, 'warmup', 3_000, 0);
const PAIRS = intArg(args, 'pairs', 3);
const PROFILE = args.has('profile');
const TIME_LIMIT_S = intArg(args, 'time-limit', 290);
/** STRAND_ROLES of the Strand service: the command path only by default, like the raw loop. */
const ROLES = args.get('roles') ?? 'commands';

const STRAND_STREAM = 'EVENTS';

interface RunResult extends OpenLoopResult {
  readonly kind: Kind;
  readonly run: number;
  readonly serviceLogLines: number;
  /** CPU microseconds per measured command: the service, nats-server, this load generator. */
  readonly cpu?: { service: number; server: number; load: number };
}

/**
 * When the service had to be killed, the embedded PostgreSQL it started may outlive it: stop
 * that one (and only that one: its pid is in its data directory's postmaster.pid).
 */
async function stopOrphanPostgres(dataDir: string): Promise<void> {
  let pid: number;
  try {
    pid = Number((await fs.readFile(path.join(dataDir, 'postgres', 'postmaster.pid'), 'utf8')).split('\n')[0]);
  } catch {
    return; // never started, or shut down cleanly
  }
  if (!Number.isInteger(pid) || pid <= 1) return;
  const alive = (): boolean => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  if (!alive()) return;
  process.kill(pid, 'SIGINT'); // PostgreSQL's fast shutdown
  for (let i = 0; i < 100 && alive(); i++) await new Promise((r) => setTimeout(r, 100));
  if (alive()) process.kill(pid, 'SIGKILL');
}

const liveDataDirs = new Set<string>();

async function removeDataDir(dataDir: string): Promise<void> {
  await stopOrphanPostgres(dataDir).catch(() => undefined);
  await fs.rm(dataDir, { recursive: true, force: true }).catch(() => undefined);
  liveDataDirs.delete(dataDir);
}

async function oneRun(kind: Kind, run: number, url: string, serverPid: number, jsm: JetStreamManager, requester: LeanRequester, profileDir: string | undefined): Promise<RunResult> {
  let svc: ServiceProcess | undefined;
  const dataDir = kind === 'strand' ? await fs.mkdtemp(path.join(os.tmpdir(), 'strand-bench-data-')) : undefined;
  if (dataDir) {
    // As root the embedded PostgreSQL runs as the `postgres` user, which must be able to enter it.
    await fs.chmod(dataDir, 0o711);
    liveDataDirs.add(dataDir);
  }
  try {
    if (kind === 'raw') {
      await freshRawStream(jsm);
      svc = await startRawService(url, cpuProfArgs(profileDir, `${Date.now()}-raw`));
    } else {
      // Each Strand run starts on an empty stream too (the service recreates it).
      await deleteStream(jsm, STRAND_STREAM);
      await deleteStream(jsm, `KV_${STRAND_STREAM}_snapshots`);
      svc = await startStrandService(
        'strand (src/main.ts)',
        // Its own data directory (the embedded PostgreSQL lives there), never the repository's .strand.
        { NATS_URL: url, PORT: '0', LOG_LEVEL: 'warn', STRAND_STREAM: STRAND_STREAM, STRAND_ROLES: ROLES, STRAND_DATA_DIR: dataDir! },
        requester,
        `warmup-${run}-`,
        cpuProfArgs(profileDir, `${Date.now()}-strand`),
      );
    }
    if (WARMUP > 0) {
      const warmIds = Math.max(1, Math.min(AGGREGATES, Math.ceil(WARMUP / 2)));
      const w = await runClosedLoop(requester, WARMUP, OUTSTANDING, planner(kind, `w${run}-`, warmIds), checkReply);
      if (w.failures > 0) throw new Error(`${kind} warmup: ${w.failures} failed replies, first: ${w.firstFailure}`);
    }
    const cpu0 = { service: processCpuMicros(svc.child.pid), server: processCpuMicros(serverPid), load: process.cpuUsage() };
    const r = await runClosedLoop(requester, COMMANDS, OUTSTANDING, planner(kind, `r${run}-`, AGGREGATES), checkReply);
    const cpu1 = { service: processCpuMicros(svc.child.pid), server: processCpuMicros(serverPid), load: process.cpuUsage(cpu0.load) };
    const cpu =
      cpu0.service !== undefined && cpu1.service !== undefined && cpu0.server !== undefined && cpu1.server !== undefined
        ? { service: (cpu1.service - cpu0.service) / r.commands, server: (cpu1.server - cpu0.server) / r.commands, load: (cpu1.load.user + cpu1.load.system) / r.commands }
        : undefined;
    const res: RunResult = { ...r, kind, run, serviceLogLines: svc.lines.count, ...(cpu ? { cpu } : {}) };
    console.log(
      `  run ${run} ${kind.padEnd(6)}: ${fmtInt(r.perSecond).padStart(7)} cmd/s  p50 ${fmt1(r.p50).padStart(5)} ms  p99 ${fmt1(r.p99).padStart(5)} ms  ` +
        `(${fmtInt(r.commands)} in ${fmt2(r.seconds)} s, failures ${r.failures}${r.firstFailure ? `, first: ${r.firstFailure}` : ''})` +
        (cpu ? `\n      cpu per command: service ${fmtInt(cpu.service)} us, nats-server ${fmtInt(cpu.server)} us, load generator ${fmtInt(cpu.load)} us` : ''),
    );
    return res;
  } finally {
    if (svc) {
      const exit = await svc.stop();
      if (exit.code !== 0) console.log(`  ${svc.name} exited with ${exit.code ?? exit.signal}; last output:\n${svc.output()}`);
      else if (kind === 'strand' && svc.lines.count > 0) console.log(`  ${svc.name} wrote ${svc.lines.count} log line(s); last:\n${svc.output().slice(-1_000)}`);
    }
    if (dataDir) await removeDataDir(dataDir);
  }
}

async function main(): Promise<number> {
  let bench: BenchServer | undefined;
  let nc: NatsConnection | undefined;
  let profileDir: string | undefined;
  const cleanup = async (): Promise<void> => {
    await stopAllServices();
    for (const d of [...liveDataDirs]) await removeDataDir(d);
    await nc?.close().catch(() => undefined);
    await bench?.cleanup();
  };
  const limit = hardLimit(TIME_LIMIT_S * 1000, cleanup);
  try {
    bench = await startBenchServer(sync);
    nc = await connect({ servers: bench.url, name: 'bench-load', noAsyncTraces: true });
    const jsm = await jetstreamManager(nc);
    const requester = new LeanRequester(nc);
    if (PROFILE) profileDir = await fs.mkdtemp(path.join(os.tmpdir(), 'strand-cpuprof-'));

    console.log(`commands.bench: ${machineLine()}`);
    console.log(`nats-server ${nc.info?.version} on ${bench.url} | sync_interval: ${sync}`);
    console.log(`plan: ${fmtInt(COMMANDS)} commands (round 0 CreateTask, then AssignTask) over ${fmtInt(AGGREGATES)} aggregates, ${OUTSTANDING} outstanding, warmup ${fmtInt(WARMUP)} on other ids; order raw, strand x${PAIRS}; Strand service STRAND_ROLES=${ROLES}`);

    const results: RunResult[] = [];
    for (let p = 0; p < PAIRS; p++) {
      results.push(await oneRun('raw', p + 1, bench.url, bench.server.pid, jsm, requester, profileDir));
      results.push(await oneRun('strand', p + 1, bench.url, bench.server.pid, jsm, requester, profileDir));
    }

    const failures = results.reduce((s, r) => s + r.failures, 0);
    const raw = results.filter((r) => r.kind === 'raw');
    const strand = results.filter((r) => r.kind === 'strand');
    const line = (name: string, rs: RunResult[]): string =>
      `${name.padEnd(9)}: ${fmtInt(median(rs.map((r) => r.perSecond)))} cmd/s  p50 ${fmt1(median(rs.map((r) => r.p50)))} ms  p99 ${fmt1(median(rs.map((r) => r.p99)))} ms`;
    const ratio = median(strand.map((r) => r.perSecond)) / median(raw.map((r) => r.perSecond));
    console.log('');
    console.log(`sync_interval: ${sync} | commands: ${COMMANDS} | outstanding: ${OUTSTANDING} | aggregates: ${AGGREGATES}`);
    console.log(line('raw', raw));
    console.log(line('strand', strand));
    console.log(`ratio strand/raw: ${fmt2(ratio)} (target >= 0.60)${ratio >= 0.6 ? '' : '  BELOW TARGET'}`);
    const pairRatios = raw.map((r, i) => (strand[i] ? strand[i]!.perSecond / r.perSecond : Number.NaN));
    console.log(`(medians of ${PAIRS} run(s) each; per-pair ratios ${pairRatios.map(fmt2).join(', ')}; failed replies: ${failures})`);
    const cpuLine = (name: string, rs: RunResult[]): string | undefined => {
      const c = rs.map((r) => r.cpu).filter((x): x is NonNullable<RunResult['cpu']> => x !== undefined);
      if (c.length === 0) return undefined;
      return `cpu/command ${name.padEnd(6)}: service ${fmtInt(median(c.map((x) => x.service)))} us, nats-server ${fmtInt(median(c.map((x) => x.server)))} us, load generator ${fmtInt(median(c.map((x) => x.load)))} us`;
    };
    for (const l of [cpuLine('raw', raw), cpuLine('strand', strand)]) if (l) console.log(l);

    if (profileDir) {
      // One directory per service process; its main thread's profile is CPU.<date>.<time>.<pid>.0.<n>.cpuprofile
      // (tsx's module-loader worker writes another, skipped).
      for (const dir of (await fs.readdir(profileDir)).sort()) {
        const file = await mainThreadProfile(path.join(profileDir, dir));
        if (!file) continue;
        console.log(`\nCPU profile of the ${dir.endsWith('raw') ? 'raw' : 'Strand'} service (whole process life, incl. start and warmup): ${file}`);
        console.log(summarizeCpuProfile(JSON.parse(await fs.readFile(file, 'utf8')), 30));
      }
    }
    if (failures > 0) {
      console.error(`bench error: ${failures} command(s) failed`);
      return 1;
    }
    return 0;
  } finally {
    clearTimeout(limit);
    await cleanup();
  }
}

runBenchMain(main);
