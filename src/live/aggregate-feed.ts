import { DeliverPolicy, jetstream } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Logger } from 'pino';
import { ALL_EVENTS, parseEventSubject } from '../../subjects/index.js';
import type { EventEnvelope, EventStore } from '../eventstore/types.js';
import { EventEnvelopeSchema } from '../http/contract.js';
import type { Sub } from './view-feed.js';

/**
 * The events of every aggregate subscription of one gateway: one ordered consumer of the
 * stream's new events, and, per subscription, the guarantee that its client receives every
 * version after the one it holds, once, in order.
 *
 * Two readers meet here, and neither is trusted to be complete on its own: the consumer
 * delivers what is appended after it started, and the store (batch direct get) is what a
 * subscription's initial state is read from. On a cluster a direct get may be answered by a
 * replica that lags the leader, so a state may be older than events the consumer delivered
 * before the subscription existed. Hence every subscription follows versions: an event whose
 * version is not the next one is held back until the versions between are read (complete
 * through that event: what the lagging replica lacks comes from the leader), and after the
 * initial state the events up to the instance's head as the leader had it when the
 * subscription registered are read the same way.
 */

/** One message of the event stream, as the consumer delivers it. */
export interface RawEvent {
  readonly seq: number;
  readonly subject: string;
  readonly data: Uint8Array;
}

/** A running consumer: its messages in stream order, until it ends or is stopped. */
export interface RawEventFeed extends AsyncIterable<RawEvent> {
  stop(): void;
}

/** Opens a consumer of every event from `startSeq` on (undefined: only events appended from now on). */
export type OpenEventFeed = (startSeq: number | undefined) => Promise<RawEventFeed>;

/** An aggregate subscription: the last version and sequence its client was sent. */
export interface AggregateSub extends Sub {
  readonly kind: 'aggregate';
  readonly aggregate: string;
  readonly aggregateId: string;
  readonly key: string;
  /** The last version sent (the state's, or an event's). */
  version: number;
  /** The stream sequence of that version. */
  seq: number;
  /** Events that arrived while the state was read or a gap was being filled, in stream order. */
  queue: { seq: number; env: EventEnvelope }[];
  /** Reading missed events from the store: new ones wait in `queue`. */
  filling: boolean;
  /** Unregistered: nothing more is sent. */
  gone?: boolean;
  /** Read everything up to the instance's head before going on (the consumer may have missed some). */
  recheck?: boolean;
}

export interface AggregateFeedOptions {
  /** Reads of missed events that fail (the store unreachable) before the subscription is ended. */
  readonly fillAttempts: number;
  /** Wait before the second read; doubled for each further one, up to 1 s. */
  readonly fillRetryMs: number;
  /** First wait before reopening a consumer that ended; doubled while it keeps ending quickly, up to `restartMaxMs`. */
  readonly restartMs: number;
  readonly restartMaxMs: number;
}

export const DEFAULT_AGGREGATE_FEED_OPTIONS: AggregateFeedOptions = {
  fillAttempts: 12,
  fillRetryMs: 25,
  restartMs: 100,
  restartMaxMs: 5000,
};

/** What the feed does with an event for a subscription, and with a subscription it cannot keep gap-free. */
export interface AggregateFeedSink {
  deliver(sub: AggregateSub, seq: number, env: EventEnvelope): void;
  end(sub: AggregateSub, reason: string): void;
}

const decoder = new TextDecoder();

/** A consumer that ran this long without ending restarts after the shortest wait again. */
const HEALTHY_RUN_MS = 10_000;
/** At most one warning per interval about messages that are not events, with the count since the last. */
const SKIP_LOG_INTERVAL_MS = 10_000;

export class AggregateFeed {
  private readonly subs = new Map<string, Set<AggregateSub>>();
  /** The last stream sequence delivered: a restarted consumer starts after it. */
  private lastSeq: number | undefined;
  private feed: RawEventFeed | undefined;
  private opening: Promise<void> | undefined;
  private stopped = false;
  private readonly skipped = new Map<string, number>();
  private skippedTotal = 0;
  private lastSkipLog = 0;
  /** Consumers opened (the first and every restart): for tests and the log. */
  opened = 0;

  constructor(
    private readonly open: OpenEventFeed,
    private readonly store: EventStore,
    private readonly sink: AggregateFeedSink,
    private readonly log: Logger,
    private readonly o: AggregateFeedOptions = DEFAULT_AGGREGATE_FEED_OPTIONS,
  ) {}

  /** Messages skipped as not being events of the stream's contract, since start. */
  get skippedMessages(): number {
    return this.skippedTotal;
  }

  /**
   * Resolves once a consumer is open, so a subscription registered afterwards gets every event
   * appended after it registered. The first failure to open rejects (the subscription is refused
   * as unavailable; the next one tries again); once open, the feed reopens itself whenever its
   * consumer ends, until {@link stop}.
   */
  start(): Promise<void> {
    this.opening ??= (async () => {
      const feed = await this.open(undefined);
      this.opened++;
      if (this.stopped) return feed.stop();
      void this.run(feed);
    })().catch((err: unknown) => {
      this.opening = undefined;
      throw err;
    });
    return this.opening;
  }

  stop(): void {
    this.stopped = true;
    this.feed?.stop();
  }

  add(sub: AggregateSub): void {
    let set = this.subs.get(sub.key);
    if (!set) this.subs.set(sub.key, (set = new Set()));
    set.add(sub);
  }

  /** Returns whether it was registered. */
  remove(sub: AggregateSub): boolean {
    sub.gone = true;
    const set = this.subs.get(sub.key);
    const removed = set?.delete(sub) ?? false;
    if (set && set.size === 0) this.subs.delete(sub.key);
    return removed;
  }

  /**
   * The client has the state (or the history) up to `version` at `seq`: from here on it gets
   * every later version. `head` is the instance's last sequence as the stream's leader had it
   * once the subscription was registered (EventStore.headSeq): events up to it came from the
   * consumer before the subscription existed, and those the state's read did not include (a
   * replica behind) are read first.
   */
  join(sub: AggregateSub, version: number, seq: number, head: number): void {
    sub.version = version;
    sub.seq = seq;
    sub.joining = false;
    if (head > sub.seq && !sub.recheck) this.fill(sub, head);
    else this.pump(sub);
  }

  private async run(first: RawEventFeed): Promise<void> {
    let feed: RawEventFeed | undefined = first;
    let wait = this.o.restartMs;
    while (!this.stopped) {
      const started = Date.now();
      let reason: unknown;
      if (feed) {
        this.feed = feed;
        try {
          for await (const m of feed) this.offer(m);
        } catch (err) {
          reason = err;
        }
        if (this.stopped) return;
        if (Date.now() - started >= HEALTHY_RUN_MS) wait = this.o.restartMs;
        this.log.warn({ err: reason, lastSeq: this.lastSeq, restartInMs: wait }, 'aggregate event feed ended; restarting it after the last event it delivered');
      }
      await sleep(wait);
      wait = Math.min(this.o.restartMaxMs, wait * 2);
      if (this.stopped) return;
      try {
        feed = await this.open(this.lastSeq === undefined ? undefined : this.lastSeq + 1);
        this.opened++;
        if (this.stopped) return feed.stop();
        this.log.info({ startSeq: this.lastSeq === undefined ? 'new' : this.lastSeq + 1 }, 'aggregate event feed restarted');
        // Nothing was delivered before it ended, so there is no sequence to go on from: events
        // appended meanwhile may be missed by the new consumer, and every subscription reads
        // up to its instance's head before going on.
        if (this.lastSeq === undefined) {
          for (const set of this.subs.values()) {
            for (const sub of set) {
              sub.recheck = true;
              this.pump(sub);
            }
          }
        }
      } catch (err) {
        feed = undefined;
        this.log.warn({ err, retryInMs: wait }, 'aggregate event feed could not be reopened; retrying');
      }
    }
  }

  /** One message of the stream: never throws, so one bad message cannot end the feed. */
  private offer(m: RawEvent): void {
    try {
      this.lastSeq = m.seq;
      const where = parseEventSubject(m.subject);
      if (!where) return this.skip('subject is not evt.<aggregate>.<id>.<EventType>', m);
      const set = this.subs.get(`${where.aggregate}/${where.id}`);
      if (!set) return; // nobody watches it here: not even parsed
      let json: unknown;
      try {
        json = JSON.parse(decoder.decode(m.data));
      } catch {
        return this.skip('body is not JSON', m);
      }
      const env = envelopeOf(json, where.aggregate, where.id, where.type);
      if (!env) return this.skip('body is not an event envelope of its subject', m);
      for (const sub of set) this.push(sub, m.seq, env);
    } catch (err) {
      this.skip(`could not be handled: ${(err as Error).message}`, m);
    }
  }

  private push(sub: AggregateSub, seq: number, env: EventEnvelope): void {
    if (!sub.joining && !sub.filling && sub.queue.length === 0 && seq > sub.seq && env.version === sub.version + 1) {
      this.send(sub, seq, env);
      return;
    }
    sub.queue.push({ seq, env });
    if (!sub.joining) this.pump(sub);
  }

  /** Sends queued events while they follow on; at a gap, reads the versions between from the store first. */
  private pump(sub: AggregateSub): void {
    if (sub.recheck && !sub.joining && !sub.filling && !sub.gone) {
      sub.recheck = false;
      this.fill(sub, undefined);
      return;
    }
    while (!sub.filling && !sub.gone && sub.queue.length > 0) {
      const next = sub.queue[0]!;
      if (next.seq <= sub.seq || next.env.version <= sub.version) {
        sub.queue.shift(); // sent already (in the state, or by a store read)
        continue;
      }
      if (next.env.version === sub.version + 1) {
        sub.queue.shift();
        this.send(sub, next.seq, next.env);
        continue;
      }
      this.fill(sub, next.seq);
      return;
    }
  }

  /**
   * Reads the instance's events after the subscription's sequence, complete through `target`
   * (undefined: the instance's head as the leader has it now), and sends those that follow on.
   * An event at or before `target` that still does not follow on is not a version of this
   * instance (something else published on its subject) and is skipped. A read that keeps
   * failing ends the subscription: the client resubscribes with `afterVersion` and loses nothing.
   */
  private fill(sub: AggregateSub, target: number | undefined): void {
    sub.filling = true;
    void (async () => {
      let wait = this.o.fillRetryMs;
      for (let attempt = 1; ; attempt++) {
        try {
          const through = target ?? (await this.store.headSeq(sub.aggregate, sub.aggregateId));
          if (sub.gone) return;
          if (through > sub.seq) await this.readThrough(sub, through);
          break;
        } catch (err) {
          if (attempt >= this.o.fillAttempts) throw err;
        }
        await sleep(wait);
        wait = Math.min(1000, wait * 2);
        if (sub.gone) return;
      }
      if (sub.gone) return;
      sub.filling = false;
      if (target !== undefined) {
        // What showed the gap and still does not follow on is not a version of this instance.
        const first = sub.queue[0];
        if (first && first.seq === target && first.env.version > sub.version + 1) {
          sub.queue.shift();
          this.skip(`version ${first.env.version} does not follow version ${sub.version} of ${sub.key}`, { seq: first.seq, subject: '' });
        }
      }
      this.pump(sub);
    })().catch((err: unknown) => {
      if (sub.gone) return;
      this.log.warn({ err, aggregate: sub.aggregate, id: sub.aggregateId, version: sub.version, target }, 'aggregate subscription ended: missed events could not be read');
      this.sink.end(sub, `could not read the events after version ${sub.version} (${(err as Error).message}); subscribe again with afterVersion`);
    });
  }

  private async readThrough(sub: AggregateSub, through: number): Promise<void> {
    const events = await this.store.loadThrough(sub.aggregate, sub.aggregateId, sub.seq, through);
    if (sub.gone) return;
    for (const s of events) {
      const env = envelopeOf(s.envelope, sub.aggregate, sub.aggregateId, undefined);
      if (env && s.seq > sub.seq && env.version === sub.version + 1) this.send(sub, s.seq, env);
    }
  }

  private send(sub: AggregateSub, seq: number, env: EventEnvelope): void {
    sub.version = env.version;
    sub.seq = seq;
    this.sink.deliver(sub, seq, env);
  }

  private skip(why: string, m: { seq: number; subject: string }): void {
    this.skippedTotal++;
    this.skipped.set(why, (this.skipped.get(why) ?? 0) + 1);
    const now = Date.now();
    if (now - this.lastSkipLog < SKIP_LOG_INTERVAL_MS) return;
    this.lastSkipLog = now;
    this.log.warn({ seq: m.seq, subject: m.subject.slice(0, 200), skipped: Object.fromEntries(this.skipped), skippedTotal: this.skippedTotal }, 'aggregate event feed skipped messages that are not events');
    this.skipped.clear();
  }
}

/** `json` as an envelope of the instance (and event type) its subject names, or undefined. */
function envelopeOf(json: unknown, aggregate: string, id: string, type: string | undefined): EventEnvelope | undefined {
  const r = EventEnvelopeSchema.safeParse(json);
  if (!r.success) return undefined;
  const env = r.data;
  if (env.aggregate !== aggregate || env.aggregateId !== id || (type !== undefined && env.type !== type)) return undefined;
  return json as EventEnvelope;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}

/** How long one pull of the feed's consumer waits for messages. */
const FEED_EXPIRES_MS = 5_000;
/** The server's heartbeat while a pull waits: two missed end the feed (it is reopened). */
const FEED_HEARTBEAT_MS = 2_000;

/** The feed's consumer on a JetStream stream: an ordered consumer of `evt.>`. */
export function jetStreamEventFeed(nc: NatsConnection, stream: string): OpenEventFeed {
  return async (startSeq) => {
    const consumer = await jetstream(nc).consumers.get(stream, {
      filter_subjects: [ALL_EVENTS],
      ...(startSeq === undefined ? { deliver_policy: DeliverPolicy.New } : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: startSeq }),
    });
    // The ordered consumer lives on one node. When that node dies, the client goes on pulling
    // from a consumer nobody serves and asks after it until the node is back (minutes, on a
    // 3-node cluster with kill -9): so two missed heartbeats end this feed, and the feed opens a
    // new consumer after the last event it delivered. The library stops watching heartbeats
    // while this connection reconnects (its own server the one that died) until the consumer
    // answers again, which it never does: so a feed with neither a message nor a new pull for
    // longer than a pull's life and two heartbeats ends too.
    const messages = await consumer.consume({ expires: FEED_EXPIRES_MS, idle_heartbeat: FEED_HEARTBEAT_MS });
    let active = performance.now();
    const quiet = (why: string) => messages.stop(new Error(`${why} (the server of the feed's consumer gone?)`));
    const watchdog = setInterval(() => {
      const idle = performance.now() - active;
      if (idle > FEED_EXPIRES_MS + 2 * FEED_HEARTBEAT_MS) quiet(`no message and no pull for ${Math.round(idle)} ms`);
    }, 1000);
    watchdog.unref();
    void messages.closed().finally(() => clearInterval(watchdog));
    void (async () => {
      for await (const s of messages.status()) {
        if (s.type === 'heartbeats_missed') return quiet(`no heartbeat from the feed's consumer for ${s.count * FEED_HEARTBEAT_MS} ms`);
        active = performance.now();
      }
    })().catch(() => undefined);
    return {
      stop: () => void messages.stop(),
      async *[Symbol.asyncIterator]() {
        for await (const m of messages) {
          active = performance.now();
          yield { seq: m.seq, subject: m.subject, data: m.data };
        }
      },
    };
  };
}
