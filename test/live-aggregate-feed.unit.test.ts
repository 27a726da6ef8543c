/**
 * The aggregate feed of the live gateway (src/live/aggregate-feed.ts) against an in-memory
 * stream: its direct gets can lag (a replica behind), its leader be unreachable, its consumer
 * lose messages, carry garbage and end, which a real server does only on a cluster or under
 * faults. test/live-feed.int.test.ts runs the same feed against a real nats-server.
 */
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import type { EventEnvelope, EventStore, StoredEvent } from '../src/eventstore/types.js';
import { AggregateFeed, type AggregateFeedOptions, type AggregateSub, type OpenEventFeed, type RawEvent, type RawEventFeed } from '../src/live/aggregate-feed.js';

const encoder = new TextEncoder();
const options: AggregateFeedOptions = { fillAttempts: 8, fillRetryMs: 5, restartMs: 10, restartMaxMs: 40 };

/**
 * One stream: what was appended, consumers, and a store whose direct gets see it up to
 * `horizon` (a replica behind) while reads from the leader see all of it, unless it is down.
 */
class MemoryStream {
  readonly messages: RawEvent[] = [];
  /** Direct gets see sequences up to this one. */
  horizon = Number.MAX_SAFE_INTEGER;
  /** Reads from the leader fail (as when it cannot be reached). */
  leaderDown = false;
  /** Sequences the consumers never deliver (lost, as far as the feed can tell). */
  readonly hidden = new Set<number>();
  readonly starts: (number | undefined)[] = [];
  private feeds: MemoryFeed[] = [];

  readonly open: OpenEventFeed = async (startSeq) => {
    this.starts.push(startSeq);
    const feed = new MemoryFeed();
    for (const m of this.messages) if (startSeq !== undefined && m.seq >= startSeq && !this.hidden.has(m.seq)) feed.push(m);
    this.feeds.push(feed);
    return feed;
  };

  readonly store: EventStore = {
    load: async (aggregate, id, afterSeq, limit = Number.MAX_SAFE_INTEGER) => {
      const events: StoredEvent[] = [];
      for (const m of this.messages) {
        if (m.seq <= afterSeq || m.seq > this.horizon || !m.subject.startsWith(`evt.${aggregate}.${id}.`)) continue;
        if (events.length === limit) return { events, more: true };
        events.push({ seq: m.seq, envelope: JSON.parse(new TextDecoder().decode(m.data)) as EventEnvelope });
      }
      return { events, more: false };
    },
    last: async () => undefined,
    append: async () => {
      throw new Error('not used');
    },
    headSeq: async (aggregate, id) => {
      if (this.leaderDown) throw new Error('leader unreachable');
      return this.head(`${aggregate}/${id}`);
    },
    loadThrough: async (aggregate, id, afterSeq, throughSeq) => {
      const { events } = await this.store.load(aggregate, id, afterSeq);
      const last = events.at(-1)?.seq ?? afterSeq;
      if (last >= throughSeq) return events;
      if (this.leaderDown) throw new Error('leader unreachable');
      for (const m of this.messages) {
        if (m.seq > last && m.subject.startsWith(`evt.${aggregate}.${id}.`)) events.push({ seq: m.seq, envelope: JSON.parse(new TextDecoder().decode(m.data)) as EventEnvelope });
      }
      return events;
    },
  };

  /** The last sequence on `aggregate/id`'s subjects, as the leader has it. */
  head(key: string): number {
    const [aggregate, id] = key.split('/');
    return this.messages.filter((m) => m.subject.startsWith(`evt.${aggregate}.${id}.`)).at(-1)?.seq ?? 0;
  }

  /** Appends a message; live consumers get it unless it is hidden. */
  publish(subject: string, body: string | object | null, hide = false): number {
    const m = { seq: this.messages.length + 1, subject, data: encoder.encode(typeof body === 'string' ? body : JSON.stringify(body)) };
    this.messages.push(m);
    if (hide) this.hidden.add(m.seq);
    else for (const f of this.feeds) f.push(m);
    return m.seq;
  }

  /** An event of `task/<id>` at `version`. */
  event(id: string, version: number, hide = false): number {
    return this.publish(`evt.task.${id}.TaskAssigned`, envelope(id, version), hide);
  }

  /** Ends the current consumer, as a failure would. */
  endConsumer(err?: Error): void {
    this.feeds.at(-1)!.end(err);
  }
}

class MemoryFeed implements RawEventFeed {
  private readonly queue: RawEvent[] = [];
  private wake: (() => void) | undefined;
  private ended = false;
  private error: Error | undefined;

  push(m: RawEvent): void {
    if (this.ended) return;
    this.queue.push(m);
    this.wake?.();
  }

  end(err?: Error): void {
    this.ended = true;
    this.queue.length = 0;
    this.error = err;
    this.wake?.();
  }

  stop(): void {
    this.end();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<RawEvent> {
    for (;;) {
      const m = this.queue.shift();
      if (m) {
        yield m;
        continue;
      }
      if (this.ended) {
        if (this.error) throw this.error;
        return;
      }
      await new Promise<void>((r) => (this.wake = r));
      this.wake = undefined;
    }
  }
}

function envelope(id: string, version: number): EventEnvelope {
  return { id: `${id}-${version}`, type: 'TaskAssigned', aggregate: 'task', aggregateId: id, version, schemaVersion: 1, time: new Date().toISOString(), data: { assignedTo: 'CC1' }, metadata: {} };
}

/** A feed on a memory stream, recording what each subscription was sent and which ended. */
async function setup(stream = new MemoryStream()) {
  const sent = new Map<string, number[]>();
  const ended = new Map<string, string>();
  const feed = new AggregateFeed(
    stream.open,
    stream.store,
    {
      deliver: (sub, seq, env) => {
        expect(env.aggregateId).toBe(sub.aggregateId);
        expect(seq).toBe(sub.seq);
        sent.set(sub.id, [...(sent.get(sub.id) ?? []), env.version]);
      },
      end: (sub, reason) => ended.set(sub.id, reason),
    },
    pino({ level: 'silent' }),
    options,
  );
  await feed.start();
  const subscribe = (id: string, aggregateId = id): AggregateSub => {
    const sub: AggregateSub = { kind: 'aggregate', conn: undefined as never, id, joining: true, aggregate: 'task', aggregateId, key: `task/${aggregateId}`, version: 0, seq: 0, queue: [], filling: false };
    feed.add(sub);
    return sub;
  };
  return { stream, feed, sent, ended, subscribe };
}

const settle = (ms = 30) => new Promise((r) => setTimeout(r, ms));
async function until(check: () => boolean, what: string, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await settle(5);
  }
}

describe('aggregate feed: every version after the state, once, in order', () => {
  it('after a state read from a replica behind, sends the events the consumer delivered before the subscription existed', async () => {
    const { stream, feed, sent, ended, subscribe } = await setup();
    stream.event('a', 1);
    stream.horizon = 1; // the replica that answers direct gets has only the first event
    stream.event('a', 2);
    stream.event('a', 3);
    await settle();
    const sub = subscribe('a');
    // The state as the lagging replica gives it: version 1. Versions 2 and 3 were delivered by
    // the consumer before the subscription existed and will not come again; the leader's head
    // (read once the subscription registered) says they exist.
    stream.leaderDown = true;
    feed.join(sub, 1, 1, stream.head('task/a'));
    await settle(20);
    expect(sent.get('a')).toBeUndefined(); // nothing can read them yet: nothing is sent, nothing skipped
    stream.leaderDown = false;
    await until(() => sent.get('a')?.length === 2, 'versions 2 and 3');
    stream.event('a', 4);
    await until(() => sent.get('a')?.length === 3, 'version 4');
    expect(sent.get('a')).toEqual([2, 3, 4]);
    expect(ended.size).toBe(0);
    feed.stop();
  });

  it('an event that skips versions waits until the versions between are read', async () => {
    const { stream, feed, sent, subscribe } = await setup();
    stream.event('b', 1);
    const sub = subscribe('b');
    feed.join(sub, 1, 1, stream.head('task/b'));
    stream.horizon = 1;
    stream.leaderDown = true;
    stream.event('b', 2, true); // the consumer never delivers 2 and 3
    stream.event('b', 3, true);
    stream.event('b', 4);
    stream.event('b', 5);
    await settle(20);
    expect(sent.get('b')).toBeUndefined(); // 4 and 5 wait: 2 and 3 are not readable yet
    stream.leaderDown = false;
    await until(() => sent.get('b')?.length === 4, 'versions 2 to 5');
    expect(sent.get('b')).toEqual([2, 3, 4, 5]);
    feed.stop();
  });

  it('events that arrive while the state is read are sent after it, without repeating what it includes', async () => {
    const { stream, feed, sent, subscribe } = await setup();
    stream.event('c', 1);
    const sub = subscribe('c');
    stream.event('c', 2); // arrives while the state is being read (the state includes it)
    stream.event('c', 3); // and this one it does not include
    await settle();
    feed.join(sub, 2, 2, stream.head('task/c'));
    await until(() => sent.get('c') !== undefined, 'version 3');
    await settle();
    expect(sent.get('c')).toEqual([3]);
    feed.stop();
  });

  it('skips what is not an event envelope of its subject, counts it, and goes on', async () => {
    const { stream, feed, sent, ended, subscribe } = await setup();
    stream.event('d', 1);
    const sub = subscribe('d');
    feed.join(sub, 1, 1, stream.head('task/d'));
    stream.publish('evt.task.d.TaskAssigned', 'not json {');
    stream.publish('evt.task.d.TaskAssigned', { hello: 'world' });
    stream.publish('evt.task.d.TaskAssigned', { ...envelope('d', 2), version: 'two' });
    stream.publish('evt.task.d.TaskAssigned', { ...envelope('d', 2), aggregateId: 'other' }); // another instance's envelope on d's subject
    stream.publish('evt.task.d.TaskCreated', envelope('d', 2)); // its type is not the subject's
    stream.publish('evt.task.d.TaskAssigned', null);
    stream.publish('evt.nope', { x: 1 });
    stream.event('d', 2);
    stream.event('d', 3);
    await until(() => sent.get('d')?.length === 2, 'versions 2 and 3');
    expect(sent.get('d')).toEqual([2, 3]);
    expect(feed.skippedMessages).toBe(7);
    expect(ended.size).toBe(0);
    feed.stop();
  });

  it('a stored message whose version does not follow on is skipped once the store has it, not waited for', async () => {
    const { stream, feed, sent, ended, subscribe } = await setup();
    stream.event('e', 1);
    const sub = subscribe('e');
    feed.join(sub, 1, 1, stream.head('task/e'));
    stream.event('e', 99); // a well-formed envelope somebody else published on e's subject
    stream.event('e', 2);
    await until(() => sent.get('e')?.length === 1, 'version 2');
    await settle();
    expect(sent.get('e')).toEqual([2]);
    expect(feed.skippedMessages).toBe(1);
    expect(ended.size).toBe(0);
    feed.stop();
  });

  it('reopens its consumer after it ends (returning or failing), from the next sequence, and subscribers miss nothing', async () => {
    const { stream, feed, sent, ended, subscribe } = await setup();
    stream.event('f', 1);
    const sub = subscribe('f');
    feed.join(sub, 1, 1, stream.head('task/f'));
    stream.event('f', 2);
    await until(() => sent.get('f')?.length === 1, 'version 2');
    stream.endConsumer();
    stream.event('f', 3); // appended while no consumer runs
    await until(() => stream.starts.length === 2, 'the consumer to be reopened');
    expect(stream.starts).toEqual([undefined, 3]); // after the last sequence delivered
    stream.event('f', 4);
    await until(() => sent.get('f')?.length === 3, 'versions 3 and 4');
    stream.endConsumer(new Error('consumer deleted'));
    await until(() => stream.starts.length === 3, 'the consumer to be reopened again');
    stream.event('f', 5);
    await until(() => sent.get('f')?.length === 4, 'version 5');
    expect(sent.get('f')).toEqual([2, 3, 4, 5]);
    expect(feed.opened).toBe(3);
    expect(ended.size).toBe(0);
    feed.stop();
  });

  it('a consumer that ends before delivering anything: after the restart each subscription reads up to its instance\'s head', async () => {
    const stream = new MemoryStream();
    stream.event('i', 1); // before the feed started: its consumer delivers only what comes after
    const { feed, sent, subscribe } = await setup(stream);
    const sub = subscribe('i');
    feed.join(sub, 1, 1, stream.head('task/i'));
    const joining = subscribe('i2', 'i'); // still reading its state when the consumer ends
    stream.endConsumer(); // it delivered nothing: there is no sequence to restart after
    stream.event('i', 2); // appended while no consumer runs
    await until(() => stream.starts.length === 2, 'the consumer to be reopened');
    expect(stream.starts).toEqual([undefined, undefined]);
    feed.join(joining, 1, 1, 1); // its head was read before version 2 was appended
    // No later event shows the gap: version 2 comes from the read up to the head.
    await until(() => sent.get('i')?.length === 1 && sent.get('i2')?.length === 1, 'version 2');
    stream.event('i', 3);
    await until(() => sent.get('i')?.length === 2 && sent.get('i2')?.length === 2, 'version 3');
    expect(sent.get('i')).toEqual([2, 3]);
    expect(sent.get('i2')).toEqual([2, 3]);
    feed.stop();
  });

  it('ends a subscription, saying why, when the versions it misses cannot be read', async () => {
    const { stream, feed, sent, ended, subscribe } = await setup();
    stream.event('g', 1);
    const sub = subscribe('g');
    feed.join(sub, 1, 1, stream.head('task/g'));
    stream.horizon = 1;
    stream.leaderDown = true;
    stream.event('g', 2, true);
    stream.event('g', 3);
    await until(() => ended.has('g'), 'the subscription to end', 5000);
    expect(ended.get('g')).toMatch(/could not read the events after version 1 .*subscribe again with afterVersion/);
    expect(sent.get('g')).toBeUndefined();
    feed.stop();
  });

  it('keeps subscriptions of one instance independent: each gets every version after its own state', async () => {
    const { stream, feed, sent, subscribe } = await setup();
    stream.event('h', 1);
    stream.event('h', 2);
    const early = subscribe('h1', 'h');
    feed.join(early, 1, 1, stream.head('task/h'));
    const late = subscribe('h2', 'h');
    feed.join(late, 2, 2, stream.head('task/h'));
    stream.event('h', 3);
    await until(() => sent.get('h1')?.length === 2 && sent.get('h2')?.length === 1, 'both');
    expect(sent.get('h1')).toEqual([2, 3]);
    expect(sent.get('h2')).toEqual([3]);
    feed.stop();
  });
});
