import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { Aggregate } from '../aggregate/define.js';
import { Rejection, type EventContext, type Issuer } from '../aggregate/types.js';
import { failed, type CommandAccepted, type CommandFailed, type CommandReply, type CommandRequest, type ReplyEvent } from '../commands/types.js';
import { ErrorCode, StrandError } from '../errors.js';
import { ConcurrencyConflict, StoreUnavailable } from '../eventstore/errors.js';
import type { RememberedCommand, Snapshot, SnapshotStore } from '../eventstore/snapshots.js';
import type { EventEnvelope, EventStore, StoredEvent } from '../eventstore/types.js';
import { failpoint } from '../failpoints.js';
import type { StrandMetrics } from '../observability/metrics.js';

/** Tuning of the actor system; every field has a documented default in the configuration. */
export interface ActorSystemOptions {
  /** Most actors kept in memory; past it the least recently used idle one is passivated. */
  readonly maxActors: number;
  /**
   * Most bytes the actors' states and remembered command IDs may take, as estimated (0: no
   * limit); past it the least recently used idle actors are passivated until a tenth is free.
   */
  readonly memoryBytes: number;
  /** An actor unused this long is passivated. */
  readonly idleMs: number;
  /** Re-decides after a concurrency conflict before replying `CONFLICT`. */
  readonly conflictRetries: number;
  /** Most commands waiting for one actor; past it the reply is `UNAVAILABLE`. */
  readonly mailboxLimit: number;
  /** Snapshot every N events, unless the aggregate sets its own (0 disables). */
  readonly snapshotEvery: number;
  /** Check each decided event against its schema before appending it. */
  readonly validateEvents: boolean;
}

/** An instance's state loaded from the store. */
export interface Rehydrated {
  readonly state: unknown;
  readonly version: number;
  /** Stream sequence of the last event folded in (0: none). */
  readonly seq: number;
  /** `empty`, `events` (replayed) or `snapshot` (snapshot plus tail). */
  readonly source: string;
}

/**
 * Asked when an append is refused because another writer got there first: whether this
 * instance still owns the instance's partition. False means it was handed to another instance
 * (this one was paused, or cut off, past its membership): the command is not retried here.
 */
export type OwnershipCheck = () => Promise<boolean>;

/** The reply of a command this instance must not run: its partition moved to another owner. */
export const MOVED: CommandFailed = Object.freeze(failed(ErrorCode.UNAVAILABLE, 'this instance no longer owns the partition of this aggregate instance'));

/** Thrown inside the actor when the ownership check says the partition moved. */
class PartitionMoved extends Error {}

interface Job {
  readonly req: CommandRequest;
  readonly resolve: (reply: CommandReply) => void;
  readonly owned: OwnershipCheck | undefined;
}

/**
 * One aggregate instance in memory. Kept small on purpose (100,000 of them must fit in
 * about 100 MB beyond their states): the mailbox and the remembered commands are allocated
 * only when used.
 */
class Actor {
  state: unknown;
  version = 0;
  /** Stream sequence of the last event folded into `state` (0: none). */
  seq = 0;
  recent: RememberedCommand[] | null = null;
  mailbox: Job[] | null = null;
  busy = false;
  ready = false;
  /** Not loaded in this process yet: its first command may assume it has no events (see handle). */
  fresh = true;
  lastUsed = 0;
  /** Estimated bytes of its state and remembered commands (see estimateBytes), counted in the system's total. */
  bytes = 0;
  /** The version at which `bytes` was last estimated. */
  sizedAt = -1;

  constructor(
    readonly aggregate: Aggregate,
    readonly id: string,
  ) {}
}

function parseIssuer(actor: string | undefined): Issuer | undefined {
  if (!actor) return undefined;
  const i = actor.indexOf(':');
  return i > 0 ? { type: actor.slice(0, i), id: actor.slice(i + 1) } : undefined;
}

function issuerHeader(issuer: Issuer | undefined): string | undefined {
  return issuer ? `${issuer.type}:${issuer.id}` : undefined;
}

/**
 * The actor system: one actor per (aggregate, id), each running its commands one at a time in
 * arrival order, different instances concurrently. An actor activates from its latest
 * snapshot plus the events after it; commands arriving meanwhile wait in its mailbox. Actors
 * are passivated when idle and, least recently used first, when there are too many.
 */
export class ActorSystem {
  private readonly actors = new Map<string, Actor>();
  private readonly sweeper: NodeJS.Timeout;
  /** Sum of the actors' estimated bytes. */
  private bytes = 0;

  constructor(
    private readonly store: EventStore,
    private readonly snapshots: SnapshotStore | undefined,
    private readonly o: ActorSystemOptions,
    private readonly metrics: StrandMetrics,
    private readonly log: Logger,
  ) {
    this.sweeper = setInterval(() => this.passivateIdle(), Math.max(100, Math.min(o.idleMs / 2, 30_000)));
    this.sweeper.unref();
  }

  /** Actors in memory. */
  get size(): number {
    return this.actors.size;
  }

  /** Estimated bytes the actors in memory hold (states and remembered command IDs). */
  get memoryBytes(): number {
    return this.bytes;
  }

  /**
   * Runs a command on its instance's actor; never throws. With `owned`, a refused append first
   * asks whether this instance still owns the aggregate's partition, and answers {@link MOVED}
   * (dropping the actor's state) when it does not.
   */
  execute(req: CommandRequest, owned?: OwnershipCheck): Promise<CommandReply> {
    const key = `${req.aggregate.name}/${req.id}`;
    let actor = this.actors.get(key);
    if (actor) {
      // Re-insert: the map's order is least-recently-used first.
      this.actors.delete(key);
      this.actors.set(key, actor);
    } else {
      actor = new Actor(req.aggregate, req.id);
      this.actors.set(key, actor);
      this.metrics.liveActors.set(this.actors.size);
      if (this.actors.size > this.o.maxActors) this.evict();
    }
    actor.lastUsed = Date.now();
    if (actor.mailbox && actor.mailbox.length >= this.o.mailboxLimit) {
      return Promise.resolve(failed(ErrorCode.UNAVAILABLE, `too many commands waiting for ${key} (limit ${this.o.mailboxLimit})`));
    }
    const a = actor;
    return new Promise<CommandReply>((resolve) => {
      (a.mailbox ??= []).push({ req, resolve, owned });
      if (!a.busy) void this.run(a);
    });
  }

  /**
   * Drops every idle actor `which` selects (a partition handed to another instance): its state
   * would be stale when the partition comes back. Busy ones are skipped; they finish their
   * commands, and their appends are checked by the log as always.
   */
  passivateWhere(which: (aggregate: string, id: string) => boolean): number {
    let n = 0;
    for (const [key, a] of this.actors) {
      if (a.busy || a.mailbox || !which(a.aggregate.name, a.id)) continue;
      this.remove(key, a, 'handoff');
      n++;
    }
    return n;
  }

  /** Drops an instance from memory now (tests, benchmarks, and after an unknown outcome). */
  passivate(aggregate: string, id: string): boolean {
    const key = `${aggregate}/${id}`;
    const a = this.actors.get(key);
    if (!a || a.busy || a.mailbox) return false;
    this.remove(key, a, 'manual');
    return true;
  }

  /**
   * Loads an instance from the store without touching the live actor: from its snapshot and
   * tail, or (`useSnapshot: false`) by replaying every event. For reads and for proving the two agree.
   */
  async rehydrate(aggregate: Aggregate, id: string, opts: { useSnapshot?: boolean } = {}): Promise<Rehydrated> {
    const a = new Actor(aggregate, id);
    const source = await this.activate(a, opts.useSnapshot ?? true);
    return { state: a.state, version: a.version, seq: a.seq, source };
  }

  /**
   * Time travel: the state as it was after `version`, or after the last event decided at or
   * before `at`. Replays from the first event, so the result never depends on a snapshot.
   */
  async stateAt(aggregate: Aggregate, id: string, until: { version?: number; at?: Date }): Promise<Rehydrated> {
    const a = new Actor(aggregate, id);
    a.state = aggregate.initialState();
    const atMs = until.at?.getTime();
    let after = 0;
    for (;;) {
      const page = await this.store.load(aggregate.name, id, after, 1000);
      for (const s of page.events) {
        if (until.version !== undefined && s.envelope.version > until.version) return { state: a.state, version: a.version, seq: a.seq, source: 'events' };
        if (atMs !== undefined && Date.parse(s.envelope.time) > atMs) return { state: a.state, version: a.version, seq: a.seq, source: 'events' };
        this.foldStored(a, s);
      }
      if (!page.more || page.events.length === 0) break;
      after = page.events[page.events.length - 1]!.seq;
    }
    return { state: a.state, version: a.version, seq: a.seq, source: 'events' };
  }

  /** Stops the idle sweep; actors are simply dropped (their events are in the stream). */
  stop(): void {
    clearInterval(this.sweeper);
    this.actors.clear();
    this.bytes = 0;
    this.metrics.liveActors.set(0);
    this.metrics.actorBytes.set(0);
  }

  /**
   * Re-estimates an actor's size when its version moved on since the last estimate (every
   * command at first, then less often as it grows: serialising a large state after every command
   * would cost more than it saves), and passivates least recently used actors when the total is
   * over the budget.
   */
  private resize(actor: Actor): void {
    if (!actor.ready) {
      this.account(actor, 0);
    } else if (actor.sizedAt < 0 || actor.version - actor.sizedAt >= Math.min(64, Math.max(1, actor.sizedAt >> 3))) {
      this.account(actor, estimateBytes(actor));
      actor.sizedAt = actor.version;
    }
    if (this.o.memoryBytes > 0 && this.bytes > this.o.memoryBytes) this.shed();
  }

  private account(actor: Actor, bytes: number): void {
    this.bytes += bytes - actor.bytes;
    actor.bytes = bytes;
    this.metrics.actorBytes.set(this.bytes);
  }

  /** Over the byte budget: passivates idle actors, least recently used first, until a tenth of it is free. */
  private shed(): void {
    const target = this.o.memoryBytes * 0.9;
    for (const [key, a] of this.actors) {
      if (this.bytes <= target) break;
      if (a.busy || a.mailbox) continue;
      this.remove(key, a, 'memory');
    }
  }

  private async run(actor: Actor): Promise<void> {
    actor.busy = true;
    try {
      while (actor.mailbox && actor.mailbox.length > 0) {
        const job = actor.mailbox.shift()!;
        let reply: CommandReply;
        try {
          reply = await this.handle(actor, job.req, job.owned);
        } catch (err) {
          reply = this.failure(err, actor, job.req);
        }
        this.resize(actor);
        job.resolve(reply);
      }
      actor.mailbox = null;
    } finally {
      actor.busy = false;
    }
  }

  private failure(err: unknown, actor: Actor, req: CommandRequest): CommandReply {
    if (err instanceof PartitionMoved) {
      this.reset(actor);
      return MOVED;
    }
    if (err instanceof StrandError) {
      if (err.code !== ErrorCode.CONFLICT) {
        this.log.warn({ err, aggregate: actor.aggregate.name, id: actor.id, commandId: req.commandId, correlationId: req.correlationId }, 'command failed');
      }
      return failed(err.code, err.message, err.extra);
    }
    this.log.error({ err, aggregate: actor.aggregate.name, id: actor.id, commandId: req.commandId, correlationId: req.correlationId }, 'command failed unexpectedly');
    this.reset(actor);
    return failed(ErrorCode.INTERNAL, 'internal error; see the log for this command ID');
  }

  private async handle(actor: Actor, req: CommandRequest, owned: OwnershipCheck | undefined): Promise<CommandReply> {
    const agg = actor.aggregate;
    /** Times the state was found behind the stream's head before an answer no append checks. */
    let refreshes = 0;
    for (let attempt = 0; ; attempt++) {
      // The first command an instance gets in this process usually creates it. Rather than read
      // its (empty) history first, decide on the initial state and let the append's expectation
      // (no event of this instance yet) confirm the guess; when it is wrong, the append is
      // refused and the instance is loaded. A rejection or a no-op decided on a guess proves
      // nothing: then it is loaded and decided again.
      let assumedNew = false;
      if (!actor.ready) {
        if (actor.fresh && (req.expectedVersion === undefined || req.expectedVersion === 0)) {
          actor.state = agg.initialState();
          actor.version = 0;
          actor.seq = 0;
          actor.recent = null;
          assumedNew = true;
        } else await this.activate(actor);
      }
      actor.fresh = false;

      const seen = actor.recent && findRemembered(actor.recent, req.commandId);
      if (seen) return acceptedReply(actor, seen, req.commandId, true);

      if (req.authorize) {
        const verdict = req.authorize(actor.state);
        // A refusal on a guessed or stale state proves nothing, as with a rejection: load and ask again.
        if (verdict !== true) {
          if (assumedNew || (await this.behindHead(actor, ++refreshes))) {
            attempt--;
            continue;
          }
          return failed(ErrorCode.FORBIDDEN, verdict);
        }
      }

      if (req.expectedVersion !== undefined && req.expectedVersion !== actor.version) {
        if (await this.behindHead(actor, ++refreshes)) {
          attempt--;
          continue;
        }
        return failed(ErrorCode.WRONG_VERSION, `expected version ${req.expectedVersion}, ${agg.name}/${actor.id} is at version ${actor.version}`, {
          details: { expected: req.expectedVersion, actual: actor.version },
        });
      }

      const now = new Date();
      const metadata = {
        commandId: req.commandId,
        ...(req.correlationId !== undefined ? { correlationId: req.correlationId } : {}),
        ...(req.causationId !== undefined ? { causationId: req.causationId } : {}),
      };
      const decision = agg.decide(req.command, req.data, actor.state, {
        now,
        aggregateId: actor.id,
        version: actor.version,
        ...(req.issuer ? { issuer: req.issuer } : {}),
        metadata,
      });
      if (assumedNew && (decision instanceof Rejection || decision.length === 0)) {
        attempt--; // not a conflict: load it and decide again
        continue;
      }
      if (decision instanceof Rejection || decision.length === 0) {
        // No append checks this answer: another instance (or a process before a restart) may
        // have appended since this actor last looked. Only an answer given on the latest state leaves.
        if (await this.behindHead(actor, ++refreshes)) {
          attempt--;
          continue;
        }
        if (decision instanceof Rejection) {
          return failed(ErrorCode.REJECTED, decision.message, { reason: decision.reason, ...(decision.details !== undefined ? { details: decision.details } : {}) });
        }
        return { ok: true, aggregate: agg.name, id: actor.id, version: actor.version, seq: actor.seq, events: [], commandId: req.commandId, duplicate: false };
      }

      const time = now.toISOString();
      const actorHeader = issuerHeader(req.issuer);
      const envelopes: EventEnvelope[] = [];
      for (let i = 0; i < decision.length; i++) {
        const e = decision[i]!;
        const type = agg.events.get(e.type);
        if (!type) throw new StrandError(ErrorCode.INTERNAL, `${agg.name}.${req.command} decided an unknown event type ${e.type}`);
        let data = e.data;
        if (this.o.validateEvents) {
          const parsed = type.schema.safeParse(data);
          if (!parsed.success) {
            throw new StrandError(ErrorCode.INTERNAL, `${agg.name}.${req.command} decided a ${e.type} that does not match its schema`, { details: parsed.error.issues });
          }
          data = parsed.data;
        }
        const env: EventEnvelope = {
          id: randomUUID(),
          type: e.type,
          aggregate: agg.name,
          aggregateId: actor.id,
          version: actor.version + i + 1,
          schemaVersion: type.version,
          time,
          ...(actorHeader ? { actor: actorHeader } : {}),
          data,
          metadata,
        };
        envelopes.push(env);
      }

      const t0 = performance.now();
      let lastSeq: number;
      try {
        failpoint('actor.beforeAppend');
        ({ lastSeq } = await this.store.append(agg.name, actor.id, actor.seq, envelopes));
      } catch (err) {
        if (err instanceof ConcurrencyConflict && assumedNew) {
          // It had events after all: load it and decide again (not a conflict between writers).
          attempt--;
          continue;
        }
        if (err instanceof ConcurrencyConflict) {
          this.metrics.conflicts.labels(agg.name).inc();
          // The log refused a stale writer: if it is this instance, the partition has another owner now.
          if (owned && !(await owned())) throw new PartitionMoved();
          if (attempt >= this.o.conflictRetries) {
            throw new StrandError(ErrorCode.CONFLICT, `${agg.name}/${actor.id}: still conflicting after ${attempt + 1} attempts`);
          }
          await this.catchUp(actor);
          if (attempt > 0) await sleep(Math.random() * 5 * attempt);
          continue;
        }
        if (err instanceof StoreUnavailable && err.outcomeUnknown) this.reset(actor);
        throw err;
      }
      this.metrics.appended(agg.name, envelopes.length, (performance.now() - t0) / 1000);
      if (assumedNew) {
        actor.ready = true;
        this.metrics.activations.labels(agg.name, 'created').inc();
      }

      const before = actor.version;
      const firstSeq = lastSeq - envelopes.length + 1;
      try {
        for (let i = 0; i < envelopes.length; i++) this.fold(actor, envelopes[i]!, firstSeq + i, envelopes[i]!.data);
      } catch (err) {
        // Stored, but this code cannot apply it: say it was stored, and rebuild next time.
        this.log.error({ err, aggregate: agg.name, id: actor.id, commandId: req.commandId }, 'evolve failed after append');
        this.reset(actor);
      }
      this.maybeSnapshot(actor, before);
      const remembered: RememberedCommand = { id: req.commandId, seq: firstSeq, version: before + 1, types: envelopes.map((e) => e.type) };
      return acceptedReply(actor, remembered, req.commandId, false);
    }
  }

  /** Loads an actor's state: the latest snapshot (when it fits this definition) and the events after it. */
  private async activate(actor: Actor, useSnapshot = true): Promise<string> {
    const t0 = performance.now();
    const agg = actor.aggregate;
    actor.state = agg.initialState();
    actor.version = 0;
    actor.seq = 0;
    actor.recent = null;
    const every = useSnapshot && this.snapshots ? (agg.snapshotEvery ?? this.o.snapshotEvery) : 0;
    // Read the start of the history first: a short one (most instances) needs no snapshot.
    const first = await this.store.load(agg.name, actor.id, 0, every > 0 ? every : undefined);
    let source = first.events.length === 0 ? 'empty' : 'events';
    let rest: StoredEvent[] = first.events;
    if (first.more) {
      const snap = await this.loadSnapshot(actor);
      if (snap) {
        actor.state = snap.state;
        actor.version = snap.version;
        actor.seq = snap.seq;
        actor.recent = snap.recent.length > 0 ? snap.recent.map((r) => ({ ...r, types: [...r.types] })) : null;
        rest = (await this.store.load(agg.name, actor.id, snap.seq)).events;
        source = 'snapshot';
      } else {
        rest = first.events.concat((await this.store.load(agg.name, actor.id, first.events[first.events.length - 1]!.seq)).events);
      }
    }
    for (const s of rest) this.foldStored(actor, s);
    actor.ready = true;
    this.metrics.activations.labels(agg.name, source).inc();
    this.metrics.rehydration.labels(agg.name).observe((performance.now() - t0) / 1000);
    return source;
  }

  private async loadSnapshot(actor: Actor): Promise<Snapshot | undefined> {
    if (!this.snapshots) return undefined;
    const agg = actor.aggregate;
    try {
      const snap = await this.snapshots.load(agg.name, actor.id);
      if (!snap) return undefined;
      if (snap.fingerprint !== agg.fingerprint) {
        this.log.info({ aggregate: agg.name, id: actor.id, version: snap.version }, 'snapshot ignored: aggregate definition changed; replaying events');
        return undefined;
      }
      return snap;
    } catch (err) {
      this.log.warn({ err, aggregate: agg.name, id: actor.id }, 'snapshot unreadable; replaying events');
      return undefined;
    }
  }

  /**
   * Folds in events appended by others since the actor's last one (after a conflict), through
   * the stream's head as its leader has it: a read answered by a lagging replica would leave the
   * actor behind and make the next attempt conflict again.
   */
  private async catchUp(actor: Actor): Promise<void> {
    try {
      const head = await this.store.headSeq(actor.aggregate.name, actor.id);
      if (head > actor.seq) for (const s of await this.store.loadThrough(actor.aggregate.name, actor.id, actor.seq, head)) this.foldStored(actor, s);
    } catch (err) {
      this.reset(actor);
      throw err;
    }
  }

  /**
   * Whether the actor was behind the stream's head (it is caught up when this returns true, and
   * the caller decides again). Asked before an answer that no append checks: a rejection, a
   * no-op, a wrong expected version. Bounded: an instance that keeps moving under it gets
   * UNAVAILABLE rather than an answer on a state already gone.
   */
  private async behindHead(actor: Actor, refreshes: number): Promise<boolean> {
    const agg = actor.aggregate;
    let head: number;
    try {
      head = await this.store.headSeq(agg.name, actor.id);
    } catch (err) {
      this.reset(actor);
      throw err;
    }
    if (head <= actor.seq) return false;
    if (refreshes > this.o.conflictRetries + 1) {
      throw new StrandError(ErrorCode.UNAVAILABLE, `${agg.name}/${actor.id} kept changing under ${refreshes} decisions; try again`);
    }
    this.metrics.staleDecisions.labels(agg.name).inc();
    try {
      for (const s of await this.store.loadThrough(agg.name, actor.id, actor.seq, head)) this.foldStored(actor, s);
    } catch (err) {
      this.reset(actor);
      throw err;
    }
    return true;
  }

  private foldStored(actor: Actor, s: StoredEvent): void {
    if (s.junk !== undefined) {
      // Not an event: the next append must still name its sequence, and that is all it changes.
      this.log.warn({ aggregate: actor.aggregate.name, id: actor.id, seq: s.seq, why: s.junk }, "a message on the instance's subject is not an event; skipped");
      actor.seq = s.seq;
      return;
    }
    const env = s.envelope;
    const type = actor.aggregate.events.get(env.type);
    // A newer schema version than this code knows is refused by upcast(), not folded as if current.
    const data = type && env.schemaVersion !== type.version ? actor.aggregate.upcast(env.type, env.schemaVersion, env.data) : env.data;
    if (env.version !== actor.version + 1) {
      this.log.error({ aggregate: actor.aggregate.name, id: actor.id, seq: s.seq, version: env.version, expected: actor.version + 1 }, 'event version out of order in the stream');
    }
    this.fold(actor, env, s.seq, data);
  }

  private fold(actor: Actor, env: EventEnvelope, seq: number, data: unknown): void {
    const issuer = parseIssuer(env.actor);
    const ctx: EventContext = { type: env.type, version: env.version, time: env.time, ...(issuer ? { issuer } : {}), metadata: env.metadata ?? {} };
    actor.state = actor.aggregate.evolve(actor.state, env.type, data, ctx);
    actor.version = env.version;
    actor.seq = seq;
    const commandId = env.metadata?.commandId;
    if (commandId) remember(actor, commandId, seq, env.version, env.type, actor.aggregate.rememberCommands);
  }

  private maybeSnapshot(actor: Actor, before: number): void {
    const agg = actor.aggregate;
    const every = agg.snapshotEvery ?? this.o.snapshotEvery;
    if (!this.snapshots || every <= 0 || Math.floor(actor.version / every) === Math.floor(before / every)) return;
    const snap: Snapshot = {
      fingerprint: agg.fingerprint,
      version: actor.version,
      seq: actor.seq,
      state: actor.state,
      recent: actor.recent ?? [],
      takenAt: new Date().toISOString(),
    };
    this.snapshots.save(agg.name, actor.id, snap).then(
      () => this.metrics.snapshots.labels(agg.name).inc(),
      (err: unknown) => this.log.warn({ err, aggregate: agg.name, id: actor.id }, 'snapshot not written'),
    );
  }

  /** Forgets an actor's state; it reloads from the store before its next command. */
  private reset(actor: Actor): void {
    actor.ready = false;
    actor.state = undefined;
    actor.recent = null;
    actor.sizedAt = -1;
    this.account(actor, 0);
    this.metrics.passivations.labels(actor.aggregate.name, 'failure').inc();
  }

  private evict(): void {
    for (const [key, a] of this.actors) {
      if (this.actors.size <= this.o.maxActors) break;
      if (a.busy || a.mailbox) continue;
      this.remove(key, a, 'capacity');
    }
  }

  private passivateIdle(): void {
    const horizon = Date.now() - this.o.idleMs;
    for (const [key, a] of this.actors) {
      if (a.lastUsed > horizon) break; // least recently used first: the rest are newer
      if (a.busy || a.mailbox) continue;
      this.remove(key, a, 'idle');
    }
  }

  private remove(key: string, a: Actor, reason: string): void {
    this.actors.delete(key);
    this.account(a, 0);
    this.metrics.passivations.labels(a.aggregate.name, reason).inc();
    this.metrics.liveActors.set(this.actors.size);
  }
}

/** Bytes per remembered command beyond its strings (object, array, numbers). */
const REMEMBERED_OVERHEAD = 96;
/** Bytes of an actor beyond its state and remembered commands (the object, its map entry and key). */
const ACTOR_OVERHEAD = 160;

/**
 * An actor's size as JSON, doubled: V8 keeps a JSON-shaped object in roughly one to three times
 * its JSON length (property names shared by hidden classes, numbers unboxed or not), so twice the
 * length is a middle estimate that costs one serialisation. Remembered command IDs are counted
 * from their strings.
 */
function estimateBytes(actor: Actor): number {
  let n = ACTOR_OVERHEAD + actor.id.length;
  try {
    n += 2 * (JSON.stringify(actor.state) ?? '').length;
  } catch {
    // not serialisable (a cycle): the aggregate's own test kit refuses such states; count nothing
  }
  if (actor.recent) {
    for (const r of actor.recent) {
      n += REMEMBERED_OVERHEAD + r.id.length;
      for (const t of r.types) n += 16 + t.length;
    }
  }
  return n;
}

function findRemembered(recent: readonly RememberedCommand[], commandId: string): RememberedCommand | undefined {
  for (let i = recent.length - 1; i >= 0; i--) if (recent[i]!.id === commandId) return recent[i];
  return undefined;
}

function remember(actor: Actor, commandId: string, seq: number, version: number, type: string, limit: number): void {
  const r = (actor.recent ??= []);
  const last = r[r.length - 1];
  if (last && last.id === commandId && last.seq + last.types.length === seq) {
    (last.types as string[]).push(type);
    return;
  }
  r.push({ id: commandId, seq, version, types: [type] });
  if (r.length > limit) r.shift();
}

function acceptedReply(actor: Actor, c: RememberedCommand, commandId: string, duplicate: boolean): CommandAccepted {
  const events: ReplyEvent[] = c.types.map((type, i) => ({ type, version: c.version + i, seq: c.seq + i }));
  const last = events[events.length - 1]!;
  return { ok: true, aggregate: actor.aggregate.name, id: actor.id, version: last.version, seq: last.seq, events, commandId, duplicate };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
