/**
 * The read side's worker thread (STRAND_READ_SIDE_THREAD): a ReadSide of its own, with its own
 * NATS connection, PostgreSQL pool and metrics, applying the projections the module in
 * `workerData` exports. The main thread's RemoteReadSide (remote.ts) forwards calls here and
 * receives the live feed and the projections' state.
 */
import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';
import { basename } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { connectNats, natsServers } from '../nats/connect.js';
import { StrandMetrics } from '../observability/metrics.js';
import { createLogger } from '../observability/logger.js';
import { createPool } from '../postgres/connect.js';
import { ReadSide, readSideOptions, type ProjectionPeers } from './host.js';
import { toWire, type FromWorker, type PeersSnapshot, type ReadSideWorkerData, type ToWorker } from './remote.js';
import type { Projection } from './types.js';

const port = parentPort!;
const data = workerData as ReadSideWorkerData & { pretty?: boolean };
const post = (m: FromWorker): void => port.postMessage(m);

/** The worker thread's nice value: the command path (nice 0) goes first when the cores are busy. */
const READ_SIDE_NICE = 10;

/** The cluster as the main thread last described it. */
class PeersProxy implements ProjectionPeers {
  private snapshot: PeersSnapshot;
  private readonly listeners = new Set<() => void>();

  constructor(self: string) {
    this.snapshot = { self, live: [self], members: {} };
  }

  get self(): string {
    return this.snapshot.self;
  }

  update(s: PeersSnapshot): void {
    const changed = JSON.stringify(s) !== JSON.stringify(this.snapshot);
    this.snapshot = s;
    if (changed) for (const fn of this.listeners) fn();
  }

  live(): string[] {
    return [...this.snapshot.live];
  }

  member(id: string): { projections: readonly string[]; leaving: boolean; database?: string | undefined } | undefined {
    return this.snapshot.members[id];
  }

  announce(update: { projections?: readonly string[]; database?: string }): void {
    post({ type: 'announce', update });
  }

  onChange(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }
}

/**
 * Gives this thread a lower CPU priority than the command path's (Linux: a thread's nice value
 * is its own, set through its thread ID): when the cores are busy, a command's turn comes
 * before a batch's. Where that is not possible the thread runs at the process's priority.
 */
function yieldCpuToCommands(nice: number): number | undefined {
  try {
    const tid = Number(basename(readlinkSync('/proc/thread-self')));
    if (!Number.isInteger(tid) || tid <= 0 || tid === process.pid) return undefined;
    setPriority(tid, nice);
    return tid;
  } catch {
    return undefined;
  }
}

async function main(): Promise<void> {
  const { config } = data;
  const tid = yieldCpuToCommands(READ_SIDE_NICE);
  const log = createLogger(data.logLevel, data.pretty === undefined ? {} : { pretty: data.pretty }).child({ component: 'projections', thread: 'read-side' });
  const mod = (await import(data.module.url)) as Record<string, unknown>;
  const projections = mod[data.module.name ?? 'projections'] as readonly Projection[] | undefined;
  if (!Array.isArray(projections)) throw new Error(`${data.module.url} exports no array ${data.module.name ?? 'projections'}`);
  const credentials = config.NATS_USER !== undefined && config.NATS_PASSWORD !== undefined ? { user: config.NATS_USER, pass: config.NATS_PASSWORD } : undefined;
  const nc = await connectNats(natsServers(data.natsUrl), 'strand-read-side', { log }, credentials);
  const pool = createPool(data.databaseUrl, { max: data.poolMax, applicationName: 'strand' });
  const metrics = new StrandMetrics({ defaultMetrics: false });
  const peers = new PeersProxy(data.instance);
  const readSide = new ReadSide(
    pool,
    nc,
    projections,
    readSideOptions(config, data.instance),
    metrics,
    log,
    peers,
  );
  readSide.onLiveFeed((message) => post({ type: 'live', message }));
  log.debug({ tid, nice: tid === undefined ? undefined : READ_SIDE_NICE }, 'read side thread started');
  let last = '';
  const state = setInterval(() => {
    const s = { caughtUp: readSide.caughtUp(), streamReaders: readSide.streamReaders };
    const key = JSON.stringify(s);
    if (key !== last) {
      last = key;
      post({ type: 'state', ...s });
    }
  }, 100);
  state.unref();

  const methods: Record<string, (...args: never[]) => unknown> = {
    start: () => readSide.start(),
    stop: async () => {
      clearInterval(state);
      await readSide.stop();
      await pool.end().catch(() => undefined);
      await nc.drain().catch(() => undefined);
    },
    metrics: () => metrics.registry.getMetricsAsJSON(),
    status: () => readSide.status(),
    checkpoint: (name: string) => readSide.checkpoint(name),
    waitFor: (name: string, minSeq: number, timeoutMs: number) => readSide.waitFor(name, minSeq, timeoutMs),
    rebuild: (name: string) => readSide.rebuild(name),
    deadLetters: (name: string, limit?: number) => readSide.deadLetters(name, limit),
    retryDeadLetter: (name: string, seq: number, waitMs: number) => readSide.retryDeadLetter(name, seq, waitMs),
    discardDeadLetter: (name: string, seq: number) => readSide.discardDeadLetter(name, seq),
  };

  port.on('message', (m: ToWorker) => {
    if (m.type === 'peers') {
      peers.update(m.peers);
      return;
    }
    const fn = methods[m.method];
    void (async () => {
      try {
        if (!fn) throw new Error(`no read side method ${m.method}`);
        const value = await (fn as (...args: unknown[]) => unknown)(...m.args);
        post({ type: 'result', id: m.id, value });
      } catch (err) {
        post({ type: 'result', id: m.id, error: toWire(err) });
      }
    })();
  });
  post({ type: 'ready' });
}

main().catch((err: unknown) => post({ type: 'failed', error: toWire(err) }));
