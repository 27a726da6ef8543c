import { jetstreamManager, type JetStreamManager, type MsgRequest } from '@nats-io/jetstream';
import { headers, type NatsConnection } from '@nats-io/nats-core';
import type { Pool, PoolClient, QueryResult } from 'pg';
import type { Logger } from 'pino';
import { LiveHeader, eventSubject, liveChanges } from '../../subjects/index.js';
import { failpoint } from '../failpoints.js';
import { feedTexts } from '../live/feed-message.js';
import type { StrandMetrics } from '../observability/metrics.js';
import {
  CHECKPOINT_MOVED,
  GENERATION_RETIRED,
  advanceStatement,
  applyEvents,
  executeOn,
  parkStatement,
  readBacks,
  readerOn,
  resultsOf,
  runHandlers,
  toProjectionEvent,
  type ViewReadBack,
} from './batch.js';
import { lockKey, schemaOf, switchOver, type Target } from './catalog.js';
import type { EventFeeds, FeedEvent, FeedListener } from './feed.js';
import { ident } from './sql.js';
import { MessageQueue, Wakeup } from './queue.js';
import { YIELD_EVERY, yieldToIo } from './yield.js';
import type { Projection, ProjectionEvent, Row } from './types.js';
import { UnitOfWork, keyText, loadTableMeta, type TableMeta } from './unit-of-work.js';
import { toApi } from './views.js';

export { applyEvents, toProjectionEvent } from './batch.js';

/** How batches are formed and failures handled. */
export interface RunnerOptions {
  readonly stream: string;
  /** Most events applied in one transaction. */
  readonly batchSize: number;
  /**
   * How long an idle runner waits for more events before applying a batch smaller than
   * `batchSize` (0: at once), while nobody waits on the projection. A projection that a reader
   * waits on (`minSeq`) applies at once; one that a live client watches waits `liveBatchMs`. Under
   * load batches grow by themselves either way: events that arrive while a batch commits form the next one.
   */
  readonly batchMs: number;
  /**
   * The same while a live client watches the projection (0: at once). Small, since it adds to
   * what the client waits for; fewer, larger batches cost PostgreSQL less per event.
   */
  readonly liveBatchMs?: number;
  /** Tries of a failing event before it is parked. */
  readonly maxAttempts: number;
  /**
   * Wait for each batch's commit to be flushed to disk (PostgreSQL's synchronous_commit). Off,
   * a PostgreSQL crash can lose the last fraction of a second of batches, writes and checkpoint
   * together: the read model is then as it was a moment earlier, consistent, and the runner
   * applies those events again from the stream. No event is lost or applied twice either way.
   */
  readonly syncCommit?: boolean;
  /** Publish each applied batch's view changes on `strand.live.changes.<projection>`. */
  readonly live: boolean;
  /** Whether some gateway has announced subscribers to this projection's views recently. */
  readonly watched?: (projection: string) => boolean;
  /**
   * Whether another instance's gateway watches the projection: a batch's changes go on NATS only
   * then (this instance's gateway gets them in-process). Resets always go. Default: always.
   */
  readonly watchedElsewhere?: (projection: string) => boolean;
  /** This instance's ID, sent with each live feed message (its own gateway skips the NATS copy). */
  readonly instance?: string;
  /** This instance's gateway: gets each live feed message in-process, before NATS carries it to the others. */
  readonly localFeed?: (message: LiveFeedMessage) => void;
}

/**
 * Batches sent and not yet settled, when a backlog is waiting: while one batch commits, the
 * next is decoded, handled and rendered, and waits on the connection, so PostgreSQL and the
 * runner work at once. Without a backlog one at a time is better: events that arrive while a
 * batch commits form the next one, and none waits behind a batch queued before it.
 */
const MAX_IN_FLIGHT = 2;

/** One row change of a view, as the live feed carries it. */
export interface LiveChange {
  readonly key: string | number;
  readonly op: 'upsert' | 'delete';
  readonly row?: Row;
}

/**
 * The live feed's message for one committed unit of a projection: the changed rows of each of
 * its views. `prev` is the checkpoint the changes start after: a listener whose last checkpoint
 * is another one has missed changes (a message lost, or a batch not published because nobody
 * watched). `reset` says every row may have changed (a rebuild switched generations).
 */
export interface LiveFeedMessage {
  readonly projection: string;
  readonly checkpoint: number;
  readonly prev: number;
  /** ISO time of the last event applied, for push-latency metrics. */
  readonly eventTime?: string;
  readonly reset?: boolean;
  /** Rows were not read back: listeners treat it as a gap (sent by earlier versions; kept for them). */
  readonly partial?: boolean;
  readonly views: Readonly<Record<string, readonly LiveChange[]>>;
}

/**
 * Whether a failure is the database's (connection lost, server shutting down, out of
 * resources) rather than the event's. pg gives SQLSTATE codes for server-side failures; a
 * dropped socket surfaces only as a Node error code or pg's "Connection terminated" message.
 */
export function isTransient(err: unknown): boolean {
  const code = (err as { code?: unknown } | null | undefined)?.code;
  if (typeof code === 'string') {
    if (/^(08|40|53|57P|58)/.test(code)) return true; // connection, deadlock/serialization, resources, shutdown, system
    if (['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH'].includes(code)) return true;
  }
  const message = err instanceof Error ? err.message : '';
  return /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error/i.test(message);
}

/** One batch on its way: its messages, what it applies, and the SQL that commits it. */
interface Batch {
  readonly msgs: readonly FeedEvent[];
  readonly events: readonly ProjectionEvent[];
  /** The checkpoint it was planned after: its transaction fails unless PostgreSQL still has it. */
  readonly from: number;
  /** The checkpoint it commits. */
  readonly to: number;
  readonly eventTime: string | undefined;
  readonly started: number;
  /** The whole transaction, one message; undefined when there is nothing to write (redeliveries). */
  text?: string;
  /** A handler's `sql()` opened the transaction explicitly: `text` ends with COMMIT. */
  interactive: boolean;
  /** Statements of `text` before the live read-backs. */
  readsFrom: number;
  reads: readonly ViewReadBack[];
  /** Planned while this runner served reads and a gateway watched: its changes go to the live feed. */
  live: boolean;
  parked?: { readonly error: string };
  /** Planning failed: handled, in order, like a failed commit. */
  error?: unknown;
}

function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

const decoder = new TextDecoder();

/** A message that is not an event envelope, as the dead-letter table keeps it: its subject's parts and its text. */
function undecodable(m: FeedEvent): ProjectionEvent {
  const parts = m.subject.split('.');
  return {
    seq: m.seq,
    id: '',
    type: m.type,
    aggregate: m.aggregate,
    aggregateId: m.aggregate === '' ? '' : (parts[2] ?? ''),
    version: 0,
    time: m.timestamp,
    data: m.data === undefined ? '' : decoder.decode(m.data),
    metadata: {},
  };
}

/**
 * Applies one generation of one projection: the projection's events from the instance's event
 * feed (shared by its runners, see feed.ts), from after the checkpoint kept in PostgreSQL. Each batch is one
 * transaction: its writes, its checkpoint (moved by `strand_advance` from where the batch was
 * planned, so nothing commits after a batch that did not), and, when a gateway watches, the
 * changed rows read back for the live feed. A crash at any point neither skips nor
 * double-applies an event: a runner starts again from the checkpoint PostgreSQL has, and an event
 * at or below it is skipped. Batches are pipelined on one connection, the one that holds the
 * generation's advisory lock: only the lock holder writes, and losing the lock stops it.
 */
export class ProjectionRunner implements FeedListener {
  checkpoint = 0;
  pending = 0;
  /** The last stream sequence the feed gave this runner: every event of its own up to it is held or applied. */
  position = 0;
  /** The feed's count of events after the last one it gave this runner. */
  private feedPending = 0;
  private client: PoolClient | undefined;
  private tables: Map<string, TableMeta> | undefined;
  private leaveFeed: (() => void) | undefined;
  private readonly queue = new MessageQueue<FeedEvent>();
  private readonly wakeup = new Wakeup();
  private stopped = false;
  private done: Promise<void> | undefined;
  private ticker: NodeJS.Timeout | undefined;
  private streamLastSeq = 0;
  /** Whether `streamLastSeq` was read from the stream at least once. */
  private streamEndSeen = false;
  /** An operator asked for parked events to be retried: done between batches. */
  private retryWanted = false;
  private ticking: Promise<void> | undefined;
  private readonly listeners = new Set<() => void>();
  /** The checkpoint the last batch sent will leave (≥ checkpoint). */
  private planned = 0;
  /** Batches sent, oldest first, settled in that order. */
  private readonly inFlight: Batch[] = [];
  /** Settles batches one after the other. */
  private settling: Promise<void> = Promise.resolve();
  private planning = false;
  /** The first failure since the pipeline was last whole, and the messages to apply again. */
  private broken: { batch: Batch; err: unknown } | undefined;
  private returned: FeedEvent[] = [];
  /** A stream sequence the checkpoint may move to with no event to apply (the watermark). */
  private watermark = 0;
  /** The checkpoint the live feed last announced. */
  private published = 0;
  /** The highest sequence a reader waits for (`minSeq`). */
  private awaited = 0;
  private readonly schema: string;

  constructor(
    readonly projection: Projection,
    readonly target: Target,
    private readonly pool: Pool,
    private readonly nc: NatsConnection,
    private readonly feeds: EventFeeds,
    private readonly o: RunnerOptions,
    private readonly metrics: StrandMetrics,
    private readonly log: Logger,
    private readonly onSwitched: () => void,
  ) {
    this.schema = schemaOf(projection.name, target.generation);
  }

  /** The durable consumer earlier versions used for this generation (removed at start). */
  get consumerName(): string {
    return `strand_${this.projection.name}_g${this.target.generation}`;
  }

  /** Events received and not applied yet: the feed holds back while it is high. */
  get backlog(): number {
    return this.queue.length + this.returned.length;
  }

  /** From the feed: an event after `position`. Events of other projections only move the position. */
  deliver(e: FeedEvent): void {
    if (e.seq <= this.position || this.stopped) return;
    this.position = e.seq;
    this.feedPending = e.pending;
    if (this.projection.handlerFor(e.aggregate, e.type) !== undefined) {
      this.queue.push(e);
      this.wakeup.wake();
    } else if (this.checkpoint < this.awaited) this.wakeup.wake();
  }

  /** False once stopped (asked to, retired, or its lock connection was lost). */
  get running(): boolean {
    return !this.stopped;
  }

  /** True once this runner has applied everything the stream held when it last looked. */
  get caughtUp(): boolean {
    return this.pending === 0 && this.queue.length === 0 && this.inFlight.length === 0 && !this.planning && this.broken === undefined;
  }

  /** Calls `fn` whenever the checkpoint advances; returns the unsubscribe. */
  onAdvance(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Takes the generation's lock; false when another instance holds it. */
  async tryStart(): Promise<boolean> {
    const c = await this.pool.connect();
    // Held for the runner's life: its lock, and every batch's transaction. Losing it loses the
    // lock, and another instance may take over: stop at once (supervision starts a new runner
    // when the lock can be had again).
    c.on('error', (err) => {
      this.log.warn({ err, projection: this.projection.name, generation: this.target.generation }, 'lock connection lost; runner stopping');
      void this.stop();
    });
    const got = await c.query('SELECT pg_try_advisory_lock(hashtext($1)) AS ok', [lockKey(this.projection.name, this.target.generation)]);
    if (!(got.rows[0] as { ok: boolean }).ok) {
      c.release();
      return false;
    }
    this.client = c;
    try {
      const cp = await c.query('SELECT seq FROM public.strand_checkpoints WHERE projection = $1 AND generation = $2', [this.projection.name, this.target.generation]);
      this.checkpoint = Number((cp.rows[0] as { seq: string } | undefined)?.seq ?? 0);
      this.planned = this.checkpoint;
      this.position = this.checkpoint;
      this.tables = await loadTableMeta(c, this.schema, this.projection.tables);
      this.leaveFeed = this.feeds.join(this);
      void this.deleteLegacyConsumer();
    } catch (err) {
      await this.releaseLock();
      throw err;
    }
    this.metrics.projectionCheckpoint.labels(this.projection.name, String(this.target.generation)).set(this.checkpoint);
    this.published = this.checkpoint;
    this.done = this.applyLoop().catch((err: unknown) => {
      // Not running any more: give the lock back, so supervision (here or on another instance) starts a new runner.
      this.log.error({ err, projection: this.projection.name, generation: this.target.generation }, 'projection runner stopped on an error; releasing its lock');
      void this.stop();
    });
    this.ticker = setInterval(() => void this.refresh(), 1000);
    this.ticker.unref();
    void this.refresh();
    this.log.info({ projection: this.projection.name, generation: this.target.generation, role: this.target.role, checkpoint: this.checkpoint }, 'projection running');
    return true;
  }

  /** Stops after the batches in progress have settled; the lock is released. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.ticker);
    this.leaveFeed?.();
    this.wakeup.wake();
    await this.done;
    await this.settling;
    await this.releaseLock();
  }

  private async releaseLock(): Promise<void> {
    const c = this.client;
    this.client = undefined;
    if (!c) return;
    try {
      await c.query('SELECT pg_advisory_unlock(hashtext($1))', [lockKey(this.projection.name, this.target.generation)]);
    } catch {
      // a broken connection releases its locks when it closes
    }
    c.release();
  }

  /** Earlier versions read the stream through a durable consumer per generation: it is not needed any more. */
  private async deleteLegacyConsumer(): Promise<void> {
    try {
      await (await jetstreamManager(this.nc)).consumers.delete(this.o.stream, this.consumerName);
    } catch {
      // none (the usual case), or the stream is away: nothing to do
    }
  }

  private async applyLoop(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      failpoint('projection.loop');
      if (this.broken) {
        // Let every batch sent after the failed one settle (they fail too: their checkpoint
        // expectation cannot hold), then apply their messages again.
        if (this.inFlight.length > 0) {
          await this.wakeup.wait();
          continue;
        }
        failures = await this.recover(failures);
        continue;
      }
      if (this.retryWanted) {
        // Between batches: nothing else may be in flight on the lock connection meanwhile.
        if (this.inFlight.length > 0) {
          await this.wakeup.wait();
          continue;
        }
        this.retryWanted = false;
        try {
          await this.retryParked();
        } catch (err) {
          this.log.warn({ err, projection: this.projection.name }, 'dead letters not retried now; the request stays');
        }
        continue;
      }
      const last = this.inFlight[this.inFlight.length - 1];
      const room =
        last === undefined || (this.inFlight.length < MAX_IN_FLIGHT && this.queue.length >= this.o.batchSize && !last.interactive && last.error === undefined);
      if (!room) {
        await this.wakeup.wait();
        continue;
      }
      if (this.queue.length === 0) {
        // A reader waits: the feed's position is a watermark too (every event of ours up to it was received).
        const mark = Math.max(this.watermark, this.checkpoint < this.awaited ? this.position : 0);
        if (this.inFlight.length === 0 && mark > this.planned) {
          this.send(this.advanceOnly(mark));
          continue;
        }
        await this.wakeup.wait();
        continue;
      }
      const linger = this.lingerMs();
      if (linger > 0 && this.inFlight.length === 0 && this.queue.length < this.o.batchSize) {
        // Linger while idle: let a small batch fill, but never hold its first event longer than the linger.
        const deadline = (this.queue.oldest ?? performance.now()) + linger;
        for (let left = deadline - performance.now(); left > 0 && this.queue.length < this.o.batchSize && !this.stopped && this.lingerMs() > 0; left = deadline - performance.now()) {
          await this.wakeup.wait(left);
        }
        if (this.stopped) break;
      }
      const msgs = this.queue.take(this.o.batchSize);
      // Nothing of ours left after these: the checkpoint may move past the other events received too.
      const upTo = this.queue.length === 0 ? Math.max(this.position, this.watermark) : 0;
      this.planning = true;
      let batch: Batch;
      try {
        batch = await this.plan(msgs, undefined, upTo);
      } finally {
        this.planning = false;
      }
      this.send(batch);
      if (batch.error === undefined) failures = 0;
    }
  }

  /**
   * Decodes a batch, runs its handlers and renders its transaction: checkpoint first (it fails
   * at once if an earlier batch did not commit), then the writes, then the live read-backs.
   * Never throws: a failure is kept in the batch and handled in order when it settles.
   */
  private async plan(msgs: readonly FeedEvent[], parked?: { error: string; attempts: number }, upTo = 0): Promise<Batch> {
    const started = performance.now();
    const from = this.planned;
    const events: ProjectionEvent[] = [];
    let error: unknown;
    for (let i = 0; i < msgs.length; i++) {
      const m = msgs[i]!;
      if (i % YIELD_EVERY === YIELD_EVERY - 1) await yieldToIo();
      if (m.seq <= from) continue; // redelivered: already applied (or on its way)
      try {
        events.push(this.decode(m));
      } catch (err) {
        // Parked as it came, so an unreadable message cannot stop the projection.
        if (parked) events.push(undecodable(m));
        else error ??= err;
      }
    }
    const lastEvent = events[events.length - 1];
    const to = Math.max(from, msgs[msgs.length - 1]?.seq ?? from, upTo);
    const batch: Batch = {
      msgs,
      events,
      from,
      to,
      eventTime: lastEvent?.time,
      started,
      interactive: false,
      readsFrom: 0,
      reads: [],
      live: this.liveNow(),
      ...(parked ? { parked: { error: parked.error } } : {}),
    };
    if (error !== undefined) {
      batch.error = error;
      return batch;
    }
    if (to === from) return batch; // only redeliveries: nothing to write
    const name = this.projection.name;
    const g = this.target.generation;
    const prologue = [
      `SET LOCAL synchronous_commit TO ${this.o.syncCommit ? 'on' : 'off'}`,
      `SET LOCAL search_path TO ${ident(this.schema)}, public`,
      advanceStatement(name, g, from, to, batch.eventTime),
    ];
    const c = this.client!;
    try {
      if (parked) {
        const e = events[0]!;
        batch.text = [...prologue, parkStatement(name, g, eventSubject(e.aggregate, e.aggregateId, e.type), e, parked.error, parked.attempts)].join(';\n');
        return batch;
      }
      const uow = new UnitOfWork(this.tables!, {
        read: readerOn(c),
        execute: async (statements, text, params) => {
          if (!batch.interactive) {
            // A handler runs its own SQL: it must see the batch's writes, so the transaction opens now.
            await c.query(['BEGIN', ...prologue].join(';\n'));
            batch.interactive = true;
          }
          return executeOn(c, statements, text, params);
        },
      });
      await runHandlers(this.projection, uow, events);
      const statements = uow.drain();
      batch.reads = batch.live ? readBacks(this.projection, this.schema, this.tables!, uow.touched) : [];
      const head = batch.interactive ? statements : [...prologue, ...statements];
      batch.readsFrom = head.length;
      batch.text = [...head, ...batch.reads.map((r) => r.text), ...(batch.interactive ? ['COMMIT'] : [])].join(';\n');
    } catch (err) {
      if (batch.interactive) {
        await c.query('ROLLBACK').catch(() => undefined);
        batch.interactive = false;
      }
      batch.error = err;
    }
    return batch;
  }

  /** What handlers see: decoded once by the feed, upcast once per aggregate definition, shared by the projections that apply it. */
  private decode(m: FeedEvent): ProjectionEvent {
    const env = m.envelope;
    if (env === undefined) throw m.error;
    const agg = this.projection.aggregateFor(env.aggregate);
    const shared = (m.shared ??= new Map());
    let e = shared.get(agg) as ProjectionEvent | undefined;
    if (e === undefined) {
      e = toProjectionEvent(this.projection, m.seq, env);
      shared.set(agg, e);
    }
    return e;
  }

  /** A batch with no event: moves the checkpoint to the watermark. */
  private advanceOnly(to: number): Batch {
    return {
      msgs: [],
      events: [],
      from: this.planned,
      to,
      eventTime: undefined,
      started: performance.now(),
      text: advanceStatement(this.projection.name, this.target.generation, this.planned, to, undefined),
      interactive: false,
      readsFrom: 1,
      reads: [],
      live: this.liveNow(),
    };
  }

  /** Sends a batch on the runner's connection (queued behind those in flight) and settles it in order. */
  private send(batch: Batch): void {
    this.inFlight.push(batch);
    // Even past a failed plan: whatever is planned next then expects a checkpoint that this
    // batch never commits, so it cannot commit either.
    this.planned = batch.to;
    if (batch.text !== undefined) failpoint('projection.beforeCommit');
    const outcome: Promise<{ ok: true; r?: QueryResult[] } | { ok: false; err: unknown }> =
      batch.error !== undefined
        ? Promise.resolve({ ok: false, err: batch.error })
        : batch.text === undefined
          ? Promise.resolve({ ok: true })
          : this.client!.query(batch.text).then(
              (r) => ({ ok: true as const, r: resultsOf(r as QueryResult | QueryResult[]) }),
              (err: unknown) => ({ ok: false as const, err }),
            );
    this.settling = this.settling.then(async () => {
      const o = await outcome;
      this.inFlight.shift();
      if (!o.ok) {
        if (batch.interactive) await this.client?.query('ROLLBACK').catch(() => undefined);
        this.broken ??= { batch, err: o.err };
        this.returned.push(...batch.msgs);
      } else if (this.broken) {
        this.returned.push(...batch.msgs); // after a failure: applied again in order
      } else {
        try {
          this.settled(batch, o.r);
        } catch (err) {
          this.log.error({ err, projection: this.projection.name }, 'settling a committed batch failed');
        }
      }
      this.wakeup.wake();
    });
  }

  /** A batch committed: move the checkpoint, tell the live feed. */
  private settled(batch: Batch, results: QueryResult[] | undefined): void {
    failpoint('projection.afterCommit');
    if (batch.msgs.length > 0) this.pending = this.held() + this.feedPending;
    if (batch.to > this.checkpoint) {
      this.advance(batch.to);
    }
    const name = this.projection.name;
    if (batch.events.length > 0 && !batch.parked) {
      this.metrics.projectionApplied.labels(name).inc(batch.events.length);
      this.metrics.projectionBatch.labels(name).observe((performance.now() - batch.started) / 1000);
    }
    if (batch.parked) this.metrics.deadLetters.labels(name).inc();
    if (batch.text !== undefined) this.publishLive(batch, results ?? []);
  }

  /** Events of ours received and not committed yet. */
  private held(): number {
    let n = this.queue.length + this.returned.length;
    for (const b of this.inFlight) n += b.events.length;
    return n;
  }

  /** How long a small batch may wait to fill: 0 while a reader waits (`minSeq`), `liveBatchMs` while a live client watches, else `batchMs`. */
  private lingerMs(): number {
    if (this.checkpoint < this.awaited) return 0;
    return this.liveNow() ? (this.o.liveBatchMs ?? 0) : this.o.batchMs;
  }

  /** A reader waits until the checkpoint reaches `seq`: apply without lingering until then. */
  hurry(seq: number): void {
    if (seq <= this.awaited) return;
    this.awaited = seq;
    this.wakeup.wake();
  }

  /** Whether batches planned now go to the live feed: this runner serves reads and some gateway watches. */
  private liveNow(): boolean {
    return this.o.live && this.target.role === 'active' && (this.o.watched?.(this.projection.name) ?? true);
  }

  /**
   * Tells the gateways what the batch changed: the rows (or their absence) of every view key it
   * wrote, as read back in its own transaction. Only the serving generation publishes, and only
   * while a gateway watches: a batch not published leaves a gap that the next message's `prev`
   * shows, and listeners then take fresh snapshots.
   */
  private publishLive(batch: Batch, results: readonly QueryResult[]): void {
    if (!batch.live || this.target.role !== 'active' || batch.to <= this.published) return;
    const views: Record<string, LiveChange[]> = {};
    batch.reads.forEach((read, i) => {
      const spec = this.projection.views[read.view]!;
      const found = new Map<string, Row>();
      for (const row of (results[batch.readsFrom + i]?.rows ?? []) as Row[]) {
        const k = row[read.keyColumn];
        found.set(keyText(k), row);
      }
      views[read.view] = read.keys.map((key) => {
        const row = found.get(keyText(key));
        return row ? { key: key as string | number, op: 'upsert' as const, row: toApi(spec, row) } : { key: key as string | number, op: 'delete' as const };
      });
    });
    this.announce({ projection: this.projection.name, checkpoint: batch.to, prev: batch.from, ...(batch.eventTime ? { eventTime: batch.eventTime } : {}), views });
  }

  private announce(message: LiveFeedMessage): void {
    this.published = message.checkpoint;
    try {
      this.o.localFeed?.(message);
    } catch (err) {
      this.log.warn({ err, projection: this.projection.name }, 'live changes not delivered in-process');
    }
    // Nobody else listens: a gateway that starts to sees the gap in the next message's `prev`.
    if (!message.reset && this.o.watchedElsewhere?.(this.projection.name) === false) return;
    try {
      const h = headers();
      if (this.o.instance) h.set(LiveHeader.Instance, this.o.instance);
      // Past the server's max_payload a publish throws: a large batch goes in parts (headers count too).
      for (const text of feedTexts(message, (this.nc.info?.max_payload ?? 1_048_576) - 1024)) this.nc.publish(liveChanges(this.projection.name), text, { headers: h });
    } catch (err) {
      this.log.warn({ err, projection: this.projection.name }, 'live changes not published');
    }
  }

  /**
   * After a failed batch: its messages and those of every batch sent after it are applied
   * again. A database that is away is waited for; an event that keeps failing is parked.
   * Returns the count of consecutive database failures.
   */
  private async recover(failures: number): Promise<number> {
    const { batch, err } = this.broken!;
    this.broken = undefined;
    this.queue.putBack(this.returned);
    this.returned = [];
    this.planned = this.checkpoint;
    const name = this.projection.name;
    const state = sqlState(err);
    if (state === GENERATION_RETIRED) {
      this.retire();
      return 0;
    }
    if (state === CHECKPOINT_MOVED) {
      // Not after a failed batch (that is the `broken` one): someone else moved the checkpoint.
      this.log.warn({ err, projection: name, generation: this.target.generation }, 'checkpoint moved under this runner; restarting from PostgreSQL');
      this.stopped = true;
      this.leaveFeed?.();
      return 0;
    }
    if (isTransient(err) || batch.events.length === 0) {
      failures++;
      this.log.warn({ err, projection: name, failures }, 'batch not applied; retrying');
      await this.wakeup.wait(Math.min(5000, 100 * 2 ** Math.min(failures, 6)));
      return failures;
    }
    this.log.warn({ err, projection: name, from: batch.events[0]!.seq, to: batch.events[batch.events.length - 1]!.seq }, 'batch failed; applying its events one by one');
    const msgs = this.queue.take(batch.msgs.length);
    try {
      await this.applyOneByOne(msgs);
    } catch (e) {
      // The database went away meanwhile: what was not applied goes back, in order.
      this.queue.putBack(msgs.filter((m) => m.seq > this.checkpoint));
      this.planned = this.checkpoint;
      failures++;
      this.log.warn({ err: e, projection: name, failures }, 'batch not applied; retrying');
      await this.wakeup.wait(Math.min(5000, 100 * 2 ** Math.min(failures, 6)));
      return failures;
    }
    return 0;
  }

  /** The slow path after a failed batch: each event alone, retried, then parked so the rest go on. */
  private async applyOneByOne(msgs: readonly FeedEvent[]): Promise<void> {
    for (const m of msgs) {
      if (this.stopped) return;
      if (m.seq <= this.checkpoint) continue;
      for (let attempt = 1; ; attempt++) {
        const batch = await this.plan([m]);
        const err = batch.error ?? (await this.commitAlone(batch));
        if (err === undefined) break;
        const state = sqlState(err);
        if (state === GENERATION_RETIRED) return this.retire();
        // An unreachable database (or a moved checkpoint) is not the event's fault: never park for it.
        if (isTransient(err) || state === CHECKPOINT_MOVED) throw err;
        const error = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
        if (attempt >= this.o.maxAttempts) {
          this.log.error({ projection: this.projection.name, seq: m.seq, error, attempts: attempt }, 'event parked in the dead-letter table');
          const park = await this.plan([m], { error, attempts: attempt });
          const parkErr = park.error ?? (await this.commitAlone(park));
          if (parkErr !== undefined) {
            if (sqlState(parkErr) === GENERATION_RETIRED) return this.retire();
            throw parkErr;
          }
          break;
        }
        await this.wakeup.wait(50 * 2 ** (attempt - 1));
        if (this.stopped) return;
      }
    }
  }

  /** Commits one batch with nothing else in flight; returns its error, if any. */
  private async commitAlone(batch: Batch): Promise<unknown> {
    if (batch.text === undefined) return undefined;
    failpoint('projection.beforeCommit');
    try {
      const r = await this.client!.query(batch.text);
      this.planned = batch.to;
      this.settled(batch, resultsOf(r as QueryResult | QueryResult[]));
      return undefined;
    } catch (err) {
      if (batch.interactive) await this.client?.query('ROLLBACK').catch(() => undefined);
      this.planned = this.checkpoint;
      return err;
    }
  }

  private retire(): void {
    this.log.info({ projection: this.projection.name, generation: this.target.generation }, 'generation retired; runner stopping');
    this.stopped = true;
    this.leaveFeed?.();
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
   * The checkpoint may move past events of other projections, with nothing to apply, up to the
   * first event of this one after it: found by asking the stream's leader, after reading the
   * stream's end from it, for the next message on each filter subject. Only the leader's answer
   * counts. The consumer's own view (its pending count) comes from the consumer's leader, whose
   * copy of the stream may lag the stream's: on a cluster it reported nothing pending while
   * events of ours were stored and not yet delivered, and the checkpoint moved past them.
   */
  private async findWatermark(jsm: JetStreamManager, end: number): Promise<void> {
    const from = this.planned;
    if (end <= from || end <= this.watermark) return;
    let w = end;
    for (const filter of this.projection.filterSubjects) {
      // Every event at or before `end` is stored on the leader already: what it does not find there does not exist.
      const next = await jsm.streams.getMessage(this.o.stream, { seq: from + 1, next_by_subj: filter } as unknown as MsgRequest);
      if (next) w = Math.min(w, next.seq - 1);
      if (w <= from) return;
    }
    this.watermark = Math.max(this.watermark, w);
    this.wakeup.wake();
  }

  /**
   * Once a second (and when a reader waits for a sequence): lag metrics, the watermark, the
   * progress of a rebuild, and its switch-over once it has caught up.
   */
  private async tick(): Promise<void> {
    if (this.stopped) return;
    const name = this.projection.name;
    const previousEnd = this.streamEndSeen ? this.streamLastSeq : undefined;
    try {
      const jsm = await jetstreamManager(this.nc);
      const end = (await jsm.streams.info(this.o.stream)).state.last_seq;
      this.streamLastSeq = end;
      this.streamEndSeen = true;
      this.pending = this.held() + (this.position < end ? this.feedPending : 0);
      await this.findWatermark(jsm, end);
      if (this.target.role === 'active') {
        this.metrics.projectionPending.labels(name).set(this.pending);
        this.metrics.projectionLag.labels(name).set(await this.lagSeconds(jsm));
        if (await this.retriesRequested()) this.requestRetries();
        return;
      }
    } catch (err) {
      this.log.debug({ err, projection: name }, 'consumer info unavailable');
      return;
    }
    const progress = rebuildProgress(this.checkpoint, this.streamLastSeq);
    this.metrics.rebuildProgress.labels(name, String(this.target.generation)).set(progress);
    // Caught up with what it was given, and with where the stream's leader said the stream ended a tick ago.
    if (!this.caughtUp || previousEnd === undefined || this.checkpoint < previousEnd) {
      this.log.info({ projection: name, generation: this.target.generation, checkpoint: this.checkpoint, pending: this.pending, progress: Number(progress.toFixed(3)) }, 'rebuilding');
      return;
    }
    if (await switchOver(this.pool, this.projection, this.target.generation)) {
      this.log.info({ projection: name, generation: this.target.generation, checkpoint: this.checkpoint }, 'rebuild caught up; now serving');
      this.metrics.rebuildProgress.labels(name, String(this.target.generation)).set(1);
      (this as { target: Target }).target = { generation: this.target.generation, role: 'active' };
      // Every row may have changed: listeners take fresh snapshots.
      this.announce({ projection: name, checkpoint: this.checkpoint, prev: this.checkpoint, reset: true, views: {} });
      this.onSwitched();
    }
  }

  /**
   * How long the oldest event not yet applied has been in the stream (0 when none is pending):
   * an idle projection that gets one new event reports that event's age, not the time since the
   * last one it applied.
   */
  private async lagSeconds(jsm: JetStreamManager): Promise<number> {
    if (this.pending === 0) return 0;
    let oldest: number | undefined;
    const held = this.inFlight[0]?.msgs[0] ?? this.queue.first;
    if (held) oldest = held.time.getTime();
    else {
      // Pending but not delivered yet: the first event of ours after the checkpoint, as the stream has it.
      for (const filter of this.projection.filterSubjects) {
        const m = await jsm.direct.getMessage(this.o.stream, { seq: this.planned + 1, next_by_subj: filter });
        if (m) oldest = Math.min(oldest ?? Infinity, m.time.getTime());
      }
    }
    return oldest === undefined ? 0 : Math.max(0, (Date.now() - oldest) / 1000);
  }

  /** Whether an operator asked (from any instance) to retry a parked event of this generation. */
  private async retriesRequested(): Promise<boolean> {
    const r = await this.pool.query('SELECT EXISTS (SELECT 1 FROM public.strand_dead_letters WHERE projection = $1 AND generation = $2 AND retry_requested_at IS NOT NULL) AS wanted', [
      this.projection.name,
      this.target.generation,
    ]);
    return (r.rows[0] as { wanted: boolean }).wanted;
  }

  /** Applies the parked events whose retry was asked for, between batches, on the lock connection. */
  requestRetries(): void {
    if (this.target.role !== 'active') return;
    this.retryWanted = true;
    this.wakeup.wake();
  }

  /**
   * Each parked event whose retry was asked for, applied alone in a transaction on the lock
   * connection (so only the lock holder writes), checked by `strand_advance` from the checkpoint
   * to itself (the generation still serves, nobody moved the checkpoint), and removed from the
   * dead letters in the same transaction. A failure is recorded on the dead letter and its
   * request cleared; a database away leaves the request for later. Live clients take fresh
   * snapshots afterwards: a retried event changes rows out of stream order.
   */
  private async retryParked(): Promise<void> {
    const c = this.client!;
    const name = this.projection.name;
    const g = this.target.generation;
    const wanted = await c.query('SELECT seq, event FROM public.strand_dead_letters WHERE projection = $1 AND generation = $2 AND retry_requested_at IS NOT NULL ORDER BY seq', [name, g]);
    let applied = 0;
    for (const row of wanted.rows as { seq: string; event: ProjectionEvent }[]) {
      const seq = Number(row.seq);
      try {
        await c.query('BEGIN');
        await applyEvents(c, this.projection, g, [row.event]);
        await c.query(advanceStatement(name, g, this.checkpoint, this.checkpoint, undefined));
        await c.query('DELETE FROM public.strand_dead_letters WHERE projection = $1 AND seq = $2', [name, seq]);
        await c.query('COMMIT');
        applied++;
        this.log.info({ projection: name, seq }, 'dead letter retried: applied and removed');
      } catch (err) {
        await c.query('ROLLBACK').catch(() => undefined);
        if (isTransient(err)) throw err;
        const state = sqlState(err);
        if (state === GENERATION_RETIRED || state === CHECKPOINT_MOVED) throw err;
        const error = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
        await c.query('UPDATE public.strand_dead_letters SET error = $3, attempts = attempts + 1, retry_requested_at = NULL WHERE projection = $1 AND seq = $2', [name, seq, error]);
        this.log.warn({ projection: name, seq, error }, 'dead letter retried: failed again');
      }
    }
    if (applied > 0) this.announce({ projection: name, checkpoint: this.checkpoint, prev: this.checkpoint, reset: true, views: {} });
  }
}

/** A rebuild's progress: the share of the stream (as its leader last reported its end) the new generation's checkpoint has passed. */
export function rebuildProgress(checkpoint: number, streamEnd: number): number {
  return streamEnd <= 0 ? 1 : Math.min(1, checkpoint / streamEnd);
}
