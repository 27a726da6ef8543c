import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, type ConsumerMessages, type JsMsg } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Pool, PoolClient } from 'pg';
import type { Logger } from 'pino';
import type { EventEnvelope } from '../eventstore/types.js';
import { failpoint } from '../failpoints.js';
import type { StrandMetrics } from '../observability/metrics.js';
import { lockKey, schemaOf, switchOver, type Target } from './catalog.js';
import { liveChanges } from '../../subjects/index.js';
import type { Projection, ProjectionEvent, Row } from './types.js';
import { UnitOfWork, ident } from './unit-of-work.js';
import { toApi } from './views.js';

/** How batches are formed and failures handled. */
export interface RunnerOptions {
  readonly stream: string;
  /** Most events applied in one transaction. */
  readonly batchSize: number;
  /** Longest an event waits for its batch to fill. */
  readonly batchMs: number;
  /** Tries of a failing event before it is parked. */
  readonly maxAttempts: number;
  /** Publish each applied batch's view changes on `strand.live.changes.<projection>`. */
  readonly live: boolean;
  /** Whether some gateway has announced subscribers to this projection's views recently. */
  readonly watched?: (projection: string) => boolean;
}

const decoder = new TextDecoder();

/** Decodes a stream message into what handlers see, upcasting old schema versions. */
export function toProjectionEvent(p: Projection, seq: number, env: EventEnvelope): ProjectionEvent {
  const agg = p.aggregateFor(env.aggregate);
  const type = agg?.events.get(env.type);
  const data = agg && type && env.schemaVersion !== type.version ? agg.upcast(env.type, env.schemaVersion, env.data) : env.data;
  return {
    seq,
    id: env.id,
    type: env.type,
    aggregate: env.aggregate,
    aggregateId: env.aggregateId,
    version: env.version,
    time: env.time,
    ...(env.actor !== undefined ? { actor: env.actor } : {}),
    data,
    metadata: env.metadata ?? {},
  };
}

/** Applies events to a generation's tables inside a transaction (search_path set to its schema). */
export async function applyEvents(
  c: PoolClient,
  p: Projection,
  generation: number,
  events: readonly ProjectionEvent[],
  columnTypes?: Map<string, ReadonlyMap<string, string>>,
  searchPathSet = false,
): Promise<UnitOfWork['touched']> {
  if (!searchPathSet) await c.query(`SET LOCAL search_path TO ${ident(schemaOf(p.name, generation))}, public`);
  const uow = new UnitOfWork(c, p.tables, columnTypes);
  for (const [table, spec] of Object.entries(p.tables)) {
    if (!spec.prefetch) continue;
    const keys = events.map((e) => spec.prefetch!(e)).filter((k): k is Row => k !== undefined);
    if (keys.length > 0) await uow.prefetch(table, keys);
  }
  for (const e of events) {
    const h = p.handlerFor(e.aggregate, e.type);
    if (h) await h(e, uow);
  }
  await uow.flush();
  return uow.touched;
}

/** One row change of a view, as the live feed carries it. */
export interface LiveChange {
  readonly key: string | number;
  readonly op: 'upsert' | 'delete';
  readonly row?: Row;
}

/**
 * The live feed's message for one committed unit of a projection: the changed rows of each of
 * its views. `prev` is the checkpoint before, so a listener that missed a message notices.
 * `reset` says every row may have changed (a rebuild switched generations).
 */
export interface LiveFeedMessage {
  readonly projection: string;
  readonly checkpoint: number;
  readonly prev: number;
  /** ISO time of the last event applied, for push-latency metrics. */
  readonly eventTime?: string;
  readonly reset?: boolean;
  /** Rows were not re-read (nobody was watching): listeners treat it as a gap. */
  readonly partial?: boolean;
  readonly views: Readonly<Record<string, readonly LiveChange[]>>;
}

/**
 * Whether a failure is the database's (connection lost, server shutting down, out of
 * resources) rather than the event's. pg gives SQLSTATE codes for server-side failures; a
 * dropped socket surfaces only as a Node error code or pg's "Connection terminated" message.
 */
export function isTransient(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string') {
    if (/^(08|53|57P|58)/.test(code)) return true;
    if (['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH'].includes(code)) return true;
  }
  const message = err instanceof Error ? err.message : '';
  return /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error/i.test(message);
}

type Signal = { promise: Promise<void>; resolve: () => void };
function signal(): Signal {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

/**
 * Applies one generation of one projection: a durable JetStream consumer filtered to the
 * projection's events, started after the checkpoint kept in PostgreSQL. Each batch and the
 * checkpoint commit in one transaction, and only then is the batch acked, so a crash at any
 * point neither skips nor double-applies an event (a redelivered event at or below the
 * checkpoint is skipped). Only the holder of the generation's advisory lock runs it.
 */
export class ProjectionRunner {
  checkpoint = 0;
  pending = 0;
  private lastEventTime: string | undefined;
  private lockClient: PoolClient | undefined;
  private messages: ConsumerMessages | undefined;
  private queue: JsMsg[] = [];
  private arrived: Signal = signal();
  private stopped = false;
  private done: Promise<void> | undefined;
  private ticker: NodeJS.Timeout | undefined;
  private streamLastSeq = 0;
  private applying = false;
  private ticking: Promise<void> | undefined;
  private readonly listeners = new Set<() => void>();
  private readonly columnTypes = new Map<string, ReadonlyMap<string, string>>();
  /** Rows written since the last live publication, per table. */
  private touched = new Map<string, Map<string, Row>>();
  /** The checkpoint the live feed last announced. */
  private published = 0;

  constructor(
    readonly projection: Projection,
    readonly target: Target,
    private readonly pool: Pool,
    private readonly nc: NatsConnection,
    private readonly o: RunnerOptions,
    private readonly metrics: StrandMetrics,
    private readonly log: Logger,
    private readonly onSwitched: () => void,
  ) {}

  get consumerName(): string {
    return `strand_${this.projection.name}_g${this.target.generation}`;
  }

  /** False once stopped (asked to, retired, or its lock connection was lost). */
  get running(): boolean {
    return !this.stopped;
  }

  /** True once this runner has applied everything the stream held when it last looked. */
  get caughtUp(): boolean {
    return this.pending === 0 && this.queue.length === 0 && !this.applying;
  }

  /** Calls `fn` whenever the checkpoint advances; returns the unsubscribe. */
  onAdvance(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Takes the generation's lock; false when another instance holds it. */
  async tryStart(): Promise<boolean> {
    const c = await this.pool.connect();
    // Held for the runner's life. Losing it loses the lock, and another instance may take over:
    // stop at once (supervision starts a new runner when the lock can be had again).
    c.on('error', (err) => {
      this.log.warn({ err, projection: this.projection.name, generation: this.target.generation }, 'lock connection lost; runner stopping');
      void this.stop();
    });
    const got = await c.query('SELECT pg_try_advisory_lock(hashtext($1)) AS ok', [lockKey(this.projection.name, this.target.generation)]);
    if (!(got.rows[0] as { ok: boolean }).ok) {
      c.release();
      return false;
    }
    this.lockClient = c;
    try {
      const cp = await c.query('SELECT seq FROM strand_checkpoints WHERE projection = $1 AND generation = $2', [this.projection.name, this.target.generation]);
      this.checkpoint = Number((cp.rows[0] as { seq: string } | undefined)?.seq ?? 0);
      await this.openConsumer();
    } catch (err) {
      await this.releaseLock();
      throw err;
    }
    this.metrics.projectionCheckpoint.labels(this.projection.name, String(this.target.generation)).set(this.checkpoint);
    this.published = this.checkpoint;
    this.done = this.applyLoop().catch((err: unknown) => this.log.error({ err, projection: this.projection.name }, 'projection runner stopped on an error'));
    this.ticker = setInterval(() => void this.refresh(), 1000);
    this.ticker.unref();
    void this.refresh();
    this.log.info({ projection: this.projection.name, generation: this.target.generation, role: this.target.role, checkpoint: this.checkpoint }, 'projection running');
    return true;
  }

  /** Stops after the batch in progress; the lock is released. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.ticker);
    this.messages?.stop();
    this.arrived.resolve();
    await this.done;
    await this.releaseLock();
  }

  private async releaseLock(): Promise<void> {
    const c = this.lockClient;
    this.lockClient = undefined;
    if (!c) return;
    try {
      await c.query('SELECT pg_advisory_unlock(hashtext($1))', [lockKey(this.projection.name, this.target.generation)]);
    } catch {
      // a broken connection releases its locks when it closes
    }
    c.release();
  }

  /** The consumer is recreated at every start from the PostgreSQL checkpoint: that, not the consumer, is the truth. */
  private async openConsumer(): Promise<void> {
    const jsm = await jetstreamManager(this.nc);
    await jsm.consumers.delete(this.o.stream, this.consumerName).catch(() => undefined);
    await jsm.consumers.add(this.o.stream, {
      durable_name: this.consumerName,
      description: `Strand projection ${this.projection.name}, generation ${this.target.generation}`,
      filter_subjects: [...this.projection.filterSubjects],
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: this.checkpoint + 1,
      ack_policy: AckPolicy.All,
      ack_wait: 60_000_000_000,
      max_ack_pending: 50_000,
    });
    const consumer = await jetstream(this.nc).consumers.get(this.o.stream, this.consumerName);
    this.messages = await consumer.consume({ max_messages: Math.max(1000, this.o.batchSize * 4) });
    void (async () => {
      for await (const m of this.messages!) {
        this.queue.push(m);
        if (this.queue.length === 1 || this.queue.length >= this.o.batchSize) this.arrived.resolve();
      }
    })().catch((err: unknown) => this.log.warn({ err, projection: this.projection.name }, 'projection consumer ended'));
  }

  private async applyLoop(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      if (this.queue.length === 0) {
        await this.arrived.promise;
        this.arrived = signal();
        continue;
      }
      if (this.queue.length < this.o.batchSize) {
        // Let the batch fill, but never hold the first event longer than batchMs.
        await Promise.race([this.arrived.promise, new Promise((r) => setTimeout(r, this.o.batchMs))]);
        this.arrived = signal();
      }
      if (this.stopped) break;
      const batch = this.queue.splice(0, this.o.batchSize);
      this.applying = true;
      try {
        await this.applyBatch(batch);
        failures = 0;
      } catch (err) {
        // The database is unreachable (or something unforeseen): nothing was acked, so keep
        // the batch and try again; what was committed meanwhile is skipped by the checkpoint.
        failures++;
        this.log.warn({ err, projection: this.projection.name, failures }, 'batch not applied; retrying');
        this.queue.unshift(...batch);
        await new Promise((r) => setTimeout(r, Math.min(5000, 100 * 2 ** Math.min(failures, 6))));
      } finally {
        this.applying = false;
      }
    }
  }

  private async applyBatch(batch: JsMsg[]): Promise<void> {
    const t0 = performance.now();
    const fresh: ProjectionEvent[] = [];
    for (const m of batch) {
      if (m.seq <= this.checkpoint) continue; // redelivered: already applied and checkpointed
      fresh.push(toProjectionEvent(this.projection, m.seq, JSON.parse(decoder.decode(m.data)) as EventEnvelope));
    }
    const last = batch[batch.length - 1]!;
    if (fresh.length > 0) {
      let superseded = false;
      try {
        superseded = await this.commit(fresh);
      } catch (err) {
        if (isTransient(err)) throw err;
        this.log.warn({ err, projection: this.projection.name, from: fresh[0]!.seq, to: fresh[fresh.length - 1]!.seq }, 'batch failed; applying its events one by one');
        superseded = await this.applyOneByOne(fresh.filter((e) => e.seq > this.checkpoint));
      }
      if (superseded) {
        this.log.info({ projection: this.projection.name, generation: this.target.generation }, 'generation retired; runner stopping');
        this.stopped = true;
        this.messages?.stop();
        return;
      }
      this.metrics.projectionApplied.labels(this.projection.name).inc(fresh.length);
      this.metrics.projectionBatch.labels(this.projection.name).observe((performance.now() - t0) / 1000);
    }
    failpoint('projection.afterCommit');
    last.ack();
    this.pending = last.info.pending;
    this.advance(last.seq);
    await this.publishLive(fresh[fresh.length - 1]?.time);
  }

  /**
   * Tells the gateways what changed: the current rows (or their absence) of every view key
   * this projection wrote since the last publication. Only the serving generation publishes.
   */
  private async publishLive(eventTime?: string, reset = false): Promise<void> {
    if (!this.o.live || this.target.role !== 'active' || (this.checkpoint === this.published && !reset)) return;
    const touched = this.touched;
    this.touched = new Map();
    const views: Record<string, LiveChange[]> = {};
    // Re-reading changed rows costs a query per view per batch: only when someone watches.
    const partial = !reset && touched.size > 0 && this.o.watched !== undefined && !this.o.watched(this.projection.name);
    try {
      for (const [name, spec] of Object.entries(this.projection.views)) {
        if (reset || partial) continue;
        const keyCol = spec.columns[spec.key]!;
        const keys = new Map<string, unknown>();
        for (const [table, rows] of touched) {
          if (!this.projection.tables[table]?.key.includes(keyCol)) continue;
          for (const row of rows.values()) keys.set(JSON.stringify(row[keyCol]), row[keyCol]);
        }
        if (keys.size === 0) continue;
        const r = await this.pool.query(`SELECT * FROM public.${ident(name)} WHERE ${ident(keyCol)} = ANY($1)`, [[...keys.values()]]);
        const found = new Map<string, Row>();
        for (const row of r.rows as Row[]) found.set(JSON.stringify(row[keyCol]), toApi(spec, row));
        views[name] = [...keys].map(([k, key]) => {
          const row = found.get(k);
          return row ? { key: key as string | number, op: 'upsert' as const, row } : { key: key as string | number, op: 'delete' as const };
        });
      }
    } catch (err) {
      // Listeners will see a gap in the prev chain and send their clients fresh snapshots.
      this.log.warn({ err, projection: this.projection.name }, 'live changes not read; listeners will resynchronise');
      return;
    }
    const message: LiveFeedMessage = {
      projection: this.projection.name,
      checkpoint: this.checkpoint,
      prev: this.published,
      ...(eventTime ? { eventTime } : {}),
      ...(reset ? { reset: true } : {}),
      ...(partial ? { partial: true } : {}),
      views,
    };
    this.published = this.checkpoint;
    try {
      this.nc.publish(liveChanges(this.projection.name), JSON.stringify(message));
    } catch (err) {
      this.log.warn({ err, projection: this.projection.name }, 'live changes not published');
    }
  }

  /**
   * One transaction: the events, then the checkpoint. Returns true when this generation is no
   * longer wanted. Round trips are few on purpose: BEGIN with the search path, the batch's
   * statements, then the checkpoint (which also checks the generation is still wanted) with COMMIT.
   */
  private async commit(events: readonly ProjectionEvent[], parked?: { event: ProjectionEvent; error: string; attempts: number }): Promise<boolean> {
    const p = this.projection;
    const g = this.target.generation;
    const last = parked?.event ?? events[events.length - 1]!;
    const c = await this.pool.connect();
    try {
      await c.query(`BEGIN; SET LOCAL search_path TO ${ident(schemaOf(p.name, g))}, public`);
      let touched: UnitOfWork['touched'] | undefined;
      if (events.length > 0) touched = await applyEvents(c, p, g, events, this.columnTypes, true);
      if (parked) {
        const e = parked.event;
        await c.query(
          `INSERT INTO public.strand_dead_letters (projection, seq, generation, subject, event, error, attempts) VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (projection, seq) DO UPDATE SET generation = EXCLUDED.generation, error = EXCLUDED.error, attempts = EXCLUDED.attempts, parked_at = now()`,
          [p.name, e.seq, g, `evt.${e.aggregate}.${e.aggregateId}.${e.type}`, JSON.stringify(e), parked.error, parked.attempts],
        );
      }
      failpoint('projection.beforeCommit');
      const name = c.escapeLiteral(p.name);
      const results = (await c.query(
        `UPDATE public.strand_checkpoints SET seq = ${Number(last.seq)}, event_time = ${c.escapeLiteral(last.time)}, updated_at = now()
         WHERE projection = ${name} AND generation = ${Number(g)}
           AND EXISTS (SELECT 1 FROM public.strand_projections WHERE name = ${name} AND (active_generation = ${Number(g)} OR building_generation = ${Number(g)}));
         COMMIT`,
      )) as unknown as { rowCount: number | null }[];
      if ((results[0]?.rowCount ?? 0) === 0) return true; // retired meanwhile: what it wrote is dropped with its schema
      if (touched) {
        for (const [table, keys] of touched) {
          let t = this.touched.get(table);
          if (!t) this.touched.set(table, (t = new Map()));
          for (const [k, row] of keys) t.set(k, row);
        }
      }
      this.lastEventTime = last.time;
      return false;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      c.release();
    }
  }

  /** The slow path after a failed batch: each event alone, retried, then parked so the rest go on. */
  private async applyOneByOne(events: readonly ProjectionEvent[]): Promise<boolean> {
    for (const e of events) {
      for (let attempt = 1; ; attempt++) {
        try {
          if (await this.commit([e])) return true;
          this.advance(e.seq);
          break;
        } catch (err) {
          // An unreachable database is not the event's fault: never park for it.
          if (isTransient(err)) throw err;
          const error = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
          if (attempt >= this.o.maxAttempts) {
            this.log.error({ projection: this.projection.name, seq: e.seq, type: e.type, error, attempts: attempt }, 'event parked in the dead-letter table');
            if (await this.commit([], { event: e, error, attempts: attempt })) return true;
            this.metrics.deadLetters.labels(this.projection.name).inc();
            this.advance(e.seq);
            break;
          }
          await new Promise((r) => setTimeout(r, 50 * 2 ** (attempt - 1)));
        }
      }
    }
    return false;
  }

  private advance(seq: number): void {
    if (seq <= this.checkpoint) return;
    this.checkpoint = seq;
    this.metrics.projectionCheckpoint.labels(this.projection.name, String(this.target.generation)).set(seq);
    for (const fn of this.listeners) fn();
  }

  /** Looks at the stream now (coalescing concurrent calls): watermark, lag, rebuild progress. */
  refresh(): Promise<void> {
    this.ticking ??= this.tick().finally(() => (this.ticking = undefined));
    return this.ticking;
  }

  /**
   * Once a second (and when a reader waits for a sequence): lag metrics, the watermark, the
   * progress of a rebuild, and its switch-over once it has caught up.
   */
  private async tick(): Promise<void> {
    if (this.stopped) return;
    const name = this.projection.name;
    try {
      const jsm = await jetstreamManager(this.nc);
      // The stream's end first, then the consumer: if the consumer then has nothing pending and
      // everything it delivered is applied, no event of ours at or below that end is missing.
      const end = (await jsm.streams.info(this.o.stream)).state.last_seq;
      const info = await jsm.consumers.info(this.o.stream, this.consumerName);
      this.streamLastSeq = end;
      this.pending = info.num_pending + this.queue.length;
      if (info.num_pending === 0 && this.queue.length === 0 && !this.applying && info.delivered.stream_seq <= this.checkpoint && end > this.checkpoint) {
        await this.pool.query('UPDATE strand_checkpoints SET seq = $3, updated_at = now() WHERE projection = $1 AND generation = $2 AND seq < $3', [name, this.target.generation, end]);
        this.advance(end);
        if (!this.applying) await this.publishLive();
      }
    } catch (err) {
      this.log.debug({ err, projection: name }, 'consumer info unavailable');
      return;
    }
    const lag = this.pending > 0 && this.lastEventTime ? Math.max(0, (Date.now() - Date.parse(this.lastEventTime)) / 1000) : 0;
    if (this.target.role === 'active') {
      this.metrics.projectionPending.labels(name).set(this.pending);
      this.metrics.projectionLag.labels(name).set(lag);
      return;
    }
    const progress = this.streamLastSeq === 0 ? 1 : Math.min(1, this.checkpoint / this.streamLastSeq);
    this.metrics.rebuildProgress.labels(name, String(this.target.generation)).set(this.pending === 0 ? 1 : progress);
    if (!this.caughtUp) {
      this.log.info({ projection: name, generation: this.target.generation, checkpoint: this.checkpoint, pending: this.pending, progress: Number(progress.toFixed(3)) }, 'rebuilding');
      return;
    }
    if (await switchOver(this.pool, this.projection, this.target.generation)) {
      this.log.info({ projection: name, generation: this.target.generation, checkpoint: this.checkpoint }, 'rebuild caught up; now serving');
      (this as { target: Target }).target = { generation: this.target.generation, role: 'active' };
      this.touched = new Map();
      this.published = this.checkpoint;
      await this.publishLive(undefined, true);
      this.onSwitched();
    }
  }
}
