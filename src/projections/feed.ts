import { DeliverPolicy, jetstream, type Consumer, type ConsumerMessages, type FetchOptions, type JsMsg } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Logger } from 'pino';
import { parseEventSubject } from '../../subjects/index.js';
import type { EventEnvelope } from '../eventstore/types.js';

/** How long one fetch of the shared feed waits for messages. */
const FETCH_EXPIRES_MS = 5000;
/** A fetch open this long is given up (see run). */
const FETCH_STALL_MS = FETCH_EXPIRES_MS + 5000;

/**
 * One event as the instance's feed delivers it to every projection runner: read from the stream
 * once, its envelope decoded once (JSON.parse), whatever number of projections apply it.
 */
export interface FeedEvent {
  readonly seq: number;
  readonly subject: string;
  /** The stream's timestamp. */
  readonly time: Date;
  /** The same, as nanoseconds text (JsMsg.timestamp), for the dead-letter table's copy of an unreadable message. */
  readonly timestamp: string;
  /** From the subject (`evt.<aggregate>.<id>.<type>`); empty when the subject is not an event's. */
  readonly aggregate: string;
  readonly type: string;
  /** The decoded envelope, unless decoding failed. */
  readonly envelope: EventEnvelope | undefined;
  /** Why decoding failed (the runners that handle the subject retry, then park it). */
  readonly error: unknown;
  /** The raw bytes, kept only when decoding failed (for the dead-letter table). */
  readonly data: Uint8Array | undefined;
  /** Messages matching the feed's filter after this one, as the consumer counted when it delivered it. */
  readonly pending: number;
  /** What handlers see, per upcasting aggregate definition: shared by the projections that apply the event. */
  shared?: Map<unknown, unknown>;
}

/** A projection runner, as a feed sees it. */
export interface FeedListener {
  /** The last stream sequence received (all its events up to it are in hand): the feed skips what is at or below it. */
  readonly position: number;
  /** Events received and not yet applied: the feed holds back, or leaves this listener behind, while it is high. */
  readonly backlog: number;
  /** Receives an event (those at or below `position` never reach it). */
  deliver(e: FeedEvent): void;
}

export interface EventFeedOptions {
  readonly stream: string;
  /** The union of the filter subjects of every projection this instance may apply. */
  readonly subjects: readonly string[];
  /** Messages per pull. */
  readonly fetch: number;
  /** The feed pulls while some listener holds fewer events than this; one with three times as many leaves it (when others are not that far behind). */
  readonly highWater: number;
}

const decoder = new TextDecoder();

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}

/**
 * The instance's consumption of the event stream, shared by its projection runners: an ordered
 * consumer per distinct position, usually one. A runner joins a feed that has delivered no more
 * than it already has (and is near the stream's end); otherwise, and when it falls far behind
 * the others, it gets a feed of its own starting right after what it holds. Two feeds whose
 * positions cross merge into one. Each event a feed reads is decoded once for all its runners.
 * The checkpoints stay in PostgreSQL: a feed is only a way to read the stream, and every feed
 * starts where its first runner's checkpoint (or what it holds) ends.
 */
export class EventFeeds {
  private readonly feeds = new Set<Feed>();

  constructor(
    private readonly nc: NatsConnection,
    readonly o: EventFeedOptions,
    private readonly log: Logger,
  ) {}

  /** How many feeds are reading now (1 when every runner applies the same stretch of the stream). */
  get count(): number {
    return this.feeds.size;
  }

  /** Starts delivering to `l` what follows its position; returns how it leaves. */
  join(l: FeedListener): () => void {
    let target: Feed | undefined;
    for (const f of this.feeds) {
      // The same start, or near the stream's end: a runner never waits behind another's backlog.
      const fits = f.position === l.position || (f.position < l.position && f.nearEnd);
      if (!f.stopped && fits && (target === undefined || f.position > target.position)) target = f;
    }
    if (!target) target = this.open(l.position);
    target.add(l);
    return () => this.leave(l);
  }

  private leave(l: FeedListener): void {
    for (const f of this.feeds) if (f.remove(l) && f.size === 0) this.close(f);
  }

  /** Stops every feed (a runner joining later opens a new one). */
  stop(): void {
    for (const f of [...this.feeds]) this.close(f);
  }

  private open(after: number): Feed {
    const f = new Feed(this, this.nc, after, this.log);
    this.feeds.add(f);
    f.start();
    return f;
  }

  private close(f: Feed): void {
    this.feeds.delete(f);
    f.stop();
  }

  /** After `f` delivered `seq` (its position was `before`): a feed it reached or passed takes its listeners. */
  crossed(f: Feed, before: number, seq: number): void {
    for (const g of this.feeds) {
      // A feed that has not read yet (one just opened for a runner left behind) is not merged into.
      if (g === f || g.stopped || !g.reading) continue;
      if (g.position >= before && g.position <= seq) {
        // g has delivered no more than f's listeners hold, and will deliver what follows.
        for (const l of f.take()) g.add(l);
        this.close(f);
        return;
      }
    }
  }

  /**
   * Listeners of `f` far behind (three times the high water) while others are not: each gets a
   * feed of its own, from what it holds. Short of that a slow runner stays: its events are
   * decoded once with the others', and it holds no one back as long as one is below the mark.
   */
  relieve(f: Feed): void {
    const over = f.listeners.filter((l) => l.backlog >= 3 * this.o.highWater);
    if (over.length === 0 || over.length === f.size) return;
    for (const l of over) {
      f.remove(l);
      this.open(l.position).add(l);
    }
  }
}

/** One ordered consumer from a start position, delivering to its listeners in stream order. */
class Feed {
  /** The last sequence delivered (or the one before the start). */
  position: number;
  /** The pending count the consumer gave with the last message (Infinity before the first). */
  private lastPending = Infinity;
  stopped = false;
  private readonly set = new Set<FeedListener>();
  private current: ConsumerMessages | undefined;
  private consumer: Consumer | undefined;

  constructor(
    private readonly hub: EventFeeds,
    private readonly nc: NatsConnection,
    after: number,
    private readonly log: Logger,
  ) {
    this.position = after;
  }

  get size(): number {
    return this.set.size;
  }

  get listeners(): FeedListener[] {
    return [...this.set];
  }

  /** Near the stream's end: a runner joining it does not wait behind a long backlog. */
  /** Pulling from the stream (not waiting for a runner left behind to make room first). */
  reading = false;

  get nearEnd(): boolean {
    return this.lastPending <= this.hub.o.fetch;
  }

  add(l: FeedListener): void {
    this.set.add(l);
  }

  remove(l: FeedListener): boolean {
    return this.set.delete(l);
  }

  take(): FeedListener[] {
    const out = [...this.set];
    this.set.clear();
    return out;
  }

  start(): void {
    void this.run().catch((err: unknown) => this.log.error({ err }, 'event feed stopped on an error'));
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.current?.stop();
    const c = this.consumer;
    this.consumer = undefined;
    void c?.delete().catch(() => undefined);
  }

  private async run(): Promise<void> {
    const o = this.hub.o;
    let failures = 0;
    while (!this.stopped) {
      this.hub.relieve(this);
      // Every listener has a backlog: hold back until one has room.
      let min = Infinity;
      for (const l of this.set) min = Math.min(min, l.backlog);
      if (min >= o.highWater) {
        await sleep(5);
        continue;
      }
      try {
        this.consumer ??= await jetstream(this.nc).consumers.get(o.stream, {
          filter_subjects: [...o.subjects],
          deliver_policy: DeliverPolicy.StartSequence,
          opt_start_seq: this.position + 1,
        });
        if (this.stopped) break;
        this.reading = true;
        const messages = await this.consumer.fetch({ max_messages: o.fetch, expires: FETCH_EXPIRES_MS, callback: (m: JsMsg) => this.onMessage(m) } as FetchOptions);
        this.current = messages;
        if (this.stopped) messages.stop();
        // A fetch ends by its expiry at the latest. One still open well past it pulls from an
        // ordered consumer whose node died: the library would ask after that consumer until the
        // node came back (minutes, on a 3-node cluster with kill -9), so give it up and read
        // again from the position with a new consumer.
        const stall = setTimeout(() => messages.stop(new Error(`a fetch still open ${FETCH_STALL_MS} ms after it began (the server of the feed's consumer gone?)`)), FETCH_STALL_MS);
        const err = await messages.closed().finally(() => clearTimeout(stall));
        this.current = undefined;
        if (err) throw err;
        failures = 0;
      } catch (err) {
        if (this.stopped) break;
        failures++;
        this.log.warn({ err, after: this.position, failures }, 'event feed interrupted; reading again from its position');
        // An ordered consumer from where this feed stands, anew.
        const c = this.consumer;
        this.consumer = undefined;
        void c?.delete().catch(() => undefined);
        await sleep(Math.min(5000, 100 * 2 ** Math.min(failures, 6)));
      }
    }
  }

  private onMessage(m: JsMsg): void {
    if (this.stopped) return;
    const seq = m.seq;
    if (seq <= this.position) return;
    const parsed = parseEventSubject(m.subject);
    let envelope: EventEnvelope | undefined;
    let error: unknown;
    try {
      envelope = JSON.parse(decoder.decode(m.data)) as EventEnvelope;
      if (envelope === null || typeof envelope !== 'object') throw new TypeError('event envelope is not an object');
    } catch (err) {
      envelope = undefined;
      error = err;
    }
    const e: FeedEvent = {
      seq,
      subject: m.subject,
      time: m.time,
      timestamp: m.timestamp,
      aggregate: parsed?.aggregate ?? '',
      type: parsed?.type ?? '',
      envelope,
      error,
      data: envelope === undefined ? m.data : undefined,
      pending: m.info.pending,
    };
    const before = this.position;
    this.position = seq;
    this.lastPending = e.pending;
    for (const l of this.set) {
      if (seq <= l.position) continue;
      try {
        l.deliver(e);
      } catch (err) {
        this.log.error({ err, seq }, 'event feed listener failed');
      }
    }
    this.hub.crossed(this, before, seq);
  }
}
