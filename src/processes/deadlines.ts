/**
 * Deadlines kept by the broker: each is a NATS message schedule (ADR-51, nats-server 2.12+) in the
 * stream `<STREAM>_DEADLINES`, not a timer in Strand's memory and not a polling table. `set`
 * stores a schedule message on `dl.at.<owner>.<id>.<name>.<generation>` with
 * `Nats-Schedule: @at <due>` and `Nats-Schedule-Target: dl.fire.<owner>.<id>.<name>`; at the due
 * time the stream's leader stores a copy of it on the target and purges the schedule, in one step
 * (the copy carries `Nats-Scheduler` and `Nats-Schedule-Next: purge`, and every other header of the
 * schedule: the due time, the token). Schedules survive restarts of Strand and of nats-server; one
 * due while the server was down fires when it has recovered its store.
 *
 * Fired deadlines wait in the stream (a work queue) until a durable consumer of their owner has
 * handled them; the handler's success acknowledges, and so removes, the fired message. Delivery is
 * at least once: a handler that fails, or an instance that stops or dies with a deadline in hand,
 * gets it delivered again. Two more ways a deadline can reach a handler when the caller thinks it
 * gone: a `cancel` (or a newer `set`) that races with the firing loses (the copy is already on its
 * way), and a crash between a newer `set` and its purge of the older generation leaves both. So a
 * handler compares the fired deadline's `token` with the one its state expects, and ignores any
 * other (docs/processes.md#deadlines).
 */
import { jetstream, jetstreamManager, type ConsumerMessages, type JetStreamClient, type JetStreamManager, type JsMsg } from '@nats-io/jetstream';
import { headers, nuid, type MsgHdrs, type NatsConnection } from '@nats-io/nats-core';
import type { Logger } from 'pino';
import {
  DeadlineHeader,
  PINNED_GROUP,
  ScheduleHeader,
  compareDeadlineStreamConfig,
  deadlineConsumerConfig,
  deadlineFireSubject,
  deadlineScheduleSubject,
  deadlineSchedules,
  deadlineStreamConfig,
  deadlineStreamName,
  instanceDeadlineSchedules,
  isAggregateId,
  isAggregateName,
  isDeadlineName,
  parseDeadlineSubject,
} from '../../subjects/index.js';
import { ErrorCode, StrandError } from '../errors.js';
import { IncompatibleStream, streamInfo } from '../eventstore/jetstream.js';
import type { StrandMetrics } from '../observability/metrics.js';
import { PinWatch, ensurePinnedConsumer } from './pinned.js';

/** Which deadline: `owner` is the process (or aggregate) name, `id` the instance, `name` the deadline's own name. */
export interface DeadlineRef {
  owner: string;
  id: string;
  name: string;
}

/** A deadline that has fired, as a consumer's handler receives it. */
export interface FiredDeadline extends DeadlineRef {
  /** When it was due. */
  due: Date;
  /** What `set` was given as `data` (undefined when none). */
  data: unknown;
  /** The token `set` was given (or generated): compare it with the one the instance expects. */
  token: string;
  /** When nats-server fired it (the fired message's stream timestamp). */
  firedAt: Date;
  /** 1 on the first delivery, more when it is delivered again. */
  deliveries: number;
}

/** A deadline set and not yet fired. */
export interface PendingDeadline {
  name: string;
  due: Date;
  data: unknown;
  token: string;
}

/** Options of {@link Deadlines.open}. */
export interface DeadlinesOptions {
  /** The event stream's name (STRAND_STREAM): the deadlines go into `<stream>_DEADLINES`. */
  stream: string;
  /** STRAND_STREAM_REPLICAS: 1, or 3 on a cluster. */
  replicas: number;
  /** How long a request to JetStream may take, in milliseconds (default 5000). */
  timeoutMs?: number;
  /** Counts sets, cancels, fires and handling (`strand_deadlines_total`), and lateness. */
  metrics?: StrandMetrics;
}

/** Options of {@link Deadlines.consume}. */
export interface ConsumeOptions {
  /** Durable consumer name (default `deadlines_<owners sorted, joined by _>`). */
  durable: string;
  /** A fired deadline not acknowledged within this long is delivered again (default 30 s). */
  ackWaitMs: number;
  /** Fired deadlines in hand at once (the consumer's max_ack_pending, default 256). Those of one instance are handled one at a time, in order. */
  maxPending: number;
  /**
   * Pins the consumer (a priority group with the `pinned_client` policy): one Strand instance at a
   * time receives the fired deadlines, and another takes over when it has not pulled for this long
   * (ms). Unset: every instance consuming receives a share.
   */
  pinTtlMs: number;
}

/** The handle of a running consumer. */
export interface DeadlineConsumer {
  /** Stops taking fired deadlines, lets those being handled finish, and hands back those not started. Idempotent. */
  stop(): Promise<void>;
}

const TOKEN = /^[!-~]{1,128}$/;
/** RFC 3339 covers years 0000-9999; before 1970 is surely a mistake. */
const LATEST = Date.UTC(9999, 11, 31, 23, 59, 59);
const DEFAULT_ACK_WAIT_MS = 30_000;
const DEFAULT_MAX_PENDING = 256;
/** Pause before a fired deadline whose handler failed is delivered again, doubling per delivery up to the longest. */
const RETRY_DELAY_MS = 1_000;
const RETRY_DELAY_MAX_MS = 30_000;
/**
 * A pull request's lifetime (its idle heartbeat is half of it). Short, so that a pull lost with a
 * node that died (or the consumer's leader moving) is noticed within seconds: with nats.js's 30 s
 * default a failover held fired deadlines back for about 20 s.
 */
export const PULL_EXPIRES_MS = 5_000;
/** Durable consumer names longer than this are shortened with a hash. */
const DURABLE_NAME_MAX = 120;

/** The deadline store: `set`, `cancel` and `pending` from anywhere; `consume` where the owners' instances live. */
export class Deadlines {
  readonly stream: string;
  private readonly js: JetStreamClient;
  private readonly consumers = new Set<DeadlineConsumer>();

  private constructor(
    private readonly nc: NatsConnection,
    private readonly jsm: JetStreamManager,
    stream: string,
    private readonly timeoutMs: number,
    private readonly log: Logger,
    private readonly metrics: StrandMetrics | undefined,
  ) {
    this.stream = stream;
    this.js = jetstream(nc, { timeout: timeoutMs });
  }

  /**
   * Creates the stream `<stream>_DEADLINES` when missing, and refuses an existing one whose
   * configuration would lose or misdeliver deadlines (IncompatibleStream, naming each difference).
   */
  static async open(nc: NatsConnection, opts: DeadlinesOptions, parentLog: Logger): Promise<Deadlines> {
    const log = parentLog.child({ component: 'deadlines' });
    const timeoutMs = opts.timeoutMs ?? 5_000;
    const jsm = await jetstreamManager(nc, { timeout: timeoutMs });
    const wanted = deadlineStreamConfig({ name: opts.stream, replicas: opts.replicas });
    const existing = await streamInfo(jsm, wanted.name);
    if (!existing) {
      try {
        const created = await jsm.streams.add(wanted);
        // A server older than 2.12 ignores allow_msg_schedules: its "deadlines" would never fire.
        const diffs = compareDeadlineStreamConfig(created.config, wanted);
        if (diffs.length > 0) {
          await jsm.streams.delete(wanted.name).catch(() => undefined);
          throw new IncompatibleStream(wanted.name, [...diffs, `nats-server ${nc.info?.version ?? '?'} does not keep message schedules (needs 2.12 or newer)`]);
        }
        log.info({ stream: wanted.name, replicas: opts.replicas }, 'created deadline stream');
      } catch (err) {
        if (err instanceof IncompatibleStream) throw err;
        // Another instance may have created it meanwhile: then it is checked like any existing one.
        const now = await streamInfo(jsm, wanted.name);
        if (!now) throw err;
        const diffs = compareDeadlineStreamConfig(now, wanted);
        if (diffs.length > 0) throw new IncompatibleStream(wanted.name, diffs);
      }
    } else {
      const diffs = compareDeadlineStreamConfig(existing, wanted);
      if (diffs.length > 0) throw new IncompatibleStream(wanted.name, diffs);
    }
    return new Deadlines(nc, jsm, deadlineStreamName(opts.stream), timeoutMs, log, opts.metrics);
  }

  /**
   * Sets the deadline `ref` to fire at `at` (at once if `at` has passed), replacing any earlier one
   * of the same ref. `data` (JSON) and `token` come back with it when it fires; `token` defaults to
   * a fresh unique one. Setting the same ref again with the same arguments sets it again (it fires
   * once, at `at`).
   */
  async set(ref: DeadlineRef, at: Date, opts: { data?: unknown; token?: string } = {}): Promise<void> {
    checkRef(ref);
    if (!(at instanceof Date) || !Number.isFinite(at.getTime()) || at.getTime() < 0 || at.getTime() > LATEST) {
      throw new StrandError(ErrorCode.BAD_REQUEST, `deadline ${show(ref)}: due time must be a valid Date between 1970 and 9999, got ${String(at).slice(0, 60)}`);
    }
    const token = opts.token ?? nuid.next();
    if (typeof token !== 'string' || !TOKEN.test(token)) {
      throw new StrandError(ErrorCode.BAD_REQUEST, `deadline ${show(ref)}: token must be 1-128 printable ASCII characters without spaces, got ${JSON.stringify(String(token).slice(0, 140))}`);
    }
    const body = encodeData(ref, opts.data, this.nc.info?.max_payload);
    const due = at.toISOString();
    const h = headers();
    h.set(DeadlineHeader.Due, due);
    h.set(DeadlineHeader.Token, token);
    h.set(ScheduleHeader.Schedule, `@at ${due}`);
    h.set(ScheduleHeader.Target, deadlineFireSubject(ref.owner, ref.id, ref.name));
    const subject = deadlineScheduleSubject(ref.owner, ref.id, ref.name, nuid.next());
    const ack = await this.call(`set deadline ${show(ref)}`, () => this.js.publish(subject, body, { headers: h, timeout: this.timeoutMs }));
    // Every older generation of this name goes: only the newest fires (or, when the purge is
    // lost, both do, and the token check drops the older).
    await this.call(`set deadline ${show(ref)} (removing the earlier one)`, () => this.jsm.streams.purge(this.stream, { filter: deadlineSchedules(ref.owner, ref.id, ref.name), seq: ack.seq }));
    this.metrics?.deadlines.labels(ref.owner, 'set').inc();
  }

  /** Cancels the deadline `ref` if it is set and has not fired; nothing when there is none. */
  async cancel(ref: DeadlineRef): Promise<void> {
    checkRef(ref);
    const r = await this.call(`cancel deadline ${show(ref)}`, () => this.jsm.streams.purge(this.stream, { filter: deadlineSchedules(ref.owner, ref.id, ref.name) }));
    if (r.purged > 0) this.metrics?.deadlines.labels(ref.owner, 'cancelled').inc();
  }

  /** Cancels every deadline of one instance not yet fired (e.g. when a process completes). */
  async cancelAll(owner: string, id: string): Promise<void> {
    checkInstance(owner, id);
    const r = await this.call(`cancel deadlines of ${owner}/${id}`, () => this.jsm.streams.purge(this.stream, { filter: instanceDeadlineSchedules(owner, id) }));
    if (r.purged > 0) this.metrics?.deadlines.labels(owner, 'cancelled').inc(r.purged);
  }

  /**
   * The deadlines of one instance set and not yet fired, soonest first. Read from the stream's
   * leader, so a `set` or `cancel` that has returned is seen.
   */
  async pending(owner: string, id: string): Promise<PendingDeadline[]> {
    checkInstance(owner, id);
    const info = await this.call(`list deadlines of ${owner}/${id}`, () => this.jsm.streams.info(this.stream, { subjects_filter: instanceDeadlineSchedules(owner, id) }));
    const byName = new Map<string, PendingDeadline & { seq: number }>();
    for (const subject of Object.keys(info.state.subjects ?? {})) {
      const m = await this.call(`list deadlines of ${owner}/${id}`, () => this.jsm.streams.getMessage(this.stream, { last_by_subj: subject }));
      if (!m) continue; // fired or cancelled since the listing
      const s = parseDeadlineSubject(m.subject);
      const due = parseDue(m.header);
      if (!s || !due) continue;
      const known = byName.get(s.name);
      if (known && known.seq > m.seq) continue;
      byName.set(s.name, { name: s.name, due, data: decodeData(m.data), token: m.header.get(DeadlineHeader.Token), seq: m.seq });
    }
    return [...byName.values()].sort((a, b) => a.due.getTime() - b.due.getTime() || a.name.localeCompare(b.name)).map(({ seq: _seq, ...d }) => d);
  }

  /**
   * Hands every fired deadline of `owners` to `handler`, through a durable consumer shared by
   * every instance that consumes the same owners (each fired deadline goes to one of them). A
   * deadline is acknowledged, and removed, when `handler` resolves; when it throws, it is
   * delivered again after a pause (1 s, doubling up to 30 s). Those of one instance are handled
   * in order, one at a time; different instances concurrently. A consumer whose owners overlap
   * another's is refused BAD_REQUEST (a work queue delivers each message to one consumer).
   */
  async consume(owners: string[], handler: (d: FiredDeadline) => Promise<void>, opts: Partial<ConsumeOptions> = {}): Promise<DeadlineConsumer> {
    if (!Array.isArray(owners) || owners.length === 0) throw new StrandError(ErrorCode.BAD_REQUEST, 'deadline consumer: name at least one owner');
    for (const o of owners) {
      if (typeof o !== 'string' || !isAggregateName(o)) throw new StrandError(ErrorCode.BAD_REQUEST, `deadline consumer: owner must match [a-z][a-z0-9-]*, got ${JSON.stringify(String(o).slice(0, 140))}`);
    }
    const sorted = [...new Set(owners)].sort();
    const name = opts.durable ?? durableName(sorted);
    if (!/^[A-Za-z0-9_-]{1,200}$/.test(name)) throw new StrandError(ErrorCode.BAD_REQUEST, `deadline consumer: durable name must be 1-200 characters of [A-Za-z0-9_-], got ${JSON.stringify(name.slice(0, 210))}`);
    const pinned = opts.pinTtlMs !== undefined;
    const config = deadlineConsumerConfig({ name, owners: sorted, ackWaitMs: opts.ackWaitMs ?? DEFAULT_ACK_WAIT_MS, maxPending: opts.maxPending ?? DEFAULT_MAX_PENDING, ...(pinned ? { pinTtlMs: opts.pinTtlMs } : {}) });
    await this.call(`open deadline consumer ${name}`, async () => {
      try {
        if (pinned) {
          // Created, updated in place, or (a server refusing to add the group) created again from its ack floor.
          await ensurePinnedConsumer(this.jsm, this.stream, config, config, this.log);
        } else {
          try {
            await this.jsm.consumers.add(this.stream, config);
          } catch (err) {
            // An existing consumer of another configuration (owners, ack wait) is updated in place: what it has delivered stays delivered.
            if (apiErrorCode(err) !== 10148) throw err;
            await this.jsm.consumers.update(this.stream, name, config);
          }
        }
      } catch (err) {
        if (apiErrorCode(err) === 10100) {
          throw new StrandError(ErrorCode.BAD_REQUEST, `deadline consumer ${name}: another consumer of ${this.stream} already takes fired deadlines of one of ${sorted.join(', ')} (each owner's deadlines go to one consumer)`);
        }
        throw err;
      }
    });
    const consumer = await this.call(`open deadline consumer ${name}`, () => this.js.consumers.get(this.stream, name));
    let stopping = false;
    const tails = new Map<string, Promise<void>>();
    const inFlight = new Set<Promise<void>>();

    const take = (m: JsMsg): void => {
      if (stopping) return m.nak();
      const s = parseDeadlineSubject(m.subject);
      const key = s ? `${s.owner}.${s.id}` : m.subject;
      const previous = tails.get(key) ?? Promise.resolve();
      // Never rejects: a failure to settle one (the connection gone) must not stall the instance's next ones.
      const p = previous.then(() => this.handle(m, handler, () => stopping)).catch((err: unknown) => this.log.warn({ err, subject: m.subject }, 'fired deadline not settled; it is delivered again after its ack wait'));
      tails.set(key, p);
      inFlight.add(p);
      void p.finally(() => {
        inFlight.delete(p);
        if (tails.get(key) === p) tails.delete(key);
      });
    };

    const pin = new PinWatch();
    // A pinned consumer's pulls name its group; those of an instance not pinned wait at the server.
    const pullOptions = { max_messages: config.max_ack_pending!, expires: pinned ? Math.min(PULL_EXPIRES_MS, Math.max(1_000, Math.floor(opts.pinTtlMs! / 2))) : PULL_EXPIRES_MS, callback: take, ...(pinned ? { group: PINNED_GROUP } : {}) };
    let messages: ConsumerMessages = await consumer.consume(pullOptions);
    const watch = (ms: ConsumerMessages): void => {
      pin.id = '';
      if (pinned) pin.follow(ms.status());
      void ms.closed().then(
        (err) => ended(ms, err),
        (err: unknown) => ended(ms, err),
      );
    };
    const ended = (ms: ConsumerMessages, err: unknown): void => {
      if (stopping || ms !== messages) return;
      // Deleted from under it, or the connection closed: take again unless stopping.
      this.log.warn({ err, consumer: name }, 'deadline consumer ended; opening it again');
      setTimeout(() => {
        if (stopping) return;
        void consumer
          .consume(pullOptions)
          .then((again) => {
            messages = again;
            watch(again);
          })
          .catch((e: unknown) => this.log.error({ err: e, consumer: name }, 'deadline consumer could not be opened again'));
      }, RETRY_DELAY_MS).unref();
    };
    watch(messages);

    let stopped: Promise<void> | undefined;
    const handle: DeadlineConsumer = {
      stop: () =>
        (stopped ??= (async () => {
          stopping = true;
          this.consumers.delete(handle);
          messages.stop();
          await Promise.allSettled([...inFlight]);
          // Another instance is pinned at its next pull, not after the pin timeout.
          await pin.release(this.jsm, this.stream, name);
        })()),
    };
    this.consumers.add(handle);
    return handle;
  }

  /** Stops every consumer opened here (the connection stays the caller's). */
  async close(): Promise<void> {
    await Promise.all([...this.consumers].map((c) => c.stop()));
  }

  private async handle(m: JsMsg, handler: (d: FiredDeadline) => Promise<void>, stopping: () => boolean): Promise<void> {
    // Not started before the stop: back to the stream at once, for another instance.
    if (stopping()) return m.nak();
    const fired = parseFired(m);
    if (!fired) {
      // Not a deadline Strand set (published on dl.fire.… by hand): removed, never handed over.
      this.log.warn({ subject: m.subject, seq: m.seq }, 'malformed fired deadline removed');
      m.term('not a deadline: subject or headers malformed');
      return;
    }
    if (fired.deliveries === 1) {
      this.metrics?.deadlines.labels(fired.owner, 'fired').inc();
      this.metrics?.deadlineLateness.labels(fired.owner).observe(Math.max(0, Date.now() - fired.due.getTime()) / 1000);
    } else {
      this.metrics?.deadlines.labels(fired.owner, 'redelivered').inc();
    }
    try {
      await handler(fired);
    } catch (err) {
      this.metrics?.deadlines.labels(fired.owner, 'failed').inc();
      const delay = Math.min(RETRY_DELAY_MAX_MS, RETRY_DELAY_MS * 2 ** Math.min(fired.deliveries - 1, 5));
      this.log.warn({ err, owner: fired.owner, id: fired.id, deadline: fired.name, deliveries: fired.deliveries }, 'deadline handler failed; delivering it again');
      m.nak(delay);
      return;
    }
    this.metrics?.deadlines.labels(fired.owner, 'handled').inc();
    try {
      await m.ackAck({ timeout: this.timeoutMs });
    } catch (err) {
      // Not confirmed: it may be delivered again after its ack wait (the handler sees it twice).
      this.log.warn({ err, owner: fired.owner, id: fired.id, deadline: fired.name }, 'fired deadline acknowledgement not confirmed');
    }
  }

  /** Runs a JetStream call; a failure becomes UNAVAILABLE (no NATS error type leaves this module). */
  private async call<T>(what: string, f: () => Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (err) {
      if (err instanceof StrandError) throw err;
      throw new StrandError(ErrorCode.UNAVAILABLE, `${what}: ${(err as Error).message ?? String(err)}`);
    }
  }
}

function show(ref: DeadlineRef): string {
  return `${String(ref?.owner).slice(0, 40)}/${String(ref?.id).slice(0, 40)}/${String(ref?.name).slice(0, 40)}`;
}

function checkInstance(owner: string, id: string): void {
  if (typeof owner !== 'string' || !isAggregateName(owner)) {
    throw new StrandError(ErrorCode.BAD_REQUEST, `deadline owner must match [a-z][a-z0-9-]*, got ${JSON.stringify(String(owner).slice(0, 140))}`);
  }
  if (typeof id !== 'string' || !isAggregateId(id)) {
    throw new StrandError(ErrorCode.BAD_REQUEST, `deadline id must be 1-128 characters of [A-Za-z0-9_-], got ${JSON.stringify(String(id).slice(0, 140))}`);
  }
}

function checkRef(ref: DeadlineRef): void {
  if (typeof ref !== 'object' || ref === null) throw new StrandError(ErrorCode.BAD_REQUEST, 'deadline ref must be { owner, id, name }');
  checkInstance(ref.owner, ref.id);
  if (typeof ref.name !== 'string' || !isDeadlineName(ref.name)) {
    throw new StrandError(ErrorCode.BAD_REQUEST, `deadline name must be a letter then up to 63 of [A-Za-z0-9_-], got ${JSON.stringify(String(ref.name).slice(0, 140))}`);
  }
}

function encodeData(ref: DeadlineRef, data: unknown, maxPayload: number | undefined): Uint8Array {
  if (data === undefined) return new Uint8Array(0);
  let json: string | undefined;
  try {
    json = JSON.stringify(data);
  } catch (err) {
    throw new StrandError(ErrorCode.BAD_REQUEST, `deadline ${show(ref)}: data is not JSON (${(err as Error).message})`);
  }
  if (json === undefined) throw new StrandError(ErrorCode.BAD_REQUEST, `deadline ${show(ref)}: data is not JSON`);
  const body = new TextEncoder().encode(json);
  // Leave room for the headers and subject.
  const limit = (maxPayload ?? 1024 * 1024) - 1024;
  if (body.length > limit) throw new StrandError(ErrorCode.BAD_REQUEST, `deadline ${show(ref)}: data is ${body.length} bytes, more than ${limit}`);
  return body;
}

function decodeData(data: Uint8Array): unknown {
  if (data.length === 0) return undefined;
  try {
    return JSON.parse(new TextDecoder().decode(data)) as unknown;
  } catch {
    return undefined;
  }
}

function parseDue(h: MsgHdrs | undefined): Date | undefined {
  const v = h?.get(DeadlineHeader.Due);
  if (!v) return undefined;
  const t = Date.parse(v);
  return Number.isFinite(t) ? new Date(t) : undefined;
}

function parseFired(m: JsMsg): FiredDeadline | undefined {
  const s = parseDeadlineSubject(m.subject);
  if (!s || s.kind !== 'fire') return undefined;
  const due = parseDue(m.headers);
  const token = m.headers?.get(DeadlineHeader.Token);
  if (!due || !token || !m.headers?.get(ScheduleHeader.Scheduler)) return undefined;
  return {
    owner: s.owner,
    id: s.id,
    name: s.name,
    due,
    data: decodeData(m.data),
    token,
    firedAt: new Date(Math.floor(m.info.timestampNanos / 1e6)),
    deliveries: m.info.deliveryCount,
  };
}

function durableName(owners: readonly string[]): string {
  const joined = `deadlines_${owners.join('_')}`;
  if (joined.length <= DURABLE_NAME_MAX) return joined;
  // FNV-1a of the whole list: stable across instances and restarts.
  let h = 0x811c9dc5;
  for (const c of owners.join(',')) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0;
  return `${joined.slice(0, DURABLE_NAME_MAX - 9)}_${h.toString(16).padStart(8, '0')}`;
}

function apiErrorCode(err: unknown): number | undefined {
  return (err as { api_error?: { err_code?: number } }).api_error?.err_code ?? (err as { code?: number }).code;
}
