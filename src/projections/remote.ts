import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';

type MetricsJson = Awaited<ReturnType<Registry['getMetricsAsJSON']>>;
import type { Config } from '../config.js';
import { ErrorCode, StrandError } from '../errors.js';
import type { DeadLetter, ProjectionPeers, ProjectionStatus, ReadSideApi } from './host.js';
import type { LiveFeedMessage } from './runner.js';
import type { Projection } from './types.js';

/** Where the worker thread finds the projections: a module and the name of the array it exports. */
export interface ProjectionsModule {
  /** A URL (file:) import() accepts. */
  readonly url: string;
  /** The export that holds the array of projections (default `projections`). */
  readonly name?: string;
}

/** What the worker thread starts from (structured-cloned). */
export interface ReadSideWorkerData {
  readonly config: Config;
  readonly natsUrl: string;
  readonly databaseUrl: string;
  readonly instance: string;
  readonly module: ProjectionsModule;
  readonly poolMax: number;
  readonly logLevel: string;
}

/** The instance's membership, as the worker's placement needs it (see ProjectionPeers). */
export interface PeersSnapshot {
  readonly self: string;
  readonly live: readonly string[];
  readonly members: Readonly<Record<string, { readonly projections: readonly string[]; readonly leaving: boolean; readonly database?: string | undefined }>>;
}

/** Main thread → worker. */
export type ToWorker =
  | { readonly type: 'call'; readonly id: number; readonly method: string; readonly args: readonly unknown[] }
  | { readonly type: 'peers'; readonly peers: PeersSnapshot };

/** Worker → main thread. */
export type FromWorker =
  | { readonly type: 'ready' }
  | { readonly type: 'failed'; readonly error: WireError }
  | { readonly type: 'result'; readonly id: number; readonly value?: unknown; readonly error?: WireError }
  | { readonly type: 'state'; readonly caughtUp: boolean; readonly streamReaders: number }
  | { readonly type: 'live'; readonly message: LiveFeedMessage }
  | { readonly type: 'announce'; readonly update: { projections?: readonly string[]; database?: string } };

/** An error as it crosses the thread boundary: what callers test (StrandError's code, pg's SQLSTATE or Node's code). */
export interface WireError {
  readonly name: string;
  readonly message: string;
  readonly code?: string;
  readonly strand?: boolean;
  readonly extra?: StrandError['extra'];
}

export function toWire(err: unknown): WireError {
  if (err instanceof StrandError) return { name: err.name, message: err.message, code: err.code, strand: true, extra: err.extra };
  const e = err as { name?: unknown; message?: unknown; code?: unknown } | undefined;
  return {
    name: typeof e?.name === 'string' ? e.name : 'Error',
    message: typeof e?.message === 'string' ? e.message : String(err),
    ...(typeof e?.code === 'string' ? { code: e.code } : {}),
  };
}

export function fromWire(w: WireError): Error {
  if (w.strand) return new StrandError(w.code as ErrorCode, w.message, w.extra ?? {});
  const err = new Error(w.message) as Error & { code?: string };
  err.name = w.name;
  if (w.code !== undefined) err.code = w.code;
  return err;
}

/** The worker thread's entry: worker.ts under tsx (`npm start`), through worker-boot.mjs, which registers tsx's loader there. */
function workerEntry(): { entry: string; tsx: boolean } {
  const ts = new URL('./worker.ts', import.meta.url);
  if (existsSync(fileURLToPath(ts))) return { entry: ts.href, tsx: true };
  return { entry: new URL('./worker.js', import.meta.url).href, tsx: false };
}

/**
 * The read side applied on a worker thread (STRAND_READ_SIDE_THREAD): its runners, their
 * NATS connection, PostgreSQL pool and advisory locks live there, so a batch being decoded,
 * handled or rendered never holds up a command on this thread. This side forwards the API's
 * calls (status, rebuild, dead letters, `minSeq` waits) and receives the live feed's messages
 * and the projections' state; the worker's metrics join this thread's on `/metrics`.
 */
export class RemoteReadSide implements ReadSideApi {
  private readonly worker: Worker;
  private readonly byName: ReadonlyMap<string, Projection>;
  private nextId = 1;
  private readonly calls = new Map<number, { resolve: (v: unknown) => void; reject: (err: unknown) => void }>();
  private live: ((message: LiveFeedMessage) => void) | undefined;
  private state = { caughtUp: false, streamReaders: 0 };
  private readonly ready: Promise<void>;
  private exited = false;
  private stopping = false;
  private peersTimer: NodeJS.Timeout | undefined;
  private offPeers: (() => void) | undefined;

  constructor(
    projections: readonly Projection[],
    data: ReadSideWorkerData,
    private readonly log: Logger,
    private readonly peers?: ProjectionPeers,
  ) {
    this.byName = new Map(projections.map((p) => [p.name, p]));
    this.worker = new Worker(new URL('./worker-boot.mjs', import.meta.url), { workerData: { ...data, ...workerEntry() }, name: 'strand-read-side' });
    this.ready = new Promise<void>((resolve, reject) => {
      this.worker.on('message', (m: FromWorker) => {
        if (m.type === 'ready') resolve();
        else if (m.type === 'failed') reject(fromWire(m.error));
        else this.onMessage(m);
      });
      this.worker.on('error', (err) => {
        this.log.error({ err }, 'read side worker failed');
        reject(err);
      });
      this.worker.on('exit', (code) => {
        this.exited = true;
        if (!this.stopping) this.log.error({ code }, 'read side worker exited');
        reject(new Error(`read side worker exited with code ${code}`));
        for (const c of this.calls.values()) c.reject(new StrandError(ErrorCode.UNAVAILABLE, 'read side worker stopped'));
        this.calls.clear();
      });
    });
    // Never unhandled: start() awaits it.
    this.ready.catch(() => undefined);
  }

  private onMessage(m: FromWorker): void {
    switch (m.type) {
      case 'result': {
        const c = this.calls.get(m.id);
        if (!c) return;
        this.calls.delete(m.id);
        if (m.error) c.reject(fromWire(m.error));
        else c.resolve(m.value);
        return;
      }
      case 'state':
        this.state = { caughtUp: m.caughtUp, streamReaders: m.streamReaders };
        return;
      case 'live':
        try {
          this.live?.(m.message);
        } catch (err) {
          this.log.warn({ err, projection: m.message.projection }, 'live changes not delivered in-process');
        }
        return;
      case 'announce':
        this.peers?.announce(m.update);
        return;
      default:
        return;
    }
  }

  private call<T>(method: string, ...args: unknown[]): Promise<T> {
    if (this.exited) return Promise.reject(new StrandError(ErrorCode.UNAVAILABLE, 'read side worker stopped'));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.calls.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.worker.postMessage({ type: 'call', id, method, args } satisfies ToWorker);
    });
  }

  private sendPeers(): void {
    const p = this.peers;
    if (!p || this.exited) return;
    const live = p.live('projections');
    const members: Record<string, { projections: readonly string[]; leaving: boolean; database?: string | undefined }> = {};
    for (const id of live) {
      const m = p.member(id);
      if (m) members[id] = { projections: [...m.projections], leaving: m.leaving, database: m.database };
    }
    this.worker.postMessage({ type: 'peers', peers: { self: p.self, live, members } } satisfies ToWorker);
  }

  projection(name: string): Projection | undefined {
    return this.byName.get(name);
  }

  get streamReaders(): number {
    return this.state.streamReaders;
  }

  caughtUp(): boolean {
    return this.state.caughtUp;
  }

  onLiveFeed(fn: (message: LiveFeedMessage) => void): void {
    this.live = fn;
  }

  async start(): Promise<void> {
    await this.ready;
    if (this.peers && !this.peersTimer) {
      this.sendPeers();
      this.offPeers = this.peers.onChange(() => this.sendPeers());
      // Liveness expires with time, not only with changes.
      this.peersTimer = setInterval(() => this.sendPeers(), 1000);
      this.peersTimer.unref();
    }
    await this.call('start');
  }

  async stop(): Promise<void> {
    this.stopping = true;
    clearInterval(this.peersTimer);
    this.offPeers?.();
    if (!this.exited) {
      try {
        await this.call('stop');
      } catch (err) {
        this.log.warn({ err }, 'read side worker did not stop cleanly');
      }
    }
    await this.worker.terminate();
  }

  /** The worker's metrics (prom-client JSON), to be joined with this thread's. */
  metrics(): Promise<MetricsJson> {
    return this.call<MetricsJson>('metrics');
  }

  status(): Promise<ProjectionStatus[]> {
    return this.call('status');
  }

  checkpoint(name: string): Promise<number> {
    return this.call('checkpoint', name);
  }

  waitFor(name: string, minSeq: number, timeoutMs: number): Promise<{ reached: boolean; checkpoint: number }> {
    return this.call('waitFor', name, minSeq, timeoutMs);
  }

  rebuild(name: string): Promise<number | undefined> {
    return this.call('rebuild', name);
  }

  deadLetters(name: string, limit?: number): Promise<DeadLetter[]> {
    return this.call('deadLetters', name, ...(limit === undefined ? [] : [limit]));
  }

  retryDeadLetter(name: string, seq: number, waitMs: number): Promise<{ found: boolean; ok: boolean; error?: string }> {
    return this.call('retryDeadLetter', name, seq, waitMs);
  }

  discardDeadLetter(name: string, seq: number): Promise<boolean> {
    return this.call('discardDeadLetter', name, seq);
  }
}
