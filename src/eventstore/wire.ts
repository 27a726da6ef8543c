import { nuid, type Msg, type MsgHdrs, type NatsConnection, type Subscription } from '@nats-io/nats-core';

/** A request that got no reply within the wire's timeout: its outcome is unknown. */
export class WireTimeout extends Error {
  constructor(subject: string, ms: number) {
    super(`no reply from ${subject} within ${ms} ms`);
    this.name = 'WireTimeout';
  }
}

/** Nobody listens on the subject (no stream, or JetStream is down). */
export class WireNoResponders extends Error {
  constructor(subject: string) {
    super(`no responders on ${subject}`);
    this.name = 'WireNoResponders';
  }
}

/** The connection closed while the request was waiting. */
export class WireClosed extends Error {
  constructor() {
    super('NATS connection closed');
    this.name = 'WireClosed';
  }
}

/** Marks a request answered by its first reply, which resolves the request itself. */
const SINGLE = Symbol('single reply');

interface Waiter {
  readonly subject: string;
  readonly deadline: number;
  /** Takes one reply and returns true when the request is complete; or SINGLE. */
  readonly onReply: ((msg: Msg) => boolean) | typeof SINGLE;
  readonly resolve: (msg?: Msg) => void;
  readonly reject: (err: Error) => void;
}

/**
 * Request-reply to JetStream without the stock client's per-request cost. nats.js allocates a
 * timer and an Error (for its async stack) per request, which caps a publish loop at well
 * under half of what the connection can carry. Here every request shares one wildcard reply
 * subscription and one sweep timer; replies are matched by a counter in the reply subject.
 * Single replies (publish acks) and multi-message replies (batch direct get) both fit.
 */
export class JetStreamWire {
  private readonly prefix: string;
  private readonly waiters = new Map<number, Waiter>();
  private readonly sub: Subscription;
  private readonly sweeper: NodeJS.Timeout;
  private nextId = 1;
  private closed = false;

  constructor(
    private readonly nc: NatsConnection,
    /** How long a request may wait for its (first or next) reply. */
    readonly timeoutMs: number,
  ) {
    this.prefix = `_INBOX.${nuid.next()}.`;
    this.sub = nc.subscribe(`${this.prefix}*`, { callback: (err, msg) => (err ? this.failAll(err) : this.onReply(msg)) });
    this.sweeper = setInterval(() => this.sweep(), Math.max(10, Math.min(250, timeoutMs / 4)));
    this.sweeper.unref();
    void nc.closed().then(() => this.failAll(new WireClosed()));
  }

  /** Sends one message and resolves with its single reply. */
  request(subject: string, payload: string | Uint8Array, headers?: MsgHdrs): Promise<Msg> {
    return this.send<Msg>(subject, payload, headers, SINGLE);
  }

  /**
   * Sends one message and feeds each reply to `onReply` until it returns true. The timeout
   * restarts with every reply, so a long batch is not cut off while it is flowing.
   */
  requestMany(subject: string, payload: string | Uint8Array, onReply: (msg: Msg) => boolean): Promise<void> {
    return this.send<void>(subject, payload, undefined, onReply);
  }

  /** Publishes without waiting for anything (a batch's middle messages). */
  publish(subject: string, payload: string | Uint8Array, headers: MsgHdrs): void {
    if (this.closed) throw new WireClosed();
    this.nc.publish(subject, payload, { headers });
  }

  close(): void {
    if (this.closed) return;
    clearInterval(this.sweeper);
    this.sub.unsubscribe();
    this.failAll(new WireClosed());
  }

  private send<T>(
    subject: string,
    payload: string | Uint8Array,
    headers: MsgHdrs | undefined,
    onReply: ((msg: Msg) => boolean) | typeof SINGLE,
  ): Promise<T> {
    if (this.closed) return Promise.reject(new WireClosed());
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.waiters.set(id, { subject, deadline: Date.now() + this.timeoutMs, onReply, resolve: resolve as (v?: Msg) => void, reject });
      try {
        this.nc.publish(subject, payload, headers ? { reply: this.prefix + id, headers } : { reply: this.prefix + id });
      } catch (err) {
        this.waiters.delete(id);
        reject(err instanceof Error ? err : new Error(String(err)));
      }
    });
  }

  private onReply(msg: Msg): void {
    const id = Number(msg.subject.slice(this.prefix.length));
    const w = this.waiters.get(id);
    if (!w) return; // timed out already, or a straggler after completion
    if (msg.headers?.code === 503) {
      this.waiters.delete(id);
      w.reject(new WireNoResponders(w.subject));
      return;
    }
    if (w.onReply === SINGLE) {
      this.waiters.delete(id);
      w.resolve(msg);
      return;
    }
    let done: boolean;
    try {
      done = w.onReply(msg);
    } catch (err) {
      this.waiters.delete(id);
      w.reject(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    if (done) {
      this.waiters.delete(id);
      w.resolve();
    } else {
      // Still flowing: re-insert so the sweep (which stops at the first live deadline) sees it in order.
      this.waiters.delete(id);
      this.waiters.set(id, { ...w, deadline: Date.now() + this.timeoutMs });
    }
  }

  private sweep(): void {
    const now = Date.now();
    for (const [id, w] of this.waiters) {
      if (w.deadline > now) break; // insertion order is deadline order: one timeout for all
      this.waiters.delete(id);
      w.reject(new WireTimeout(w.subject, this.timeoutMs));
    }
  }

  private failAll(err: Error): void {
    this.closed = true;
    clearInterval(this.sweeper);
    for (const w of this.waiters.values()) w.reject(err);
    this.waiters.clear();
  }
}
