/**
 * Cluster throughput: 1, 2 and 3 Strand instances sharing the commands, on one nats-server and
 * on a 3-node nats-server cluster (R3), 256 commands outstanding over 10,000 aggregates.
 *
 * Per topology (a private nats-server, or three routed ones on loopback, temporary stores):
 *   raw          — bench/raw-service.ts, the no-framework loop of `npm run bench` (its stream
 *                  at the topology's replicas), measured right before each configuration;
 *   N instances  — N = 1, 2, 3 `node --import tsx src/main.ts` processes (what `npm start` runs),
 *                  STRAND_ROLES=commands, one shared throwaway PostgreSQL, a fresh stream each;
 *                  senders publish the public `cmd.task.<id>.<Command>` request-reply, so
 *                  instances take commands from the `cmd.>` queue group and forward the ones
 *                  whose partition another instance owns;
 *   3 mapped     — 3 instances on servers (started anew) with the subject mapping of
 *                  docs/operations.md, delivering each command straight to its owner's
 *                  `strand.cmd.<partition>.…`: no forwarding hop. The CPU per command against
 *                  the queue group's prices the hop; since CPU per command falls as the rate
 *                  rises, both 3-instance setups also run at one fixed rate (--hop-rate, by
 *                  default 60 % of what the queue group's 3 instances did), and that pair
 *                  gives the hop's cost;
 *   failover     — 3 instances under a resending load (each command keeps its Strand-Command-Id,
 *                  resent after 1 s without a reply or on UNAVAILABLE), one killed with SIGKILL:
 *                  the time until every one of its partitions answers again, and the longest
 *                  any command took from its first send to its reply.
 * Each Strand configuration is measured for --seconds after --warmup-seconds per instance on other
 * aggregates (a new process's JIT needs it), right after a raw run of half that on the same servers
 * (the raw service stays up, idle in between); the ratio to it is printed. Before and after, it
 * reads every process's CPU time from /proc/<pid>/stat and every instance's /metrics (conflicts,
 * forwarded commands, commands handled); an instance's idle CPU is sampled for 1 s first. Cold activation, which bounds what a
 * moved partition costs per aggregate, is `npm run bench:cold`.
 *
 *   npm run bench:cluster -- [--seconds 10] [--warmup-seconds 3] [--topologies single,cluster]
 *                            [--instances 1,2,3] [--outstanding 256] [--aggregates 10000]
 *                            [--no-mapped] [--hop-rate <cmd/s>] [--no-failover] [--sync default|always]
 *                            [--time-limit 720]
 *
 * BENCH_SECONDS, BENCH_WARMUP_SECONDS and BENCH_HOP_RATE set the defaults (e.g. BENCH_SECONDS=5
 * for a quick look); the defaults keep the whole run to about 8 minutes.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { headers as natsHeaders, type Msg, type NatsConnection } from '@nats-io/nats-core';
import { connect } from '@nats-io/transport-node';
import { partitionMapping } from '../subjects/index.js';
import { partitionOf } from '../src/cluster/partition.js';
import { freePorts, startNatsCluster, type NatsCluster } from '../src/nats/cluster.js';
import { assignBody, checkReply, createBody, deleteStream, freshRawStream, planner, startRawService as startRawProcess } from './command-loop.js';
import { startService, stopAllServices, type ServiceProcess } from './service.js';
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
  runClosedLoop,
  sleep,
  startBenchDatabase,
  startBenchServer,
  syncArg,
  type BenchDatabase,
  type OpenLoopResult,
} from './support.js';

const args = parseArgs();
const envInt = (name: string, dflt: number): number => {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be an integer >= 1, got ${JSON.stringify(v)}`);
  return n;
};
const sync = syncArg(args);
const SECONDS = intArg(args, 'seconds', envInt('BENCH_SECONDS', 10));
const WARMUP_SECONDS = intArg(args, 'warmup-seconds', envInt('BENCH_WARMUP_SECONDS', 3), 0);
const OUTSTANDING = intArg(args, 'outstanding', 256);
const AGGREGATES = intArg(args, 'aggregates', 10_000);
const TIME_LIMIT_S = intArg(args, 'time-limit', 720);
const TOPOLOGIES = (args.get('topologies') ?? 'single,cluster').split(',') as ('single' | 'cluster')[];
const INSTANCES = (args.get('instances') ?? '1,2,3').split(',').map(Number);
const MAPPED = !args.has('no-mapped');
const FAILOVER = !args.has('no-failover');
for (const t of TOPOLOGIES) if (t !== 'single' && t !== 'cluster') throw new Error(`--topologies: "single" and/or "cluster", got ${JSON.stringify(t)}`);
for (const n of INSTANCES) if (!Number.isInteger(n) || n < 1 || n > 9) throw new Error(`--instances: integers 1..9, got ${args.get('instances')}`);

/** Strand's default partition count, set explicitly so the mapping agrees. */
const PARTITIONS = 64;
/**
 * The fixed rate at which 3 instances with and without the forwarding hop are compared: by
 * default 60 % of what the 3 instances with forwarding did as fast as they could on the same
 * topology (CPU per command rises steeply at low rates, where every message wakes a process).
 */
const HOP_RATE = args.has('hop-rate') || process.env['BENCH_HOP_RATE'] ? intArg(args, 'hop-rate', envInt('BENCH_HOP_RATE', 1_000)) : undefined;
const HOP_SHARE = 0.6;
/** The rate chosen per topology kind (the queue group's 3-instance run sets it for the mapped one). */
const hopRates = new Map<string, number>();
/** A command without a reply this long is resent (failover run). */
const RESEND_AFTER_MS = 1_000;
/** Upper bound of commands in one measured run (arrays of latencies are allocated for it). */
const MAX_COMMANDS = Math.max(200_000, SECONDS * 60_000);

// ---- topologies ----------------------------------------------------------------------------

interface Topology {
  readonly label: string;
  readonly tag: string;
  /** Client URL of each node: instance i connects to node i mod nodes, the load generator and the raw service to node 0. */
  readonly nodeUrls: readonly string[];
  readonly replicas: number;
  /** The nats-server processes, for CPU. */
  readonly servers: () => { name: string; pid: number }[];
  cleanup(): Promise<void>;
}

const cleanups = new Set<() => Promise<void>>();

async function startTopology(kind: 'single' | 'cluster', mapped: boolean): Promise<Topology> {
  const mappings = mapped ? Object.fromEntries([[partitionMapping(PARTITIONS).from, partitionMapping(PARTITIONS).to]]) : undefined;
  const suffix = mapped ? ', server-side mapping' : '';
  if (kind === 'single') {
    const b = await startBenchServer(sync, mappings);
    const t: Topology = {
      label: `one nats-server${suffix}`,
      tag: `s${mapped ? 'm' : ''}`,
      nodeUrls: [b.url],
      replicas: 1,
      servers: () => [{ name: 'nats-server', pid: b.server.pid }],
      cleanup: () => b.cleanup(),
    };
    return track(t);
  }
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'strand-bench-cluster-'));
  let cluster: NatsCluster;
  try {
    cluster = await startNatsCluster({ dir, sync, ...(mappings ? { mappings } : {}) });
  } catch (err) {
    await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
    throw err;
  }
  let cleaning: Promise<void> | undefined;
  return track({
    label: `3-node cluster R3${suffix}`,
    tag: `c${mapped ? 'm' : ''}`,
    nodeUrls: cluster.nodes.map((n) => n.url),
    replicas: 3,
    servers: () => cluster.nodes.flatMap((n) => (n.server ? [{ name: `nats ${n.name}`, pid: n.server.pid }] : [])),
    cleanup() {
      cleaning ??= (async () => {
        await cluster.stop().catch(() => undefined);
        await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
      })();
      return cleaning;
    },
  });
}

function track(t: Topology): Topology {
  const c = async (): Promise<void> => {
    await t.cleanup();
    cleanups.delete(c);
  };
  cleanups.add(c);
  return { ...t, cleanup: c };
}

// ---- Strand instances ----------------------------------------------------------------------

interface Instance {
  readonly svc: ServiceProcess;
  readonly port: number;
  readonly pid: number;
}

async function startInstances(topo: Topology, n: number, stream: string, db: BenchDatabase): Promise<Instance[]> {
  const ports = await freePorts(n);
  const instances = ports.map((port, i) => {
    const svc = startService(`strand #${i + 1}`, 'src/main.ts', {
      NATS_URL: topo.nodeUrls[i % topo.nodeUrls.length]!,
      DATABASE_URL: db.pgServer.url,
      STRAND_DATA_DIR: path.join(db.tmp, `strand-${stream}-${i}`),
      PORT: String(port),
      LOG_LEVEL: 'warn',
      STRAND_ROLES: 'commands',
      STRAND_STREAM: stream,
      STRAND_STREAM_REPLICAS: String(topo.replicas),
      STRAND_PARTITIONS: String(PARTITIONS),
    });
    return { svc, port, pid: svc.child.pid! };
  });
  // Settled: every instance ready (holds its share), sees all n, and the shares add up to every partition.
  const deadline = Date.now() + 90_000;
  for (;;) {
    const dead = instances.find((x) => x.svc.hasExited());
    if (dead) throw new Error(`${dead.svc.name} exited before it was ready:\n${dead.svc.output()}`);
    const states = await Promise.all(
      instances.map(async (x) => {
        try {
          const ready = (await fetch(`http://127.0.0.1:${x.port}/health/ready`)).status === 200;
          const m = await scrape(x);
          return { ready, members: m.members, owned: m.owned };
        } catch {
          return { ready: false, members: 0, owned: 0 };
        }
      }),
    );
    if (states.every((s) => s.ready && s.members === n) && states.reduce((a, s) => a + s.owned, 0) === PARTITIONS) return instances;
    if (Date.now() > deadline) throw new Error(`instances not settled after 90 s: ${JSON.stringify(states)}\n${instances.map((x) => x.svc.output().slice(-1500)).join('\n')}`);
    await sleep(200);
  }
}

async function stopInstances(instances: readonly Instance[]): Promise<void> {
  const exits = await Promise.all(instances.map((x) => x.svc.stop(15_000)));
  exits.forEach((e, i) => {
    if (e.code !== 0 && e.signal !== 'SIGKILL') console.log(`    ${instances[i]!.svc.name} exited with ${e.code ?? e.signal}; last output:\n${instances[i]!.svc.output().slice(-2_000)}`);
  });
}

interface Scrape {
  readonly commands: number;
  readonly conflicts: number;
  readonly forwarded: number;
  readonly members: number;
  readonly owned: number;
}

/** Sum of every sample of a metric in Prometheus text. */
function metricSum(text: string, name: string): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const c = line[name.length];
    if (c !== ' ' && c !== '{') continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

async function scrape(x: Instance): Promise<Scrape> {
  const text = await (await fetch(`http://127.0.0.1:${x.port}/metrics`)).text();
  return {
    commands: metricSum(text, 'strand_commands_total'),
    conflicts: metricSum(text, 'strand_concurrency_conflicts_total'),
    forwarded: metricSum(text, 'strand_cluster_commands_forwarded_total'),
    members: metricSum(text, 'strand_cluster_members'),
    owned: metricSum(text, 'strand_cluster_partitions_owned'),
  };
}

async function dropStrandStreams(jsm: JetStreamManager, stream: string): Promise<void> {
  for (const s of [stream, `KV_${stream}_snapshots`, `KV_${stream}_cluster`]) await deleteStream(jsm, s).catch(() => undefined);
}

// ---- one measured run ----------------------------------------------------------------------

interface Cpu {
  /** µs per command of each process. */
  readonly strand: number[];
  readonly servers: { name: string; us: number }[];
  readonly load: number;
}

interface Result extends OpenLoopResult {
  readonly label: string;
  readonly topology: string;
  readonly instances: number; // 0: raw
  readonly mapped: boolean;
  readonly cpu: Cpu;
  readonly conflictsPerCommand: number;
  readonly forwardedShare: number;
  /** Share of the commands each instance ran. */
  readonly handled: number[];
  /** The raw loop measured right before, on the same servers (undefined for raw itself). */
  readonly raw?: Result;
  /** CPU of each Strand instance while idle (after the warmup), in ms per second. */
  readonly idle: number[];
  /** The fixed rate it was sent at (undefined: as fast as replies came). */
  readonly rate?: number;
}

const strandCpu = (c: Cpu): number => c.strand.reduce((a, b) => a + b, 0);
const serverCpu = (c: Cpu): number => c.servers.reduce((a, s) => a + s.us, 0);
const allCpu = (c: Cpu): number => strandCpu(c) + serverCpu(c) + c.load;

interface MeasureOptions {
  /** The raw run right before (for the ratio). */
  readonly raw?: Result;
  /** A fixed rate (cmd/s) instead of as fast as replies come; the processes are warm already. */
  readonly rate?: number;
  /** Idle CPU sampled before (for a second measurement on the same instances). */
  readonly idle?: number[];
}

async function measure(topo: Topology, requester: LeanRequester, label: string, kind: 'raw' | 'strand', pids: number[], instances: readonly Instance[], prefix: string, o: MeasureOptions = {}): Promise<Result> {
  // A new process needs its JIT warmed: every instance gets about WARMUP_SECONDS of the whole load.
  const warmupMs = o.rate !== undefined ? 0 : kind === 'raw' ? 1000 : WARMUP_SECONDS * 1000 * Math.max(1, instances.length);
  const seconds = kind === 'raw' ? Math.max(3, Math.round(SECONDS / 2)) : SECONDS;
  if (warmupMs > 0) {
    const w = await runClosedLoop(requester, MAX_COMMANDS, OUTSTANDING, planner(kind, `w${prefix}-`, 2_000), checkReply, 20_000, false, warmupMs);
    if (w.failures > 0) throw new Error(`${label} warmup: ${w.failures} failed replies, first: ${w.firstFailure}`);
  }
  // What an instance spends with no command (heartbeats, the cluster bucket's watcher, timers): part of each command's share at low rates.
  let idle = o.idle ?? [];
  if (o.idle === undefined && instances.length > 0) {
    await sleep(500);
    const idle0 = instances.map((x) => processCpuMicros(x.pid));
    await sleep(2_000);
    idle = instances.map((x, i) => ((processCpuMicros(x.pid) ?? Number.NaN) - (idle0[i] ?? Number.NaN)) / 2_000);
  }
  const servers = topo.servers();
  const m0 = await Promise.all(instances.map(scrape));
  const cpu0 = { procs: pids.map((p) => processCpuMicros(p)), servers: servers.map((s) => processCpuMicros(s.pid)), load: process.cpuUsage() };
  const r = await runClosedLoop(requester, MAX_COMMANDS, OUTSTANDING, planner(kind, `r${prefix}-`, AGGREGATES), checkReply, 20_000, true, seconds * 1000, o.rate);
  const cpu1 = { procs: pids.map((p) => processCpuMicros(p)), servers: servers.map((s) => processCpuMicros(s.pid)), load: process.cpuUsage(cpu0.load) };
  const m1 = await Promise.all(instances.map(scrape));
  const per = (a: number | undefined, b: number | undefined): number => (a === undefined || b === undefined ? Number.NaN : (b - a) / r.commands);
  const cpu: Cpu = {
    strand: pids.map((_, i) => per(cpu0.procs[i], cpu1.procs[i])),
    servers: servers.map((s, i) => ({ name: s.name, us: per(cpu0.servers[i], cpu1.servers[i]) })),
    load: (cpu1.load.user + cpu1.load.system) / r.commands,
  };
  const delta = (k: keyof Scrape): number[] => m1.map((m, i) => m[k] - m0[i]![k]);
  const handled = delta('commands');
  const handledSum = handled.reduce((a, b) => a + b, 0);
  const res: Result = {
    ...r,
    label,
    topology: topo.label.replace(', server-side mapping', ''),
    instances: kind === 'raw' ? 0 : instances.length,
    mapped: topo.tag.endsWith('m'),
    cpu,
    conflictsPerCommand: kind === 'raw' ? 0 : delta('conflicts').reduce((a, b) => a + b, 0) / r.commands,
    forwardedShare: kind === 'raw' ? 0 : delta('forwarded').reduce((a, b) => a + b, 0) / r.commands,
    handled: handled.map((h) => (handledSum > 0 ? h / handledSum : 0)),
    ...(o.raw ? { raw: o.raw } : {}),
    idle,
    ...(o.rate !== undefined ? { rate: o.rate } : {}),
  };
  printResult(res);
  return res;
}

function printResult(r: Result): void {
  const ratio = r.rate !== undefined ? ` (paced at ${fmtInt(r.rate)})` : r.raw ? `  ${fmt2(r.perSecond / r.raw.perSecond)} x raw` : '';
  console.log(
    `  ${r.label.padEnd(44)} ${fmtInt(r.perSecond).padStart(7)} cmd/s${ratio}  p50 ${fmt1(r.p50)} ms  p99 ${fmt1(r.p99)} ms  ` +
      `(${fmtInt(r.commands)} in ${fmt2(r.seconds)} s, failures ${r.failures}${r.firstFailure ? `, first: ${r.firstFailure}` : ''})`,
  );
  if (r.instances > 0) {
    console.log(
      `      conflicts/command ${r.conflictsPerCommand.toFixed(4)}  forwarded ${(r.forwardedShare * 100).toFixed(1)} %  commands run by instance: ${r.handled.map((h) => `${(h * 100).toFixed(0)} %`).join(' / ')}` +
        `  idle cpu by instance: ${r.idle.map((x) => fmt1(x)).join(' / ')} ms/s`,
    );
  }
  const c = r.cpu;
  console.log(
    `      cpu/command: ${r.instances > 0 ? `strand ${c.strand.map((x) => fmtInt(x)).join(' + ')} = ${fmtInt(strandCpu(c))} µs` : `raw service ${fmtInt(c.strand[0]!)} µs`}` +
      ` | ${c.servers.map((s) => `${s.name} ${fmtInt(s.us)}`).join(' + ')}${c.servers.length > 1 ? ` = ${fmtInt(serverCpu(c))}` : ''} µs | load generator ${fmtInt(c.load)} µs` +
      ` | all ${fmtInt(allCpu(c))} µs = ${fmt2((allCpu(c) * r.perSecond) / 1e6)} cores busy`,
  );
}

/** The raw service on a topology, kept running for its baselines (idle in between). */
async function startRawService(topo: Topology, nc: NatsConnection): Promise<ServiceProcess> {
  await freshRawStream(await jetstreamManager(nc), topo.replicas);
  return startRawProcess(topo.nodeUrls[0]!);
}

let rawRuns = 0;

/** The raw loop, right before a Strand configuration on the same servers (half its duration). */
function rawRun(topo: Topology, requester: LeanRequester, svc: ServiceProcess): Promise<Result> {
  return measure(topo, requester, 'raw (bench/raw-service.ts)', 'raw', [svc.child.pid!], [], `raw${rawRuns++}`, {});
}

/** N instances as fast as they go; with `paced`, then again at a fixed rate (to compare CPU per command at the same rate). */
async function strandRun(topo: Topology, nc: NatsConnection, requester: LeanRequester, n: number, db: BenchDatabase, raw: Result, paced = false): Promise<Result[]> {
  const stream = `BC_${topo.tag}${n}`;
  const jsm = await jetstreamManager(nc);
  await dropStrandStreams(jsm, stream);
  let instances: Instance[] = [];
  try {
    const label = `${n} instance${n > 1 ? 's' : ''} (${topo.tag.endsWith('m') ? 'mapped to the owners' : n > 1 ? 'queue group + forwarding' : 'queue group'})`;
    instances = await startInstances(topo, n, stream, db);
    const pids = instances.map((x) => x.pid);
    const free = await measure(topo, requester, label, 'strand', pids, instances, `${topo.tag}${n}`, { raw });
    if (!paced) return [free];
    const kind = topo.tag.replace('m', '');
    let rate = HOP_RATE ?? hopRates.get(kind);
    if (rate === undefined) hopRates.set(kind, (rate = Math.max(100, Math.round((free.perSecond * HOP_SHARE) / 100) * 100)));
    return [free, await measure(topo, requester, label, 'strand', pids, instances, `${topo.tag}${n}p`, { rate, idle: free.idle })];
  } finally {
    await stopInstances(instances);
    await dropStrandStreams(jsm, stream);
  }
}

// ---- failover ------------------------------------------------------------------------------

interface FailoverResult {
  readonly topology: string;
  /** Kill -> the first reply from any of the victim's partitions, and from the last of them (ms). */
  readonly firstMs: number;
  readonly allMs: number;
  readonly partitions: number;
  /** The longest and the p99 time of a command from its first send to its reply, resends included (ms). */
  readonly maxCommandMs: number;
  readonly p99CommandMs: number;
  readonly commands: number;
  readonly resendsBefore: number;
  readonly resendsAfter: number;
  readonly errors: Map<string, number>;
}

interface Pending {
  readonly n: number;
  readonly subject: string;
  readonly body: string;
  readonly partition: number;
  readonly hdrs: ReturnType<typeof natsHeaders>;
  readonly first: number;
  sentAt: number;
  req: number;
  done: boolean;
}

async function failoverRun(topo: Topology, nc: NatsConnection, requester: LeanRequester, db: BenchDatabase): Promise<FailoverResult> {
  const stream = `BC_${topo.tag}f`;
  const jsm = await jetstreamManager(nc);
  await dropStrandStreams(jsm, stream);
  let instances: Instance[] = [];
  try {
    instances = await startInstances(topo, 3, stream, db);
    if (WARMUP_SECONDS > 0) await runClosedLoop(requester, MAX_COMMANDS, OUTSTANDING, planner('strand', `wf${topo.tag}-`, 2_000), checkReply, 20_000, false, WARMUP_SECONDS * 3 * 1000);
    const victim = instances[2]!;
    const status = (await (await fetch(`http://127.0.0.1:${victim.port}/cluster`)).json()) as { local?: { active?: number[] }; error?: unknown };
    const lost = new Set(status.local?.active ?? []);
    if (lost.size === 0) throw new Error(`GET /cluster of the victim named no active partition: ${JSON.stringify(status).slice(0, 300)}`);

    const encoder = new TextEncoder();
    const created = new Uint8Array(AGGREGATES);
    const busy = new Uint8Array(AGGREGATES);
    const rounds = new Uint32Array(AGGREGATES);
    const inFlight = new Set<Pending>();
    const latencies: number[] = [];
    const errors = new Map<string, number>();
    const recovered = new Map<number, number>();
    let cursor = 0;
    let seq = 0;
    let sending = true;
    let killedAt = Number.POSITIVE_INFINITY;
    let resendsBefore = 0;
    let resendsAfter = 0;
    const attempt = (p: Pending): void => {
      p.sentAt = performance.now();
      p.req = requester.send(p.subject, encoder.encode(p.body), (m) => onReply(p, m), p.hdrs);
    };
    const resend = (p: Pending): void => {
      if (p.sentAt >= killedAt || performance.now() >= killedAt) resendsAfter++;
      else resendsBefore++;
      requester.forget(p.req);
      attempt(p);
    };
    const next = (): void => {
      if (!sending) return;
      while (busy[cursor]) cursor = (cursor + 1) % AGGREGATES;
      const n = cursor;
      cursor = (cursor + 1) % AGGREGATES;
      busy[n] = 1;
      const id = `f${topo.tag}-${n}`;
      const command = created[n] ? 'AssignTask' : 'CreateTask';
      const hdrs = natsHeaders();
      hdrs.set('Strand-Command-Id', `${id}-${seq++}`);
      const p: Pending = { n, subject: `cmd.task.${id}.${command}`, body: created[n] ? assignBody(++rounds[n]!, n) : createBody(n), partition: partitionOf('task', id, PARTITIONS), hdrs, first: performance.now(), sentAt: 0, req: 0, done: false };
      inFlight.add(p);
      attempt(p);
    };
    const onReply = (p: Pending, m: Msg): void => {
      if (p.done) return;
      const problem = checkReply(m);
      if (problem !== undefined && (problem === 'no responders' || problem.startsWith('UNAVAILABLE'))) {
        setTimeout(() => !p.done && resend(p), 50);
        return;
      }
      p.done = true;
      inFlight.delete(p);
      busy[p.n] = 0;
      const now = performance.now();
      if (problem !== undefined) {
        const code = problem.split(':')[0]!;
        errors.set(code, (errors.get(code) ?? 0) + 1);
      } else {
        created[p.n] = 1;
        if (now >= killedAt) latencies.push(now - p.first);
        if (lost.has(p.partition) && p.sentAt >= killedAt && !recovered.has(p.partition)) recovered.set(p.partition, now - killedAt);
      }
      next();
    };
    const sweeper = setInterval(() => {
      const now = performance.now();
      for (const p of inFlight) if (!p.done && now - p.sentAt > RESEND_AFTER_MS) resend(p);
    }, 50);
    try {
      for (let k = 0; k < OUTSTANDING; k++) next();
      await sleep(Math.min(5, SECONDS) * 1000);
      killedAt = performance.now();
      victim.svc.child.kill('SIGKILL');
      await victim.svc.exited;
      // Until every lost partition answered again and a few seconds more (at most 60 s).
      const until = killedAt + 60_000;
      while (recovered.size < lost.size && performance.now() < until) await sleep(100);
      await sleep(Math.min(3, SECONDS) * 1000);
      sending = false;
      const drainUntil = performance.now() + 15_000;
      while (inFlight.size > 0 && performance.now() < drainUntil) await sleep(50);
    } finally {
      clearInterval(sweeper);
      sending = false;
      for (const p of inFlight) requester.forget(p.req);
    }
    const sorted = Float64Array.from(latencies).sort();
    const times = [...recovered.values()];
    return {
      topology: topo.label,
      firstMs: times.length ? Math.min(...times) : Number.NaN,
      allMs: recovered.size === lost.size ? Math.max(...times) : Number.NaN,
      partitions: lost.size,
      maxCommandMs: sorted.length ? sorted[sorted.length - 1]! : Number.NaN,
      p99CommandMs: percentile(sorted, 0.99),
      commands: sorted.length,
      resendsBefore,
      resendsAfter,
      errors,
    };
  } finally {
    await stopInstances(instances);
    await dropStrandStreams(jsm, stream);
  }
}

function printFailover(f: FailoverResult): void {
  console.log(
    `  failover, kill -9 of 1 of 3 instances (${f.partitions} partitions): every partition answering again after ${fmtInt(f.allMs)} ms (the first after ${fmtInt(f.firstMs)} ms); ` +
      `longest command ${fmtInt(f.maxCommandMs)} ms, p99 ${fmtInt(f.p99CommandMs)} ms (first send to reply, resends included, ${fmtInt(f.commands)} commands after the kill); ` +
      `resends ${f.resendsBefore} before / ${f.resendsAfter} after the kill; errors ${f.errors.size ? JSON.stringify(Object.fromEntries(f.errors)) : 'none'}`,
  );
}

// ---- main ----------------------------------------------------------------------------------

async function main(): Promise<number> {
  let db: BenchDatabase | undefined;
  // One cleanup, however many callers (a signal, the time limit, main's own end): all wait for it.
  let cleaning: Promise<void> | undefined;
  const cleanup = (): Promise<void> =>
    (cleaning ??= (async () => {
      await stopAllServices();
      for (const c of [...cleanups]) await c();
      await db?.cleanup();
    })());
  const limit = hardLimit(TIME_LIMIT_S * 1000, cleanup);
  // `on`, not `once`: with no listener left, the embedded PostgreSQL's own hook would end the
  // process at once (it stands back only while another listener handles the signal).
  const onSignal = (): void => void cleanup().finally(() => process.exit(130));
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const results: Result[] = [];
  const failovers: FailoverResult[] = [];
  try {
    console.log(`cluster.bench: ${machineLine()}`);
    console.log(
      `plan: per topology raw, then ${INSTANCES.join(', ')} Strand instance(s) (STRAND_ROLES=commands, separate processes)${MAPPED ? ', 3 with the server-side mapping' : ''}${FAILOVER ? ', failover of 1 of 3' : ''}; ` +
        `${OUTSTANDING} outstanding over ${fmtInt(AGGREGATES)} aggregates (round 0 CreateTask, then AssignTask), ${SECONDS} s measured after ${WARMUP_SECONDS} s warmup; sync_interval: ${sync}; ${PARTITIONS} partitions`,
    );
    db = await startBenchDatabase('strand-bench-cluster-');
    for (const kind of TOPOLOGIES) {
      const topo = await startTopology(kind, false);
      const nc = await connect({ servers: topo.nodeUrls[0]!, name: 'bench-load', noAsyncTraces: true });
      const requester = new LeanRequester(nc);
      let rawSvc: ServiceProcess | undefined;
      try {
        console.log(`\n${topo.label} (${topo.nodeUrls.join(', ')}; load generator and raw service on ${topo.nodeUrls[0]}, instance i on node i mod ${topo.nodeUrls.length}):`);
        rawSvc = await startRawService(topo, nc);
        for (const n of INSTANCES) {
          const raw = await rawRun(topo, requester, rawSvc);
          results.push(raw, ...(await strandRun(topo, nc, requester, n, db, raw, MAPPED && n === 3)));
        }
        if (FAILOVER) {
          const f = await failoverRun(topo, nc, requester, db);
          failovers.push(f);
          printFailover(f);
        }
      } finally {
        await rawSvc?.stop();
        requester.close();
        await nc.close().catch(() => undefined);
        await topo.cleanup();
      }
      if (MAPPED) {
        const mapped = await startTopology(kind, true);
        const mnc = await connect({ servers: mapped.nodeUrls[0]!, name: 'bench-load', noAsyncTraces: true });
        const mreq = new LeanRequester(mnc);
        let rawSvc: ServiceProcess | undefined;
        try {
          console.log(`${mapped.label} (servers started anew):`);
          rawSvc = await startRawService(mapped, mnc);
          const raw = await rawRun(mapped, mreq, rawSvc);
          results.push(raw, ...(await strandRun(mapped, mnc, mreq, 3, db, raw, true)));
        } finally {
          await rawSvc?.stop();
          mreq.close();
          await mnc.close().catch(() => undefined);
          await mapped.cleanup();
        }
      }
    }
    summary(results, failovers);
    const failures = results.reduce((s, r) => s + r.failures, 0);
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

function summary(results: readonly Result[], failovers: readonly FailoverResult[]): void {
  console.log('\nsummary');
  const topologies = [...new Set(results.map((r) => r.topology))];
  for (const t of topologies) {
    const of = (n: number, mapped = false, paced = false): Result | undefined => results.find((r) => r.topology === t && r.instances === n && r.mapped === mapped && (r.rate !== undefined) === paced);
    const one = of(1);
    const vsRaw = (r: Result): number => (r.raw ? r.perSecond / r.raw.perSecond : Number.NaN);
    console.log(`${t}:`);
    if (one) {
      const scale = INSTANCES.filter((n) => n > 1)
        .map((n) => of(n))
        .filter((r): r is Result => r !== undefined)
        .map((r) => `${r.instances}/1 ${fmt2(r.perSecond / one.perSecond)} (against each one's raw run: ${fmt2(vsRaw(r) / vsRaw(one))})`);
      const three = of(3);
      console.log(
        `  scaling (cmd/s of N instances / 1 instance): ${scale.join(', ')}` +
          (three ? `  — target 3/1 >= 0.80: ${three.perSecond / one.perSecond >= 0.8 ? 'met' : 'MISSED'}` : '') +
          `; 1 instance / raw ${fmt2(vsRaw(one))}`,
      );
      // On a machine where CPU runs out (this one), throughput goes as 1 / (CPU per command of every process together).
      const predicted = INSTANCES.filter((n) => n > 1)
        .map((n) => of(n))
        .filter((r): r is Result => r !== undefined)
        .map((r) => `${r.instances}/1 ${fmt2(allCpu(one.cpu) / allCpu(r.cpu))}`);
      console.log(`  scaling as CPU decides it on shared cores (CPU/command of all processes, 1 instance / N): ${predicted.join(', ')}`);
      // With a core per process, each Strand instance caps the rate at 1e6 / its CPU per command.
      const caps = [one, ...INSTANCES.filter((n) => n > 1).map((n) => of(n))]
        .filter((r): r is Result => r !== undefined)
        .map((r) => `${r.instances}: ${fmtInt(1e6 / Math.max(...r.cpu.strand))} cmd/s, nats-server(s) ${fmtInt(serverCpu(r.cpu))} µs/command`);
      console.log(`  with a core per Strand instance, the busiest instance caps the rate at (instances: cap): ${caps.join('; ')}`);
    }
    const strand = results.filter((r) => r.topology === t && r.instances > 0);
    const hopLine = (q: Result, m: Result, what: string): string => {
      // What forwarding adds per forwarded command, against the whole CPU of a command delivered straight to its owner.
      const hop = (a: number, b: number): number => (a - b) / q.forwardedShare;
      const sq = strandCpu(q.cpu);
      const sm = strandCpu(m.cpu);
      const aq = sq + serverCpu(q.cpu);
      const am = sm + serverCpu(m.cpu);
      return (
        `  forwarding hop, ${what} (3 instances; queue group ${(q.forwardedShare * 100).toFixed(0)} % forwarded vs mapped ${(m.forwardedShare * 100).toFixed(0)} %): ` +
        `cpu/command Strand ${fmtInt(sq)} vs ${fmtInt(sm)} µs, Strand + nats-server ${fmtInt(aq)} vs ${fmtInt(am)} µs; ` +
        `per forwarded command +${fmtInt(hop(aq, am))} µs = ${((hop(aq, am) / am) * 100).toFixed(0)} % of a mapped command's CPU (Strand alone +${fmtInt(hop(sq, sm))} µs = ${((hop(sq, sm) / sm) * 100).toFixed(0)} %)`
      );
    };
    const maxConflicts = Math.max(...strand.map((r) => r.conflictsPerCommand));
    console.log(`  conflicts per command: at most ${maxConflicts.toFixed(4)} over ${strand.length} runs — target 0: ${maxConflicts === 0 ? 'met' : 'MISSED'}`);
    const q = of(3);
    const m = of(3, true);
    if (q && m && q.forwardedShare > 0) console.log(`${hopLine(q, m, 'as fast as each goes')}; throughput mapped / queue group ${fmt2(m.perSecond / q.perSecond)}`);
    const qp = of(3, false, true);
    const mp = of(3, true, true);
    if (qp && mp && qp.forwardedShare > 0) {
      const am = strandCpu(mp.cpu) + serverCpu(mp.cpu);
      const cost = (strandCpu(qp.cpu) + serverCpu(qp.cpu) - am) / qp.forwardedShare / am;
      const short = [qp, mp].some((r) => r.perSecond < 0.95 * r.rate!) ? ' (one did not keep up with the rate: compare with care)' : '';
      console.log(`${hopLine(qp, mp, `both at ${fmtInt(qp.rate!)} cmd/s`)} — target <= 25 %: ${cost <= 0.25 ? 'met' : 'MISSED'}${short}`);
    }
  }
  for (const f of failovers) {
    console.log(`${f.topology}: failover gap after kill -9 ${fmtInt(f.allMs)} ms (all ${f.partitions} partitions answering), longest command ${fmtInt(f.maxCommandMs)} ms — target <= 5,000 ms: ${f.allMs <= 5000 ? 'met' : 'MISSED'}`);
  }
  console.log('cold activation per aggregate of a moved partition: npm run bench:cold');
}

runBenchMain(main);
