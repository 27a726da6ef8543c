import type { WebSocket } from 'ws';
import type { Principal } from './auth.js';
import type { LiveGateway } from './gateway.js';
import { CloseCode, type LiveErrorCode, type ServerMessage } from './protocol.js';
import type { AggregateSub } from './aggregate-feed.js';
import { keyString, type ViewSub } from './view-feed.js';

/** One WebSocket client: its subscriptions, rate limit and send queue. */
export class Connection {
  readonly subs = new Map<string, ViewSub | AggregateSub>();
  private tokens: number;
  private refilled = Date.now();
  private alive = true;
  /** Held back while the socket is congested: coalescible updates by key (latest wins), events in order. */
  private readonly held = new Map<string, ServerMessage>();
  private readonly heldEvents: ServerMessage[] = [];
  private drainTimer: NodeJS.Timeout | undefined;
  closed = false;

  constructor(
    readonly ws: WebSocket,
    readonly principal: Principal,
    private readonly g: LiveGateway,
  ) {
    this.tokens = g.o.rate * 2;
    // A random first phase: connections opened together are not all pinged in the same tick.
    this.heartbeatAt = Date.now() + g.o.heartbeatMs * (0.5 + Math.random() / 2);
  }

  /** Token bucket: `rate` per second, bursts of twice that. */
  takeToken(): boolean {
    const now = Date.now();
    this.tokens = Math.min(this.g.o.rate * 2, this.tokens + ((now - this.refilled) / 1000) * this.g.o.rate);
    this.refilled = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** When this connection's next heartbeat is due (ms since the epoch): each has its own phase. */
  heartbeatAt: number;

  heartbeat(): void {
    this.heartbeatAt += this.g.o.heartbeatMs;
    if (!this.alive) {
      // Say why (a live peer that just stopped answering pings reads it), then cut a dead one off.
      this.close(CloseCode.HEARTBEAT_TIMEOUT, 'no pong');
      setTimeout(() => this.ws.terminate(), 1000).unref();
      return;
    }
    this.alive = false;
    try {
      this.ws.ping();
    } catch {
      // closing already
    }
  }

  pong(): void {
    this.alive = true;
  }

  /**
   * Sends, or holds back while the socket is congested: a `coalesce` key lets a newer update of
   * the same row replace an older one still waiting. Past `maxPending` held updates the client
   * is closed with TOO_SLOW and must resubscribe; memory per connection stays bounded.
   */
  send(msg: ServerMessage, coalesce?: string, text?: string): boolean {
    if (this.closed) return false;
    if (this.held.size === 0 && this.heldEvents.length === 0 && this.ws.bufferedAmount <= this.g.o.sendQueueBytes) {
      this.write(text ?? JSON.stringify(msg));
      return true;
    }
    if (coalesce !== undefined) {
      const earlier = this.held.get(coalesce);
      if (earlier && earlier.type === 'change' && msg.type === 'change') {
        // Merge into the waiting message: the latest row per key, at the later version.
        const byKey = new Map(earlier.changes.map((c) => [keyString(c.key), c]));
        for (const c of msg.changes) byKey.set(keyString(c.key), c);
        this.g.d.metrics.liveCoalesced.inc(earlier.changes.length + msg.changes.length - byKey.size);
        this.held.set(coalesce, { ...msg, changes: [...byKey.values()] });
      } else {
        this.held.set(coalesce, msg);
      }
    } else {
      this.heldEvents.push(msg);
    }
    const waiting = this.heldEvents.length + [...this.held.values()].reduce((n, m) => n + (m.type === 'change' ? m.changes.length : 1), 0);
    if (waiting > this.g.o.maxPending) {
      this.g.d.metrics.liveDropped.inc(waiting);
      this.close(CloseCode.TOO_SLOW, 'too slow: reconnect and resume');
      return false;
    }
    this.drainTimer ??= setInterval(() => this.drain(), 20);
    return false;
  }

  private drain(): void {
    if (this.closed) return;
    while (this.ws.bufferedAmount <= this.g.o.sendQueueBytes / 2) {
      const ev = this.heldEvents.shift();
      if (ev) {
        this.write(JSON.stringify(ev));
        continue;
      }
      const first = this.held.entries().next();
      if (first.done) break;
      this.held.delete(first.value[0]);
      this.write(JSON.stringify(first.value[1]));
    }
    if (this.held.size === 0 && this.heldEvents.length === 0) {
      clearInterval(this.drainTimer);
      this.drainTimer = undefined;
    }
  }

  private write(text: string): void {
    this.ws.send(text);
    this.g.d.metrics.liveMessages.inc();
  }

  /** Drops what is held back for a subscription (it is being resent from scratch, or is gone). */
  forget(sub: string): void {
    this.held.delete(sub);
  }

  error(code: LiveErrorCode, message: string, sub?: string): void {
    this.send({ type: 'error', ...(sub !== undefined ? { sub } : {}), code, message });
  }

  close(code: number, reason: string): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.drainTimer);
    this.held.clear();
    this.heldEvents.length = 0;
    try {
      this.ws.close(code, reason);
    } catch {
      this.ws.terminate();
    }
  }
}

