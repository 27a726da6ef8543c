import type { NatsConnection, Subscription } from '@nats-io/nats-core';
import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import { ALL_LIVE_CHANGES, LIVE_INTEREST, LiveHeader, isAggregateId } from '../../subjects/index.js';
import type { ActorSystem } from '../actor/system.js';
import type { Aggregate } from '../aggregate/define.js';
import { StrandError } from '../errors.js';
import type { EventEnvelope, EventStore } from '../eventstore/types.js';
import type { StrandMetrics } from '../observability/metrics.js';
import type { ReadSideApi } from '../projections/host.js';
import type { LiveChange, LiveFeedMessage } from '../projections/runner.js';
import type { Row } from '../projections/types.js';
import type { ViewReader } from '../projections/views.js';
import { checkSubscribe, rowVisible, subscriptionRequest, type AccessPolicy, type Authenticator, type Principal } from './auth.js';
import {
  CloseCode,
  LiveErrorCode,
  type SubscribeAggregateMessage,
  type SubscribeViewMessage,
  parseClientMessage,
} from './protocol.js';

/** Limits and tuning of the gateway (documented in docs/configuration.md). */
export interface GatewayOptions {
  readonly stream: string;
  readonly maxSubscriptions: number;
  readonly maxMessageBytes: number;
  /** Client messages per second (burst: twice that). */
  readonly rate: number;
  /** Bytes queued in the socket before updates are held back and coalesced. */
  readonly sendQueueBytes: number;
  /** Held-back updates before a slow client is closed with TOO_SLOW. */
  readonly maxPending: number;
  readonly heartbeatMs: number;
  /** Changes kept per view for resuming clients. */
  readonly bufferPerView: number;
  readonly minSeqWaitMs: number;
}

/** What the gateway reads from. */
export interface GatewayDeps {
  readonly nc: NatsConnection;
  readonly views: ViewReader;
  readonly readSide: ReadSideApi | undefined;
  readonly actors: ActorSystem;
  readonly store: EventStore;
  readonly aggregates: ReadonlyMap<string, Aggregate>;
  readonly auth: Authenticator;
  readonly access: AccessPolicy;
  readonly metrics: StrandMetrics;
  readonly log: Logger;
  /** This instance's ID: feed messages it published itself reach the gateway in-process, not over NATS. */
  readonly instance?: string;
}

import { Connection } from './connection.js';
import { AggregateFeed, jetStreamEventFeed, type AggregateSub } from './aggregate-feed.js';
import { FeedAssembler, type FeedPart } from './feed-message.js';
import { NO_GROUPS, ViewFeed, keyString, type Batch, type ViewSub } from './view-feed.js';

const KEEP_OPEN = new Set<string>(Object.values(LiveErrorCode));
/** How long stop() waits for clients to answer the close frame before dropping them. */
const STOP_GRACE_MS = 1000;

/**
 * The WebSocket gateway on `/live`. Clients subscribe to a view's rows (by key or filter) or
 * to one aggregate's events, get the current state, then every change in order with its
 * version; a reconnecting client names the last version it saw and gets exactly what it
 * missed, or a fresh state marked as such. Changes come over NATS (`strand.live.changes.>` from
 * whichever instance applies a projection; the event stream for aggregates), so a client
 * sees every instance's changes.
 */
export class LiveGateway {
  private readonly wss: WebSocketServer;
  private readonly conns = new Set<Connection>();
  private readonly feeds = new Map<string, ViewFeed>();
  private readonly chain = new Map<string, number>();
  private readonly parts = new FeedAssembler();
  /** Every aggregate subscription's events. */
  readonly aggregateFeed: AggregateFeed;
  private liveSub: Subscription | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private announcer: NodeJS.Timeout | undefined;
  private stopping = false;
  private subCount = 0;

  constructor(
    readonly d: GatewayDeps,
    readonly o: GatewayOptions,
  ) {
    this.wss = new WebSocketServer({
      noServer: true,
      // Past this the library closes with 1009; up to it, oversize gets an error message.
      maxPayload: Math.max(1_048_576, o.maxMessageBytes * 4),
      handleProtocols: (protocols) => (protocols.has('strand.v1') ? 'strand.v1' : false),
    });
    for (const view of d.views.all()) this.feeds.set(view.name, new ViewFeed(view.name));
    this.aggregateFeed = new AggregateFeed(
      jetStreamEventFeed(d.nc, o.stream),
      d.store,
      {
        deliver: (sub, seq, env) => this.deliverEvent(sub, seq, env),
        end: (sub, reason) => {
          sub.conn.subs.delete(sub.id);
          this.unregister(sub);
          sub.conn.error(LiveErrorCode.UNAVAILABLE, `subscription ended: ${reason}`, sub.id);
        },
      },
      d.log,
    );
  }

  /** Starts listening to the change feed and serves upgrades to `/live` on `server`. */
  start(server: Server): void {
    this.liveSub = this.d.nc.subscribe(ALL_LIVE_CHANGES, {
      callback: (err, msg) => {
        if (err) return;
        // Published here: delivered in-process already (deliverLocal).
        if (this.d.instance !== undefined && msg.headers?.get(LiveHeader.Instance) === this.d.instance) return;
        try {
          const whole = this.parts.add(msg.json<FeedPart>());
          if (whole) this.onFeed(whole);
        } catch (e) {
          this.d.log.warn({ err: e }, 'unreadable live feed message');
        }
      },
    });
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      const path = (req.url ?? '').split('?')[0];
      if (path !== '/live') return; // not ours: fastify/ws elsewhere may take it, or it times out
      void this.upgrade(req, socket, head);
    });
    // Each connection is pinged every heartbeatMs, at its own phase, in ticks of a thirtieth of
    // that: pinging 10,000 sockets at once would hold the event loop for a good part of a second.
    this.heartbeat = setInterval(() => {
      const now = Date.now();
      for (const c of this.conns) if (c.heartbeatAt <= now) c.heartbeat();
    }, Math.max(100, Math.floor(this.o.heartbeatMs / 30)));
    this.heartbeat.unref();
    this.announcer = setInterval(() => this.announce(), 1000);
    this.announcer.unref();
  }

  /** A feed message of this instance's own runners, handed over in-process. */
  deliverLocal(message: LiveFeedMessage): void {
    if (this.stopping) return;
    this.onFeed(message);
  }

  /** Tells projection runners which projections have subscribers here (they skip re-reading rows otherwise). */
  private announce(): void {
    const projections = new Set<string>();
    for (const feed of this.feeds.values()) if (feed.subs.size > 0) projections.add(this.d.views.view(feed.name).projection.name);
    if (projections.size === 0) return;
    try {
      this.d.nc.publish(LIVE_INTEREST, JSON.stringify({ projections: [...projections], ...(this.d.instance !== undefined ? { instance: this.d.instance } : {}) }));
    } catch {
      // the connection is closing
    }
  }

  get connections(): number {
    return this.conns.size;
  }

  /** Closes every connection with GOING_AWAY (clients reconnect elsewhere and resume). */
  async stop(): Promise<void> {
    this.stopping = true;
    clearInterval(this.heartbeat);
    clearInterval(this.announcer);
    for (const c of this.conns) c.close(CloseCode.GOING_AWAY, 'server shutting down');
    this.liveSub?.unsubscribe();
    this.aggregateFeed.stop();
    // The server closes once every connection has; a peer that never answers the close frame
    // (it stopped reading) would hold the shutdown for ws's 30 s close timeout.
    const cutOff = setTimeout(() => {
      for (const ws of this.wss.clients) ws.terminate();
    }, STOP_GRACE_MS);
    await new Promise<void>((r) => this.wss.close(() => r()));
    clearTimeout(cutOff);
  }

  private async upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    const outcome = await this.d.auth.authenticate(req).catch(() => ({ ok: false as const, reason: 'authentication failed' }));
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      if (!outcome.ok) {
        // Accept, then close with a code the client can read (a refused upgrade shows none in browsers).
        ws.close(CloseCode.UNAUTHORIZED, outcome.reason.slice(0, 120));
        return;
      }
      this.accept(ws, outcome.principal);
    });
  }

  private accept(ws: WebSocket, principal: Principal): void {
    const conn = new Connection(ws, principal, this);
    this.conns.add(conn);
    this.d.metrics.liveConnections.set(this.conns.size);
    ws.on('pong', () => conn.pong());
    ws.on('message', (data: RawData, isBinary: boolean) => void this.onMessage(conn, data, isBinary));
    ws.on('close', () => this.drop(conn));
    ws.on('error', () => this.drop(conn));
  }

  private drop(conn: Connection): void {
    if (!this.conns.delete(conn)) return;
    conn.closed = true;
    for (const s of conn.subs.values()) this.unregister(s);
    conn.subs.clear();
    this.d.metrics.liveConnections.set(this.conns.size);
  }

  private async onMessage(conn: Connection, data: RawData, isBinary: boolean): Promise<void> {
    const size = Array.isArray(data) ? data.reduce((n, b) => n + b.length, 0) : (data as Buffer | ArrayBuffer).byteLength;
    if (size > this.o.maxMessageBytes) return conn.error(LiveErrorCode.MESSAGE_TOO_LARGE, `messages are limited to ${this.o.maxMessageBytes} bytes, got ${size}`);
    if (!conn.takeToken()) return conn.error(LiveErrorCode.RATE_LIMITED, `more than ${this.o.rate} messages per second; this one was dropped`);
    if (isBinary) return conn.error(LiveErrorCode.BAD_MESSAGE, 'binary frames are not part of the protocol; send JSON text');
    const parsed = parseClientMessage(Buffer.isBuffer(data) ? data.toString('utf8') : Buffer.concat(data as Buffer[]).toString('utf8'));
    if (!parsed.ok) return conn.error(LiveErrorCode.BAD_MESSAGE, parsed.error, parsed.sub);
    const m = parsed.message;
    if (m.type === 'ping') {
      conn.send({ type: 'pong', ...(m.nonce !== undefined ? { nonce: m.nonce } : {}) });
      return;
    }
    if (m.type === 'unsubscribe') {
      const s = conn.subs.get(m.id);
      if (!s) return conn.error(LiveErrorCode.UNKNOWN_SUBSCRIPTION, `no subscription ${m.id}`, m.id);
      conn.subs.delete(m.id);
      this.unregister(s);
      conn.send({ type: 'unsubscribed', sub: m.id });
      return;
    }
    if (conn.subs.has(m.id)) return conn.error(LiveErrorCode.DUPLICATE_SUBSCRIPTION, `subscription ${m.id} exists on this connection`, m.id);
    if (conn.subs.size >= this.o.maxSubscriptions) return conn.error(LiveErrorCode.TOO_MANY_SUBSCRIPTIONS, `at most ${this.o.maxSubscriptions} subscriptions per connection`, m.id);
    try {
      if ('view' in m) await this.subscribeView(conn, m);
      else await this.subscribeAggregate(conn, m);
    } catch (err) {
      const s = conn.subs.get(m.id);
      if (s) {
        conn.subs.delete(m.id);
        this.unregister(s);
      }
      const code = err instanceof StrandError && KEEP_OPEN.has(err.code) ? (err.code as LiveErrorCode) : LiveErrorCode.UNAVAILABLE;
      if (code === LiveErrorCode.UNAVAILABLE) this.d.log.warn({ err, sub: m.id }, 'subscription failed');
      conn.error(code, (err as Error).message, m.id);
    }
  }

  // ---- views ---------------------------------------------------------------------------------

  private async subscribeView(conn: Connection, m: SubscribeViewMessage): Promise<void> {
    const ref = this.d.views.view(m.view); // UNKNOWN_VIEW
    const filter = Object.entries(m.filter ?? {});
    for (const [col] of filter) {
      if (!ref.spec.filters.includes(col)) throw new StrandError('UNKNOWN_COLUMN', `view ${m.view} cannot be filtered on ${col}; filterable: ${ref.spec.filters.join(', ')}`);
    }
    const verdict = checkSubscribe(this.d.access, conn.principal, subscriptionRequest(m));
    if (verdict !== true) return conn.error(LiveErrorCode.FORBIDDEN, verdict, m.id);
    const feed = this.feeds.get(m.view)!;
    const sub: ViewSub = { kind: 'view', conn, id: m.id, joining: true, feed, request: m, projection: ref.projection.name, filterColumns: filter, pending: [], version: 0, resuming: false };
    conn.subs.set(m.id, sub);
    const first = feed.subs.size === 0;
    feed.add(sub);
    feed.joining.add(sub);
    this.countSubs(1);
    if (first) this.announce();

    if (m.minSeq !== undefined && this.d.readSide) {
      const w = await this.d.readSide.waitFor(ref.projection.name, m.minSeq, this.o.minSeqWaitMs);
      if (!w.reached) throw new StrandError('NOT_CAUGHT_UP', `${ref.projection.name} is at ${w.checkpoint}, not yet at ${m.minSeq}`);
    }
    if (m.after !== undefined && feed.coveredFrom !== undefined && m.after >= feed.coveredFrom) {
      // Resume from the buffer: every batch after `after`, as it was sent live.
      conn.send({ type: 'resumed', sub: m.id, after: m.after });
      sub.version = m.after;
      this.setResuming(sub);
      for (const b of feed.buffer) if (b.version > m.after) this.deliverBatch(sub, b);
      this.goLive(sub);
      return;
    }
    if (m.key !== undefined) {
      const { row, checkpoint } = await this.d.views.row(m.view, String(m.key));
      if (m.after !== undefined && m.after === checkpoint) return this.resumeUnchanged(sub, m.after);
      const visible = row && this.visible(conn, m.view, row) ? [row] : [];
      conn.send({ type: 'snapshot', sub: m.id, view: m.view, checkpoint, rows: visible, complete: true, fresh: m.after !== undefined });
      sub.version = checkpoint;
    } else {
      const limit = m.limit ?? 500;
      const page = await this.d.views.page(m.view, m.filter ?? {}, limit);
      if (m.after !== undefined && m.after === page.checkpoint) return this.resumeUnchanged(sub, m.after);
      const rows = page.rows.filter((r) => this.visible(conn, m.view, r));
      for (const r of rows) feed.placeOne(keyString(r[ref.spec.key]), sub.group!);
      conn.send({ type: 'snapshot', sub: m.id, view: m.view, checkpoint: page.checkpoint, rows, complete: page.next === undefined, fresh: m.after !== undefined });
      sub.version = page.checkpoint;
    }
    this.goLive(sub);
  }

  /** The client is already at the current checkpoint: nothing was missed (but what it holds is unknown). */
  private resumeUnchanged(sub: ViewSub, after: number): void {
    sub.conn.send({ type: 'resumed', sub: sub.id, after });
    sub.version = after;
    this.setResuming(sub);
    this.goLive(sub);
  }

  private setResuming(sub: ViewSub): void {
    if (sub.request.key !== undefined) return; // a key subscription gets every change of its key anyway
    sub.resuming = true;
    sub.feed.resuming.add(sub);
  }

  private goLive(sub: ViewSub): void {
    for (const b of sub.pending) this.deliverBatch(sub, b);
    sub.pending = [];
    sub.joining = false;
    sub.feed.joining.delete(sub);
    // Made before this gateway heard the projection: batches between its snapshot and the first
    // one heard were never seen here (the runner publishes only while someone watches).
    if (sub.feed.heardFrom !== undefined && sub.version < sub.feed.heardFrom) sub.stale = true;
    if (sub.stale) {
      sub.stale = false;
      this.resync(sub.feed, sub);
    }
  }

  private visible(conn: Connection, view: string, row: Row): boolean {
    return rowVisible(this.d.access, conn.principal, view, row);
  }

  /**
   * One subscription's part of a batch, for catching up (a resume, batches that came during a
   * snapshot): rows (still) matching, and a delete for every other change of the batch, since
   * which of those rows the client holds is not known at that version (a delete of a row it
   * does not hold is harmless). Live batches go through {@link fanOut}.
   */
  private deliverBatch(sub: ViewSub, b: Batch): void {
    if (b.version <= sub.version) return; // already in the snapshot (or sent)
    sub.version = b.version;
    const out: LiveChange[] = [];
    const byKey = sub.request.key !== undefined ? keyString(sub.request.key) : undefined;
    for (const c of b.changes) {
      if (byKey !== undefined && keyString(c.key) !== byKey) continue;
      const matches = c.op === 'upsert' && c.row !== undefined && (byKey !== undefined || sub.filterColumns.every(([col, v]) => String(c.row![col]) === v));
      out.push(matches && this.visible(sub.conn, sub.feed.name, c.row!) ? c : { op: 'delete', key: c.key });
    }
    if (out.length === 0) return;
    sub.conn.send({ type: 'change', sub: sub.id, version: b.version, changes: out }, sub.id);
  }

  /**
   * A live batch to every subscription it concerns, found through the feed's indexes (not by
   * trying every subscription): key subscriptions of its keys, filter groups its rows match
   * now, and groups they matched before (those get a delete). Each change is serialised once,
   * whoever it goes to.
   */
  private fanOut(feed: ViewFeed, b: Batch): void {
    const out = new Map<ViewSub, LiveChange[]>();
    const live = (sub: ViewSub) => !sub.joining && b.version > sub.version;
    const push = (sub: ViewSub, c: LiveChange) => {
      let list = out.get(sub);
      if (!list) out.set(sub, (list = []));
      list.push(c);
    };
    for (const c of b.changes) {
      const k = keyString(c.key);
      const row = c.op === 'upsert' ? c.row : undefined;
      let gone: LiveChange | undefined;
      const deleted = () => (gone ??= c.op === 'delete' ? c : { op: 'delete', key: c.key });
      const byKey = feed.byKey.get(k);
      if (byKey) for (const sub of byKey) if (live(sub)) push(sub, row && this.visible(sub.conn, feed.name, row) ? c : deleted());
      const matched = row ? feed.matching(row) : NO_GROUPS;
      const before = feed.placed.get(k) ?? NO_GROUPS;
      if (matched.length === 0 && before.length === 0 && feed.resuming.size === 0) continue;
      let upserted: Set<ViewSub> | undefined;
      for (const g of matched) {
        for (const sub of g.subs) {
          if (!live(sub) || !this.visible(sub.conn, feed.name, row!)) continue;
          push(sub, c);
          (upserted ??= new Set()).add(sub);
        }
      }
      // Where the row was and is no longer (or is no longer visible): a delete.
      for (const g of before) for (const sub of g.subs) if (live(sub) && !upserted?.has(sub)) push(sub, deleted());
      for (const sub of feed.resuming) if (live(sub) && !upserted?.has(sub) && !before.includes(sub.group!)) push(sub, deleted());
      feed.place(k, before, matched);
    }
    if (out.size === 0) return;
    const now = Date.now();
    const json = new Map<LiveChange, string>();
    let sent = 0;
    for (const [sub, changes] of out) {
      let body = '';
      for (const c of changes) {
        let j = json.get(c);
        if (j === undefined) json.set(c, (j = JSON.stringify(c)));
        body = body === '' ? j : `${body},${j}`;
      }
      sub.version = b.version;
      const text = `{"type":"change","sub":${JSON.stringify(sub.id)},"version":${b.version},"changes":[${body}]}`;
      if (sub.conn.send({ type: 'change', sub: sub.id, version: b.version, changes }, sub.id, text)) sent++;
    }
    if (b.eventMs !== undefined && sent > 0) this.d.metrics.livePushLatency.observe(Math.max(0, (now - b.eventMs) / 1000), sent);
  }

  private onFeed(msg: LiveFeedMessage): void {
    const prev = this.chain.get(msg.projection);
    const gap = msg.reset === true || msg.partial === true || (prev !== undefined && msg.prev !== prev);
    this.chain.set(msg.projection, msg.checkpoint);
    for (const view of this.d.views.all()) {
      if (view.projection.name !== msg.projection) continue;
      const feed = this.feeds.get(view.name)!;
      try {
        this.onViewFeed(feed, msg, gap);
      } catch (err) {
        // Whatever it was, this batch may not have reached every subscriber: start them afresh.
        this.d.log.warn({ err, view: view.name, checkpoint: msg.checkpoint }, 'live changes not applied; resynchronising the subscribers of the view');
        feed.buffer = [];
        feed.size = 0;
        feed.coveredFrom = feed.heardFrom = msg.checkpoint;
        this.resync(feed);
      }
    }
  }

  private onViewFeed(feed: ViewFeed, msg: LiveFeedMessage, gap: boolean): void {
    if (gap || feed.coveredFrom === undefined) {
      feed.buffer = [];
      feed.size = 0;
      feed.coveredFrom = feed.heardFrom = msg.reset || msg.partial ? msg.checkpoint : msg.prev;
      if (gap) this.resync(feed);
      else {
        // The first message heard: a live subscription whose snapshot is older than the batch
        // it follows missed the batches between (see goLive).
        for (const sub of feed.subs) if (!sub.joining && sub.version < feed.heardFrom) this.resync(feed, sub);
      }
    }
    const changes = msg.views[feed.name];
    if (!changes || changes.length === 0) return;
    const batch: Batch = { version: msg.checkpoint, changes, ...(msg.eventTime ? { eventMs: Date.parse(msg.eventTime) } : {}) };
    feed.buffer.push(batch);
    feed.size += changes.length;
    for (const sub of feed.joining) sub.pending.push(batch);
    this.fanOut(feed, batch);
    // Drop whole batches: "every change after coveredFrom is here" must stay true.
    while (feed.size > this.o.bufferPerView && feed.buffer.length > 0) {
      const dropped = feed.buffer.shift()!;
      feed.size -= dropped.changes.length;
      feed.coveredFrom = dropped.version;
    }
  }

  /** Changes may have been missed (or a rebuild replaced the rows): send every live subscriber (or one) a fresh snapshot. */
  private resync(feed: ViewFeed, only?: ViewSub): void {
    for (const sub of only ? [only] : [...feed.subs]) {
      if (sub.joining) {
        // Its snapshot may predate what this gap hides: take a fresh one once it is live.
        sub.stale = true;
        continue;
      }
      sub.joining = true;
      feed.joining.add(sub);
      sub.pending = [];
      sub.resuming = false;
      feed.resuming.delete(sub);
      // An older change still held back for a slow client must not arrive after the new snapshot.
      sub.conn.forget(sub.id);
      void (async () => {
        try {
          const m = sub.request;
          if (m.key !== undefined) {
            const { row, checkpoint } = await this.d.views.row(m.view, String(m.key));
            const rows = row && this.visible(sub.conn, m.view, row) ? [row] : [];
            sub.conn.send({ type: 'snapshot', sub: sub.id, view: m.view, checkpoint, rows, complete: true, fresh: true });
            sub.version = checkpoint;
          } else {
            const page = await this.d.views.page(m.view, m.filter ?? {}, m.limit ?? 500);
            const rows = page.rows.filter((r) => this.visible(sub.conn, m.view, r));
            sub.conn.send({ type: 'snapshot', sub: sub.id, view: m.view, checkpoint: page.checkpoint, rows, complete: page.next === undefined, fresh: true });
            sub.version = page.checkpoint;
            for (const r of rows) feed.placeOne(keyString(r[this.d.views.view(m.view).spec.key]), sub.group!);
          }
          this.goLive(sub);
        } catch (err) {
          // Give up on this subscription rather than buffer for it forever; the client resubscribes.
          sub.conn.subs.delete(sub.id);
          this.unregister(sub);
          sub.conn.error(LiveErrorCode.UNAVAILABLE, `subscription ended: could not resynchronise (${(err as Error).message}); subscribe again`, sub.id);
        }
      })();
    }
  }

  // ---- aggregates ----------------------------------------------------------------------------

  private async subscribeAggregate(conn: Connection, m: SubscribeAggregateMessage): Promise<void> {
    const agg = this.d.aggregates.get(m.aggregate);
    if (!agg) throw new StrandError('UNKNOWN_AGGREGATE', `no aggregate named ${JSON.stringify(m.aggregate)}`);
    if (!isAggregateId(m.aggregateId)) throw new StrandError('BAD_REQUEST', 'aggregateId must be 1-128 characters of [A-Za-z0-9_-]');
    const verdict = checkSubscribe(this.d.access, conn.principal, subscriptionRequest(m));
    if (verdict !== true) return conn.error(LiveErrorCode.FORBIDDEN, verdict, m.id);
    await this.aggregateFeed.start();
    const sub: AggregateSub = {
      kind: 'aggregate',
      conn,
      id: m.id,
      joining: true,
      aggregate: m.aggregate,
      aggregateId: m.aggregateId,
      key: `${m.aggregate}/${m.aggregateId}`,
      version: 0,
      seq: 0,
      queue: [],
      filling: false,
    };
    conn.subs.set(m.id, sub);
    this.aggregateFeed.add(sub);
    this.countSubs(1);

    // Both read after the subscription registered: the head (from the stream's leader) counts
    // every event appended before, which the state (possibly from a replica behind) may lack.
    const [head, current] = await Promise.all([this.d.store.headSeq(m.aggregate, m.aggregateId), this.d.actors.rehydrate(agg, m.aggregateId)]);
    if (m.afterVersion !== undefined && m.afterVersion <= current.version) {
      // Events are never deleted: what the client missed is always there.
      conn.send({ type: 'resumed', sub: m.id, after: m.afterVersion });
      let after = 0;
      for (;;) {
        const page = await this.d.store.load(m.aggregate, m.aggregateId, after, 1000);
        for (const s of page.events) {
          if (s.junk === undefined && s.envelope.version > m.afterVersion && s.seq <= current.seq) {
            conn.send({ type: 'event', sub: m.id, version: s.envelope.version, seq: s.seq, event: s.envelope as unknown as Row });
          }
        }
        if (!page.more || page.events.length === 0) break;
        after = page.events[page.events.length - 1]!.seq;
      }
    } else {
      conn.send({ type: 'state', sub: m.id, aggregate: m.aggregate, id: m.aggregateId, version: current.version, seq: current.seq, state: current.state, fresh: m.afterVersion !== undefined });
    }
    this.aggregateFeed.join(sub, current.version, current.seq, head);
  }

  private deliverEvent(sub: AggregateSub, seq: number, env: EventEnvelope): void {
    if (sub.conn.send({ type: 'event', sub: sub.id, version: env.version, seq, event: env as unknown as Row })) {
      this.d.metrics.livePushLatency.observe(Math.max(0, (Date.now() - Date.parse(env.time)) / 1000));
    }
  }

  private unregister(s: ViewSub | AggregateSub): void {
    s.conn.forget(s.id);
    let removed: boolean;
    if (s.kind === 'view') {
      removed = s.feed.subs.has(s);
      s.feed.remove(s);
    } else {
      removed = this.aggregateFeed.remove(s);
    }
    if (removed) this.countSubs(-1);
  }

  private countSubs(delta: number): void {
    this.subCount += delta;
    this.d.metrics.liveSubscriptions.set(this.subCount);
  }
}
