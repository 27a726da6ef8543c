/**
 * What an instance knows of the cluster, kept in one NATS KV bucket (`<STREAM>_cluster`, R3 on
 * a cluster): who is a member (`m.<instance>`, put again every heartbeat) and who owns each
 * partition (`p.<partition>`, changed only by compare-and-swap on its revision).
 *
 * Liveness is observed, not declared: a member is live while its key keeps changing, as this
 * instance's own monotonic clock sees it, so no two clocks are compared and a server's TTL is not
 * relied on (it is not honoured on every replica of an R3 bucket, nats-server #3653, #4754). A
 * member that stops heartbeating (killed, paused, cut off) is dead to the others after
 * `memberTtlMs`; one that leaves deletes its key and is gone at once. An instance trusts its
 * own judgement of the others only while it is itself healthy: its heartbeats acknowledged for
 * a whole TTL, and its own key seen coming back through its watcher. While the bucket elects a
 * leader nobody can heartbeat, and everyone looks dead to everyone: then nobody takes anything
 * over, and the owners go on (the log still checks every append).
 *
 * A partition is owned only through its claim; a claim is valid only while its owner is live.
 * Claims change hands by compare-and-swap, so two instances can never both take the same free
 * partition. None of this is what keeps the event log consistent (every append carries its
 * expected sequence): ownership buys warm actors, no conflicts, and per-aggregate order.
 */
import { DeliverPolicy, jetstream, jetstreamManager, type ConsumerMessages, type JsMsg } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Logger } from 'pino';
import { NotReadyYet } from '../nats/connect.js';

/** A member as it announces itself. */
export interface MemberInfo {
  readonly instance: string;
  /** STRAND_ROLES of the instance. */
  readonly roles: readonly string[];
  readonly startedAt: string;
  readonly pid: number;
  readonly host: string;
  /** Projections whose runner this instance runs now. */
  readonly projections: readonly string[];
  /** Whether it has its share of the partitions (what its /health/ready says). */
  readonly ready: boolean;
  /**
   * Its region is subscribed to the subjects forwarded commands and handoff notices come in on:
   * only then do the others plan partitions for it. False from joining until then (absent, from
   * an instance older than this field: taken as true).
   */
  readonly accepting?: boolean;
  /** Shutting down: it hands its partitions over and takes none (the others leave it out of the plan). */
  readonly leaving: boolean;
  /** The identity of the read model database it applies projections to (projections are shared only on one database). */
  readonly database?: string;
}

/** A partition's claim: its owner and the revision a compare-and-swap must name. */
export interface Claim {
  readonly owner: string;
  readonly revision: number;
  /** The owner that handed it over, when it was handed over rather than taken. */
  readonly from?: string;
}

/** Settings of the cluster view. */
export interface ClusterViewOptions {
  /** The KV bucket (created when missing). */
  readonly bucket: string;
  readonly replicas: number;
  /** How often this instance puts its member key. */
  readonly heartbeatMs: number;
  /** A member whose key has not changed for this long is dead. */
  readonly memberTtlMs: number;
}

const MEMBER = 'm.';
const PARTITION = 'p.';
const decoder = new TextDecoder();

interface Seen {
  info: MemberInfo;
  /** performance.now() when its key last changed here. */
  at: number;
  /** The revision (stream sequence) of its key when it last changed here. */
  revision: number;
}

/**
 * The instance's view of membership and claims, fed by an ordered consumer on the bucket's
 * stream, and its heartbeat. `onChange` fires (coalesced to one call per tick) whenever the live
 * members or the claims change.
 */
export class ClusterView {
  private readonly members = new Map<string, Seen>();
  private readonly claims = new Map<number, Claim>();
  private watcher: ConsumerMessages | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private liveness: NodeJS.Timeout | undefined;
  private lastLive: string = '';
  private changed = false;
  private readonly listeners = new Set<() => void>();
  /** performance.now() of the last heartbeat the server acknowledged. */
  private lastBeat = 0;
  /** performance.now() of the last heartbeat that failed. */
  private lastFailure = -Infinity;
  private lastError: unknown;
  /** performance.now() when this instance's own member key last came back through the watcher. */
  private seenSelf = 0;
  private beating: Promise<void> | undefined;
  /** A watcher being replaced (see {@link check}). */
  private rewatching: Promise<void> | undefined;
  /** performance.now() when the current watcher was started. */
  private watchedAt = 0;
  private stopped = false;
  /** Resolves once the watcher has delivered everything the bucket held when it started. */
  private loaded!: Promise<void>;
  private isLoaded = false;
  /** performance.now() when the view was opened. */
  private readonly openedAt = performance.now();
  private me: MemberInfo;

  private constructor(
    private readonly nc: NatsConnection,
    private readonly kv: KV,
    private readonly o: ClusterViewOptions,
    me: MemberInfo,
    private readonly log: Logger,
    private readonly onBeat?: (ok: boolean) => void,
  ) {
    this.me = me;
  }

  /** Opens (creates) the bucket, loads what it holds, and starts heartbeating. */
  static async open(nc: NatsConnection, o: ClusterViewOptions, me: MemberInfo, log: Logger, onBeat?: (ok: boolean) => void): Promise<ClusterView> {
    const kv = await new Kvm(nc).create(o.bucket, { history: 1, replicas: o.replicas });
    const view = new ClusterView(nc, kv, o, me, log, onBeat);
    await view.watch();
    await view.loaded;
    // Right after the bucket is created on a cluster, its stream may still be electing a leader
    // (the put answers "no responders"): try a few times before handing the wait back to the caller.
    for (let n = 0; n < 6 && view.lastBeat === 0; n++) {
      if (n > 0) await new Promise((r) => setTimeout(r, 250 * 2 ** (n - 1)));
      await view.beat();
    }
    if (view.lastBeat === 0) {
      view.stop();
      throw new NotReadyYet(`cluster bucket ${o.bucket}: the first heartbeat was not acknowledged`, view.lastError);
    }
    view.heartbeat = setInterval(() => void view.beat(), o.heartbeatMs);
    view.heartbeat.unref();
    view.liveness = setInterval(() => view.check(), Math.max(50, Math.floor(o.heartbeatMs / 4)));
    view.liveness.unref();
    view.check();
    return view;
  }

  /** This instance's ID. */
  get self(): string {
    return this.me.instance;
  }

  /** Calls `fn` (at most once a tick) when live members or claims change; returns the unsubscribe. */
  onChange(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Updates what this instance announces (sent with the next heartbeat). */
  announce(update: Partial<Pick<MemberInfo, 'projections' | 'ready' | 'leaving' | 'database' | 'accepting'>>): void {
    this.me = { ...this.me, ...update };
  }

  /** Sends a heartbeat now (after announcing something the others must see soon; one in flight may carry the old announcement). */
  async beatNow(): Promise<void> {
    await this.beating;
    return this.beat();
  }

  /** Every member this instance knows of, live or not (sorted). */
  known(): string[] {
    return [...this.members.keys()].sort();
  }

  /** Whether this instance's heartbeats are being acknowledged (what the others see of it). */
  get selfLive(): boolean {
    return !this.stopped && performance.now() - this.lastBeat < this.o.memberTtlMs - this.o.heartbeatMs;
  }

  /**
   * Whether this instance may act on the others looking dead: its own heartbeats have been
   * acknowledged for a whole TTL, and its watcher is current (its own key came back recently).
   */
  get trusted(): boolean {
    const now = performance.now();
    return !this.stopped && now - this.lastFailure > this.o.memberTtlMs && now - this.lastBeat < 2 * this.o.heartbeatMs && now - this.seenSelf < 2 * this.o.heartbeatMs + 500;
  }

  /** The live members (sorted), optionally only those with a role. This instance is one until it stops. */
  live(role?: string): string[] {
    const now = performance.now();
    const out: string[] = [];
    for (const [id, s] of this.members) {
      if (id === this.me.instance) {
        if (this.stopped) continue;
      } else if (now - s.at > this.o.memberTtlMs) continue;
      if (role !== undefined && !s.info.roles.includes(role)) continue;
      out.push(id);
    }
    return out.sort();
  }

  /** What a member announced, if it is known. */
  member(id: string): MemberInfo | undefined {
    return this.members.get(id)?.info;
  }

  /**
   * Whether the view has watched long enough to tell the live from the dead: a member found in
   * the bucket at start must heartbeat within one and a half heartbeats to count as live (one
   * killed before this instance started never does), so until then nothing is known of them.
   */
  get settled(): boolean {
    return performance.now() - this.openedAt > this.settleMs;
  }

  /** How long after opening the view is {@link settled}. */
  get settleMs(): number {
    return Math.ceil(1.5 * this.o.heartbeatMs) + 50;
  }

  /** Whether a member is live now. */
  isLive(id: string): boolean {
    if (id === this.me.instance) return !this.stopped;
    const s = this.members.get(id);
    return s !== undefined && performance.now() - s.at <= this.o.memberTtlMs;
  }

  /** A partition's claim as this view has it (the leader may be a moment ahead: see {@link leaderClaim}). */
  claim(partition: number): Claim | undefined {
    return this.claims.get(partition);
  }

  /**
   * Takes a partition that is free (no claim: `seen` undefined) or whose claim's owner is gone
   * (`seen` its revision). False when someone else changed it first.
   */
  async take(partition: number, seen: number | undefined): Promise<boolean> {
    const value = JSON.stringify({ owner: this.me.instance, at: new Date().toISOString() });
    try {
      const revision = seen === undefined ? await this.kv.create(`${PARTITION}${partition}`, value) : await this.kv.update(`${PARTITION}${partition}`, value, seen);
      this.setClaim(partition, { owner: this.me.instance, revision });
      return true;
    } catch (err) {
      this.log.debug({ err, partition }, 'partition not taken: its claim changed');
      return false;
    }
  }

  /** Hands an owned partition to `to` (compare-and-swap on its revision). */
  async transfer(partition: number, to: string, revision: number): Promise<boolean> {
    try {
      const r = await this.kv.update(`${PARTITION}${partition}`, JSON.stringify({ owner: to, at: new Date().toISOString(), from: this.me.instance }), revision);
      this.setClaim(partition, { owner: to, revision: r, from: this.me.instance });
      return true;
    } catch (err) {
      this.log.debug({ err, partition, to }, 'partition not handed over: its claim changed');
      return false;
    }
  }

  /** Gives up an owned partition with nobody to hand it to (compare-and-swap on its revision). */
  async release(partition: number, revision: number): Promise<boolean> {
    try {
      await this.kv.delete(`${PARTITION}${partition}`, { previousSeq: revision });
      this.claims.delete(partition);
      this.changed = true;
      return true;
    } catch (err) {
      this.log.debug({ err, partition }, 'partition not released: its claim changed');
      return false;
    }
  }

  /**
   * A partition's claim as the bucket's leader has it now (the watcher may lag a replica): for
   * deciding, after an append was refused, whether this instance still owns the partition.
   */
  async leaderClaim(partition: number): Promise<Claim | undefined> {
    const jsm = await jetstreamManager(this.nc);
    const m = await jsm.streams.getMessage(`KV_${this.o.bucket}`, { last_by_subj: `$KV.${this.o.bucket}.${PARTITION}${partition}` });
    if (!m) return undefined;
    const op = m.header?.get('KV-Operation');
    if (op === 'DEL' || op === 'PURGE') return undefined;
    try {
      const v = JSON.parse(decoder.decode(m.data)) as { owner?: unknown };
      return typeof v.owner === 'string' ? { owner: v.owner, revision: m.seq } : undefined;
    } catch {
      return undefined;
    }
  }

  /** Leaves: stops heartbeating and deletes the member key, so the others count it gone at once. */
  async leave(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.heartbeat);
    clearInterval(this.liveness);
    await this.beating;
    await this.kv.delete(`${MEMBER}${this.me.instance}`).catch((err: unknown) => this.log.warn({ err }, 'member key not deleted; the others count this instance gone after the member TTL'));
    this.watcher?.stop();
  }

  /** Stops without leaving (tests of a crash; the process exiting does the same). */
  stop(): void {
    this.stopped = true;
    clearInterval(this.heartbeat);
    clearInterval(this.liveness);
    this.watcher?.stop();
  }

  private beat(): Promise<void> {
    this.beating ??= (async () => {
      try {
        await this.kv.put(`${MEMBER}${this.me.instance}`, JSON.stringify(this.me));
        this.lastBeat = performance.now();
        this.onBeat?.(true);
      } catch (err) {
        this.lastError = err;
        this.lastFailure = performance.now();
        this.onBeat?.(false);
        this.log.warn({ err }, 'cluster heartbeat not acknowledged');
      }
    })().finally(() => (this.beating = undefined));
    return this.beating;
  }

  private async watch(): Promise<void> {
    const stream = `KV_${this.o.bucket}`;
    const jsm = await jetstreamManager(this.nc);
    const pending = (await jsm.streams.info(stream)).state.messages;
    let resolveLoaded!: () => void;
    this.loaded = new Promise<void>((r) => (resolveLoaded = r)).then(() => void (this.isLoaded = true));
    if (pending === 0) resolveLoaded();
    const consumer = await jetstream(this.nc).consumers.get(stream, { filter_subjects: [`$KV.${this.o.bucket}.>`], deliver_policy: DeliverPolicy.LastPerSubject });
    const watcher = await consumer.consume({
      callback: (m) => {
        this.apply(m);
        if (m.info.pending === 0) resolveLoaded();
      },
    });
    this.watcher = watcher;
    this.watchedAt = performance.now();
    void watcher.closed().then((err) => {
      if (err && !this.stopped && this.watcher === watcher) this.log.warn({ err }, 'cluster watcher ended');
    });
  }

  /**
   * Replaces a watcher that went quiet. The ordered consumer behind it lives on one server; when
   * that server dies (a node of the cluster killed, often the bucket's leader too), the client
   * may take a long while to notice, and meanwhile this view sees no heartbeat of anyone: every
   * other member looks dead, commands for their partitions wait instead of being forwarded, and
   * nobody takes anything over (this instance does not trust itself while its own key does not
   * come back). Seen on a 3-node cluster after kill -9 of the stream leader: commands stalled for
   * minutes. A new watcher starts from the last value of each key; {@link apply} keeps what it
   * already knew of a member whose key has not changed since.
   */
  private rewatch(): void {
    if (this.rewatching || this.stopped) return;
    const old = this.watcher;
    this.rewatching = (async () => {
      try {
        await this.watch();
        old?.stop();
        this.log.warn({ bucket: this.o.bucket }, 'cluster watcher replaced: it had stopped delivering the bucket’s changes');
      } catch (err) {
        this.log.debug({ err }, 'cluster watcher not replaced yet');
      }
    })().finally(() => (this.rewatching = undefined));
  }

  private apply(m: JsMsg): void {
    const key = m.subject.slice(`$KV.${this.o.bucket}.`.length);
    const op = m.headers?.get('KV-Operation');
    const deleted = op === 'DEL' || op === 'PURGE';
    if (key.startsWith(MEMBER)) {
      const id = key.slice(MEMBER.length);
      const known = this.members.get(id);
      // A replaced watcher delivers each key's last value again: unchanged, it is no sign of life.
      if (known && m.seq <= known.revision) return;
      if (deleted) this.members.delete(id);
      else {
        try {
          // Found at start: it must prove itself with a heartbeat soon (see settled); later: seen now.
          const at = this.isLoaded ? performance.now() : performance.now() - (this.o.memberTtlMs - 1.5 * this.o.heartbeatMs);
          this.members.set(id, { info: m.json<MemberInfo>(), at, revision: m.seq });
          if (id === this.me.instance) this.seenSelf = performance.now();
        } catch {
          return; // not a member record
        }
      }
      this.changed = true;
    } else if (key.startsWith(PARTITION)) {
      const p = Number(key.slice(PARTITION.length));
      if (!Number.isInteger(p)) return;
      if (deleted) {
        // A watcher being replaced may still deliver an older revision.
        if ((this.claims.get(p)?.revision ?? 0) > m.seq) return;
        this.claims.delete(p);
        this.changed = true;
        return;
      }
      try {
        const v = m.json<{ owner?: unknown; from?: unknown }>();
        if (typeof v.owner === 'string') this.setClaim(p, { owner: v.owner, revision: m.seq, ...(typeof v.from === 'string' ? { from: v.from } : {}) });
      } catch {
        // not a claim
      }
    }
  }

  private setClaim(p: number, c: Claim): void {
    const before = this.claims.get(p);
    // The watcher may deliver an older revision after a CAS here already recorded a newer one.
    if (before && before.revision > c.revision) return;
    this.claims.set(p, c);
    this.changed = true;
  }

  /** Liveness moves with time alone: look, and tell the listeners when anything changed. */
  private check(): void {
    // Heartbeats acknowledged that never came back through the watcher: it has gone quiet.
    const now = performance.now();
    if (this.lastBeat - this.seenSelf > 1.5 * this.o.heartbeatMs && now - this.watchedAt > 2 * this.o.heartbeatMs) this.rewatch();
    const live = this.live().join(',');
    if (live !== this.lastLive) {
      this.lastLive = live;
      this.changed = true;
    }
    if (!this.changed) return;
    this.changed = false;
    for (const fn of this.listeners) {
      try {
        fn();
      } catch (err) {
        this.log.error({ err }, 'cluster listener failed');
      }
    }
  }
}
