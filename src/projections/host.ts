import type { Config } from '../config.js';
import { jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection, Subscription } from '@nats-io/nats-core';
import { LIVE_INTEREST } from '../../subjects/index.js';
import type { Pool } from 'pg';
import type { Logger } from 'pino';
import { spread } from '../cluster/assignment.js';
import { ErrorCode, StrandError } from '../errors.js';
import type { StrandMetrics } from '../observability/metrics.js';
import { dropRetiredGenerations, ensureBookkeeping, listProjectionRows, plan, requestRebuild, type ProjectionRow } from './catalog.js';
import { EventFeeds } from './feed.js';
import { ProjectionRunner, rebuildProgress, type LiveFeedMessage, type RunnerOptions } from './runner.js';
import type { Projection, ProjectionEvent } from './types.js';

/** How long the instance a projection is planned for has to take it before any instance may. */
const PLACEMENT_GRACE_MS = 10_000;

/** Gateways announce every second; an announcement counts for this long. */
const WATCH_TTL_MS = 3000;

/** Where one projection stands, as `GET /projections` shows it. */
export interface ProjectionStatus {
  readonly name: string;
  readonly version: number;
  readonly activeGeneration: number | null;
  readonly buildingGeneration: number | null;
  /** Stream sequence of the last event the serving generation applied. */
  readonly checkpoint: number;
  /** Applied by a runner in this instance (false: another instance holds the lock). */
  readonly local: boolean;
  readonly pending: number | null;
  readonly caughtUp: boolean | null;
  readonly rebuild: {
    readonly generation: number;
    readonly checkpoint: number;
    /** Events the new generation has been given and not applied (-1: applied on another instance). */
    readonly pending: number;
    /** 0..1: its checkpoint over the stream's last sequence; the same figure as `strand_projection_rebuild_progress`. */
    readonly progress: number;
  } | null;
  readonly deadLetters: number;
}

/** A parked event. */
export interface DeadLetter {
  readonly projection: string;
  readonly seq: number;
  readonly subject: string;
  readonly error: string;
  readonly attempts: number;
  readonly parkedAt: string;
  readonly event: ProjectionEvent;
}

/** Options of the read side. */
export interface ReadSideOptions extends RunnerOptions {
  /** How often an instance without a projection's lock checks whether it can take over. */
  readonly standbyCheckMs: number;
}

/**
 * What the read side needs of the cluster to spread projections over the instances that apply
 * them: the live members with the `projections` role, what each says it runs, and a way to say
 * what this one runs (src/cluster/view.ts).
 */
export interface ProjectionPeers {
  readonly self: string;
  live(role?: string): string[];
  member(id: string): { readonly projections: readonly string[]; readonly leaving: boolean; readonly database?: string | undefined } | undefined;
  announce(update: { projections?: readonly string[]; database?: string }): void;
  onChange(fn: () => void): () => void;
}

/**
 * What the HTTP API, the live gateway and the app use of the read side: a `ReadSide` in this
 * thread, or a `RemoteReadSide` (worker.ts) whose runners apply on a worker thread.
 */
export type ReadSideApi = Pick<
  ReadSide,
  'projection' | 'status' | 'rebuild' | 'deadLetters' | 'retryDeadLetter' | 'discardDeadLetter' | 'waitFor' | 'checkpoint' | 'caughtUp' | 'onLiveFeed' | 'start' | 'stop' | 'streamReaders'
>;

/**
 * Runs every projection: one runner per generation being applied (the serving one and, during
 * a rebuild, the new one), each only where its advisory lock is held, so several instances
 * share the work and take over from each other.
 */
/** The read side's options from Strand's configuration: one place for the main thread and the worker. */
export function readSideOptions(config: Config, instance: string): ReadSideOptions {
  return {
    stream: config.STRAND_STREAM,
    batchSize: config.STRAND_PROJECTION_BATCH_SIZE,
    batchMs: config.STRAND_PROJECTION_BATCH_MS,
    liveBatchMs: config.STRAND_PROJECTION_LIVE_BATCH_MS,
    maxAttempts: config.STRAND_PROJECTION_MAX_ATTEMPTS,
    syncCommit: config.STRAND_PROJECTION_COMMIT === 'sync',
    live: true,
    instance,
    standbyCheckMs: config.STRAND_PROJECTION_STANDBY_MS,
  };
}

export class ReadSide {
  private readonly runners = new Map<string, ProjectionRunner>();
  private readonly byName: ReadonlyMap<string, Projection>;
  private timer: NodeJS.Timeout | undefined;
  private stopping = false;
  /** When a gateway last said it has subscribers to each projection's views. */
  private readonly watchedAt = new Map<string, number>();
  private readonly watchedElsewhereAt = new Map<string, number>();
  private interest: Subscription | undefined;
  /** The supervision pass in progress, awaited by stop() so none outlives the pool. */
  private supervising: Promise<void> | undefined;
  /** Whether this instance applies projections (STRAND_ROLES); otherwise it only reads. */
  private started = false;
  /** The instance's reading of the event stream, shared by its runners. */
  private readonly feeds: EventFeeds;

  constructor(
    readonly pool: Pool,
    private readonly nc: NatsConnection,
    readonly projections: readonly Projection[],
    private readonly o: ReadSideOptions,
    private readonly metrics: StrandMetrics,
    private readonly log: Logger,
    /** Other instances applying projections: each projection goes to one, balanced; without, this instance takes every lock it can. */
    private readonly peers?: ProjectionPeers,
  ) {
    const m = new Map<string, Projection>();
    for (const p of projections) {
      if (m.has(p.name)) throw new Error(`projection ${p.name} is defined twice`);
      m.set(p.name, p);
    }
    const views = new Set<string>();
    for (const p of projections) {
      for (const v of Object.keys(p.views)) {
        if (views.has(v)) throw new Error(`view ${v} is declared by two projections`);
        views.add(v);
      }
    }
    this.byName = m;
    this.feeds = new EventFeeds(
      nc,
      {
        stream: o.stream,
        subjects: [...new Set(projections.flatMap((p) => p.filterSubjects))].sort(),
        fetch: Math.max(500, o.batchSize * 2),
        highWater: Math.max(2000, o.batchSize * 6),
      },
      log,
    );
  }

  projection(name: string): Projection | undefined {
    return this.byName.get(name);
  }

  /** Prepares the bookkeeping tables and starts the runners this instance can take; safe to call again after it failed. */
  async start(): Promise<void> {
    this.interest ??= this.nc.subscribe(LIVE_INTEREST, {
      callback: (err, msg) => {
        if (err) return;
        try {
          const { projections, instance } = msg.json<{ projections: string[]; instance?: string }>();
          const now = Date.now();
          // Announced by another instance's gateway (or by a version that does not say whose):
          // this instance's runners must publish their changes on NATS for it.
          const elsewhere = instance === undefined || instance !== this.o.instance;
          for (const name of projections) {
            this.watchedAt.set(name, now);
            if (elsewhere) this.watchedElsewhereAt.set(name, now);
          }
        } catch {
          // not an interest message: ignore
        }
      },
    });
    this.database = await ensureBookkeeping(this.pool);
    this.peers?.announce({ database: this.database });
    this.started = true;
    for (const p of this.projections) {
      // A consumer that cannot be created yet (a cluster electing its leaders) is tried again by supervision.
      await this.supervise(p).catch((err: unknown) => this.log.warn({ err, projection: p.name }, 'projection not started yet; supervision retries'));
    }
    this.timer ??= setInterval(() => this.superviseSoon(), this.o.standbyCheckMs);
    this.timer.unref();
    // Instances coming and going move projections at once, not at the next standby check.
    this.offPeers ??= this.peers?.onChange(() => this.superviseSoon());
  }

  /** This instance's gateway, fed in-process (see RunnerOptions.localFeed). */
  private localFeed: ((message: LiveFeedMessage) => void) | undefined;

  /** Hands every live feed message this instance's runners publish to `fn` as well, in-process. */
  onLiveFeed(fn: (message: LiveFeedMessage) => void): void {
    this.localFeed = fn;
  }

  /** Whether a gateway has announced subscribers to the projection within the last few seconds. */
  watched(name: string): boolean {
    return Date.now() - (this.watchedAt.get(name) ?? 0) < WATCH_TTL_MS;
  }

  /** Whether another instance's gateway has: only then do the runners publish the changes on NATS (this instance's gets them in-process). */
  watchedElsewhere(name: string): boolean {
    return Date.now() - (this.watchedElsewhereAt.get(name) ?? 0) < WATCH_TTL_MS;
  }

  /** Runs a supervision pass unless one is under way. */
  private superviseSoon(): void {
    if (!this.started || this.stopping) return;
    this.supervising ??= this.superviseAll().finally(() => (this.supervising = undefined));
  }

  private offPeers: (() => void) | undefined;

  async stop(): Promise<void> {
    this.stopping = true;
    this.offPeers?.();
    this.interest?.unsubscribe();
    clearInterval(this.timer);
    await this.supervising;
    await Promise.all([...this.runners.values()].map((r) => r.stop()));
    this.runners.clear();
    this.feeds.stop();
  }

  /** How many ordered consumers read the event stream for this instance's runners (1 when they apply the same stretch of it). */
  get streamReaders(): number {
    return this.feeds.count;
  }

  /** True when every projection this instance applies has caught up with the stream. */
  caughtUp(): boolean {
    for (const r of this.runners.values()) if (r.target.role === 'active' && !r.caughtUp) return false;
    return true;
  }

  /** The serving generation's checkpoint (from this instance's runner, or PostgreSQL). */
  checkpoint(name: string): Promise<number> {
    return unavailableOnFailure(this.readCheckpoint(name));
  }

  private async readCheckpoint(name: string): Promise<number> {
    const local = this.activeRunner(name);
    if (local) return local.checkpoint;
    const r = await this.pool.query(
      'SELECT c.seq FROM strand_projections p JOIN strand_checkpoints c ON c.projection = p.name AND c.generation = p.active_generation WHERE p.name = $1',
      [name],
    );
    return Number((r.rows[0] as { seq: string } | undefined)?.seq ?? 0);
  }

  /** Waits until the serving generation has applied `minSeq`; resolves with the checkpoint reached. */
  waitFor(name: string, minSeq: number, timeoutMs: number): Promise<{ reached: boolean; checkpoint: number }> {
    return unavailableOnFailure(this.waitForCheckpoint(name, minSeq, timeoutMs));
  }

  private async waitForCheckpoint(name: string, minSeq: number, timeoutMs: number): Promise<{ reached: boolean; checkpoint: number }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const checkpoint = await this.readCheckpoint(name);
      if (checkpoint >= minSeq) return { reached: true, checkpoint };
      const left = deadline - Date.now();
      if (left <= 0) return { reached: false, checkpoint };
      const local = this.activeRunner(name);
      // The events asked for may belong to other projections: the watermark moves past them.
      if (local) {
        local.hurry(minSeq);
        void local.refresh();
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, Math.min(left, local ? 50 : 25));
        const off = local?.onAdvance(() => {
          if (local.checkpoint >= minSeq) done();
        });
        function done() {
          clearTimeout(t);
          off?.();
          resolve();
        }
      });
    }
  }

  status(): Promise<ProjectionStatus[]> {
    return unavailableOnFailure(this.readStatus());
  }

  private async readStatus(): Promise<ProjectionStatus[]> {
    const rows = new Map((await listProjectionRows(this.pool)).map((r) => [r.name, r]));
    const dl = await this.pool.query('SELECT projection, count(*)::int AS n FROM strand_dead_letters GROUP BY projection');
    const dead = new Map((dl.rows as { projection: string; n: number }[]).map((r) => [r.projection, r.n]));
    let streamEnd: number | undefined;
    const end = async (): Promise<number> => (streamEnd ??= await this.streamEnd());
    const out: ProjectionStatus[] = [];
    for (const p of this.projections) {
      const row: ProjectionRow | undefined = rows.get(p.name);
      const active = this.activeRunner(p.name);
      const building = [...this.runners.values()].find((r) => r.projection.name === p.name && r.target.role === 'building');
      let buildCheckpoint = 0;
      if (row?.buildingGeneration && !building) {
        const r = await this.pool.query('SELECT seq FROM strand_checkpoints WHERE projection = $1 AND generation = $2', [p.name, row.buildingGeneration]);
        buildCheckpoint = Number((r.rows[0] as { seq: string } | undefined)?.seq ?? 0);
      }
      const rebuildCheckpoint = building ? building.checkpoint : buildCheckpoint;
      out.push({
        name: p.name,
        version: p.version,
        activeGeneration: row?.activeGeneration ?? null,
        buildingGeneration: row?.buildingGeneration ?? null,
        checkpoint: await this.readCheckpoint(p.name),
        local: active !== undefined,
        pending: active ? active.pending : null,
        caughtUp: active ? active.caughtUp : null,
        rebuild: row?.buildingGeneration
          ? {
              generation: row.buildingGeneration,
              checkpoint: rebuildCheckpoint,
              pending: building ? building.pending : -1,
              progress: Number(rebuildProgress(rebuildCheckpoint, await end()).toFixed(4)),
            }
          : null,
        deadLetters: dead.get(p.name) ?? 0,
      });
    }
    return out;
  }

  /** The stream's last sequence, from its leader. */
  private async streamEnd(): Promise<number> {
    try {
      return (await (await jetstreamManager(this.nc)).streams.info(this.o.stream)).state.last_seq;
    } catch (err) {
      throw new StrandError(ErrorCode.UNAVAILABLE, `event stream unavailable: ${(err as Error).message}`);
    }
  }

  /** Rebuilds a projection from the start of the stream into a new generation; undefined when one is already in progress. */
  async rebuild(name: string): Promise<number | undefined> {
    const p = this.byName.get(name);
    if (!p) return undefined;
    const generation = await unavailableOnFailure(requestRebuild(this.pool, p));
    // An instance that applies projections starts the build now; otherwise whichever does picks it up.
    if (generation !== undefined && this.started) await this.supervise(p).catch((err: unknown) => this.log.warn({ err, projection: name }, 'rebuild not started here yet; supervision retries'));
    return generation;
  }

  async deadLetters(name: string, limit = 100): Promise<DeadLetter[]> {
    const r = await unavailableOnFailure(this.pool.query(
      'SELECT projection, seq, subject, error, attempts, parked_at, event FROM strand_dead_letters WHERE projection = $1 ORDER BY seq LIMIT $2',
      [name, limit],
    ));
    return (r.rows as Record<string, unknown>[]).map((x) => ({
      projection: x['projection'] as string,
      seq: Number(x['seq']),
      subject: x['subject'] as string,
      error: x['error'] as string,
      attempts: x['attempts'] as number,
      parkedAt: (x['parked_at'] as Date).toISOString(),
      event: x['event'] as ProjectionEvent,
    }));
  }

  /**
   * Applies a parked event to the serving generation again, through the runner that holds the
   * generation's lock (on this instance or another: the request is recorded in PostgreSQL, and
   * that runner takes it between two batches). On success the event leaves the dead letters and
   * live clients take fresh snapshots; on failure its error and attempts are updated and the
   * error returned. Throws UNAVAILABLE when no runner took it within `waitMs` (the request
   * stays, and is carried out when the projection runs again).
   */
  async retryDeadLetter(name: string, seq: number, waitMs: number): Promise<{ found: boolean; ok: boolean; error?: string }> {
    const p = this.byName.get(name);
    if (!p) return { found: false, ok: false };
    const asked = await unavailableOnFailure(
      this.pool.query('UPDATE strand_dead_letters SET retry_requested_at = now() WHERE projection = $1 AND seq = $2 RETURNING attempts', [name, seq]),
    );
    if (asked.rowCount === 0) return { found: false, ok: false };
    const attempts = (asked.rows[0] as { attempts: number }).attempts;
    this.activeRunner(name)?.requestRetries();
    const deadline = Date.now() + waitMs;
    for (;;) {
      const r = await unavailableOnFailure(this.pool.query('SELECT attempts, error, retry_requested_at FROM strand_dead_letters WHERE projection = $1 AND seq = $2', [name, seq]));
      const row = r.rows[0] as { attempts: number; error: string; retry_requested_at: Date | null } | undefined;
      if (!row) return { found: true, ok: true };
      if (row.retry_requested_at === null && row.attempts > attempts) return { found: true, ok: false, error: row.error };
      if (Date.now() >= deadline) {
        throw new StrandError(
          ErrorCode.UNAVAILABLE,
          `no instance applied the retry of ${name} event ${seq} within ${waitMs} ms (is the projection running?); the request stays and is carried out when it runs`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  /** Removes a parked event for good (it will not be applied); false when there is none with that sequence. */
  async discardDeadLetter(name: string, seq: number): Promise<boolean> {
    const r = await unavailableOnFailure(this.pool.query('DELETE FROM strand_dead_letters WHERE projection = $1 AND seq = $2 RETURNING subject', [name, seq]));
    if (r.rowCount === 0) return false;
    this.log.info({ projection: name, seq, subject: (r.rows[0] as { subject: string }).subject }, 'dead letter discarded');
    return true;
  }

  /** Tells the other instances which projections this one applies. */
  private announceRunning(): void {
    this.peers?.announce({ projections: [...new Set([...this.runners.values()].filter((r) => r.running).map((r) => r.projection.name))].sort() });
  }

  private activeRunner(name: string): ProjectionRunner | undefined {
    for (const r of this.runners.values()) if (r.projection.name === name && r.target.role === 'active') return r;
    return undefined;
  }

  private async superviseAll(): Promise<void> {
    for (const p of this.projections) {
      if (this.stopping) return;
      await this.supervise(p).catch((err: unknown) => this.log.warn({ err, projection: p.name }, 'projection supervision failed'));
    }
  }

  /**
   * Whether this instance should apply a projection: 'here' when the plan over the live
   * instances with the projections role gives it this one; 'there' when it gives it another,
   * which has it (or has had less than a grace period to take it); 'anyone' when that one has
   * not taken it in time (it has no database, or is stuck), so whoever gets the lock first applies it.
   */
  private placement(name: string): 'here' | 'there' | 'anyone' {
    const peers = this.peers;
    if (!peers) return 'anyone';
    // Only instances on this database share its projections (another deployment may share the NATS).
    const members = peers.live('projections').filter((m) => !peers.member(m)?.leaving && (m === peers.self || peers.member(m)?.database === this.database));
    const held = new Map<string, string | undefined>();
    for (const m of members) for (const x of peers.member(m)?.projections ?? []) if (!held.has(x)) held.set(x, m);
    const target = spread(members, this.projections.map((p) => p.name)).get(name);
    if (target === undefined || target === peers.self) {
      this.placedAt.delete(name);
      return target === undefined ? 'anyone' : 'here';
    }
    if (held.get(name) === target) return 'there';
    const since = this.placedAt.get(name);
    if (!since || since.target !== target) {
      this.placedAt.set(name, { target, at: Date.now() });
      return 'there';
    }
    return Date.now() - since.at > PLACEMENT_GRACE_MS ? 'anyone' : 'there';
  }

  /** The identity of the database (see ensureBookkeeping), once started. */
  private database: string | undefined;

  /** When each projection was last planned for another instance that did not run it yet. */
  private readonly placedAt = new Map<string, { target: string; at: number }>();

  private async supervise(p: Projection): Promise<void> {
    const targets = await plan(this.pool, p);
    const wanted = new Set(targets.map((t) => `${p.name}/${t.generation}`));
    const placement = this.placement(p.name);
    for (const [key, r] of this.runners) {
      // Retired generations, runners that stopped themselves (lost their lock connection), and
      // projections the plan gives another instance (it takes the lock once this one lets go).
      if (r.projection.name === p.name && (!wanted.has(key) || !r.running || placement === 'there')) {
        if (placement === 'there' && r.running) this.log.info({ projection: p.name, generation: r.target.generation }, 'projection handed to the instance the plan gives it');
        this.runners.delete(key);
        await r.stop();
      }
    }
    this.announceRunning();
    if (placement === 'there') return;
    for (const t of targets) {
      const key = `${p.name}/${t.generation}`;
      if (this.runners.has(key) || this.stopping) continue;
      const runner = new ProjectionRunner(p, t, this.pool, this.nc, this.feeds, { ...this.o, watched: (n) => this.watched(n), watchedElsewhere: (n) => this.watchedElsewhere(n), localFeed: (m) => this.localFeed?.(m) }, this.metrics, this.log.child({ projection: p.name }), () => {
        void this.supervise(p).catch((err: unknown) => this.log.warn({ err, projection: p.name }, 'supervision after switch-over failed'));
      });
      if (await runner.tryStart()) {
        this.runners.set(key, runner);
        this.announceRunning();
      }
    }
    const dropped = await dropRetiredGenerations(this.pool, p.name);
    if (dropped.length > 0) {
      const jsm = await jetstreamManager(this.nc);
      for (const g of dropped) await jsm.consumers.delete(this.o.stream, `strand_${p.name}_g${g}`).catch(() => undefined);
      this.log.info({ projection: p.name, generations: dropped }, 'dropped retired generations and their consumers');
    }
  }
}

/** No pg error leaves the read side: a database failure is the project's UNAVAILABLE. */
async function unavailableOnFailure<T>(p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (err) {
    if (err instanceof StrandError) throw err;
    throw new StrandError(ErrorCode.UNAVAILABLE, `read model database unavailable: ${(err as Error).message}`);
  }
}
