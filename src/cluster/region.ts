/**
 * The region (Akka Cluster Sharding's word): on every instance, what routes each command to the
 * one instance that owns its aggregate's partition, hosts the partitions this instance owns, and
 * hands them over when the plan moves them.
 *
 * Three doors lead in:
 * - `cmd.<aggregate>.<id>.<Command>`, the public contract, in a queue group: any instance may get
 *   any command, and forwards it when another instance owns its partition;
 * - `strand.cmd.<partition>.…`, subscribed by a partition's owner: where a server-side subject
 *   mapping delivers commands with no hop;
 * - `strand.fwd.<instance>.…`, this instance's own inbox for forwarded commands.
 * A forwarded command keeps its headers and the client's reply subject: the owner answers the
 * client directly.
 * An instance is given partitions only once these doors exist: it joins the cluster announcing
 * `accepting: false`, and {@link Region.start} announces `accepting: true` after subscribing and
 * flushing; the plan leaves out members that are not accepting.
 *
 * A partition here is `remote` (another instance, or nobody, owns it), `acquiring` (its claim is
 * this instance's, and it waits for the previous owner to forward what it held), `active`
 * (commands run here) or `releasing` (commands in progress finish; new ones wait, and go to the
 * next owner with the partition). Commands for a partition without a live owner wait up to
 * `ownerWaitMs`, then get UNAVAILABLE: never a wrong answer. None of this is what keeps the log
 * consistent: every append still carries its expected sequence, and an owner whose append is
 * refused asks the bucket's leader whether it still owns the partition before retrying.
 */
import type { Msg, MsgHdrs, NatsConnection, Subscription } from '@nats-io/nats-core';
import { headers as natsHeaders } from '@nats-io/nats-core';
import type { Logger } from 'pino';
import {
  ALL_COMMANDS,
  CommandHeader,
  forwardInbox,
  forwardSubject,
  handoffDoneSubject,
  parseCommandSubject,
  parseRoutedSubject,
  partitionCommands,
} from '../../subjects/index.js';
import { MOVED, type ActorSystem } from '../actor/system.js';
import { FORWARDED_PRINCIPAL_HEADER, encodePrincipal, forwardedPrincipal } from '../auth/forwarded.js';
import type { CommandHeaders, CommandIntake } from '../commands/intake.js';
import { failed, type CommandReply, type CommandRequest } from '../commands/types.js';
import { ErrorCode } from '../errors.js';
import type { StrandMetrics } from '../observability/metrics.js';
import { plan } from './assignment.js';
import { partitionOf } from './partition.js';
import type { ClusterView } from './view.js';

/** Tuning of the region (documented in docs/configuration.md). */
export interface RegionOptions {
  /** Partitions of the aggregate instances: fixed per deployment. */
  readonly partitions: number;
  /** Queue group of `cmd.>` and of the partitions' subjects. */
  readonly queueGroup: string;
  /** Most commands running on this instance at once; past it the reply is UNAVAILABLE. */
  readonly maxInFlight: number;
  /** How long a command waits for its partition to have an owner before UNAVAILABLE. */
  readonly ownerWaitMs: number;
  /** How long a new owner waits for the previous one to forward what it held. */
  readonly handoffWaitMs: number;
  /** Most commands held for one partition while it has no owner or changes hands. */
  readonly bufferLimit: number;
  /** Longest a handoff waits for the partition's commands in progress. */
  readonly drainTimeoutMs: number;
}

type State = 'remote' | 'acquiring' | 'active' | 'releasing';

/**
 * Told when a partition starts and stops running here: other work owned per partition (the
 * durable command intake) follows the partition's commands. `releasing` is awaited before the
 * partition is handed over, so that work can finish what it started first.
 */
export interface PartitionListener {
  activated(partition: number): void;
  releasing(partition: number): Promise<void>;
}

/** A command on its way through the region. */
interface Entry {
  readonly msg: Msg;
  readonly aggregate: string;
  readonly id: string;
  readonly command: string;
  /** Forwards so far (a bound against two views that disagree bouncing a command). */
  readonly hops: number;
  /** Held by the previous owner during a handoff: runs before the partition's other commands. */
  readonly handoff: boolean;
  /** performance.now() when it reached this instance. */
  readonly t0: number;
  /** Date.now() past which a command still waiting for an owner is answered UNAVAILABLE. */
  readonly deadline: number;
  /** Set when it came over HTTP: its reply goes to the caller, not to a NATS reply subject. */
  readonly resolve?: (reply: CommandReply) => void;
  /** For HTTP: the request already parsed (its issuer may come from a token, not a header). */
  readonly req?: CommandRequest;
}

/** One partition as this instance sees it. */
interface Slot {
  readonly partition: number;
  state: State;
  sub: Subscription | undefined;
  /** Commands running here. */
  running: number;
  /** Commands held while it has no owner, or changes hands (arrival order). */
  waiting: Entry[];
  /** Commands the previous owner held and forwarded during the handoff: they go first. */
  early: Entry[];
  /** The previous owner said it has forwarded everything (possibly before this instance noticed the claim). */
  handoffDone: boolean;
  timer: NodeJS.Timeout | undefined;
  drained: (() => void) | undefined;
}

/**
 * How long a previous owner keeps its subscription to a partition's subject after handing the
 * partition over (forwarding what arrives on it): a server-side mapping delivers there, and the
 * next owner subscribes only once its watcher shows it the new claim.
 */
const LINGER_MS = 1000;

/** Most forwards of one command: beyond, it waits for the views to agree. */
const MAX_HOPS = 4;

const decoder = new TextDecoder();

/** Where each partition is, for `GET /cluster` and the CLI. */
export interface RegionStatus {
  readonly instance: string;
  readonly partitions: number;
  readonly members: readonly { readonly instance: string; readonly roles: readonly string[]; readonly live: boolean; readonly leaving: boolean; readonly accepting: boolean; readonly ready: boolean; readonly host: string; readonly pid: number; readonly owned: number }[];
  /** Owner of each partition (index = partition; null: none). */
  readonly owners: readonly (string | null)[];
  /** This instance's partitions by state. */
  readonly local: { readonly active: number[]; readonly acquiring: number[]; readonly releasing: number[] };
  readonly waiting: number;
  readonly ready: boolean;
}

export class Region {
  private readonly slots: Slot[];
  private clientSub: Subscription | undefined;
  private inbox: Subscription | undefined;
  private running = 0;
  private stopping = false;
  private reconciling: Promise<void> | undefined;
  private again = false;
  private sweeper: NodeJS.Timeout | undefined;
  private offChange: (() => void) | undefined;
  private idle: (() => void) | undefined;
  /** Whether every partition the plan gives this instance is active here (what /health/ready waits for). */
  private readyNow = false;
  /** When a mapping that disagrees with STRAND_PARTITIONS was last logged. */
  private mappingWarned = 0;
  private readonly listeners: PartitionListener[] = [];
  /** Partition subscriptions kept a moment after a handoff, and when each is closed (performance.now()). */
  private readonly lingering = new Map<Subscription, number>();
  /** Subscribed to its doors and announced so: from then on the others may plan partitions for it. */
  private accepting = false;

  constructor(
    private readonly nc: NatsConnection,
    private readonly view: ClusterView,
    private readonly intake: CommandIntake,
    private readonly actors: ActorSystem,
    private readonly o: RegionOptions,
    private readonly metrics: StrandMetrics,
    private readonly log: Logger,
  ) {
    this.slots = Array.from({ length: o.partitions }, (_, partition) => ({
      partition,
      state: 'remote' as State,
      sub: undefined,
      running: 0,
      waiting: [],
      early: [],
      handoffDone: false,
      timer: undefined,
      drained: undefined,
    }));
  }

  /** This instance's ID in the cluster. */
  get instance(): string {
    return this.view.self;
  }

  /** Whether this instance holds its share: every partition the plan gives it is active here. */
  get ready(): boolean {
    return this.readyNow && !this.stopping;
  }

  /** Commands running on this instance. */
  get pending(): number {
    return this.running;
  }

  /** Follows partitions starting and stopping here (add before start). */
  addPartitionListener(l: PartitionListener): void {
    this.listeners.push(l);
  }

  /** Whether a partition's commands run here now. */
  isActive(partition: number): boolean {
    return this.slots[partition]?.state === 'active';
  }

  /** For a refused append: whether the bucket's leader still names this instance as the partition's owner (false also gives it up here). */
  owns(partition: number): Promise<boolean> {
    return this.stillOwns(this.slots[partition]!);
  }

  /**
   * Subscribes to its doors, and only once the server has them announces that it accepts
   * partitions (until then the others plan none for it, forward nothing to it and hand it
   * nothing, however long it has been a member); then takes its share.
   */
  async start(): Promise<void> {
    this.inbox = this.nc.subscribe(forwardInbox(this.view.self), { callback: (err, msg) => (err ? this.log.error({ err }, 'forward inbox failed') : this.fromInbox(msg)) });
    this.clientSub = this.nc.subscribe(ALL_COMMANDS, {
      queue: this.o.queueGroup,
      callback: (err, msg) => (err ? this.log.error({ err }, 'command subscription failed') : this.fromClient(msg)),
    });
    this.offChange = this.view.onChange(() => this.reconcile());
    this.sweeper = setInterval(() => this.expire(), 100);
    this.sweeper.unref();
    await this.nc.flush();
    this.accepting = true;
    this.view.announce({ accepting: true });
    await this.view.beatNow();
    await this.reconcile();
    // Once the view can tell who is dead, the partitions of instances that died before this one started are free.
    setTimeout(() => void this.reconcile(), this.view.settleMs).unref();
  }

  /**
   * A command that came over HTTP, already through intake: run here when this instance owns its
   * partition, else sent to the owner as a NATS request with the same headers, and its reply
   * returned. Waits for an owner like any command.
   */
  submit(req: CommandRequest, body: Uint8Array): Promise<CommandReply> {
    return new Promise<CommandReply>((resolve) => {
      const msg = { subject: '', data: body, headers: headersOf(req), reply: '' } as unknown as Msg;
      this.dispatch({ msg, aggregate: req.aggregate.name, id: req.id, command: req.command, hops: 0, handoff: false, t0: performance.now(), deadline: Date.now() + this.o.ownerWaitMs, resolve, req });
    });
  }

  /**
   * Leaves the cluster without losing or repeating a command: stops taking new commands from
   * `cmd.>`, hands every partition to the instance the plan gives it (commands in progress finish
   * first; those waiting go with the partition), then deletes its membership. Resolves true when
   * every partition was handed over within the drain timeout.
   */
  async stop(): Promise<boolean> {
    if (this.stopping) return true;
    this.stopping = true;
    this.offChange?.();
    clearInterval(this.sweeper);
    this.view.announce({ leaving: true, ready: false });
    await this.view.beatNow();
    if (this.clientSub && !this.clientSub.isClosed()) await this.clientSub.drain().catch(() => undefined);
    await this.reconciling;
    const others = this.candidates().filter((m) => m !== this.view.self);
    const held = this.heldMap();
    for (const s of this.slots) if (s.state !== 'remote') held.set(s.partition, undefined);
    const target = plan(others, this.partitionList(), held);
    const results = await Promise.all(
      this.slots.filter((s) => s.state !== 'remote').map((s) => this.release(s, target.get(s.partition))),
    );
    await this.view.leave();
    // Stragglers forwarded here (or mapped to its partition subjects) before the others saw the
    // new owners: passed on for a moment.
    const lingerEnd = Math.max(0, ...this.lingering.values());
    await new Promise((r) => setTimeout(r, Math.max(200, lingerEnd - performance.now())));
    const lingering = [...this.lingering.keys()];
    this.lingering.clear();
    // Drained, not cut: what the server sent before it saw the unsubscribe is still passed on.
    await Promise.all([this.inbox, ...lingering].map((sub) => sub?.drain().catch(() => undefined)));
    for (const s of this.slots) {
      s.sub?.unsubscribe();
      s.sub = undefined;
      const held = [...s.early, ...s.waiting];
      s.early = [];
      s.waiting = [];
      this.metrics.clusterWaiting.dec(held.length);
      // Held while this instance stopped (it no longer follows the view's changes): passed on
      // to the partition's live owner, as the others know it by now; refused only when none.
      for (const e of held) {
        const owner = this.view.claim(s.partition)?.owner;
        if (owner !== undefined && owner !== this.view.self && this.view.isLive(owner) && e.hops < MAX_HOPS) this.forward(owner, e, String(e.hops + 1));
        else this.answer(e, failed(ErrorCode.UNAVAILABLE, 'this instance is shutting down'));
      }
    }
    const clean = results.every(Boolean) && (await this.settled(this.o.drainTimeoutMs));
    this.updateGauges();
    return clean;
  }

  /** Who owns what, as this instance sees it. */
  status(): RegionStatus {
    const owners = this.slots.map((s) => this.view.claim(s.partition)?.owner ?? null);
    const count = new Map<string, number>();
    for (const o of owners) if (o) count.set(o, (count.get(o) ?? 0) + 1);
    const ids = new Set([...this.view.known(), ...count.keys()]);
    return {
      instance: this.view.self,
      partitions: this.o.partitions,
      members: [...ids].sort().map((id) => {
        const m = this.view.member(id);
        return { instance: id, roles: m?.roles ?? [], live: this.view.isLive(id), leaving: m?.leaving ?? false, accepting: id === this.view.self ? this.accepting : m?.accepting !== false, ready: m?.ready ?? false, host: m?.host ?? '', pid: m?.pid ?? 0, owned: count.get(id) ?? 0 };
      }),
      owners,
      local: {
        active: this.slots.filter((s) => s.state === 'active').map((s) => s.partition),
        acquiring: this.slots.filter((s) => s.state === 'acquiring').map((s) => s.partition),
        releasing: this.slots.filter((s) => s.state === 'releasing').map((s) => s.partition),
      },
      waiting: this.slots.reduce((n, s) => n + s.waiting.length + s.early.length, 0),
      ready: this.ready,
    };
  }

  // ---- the three doors -------------------------------------------------------------------

  private fromClient(msg: Msg): void {
    const s = parseCommandSubject(msg.subject);
    if (!s.ok || !this.intake.registry.has(s.aggregate)) {
      // Not routable: intake says precisely what is wrong, here.
      const r = this.intake.fromSubject(msg.subject, msg.data, headerValues(msg.headers));
      if ('ok' in r) return this.reply(msg, r, s.ok ? s.aggregate : '', s.ok ? s.command : '', performance.now());
    }
    if (!s.ok) return;
    this.dispatch(this.entry(msg, s.aggregate, s.id, s.command, 0, false));
  }

  private fromPartition(msg: Msg): void {
    const r = parseRoutedSubject(msg.subject);
    if (r?.kind !== 'partition') return;
    if (r.partition !== partitionOf(r.aggregate, r.id, this.o.partitions) && Date.now() - this.mappingWarned > 60_000) {
      // Still delivered right (Strand routes by its own hash), at the cost of a hop.
      this.mappingWarned = Date.now();
      this.log.warn({ subject: msg.subject.slice(0, 200), partitions: this.o.partitions }, "the server's subject mapping computed another partition than Strand: are its partition count and STRAND_PARTITIONS the same?");
    }
    this.dispatch(this.entry(msg, r.aggregate, r.id, r.command, 0, false));
  }

  private fromInbox(msg: Msg): void {
    const r = parseRoutedSubject(msg.subject);
    if (!r) return;
    if (r.kind === 'done') return this.handoffDone(r.partition);
    if (r.kind !== 'forward') return;
    const handoff = r.tag === 'h';
    const hops = handoff ? 1 : Number(r.tag);
    if (!Number.isInteger(hops) || hops < 1) return;
    this.dispatch(this.entry(msg, r.aggregate, r.id, r.command, hops, handoff));
  }

  private entry(msg: Msg, aggregate: string, id: string, command: string, hops: number, handoff: boolean): Entry {
    return { msg, aggregate, id, command, hops, handoff, t0: performance.now(), deadline: Date.now() + this.o.ownerWaitMs };
  }

  // ---- routing ---------------------------------------------------------------------------

  private dispatch(e: Entry): void {
    const slot = this.slots[partitionOf(e.aggregate, e.id, this.o.partitions)]!;
    switch (slot.state) {
      case 'active':
        return this.run(slot, e);
      case 'acquiring':
      case 'releasing':
        return this.hold(slot, e);
      case 'remote':
        return this.route(slot, e);
    }
  }

  /** A partition owned elsewhere (or by nobody yet): forward to its live owner, or wait for one. */
  private route(slot: Slot, e: Entry): void {
    // Held by the previous owner for this one: the claim is (or is about to be) this instance's.
    if (e.handoff && !this.stopping) return this.hold(slot, e);
    const owner = this.view.claim(slot.partition)?.owner;
    // Until the view has settled, an owner found in the bucket may be long dead: wait rather than forward into nothing.
    if (owner !== undefined && owner !== this.view.self && this.view.isLive(owner) && this.view.settled && e.hops < MAX_HOPS) return this.forward(owner, e, String(e.hops + 1));
    if (this.stopping && (owner === undefined || owner === this.view.self)) {
      return this.answer(e, failed(ErrorCode.UNAVAILABLE, 'this instance is shutting down'));
    }
    this.hold(slot, e);
  }

  private hold(slot: Slot, e: Entry): void {
    const queue = e.handoff ? slot.early : slot.waiting;
    if (slot.early.length + slot.waiting.length >= this.o.bufferLimit) {
      return this.answer(e, failed(ErrorCode.UNAVAILABLE, `too many commands waiting for partition ${slot.partition} to have an owner (limit ${this.o.bufferLimit})`));
    }
    queue.push(e);
    this.metrics.clusterWaiting.inc();
  }

  private forward(owner: string, e: Entry, tag: string): void {
    if (e.resolve) {
      // From HTTP: a request of our own, its reply handed back to the caller.
      this.nc
        .request(forwardSubject(owner, tag, e.aggregate, e.id, e.command), e.msg.data, { headers: e.msg.headers!, timeout: Math.max(1000, e.deadline - Date.now() + 10_000) })
        .then(
          (m) => e.resolve!(JSON.parse(decoder.decode(m.data)) as CommandReply),
          (err: unknown) => e.resolve!(failed(ErrorCode.UNAVAILABLE, `the owner of this aggregate instance did not answer: ${(err as Error).message}`)),
        );
    } else {
      try {
        this.nc.publish(forwardSubject(owner, tag, e.aggregate, e.id, e.command), e.msg.data, { ...(e.msg.headers ? { headers: e.msg.headers } : {}), ...(e.msg.reply ? { reply: e.msg.reply } : {}) });
      } catch (err) {
        this.log.warn({ err }, 'command not forwarded');
        return this.answer(e, failed(ErrorCode.UNAVAILABLE, 'the command could not be forwarded to the owner of its partition'));
      }
    }
    this.metrics.clusterForwarded.inc();
  }

  /** Runs a command of an active partition here. */
  private run(slot: Slot, e: Entry): void {
    if (this.running >= this.o.maxInFlight) return this.answer(e, failed(ErrorCode.UNAVAILABLE, `overloaded: ${this.running} commands in progress`));
    let req: CommandRequest;
    if (e.req) req = e.req;
    else {
      // Forwarded from another instance: an HTTP command keeps its principal (and so the policy's in-actor check).
      const principal = e.hops > 0 || e.handoff ? forwardedPrincipal(e.msg.headers) : undefined;
      const parsed = this.intake.parse(e.aggregate, e.id, e.command, e.msg.data, headerValues(e.msg.headers), principal ? { principal } : undefined);
      if ('ok' in parsed) return this.answer(e, parsed);
      req = parsed;
    }
    slot.running++;
    this.metrics.commandsInFlight = ++this.running;
    this.actors.execute(req, () => this.stillOwns(slot)).then((reply) => {
      slot.running--;
      this.metrics.commandsInFlight = --this.running;
      if (reply === MOVED) {
        // This instance was paused or cut off past its membership; the log refused its late
        // append. The command goes to the partition's owner now, as if it had just arrived.
        this.log.warn({ partition: slot.partition, aggregate: e.aggregate, id: e.id, commandId: req.commandId }, 'append refused: this instance no longer owns the partition; forwarding the command to its owner');
        this.dispatch({ ...e, deadline: Date.now() + this.o.ownerWaitMs });
      } else this.answer(e, reply);
      if (slot.running === 0) slot.drained?.();
      if (this.running === 0) this.idle?.();
    });
  }

  /** After an append was refused: whether the bucket's leader still names this instance as the partition's owner. */
  private async stillOwns(slot: Slot): Promise<boolean> {
    let claim;
    try {
      claim = await this.view.leaderClaim(slot.partition);
    } catch (err) {
      this.log.warn({ err, partition: slot.partition }, "partition's claim unreadable; carrying on as its owner (the log still checks every append)");
      return true;
    }
    if (claim?.owner === this.view.self) return true;
    if (slot.state === 'active' || slot.state === 'acquiring') this.lost(slot, `the bucket's leader names ${claim?.owner ?? 'nobody'} as its owner`);
    return false;
  }

  private answer(e: Entry, reply: CommandReply): void {
    if (e.resolve) return e.resolve(reply);
    this.reply(e.msg, reply, e.aggregate, e.command, e.t0);
  }

  private reply(msg: Msg, reply: CommandReply, aggregate: string, command: string, t0: number): void {
    const known = this.intake.registry.get(aggregate)?.commands.has(command) === true;
    // Unknown names are not labels: a hostile sender must not grow the metric without bound.
    this.metrics.command(known ? aggregate : '_invalid', known ? command : '_invalid', reply.ok ? (reply.duplicate ? 'duplicate' : 'ok') : reply.error.code, (performance.now() - t0) / 1000);
    if (!msg.reply) return; // fire-and-forget
    try {
      msg.respond(JSON.stringify(reply));
    } catch (err) {
      this.log.warn({ err }, 'reply not sent');
    }
  }

  /** Answers UNAVAILABLE to commands that waited too long for an owner. */
  private expire(): void {
    const now = Date.now();
    for (const s of this.slots) {
      if (s.waiting.length === 0 && s.early.length === 0) continue;
      if (s.state === 'active') continue;
      for (const list of [s.waiting, s.early]) {
        if (list.length === 0 || list[0]!.deadline > now) continue;
        const keep: Entry[] = [];
        for (const e of list) {
          if (e.deadline > now) keep.push(e);
          else {
            this.metrics.clusterWaiting.dec();
            this.answer(e, failed(ErrorCode.UNAVAILABLE, `partition ${s.partition} of ${e.aggregate}/${e.id} has had no owner for ${this.o.ownerWaitMs} ms; try again`));
          }
        }
        list.length = 0;
        list.push(...keep);
      }
    }
  }

  // ---- ownership -------------------------------------------------------------------------

  /** Compares the plan with what is, and moves partitions; coalesces calls made while it runs. */
  private reconcile(): Promise<void> {
    if (this.reconciling) {
      this.again = true;
      return this.reconciling;
    }
    this.reconciling = (async () => {
      do {
        this.again = false;
        try {
          await this.reconcileOnce();
        } catch (err) {
          this.log.warn({ err }, 'cluster reconciliation failed; trying again at the next change');
        }
      } while (this.again && !this.stopping);
    })().finally(() => (this.reconciling = undefined));
    return this.reconciling;
  }

  private async reconcileOnce(): Promise<void> {
    if (this.stopping) return;
    const me = this.view.self;
    const members = this.candidates();
    const target = plan(members, this.partitionList(), this.heldMap());
    const work: Promise<unknown>[] = [];
    for (const s of this.slots) {
      const claim = this.view.claim(s.partition);
      const mine = claim?.owner === me;
      const wanted = target.get(s.partition);
      if (s.state === 'active') {
        if (!mine) this.lost(s, `its claim names ${claim?.owner ?? 'nobody'}`);
        else if (wanted !== me) work.push(this.release(s, wanted));
      } else if (s.state === 'acquiring') {
        if (!mine) this.lost(s, `its claim names ${claim?.owner ?? 'nobody'}`);
      } else if (s.state === 'remote') {
        if (mine) {
          // Handed to this instance by its previous owner: wait for what it held.
          this.acquire(s, true, claim?.from);
        } else if (wanted === me) {
          if (!claim) work.push(this.take(s, undefined, undefined));
          // Only a healthy observer acts on another looking dead (during a bucket election, everyone does).
          else if (!this.view.isLive(claim.owner) && this.view.trusted) work.push(this.take(s, claim.revision, claim.owner));
          // else: its live owner hands it over when it sees the same plan
        }
      }
    }
    await Promise.all(work);
    // Commands waiting for an owner that now has one go there.
    for (const s of this.slots) {
      if (s.state !== 'remote' || s.waiting.length === 0) continue;
      const owner = this.view.claim(s.partition)?.owner;
      if (owner === undefined || !this.view.isLive(owner) || owner === me) continue;
      const list = s.waiting;
      s.waiting = [];
      this.metrics.clusterWaiting.dec(list.length);
      for (const e of list) this.route(s, e);
    }
    const share = [...target.entries()].filter(([, m]) => m === me).map(([p]) => p);
    this.readyNow = members.includes(me) && share.every((p) => this.slots[p]!.state === 'active');
    this.view.announce({ ready: this.readyNow });
    this.updateGauges();
  }

  private async take(s: Slot, revision: number | undefined, from: string | undefined): Promise<void> {
    if (!(await this.view.take(s.partition, revision))) return;
    if (from !== undefined) {
      this.log.info({ partition: s.partition, from }, 'partition taken over from an owner that is gone');
      this.metrics.clusterHandoffs.labels('takeover').inc();
    }
    this.acquire(s, false, from);
  }

  /** The claim is this instance's: subscribe, and run the partition's commands once the previous owner has forwarded what it held. */
  private acquire(s: Slot, waitForPrevious: boolean, from: string | undefined): void {
    if (s.state !== 'remote') return;
    s.state = 'acquiring';
    s.sub = this.nc.subscribe(partitionCommands(s.partition), {
      queue: this.o.queueGroup,
      callback: (err, msg) => (err ? this.log.error({ err, partition: s.partition }, 'partition subscription failed') : this.fromPartition(msg)),
    });
    // Everything in the stream up to now is what this instance must start from.
    this.actors.passivateWhere((a, id) => partitionOf(a, id, this.o.partitions) === s.partition);
    if (!waitForPrevious) return this.activate(s, 'taken');
    if (s.handoffDone) return this.activate(s, 'handed over');
    if (from === undefined || !this.view.isLive(from)) return this.activate(s, 'previous owner gone');
    s.timer = setTimeout(() => {
      this.log.warn({ partition: s.partition, from, waitedMs: this.o.handoffWaitMs }, 'previous owner did not finish the handoff in time; taking the partition as it is');
      this.activate(s, 'handoff timed out');
    }, this.o.handoffWaitMs);
  }

  private handoffDone(partition: number): void {
    const s = this.slots[partition];
    if (!s) return;
    if (s.state === 'acquiring') this.activate(s, 'handed over');
    else if (s.state === 'remote') s.handoffDone = true; // the claim's change has not reached this instance yet
  }

  private activate(s: Slot, how: string): void {
    if (s.state !== 'acquiring') return;
    clearTimeout(s.timer);
    s.timer = undefined;
    s.handoffDone = false;
    s.state = 'active';
    const held = [...s.early, ...s.waiting];
    s.early = [];
    s.waiting = [];
    this.metrics.clusterWaiting.dec(held.length);
    this.log.debug({ partition: s.partition, how, held: held.length }, 'partition active here');
    if (how === 'handed over') this.metrics.clusterHandoffs.labels('in').inc();
    for (const e of held) this.run(s, e);
    for (const l of this.listeners) {
      try {
        l.activated(s.partition);
      } catch (err) {
        this.log.error({ err, partition: s.partition }, 'partition listener failed');
      }
    }
    void this.reconcile(); // readiness, and anything that changed meanwhile
  }

  /**
   * Hands a partition to `to` (or gives it up when nobody is there): new commands wait, those in
   * progress finish, the claim moves by compare-and-swap, and what waited is forwarded to the
   * new owner ahead of a `done` notice. False when the claim had changed (someone took it).
   */
  private async release(s: Slot, to: string | undefined): Promise<boolean> {
    if (s.state !== 'active' && s.state !== 'acquiring') return true;
    clearTimeout(s.timer);
    s.timer = undefined;
    s.state = 'releasing';
    await Promise.all(this.listeners.map((l) => l.releasing(s.partition).catch((err: unknown) => this.log.error({ err, partition: s.partition }, 'partition listener failed'))));
    const finished = await this.drained(s, this.o.drainTimeoutMs);
    if (!finished) this.log.warn({ partition: s.partition, running: s.running }, 'handoff goes on with commands still running (their appends are checked by the log)');
    const claim = this.view.claim(s.partition);
    let ok = false;
    if (claim?.owner === this.view.self) ok = to !== undefined ? await this.view.transfer(s.partition, to, claim.revision) : await this.view.release(s.partition, claim.revision);
    // Commands a server-side mapping delivers here until the next owner subscribes are forwarded to it.
    if (s.sub) this.linger(s.sub);
    s.sub = undefined;
    this.actors.passivateWhere((a, id) => partitionOf(a, id, this.o.partitions) === s.partition);
    s.state = 'remote';
    const held = [...s.early, ...s.waiting];
    s.early = [];
    s.waiting = [];
    this.metrics.clusterWaiting.dec(held.length);
    if (ok && to !== undefined) {
      for (const e of held) this.forward(to, e, 'h');
      try {
        this.nc.publish(handoffDoneSubject(to, s.partition));
      } catch (err) {
        this.log.warn({ err, partition: s.partition, to }, 'handoff notice not sent; the new owner goes on after its wait');
      }
      this.metrics.clusterHandoffs.labels('out').inc();
      this.log.debug({ partition: s.partition, to, forwarded: held.length }, 'partition handed over');
    } else {
      if (!ok) this.log.warn({ partition: s.partition, to }, 'partition not handed over: its claim had changed');
      for (const e of held) this.route(s, e);
    }
    this.updateGauges();
    return ok || to === undefined;
  }

  /** Keeps a partition subscription for {@link LINGER_MS} more: what arrives is routed as for any partition owned elsewhere. */
  private linger(sub: Subscription): void {
    this.lingering.set(sub, performance.now() + LINGER_MS);
    setTimeout(() => {
      // Drained, not cut: what the server sent before it saw the unsubscribe is still passed on.
      if (this.lingering.delete(sub)) void sub.drain().catch(() => undefined);
    }, LINGER_MS).unref();
  }

  /** The partition is not this instance's any more (taken while it was paused or cut off). */
  private lost(s: Slot, why: string): void {
    if (s.state === 'remote') return;
    this.log.warn({ partition: s.partition, why }, 'partition lost: another instance owns it now');
    for (const l of this.listeners) void l.releasing(s.partition).catch((err: unknown) => this.log.error({ err, partition: s.partition }, 'partition listener failed'));
    this.metrics.clusterLost.inc();
    clearTimeout(s.timer);
    s.timer = undefined;
    s.sub?.unsubscribe();
    s.sub = undefined;
    s.state = 'remote';
    this.actors.passivateWhere((a, id) => partitionOf(a, id, this.o.partitions) === s.partition);
    const held = [...s.early, ...s.waiting];
    s.early = [];
    s.waiting = [];
    this.metrics.clusterWaiting.dec(held.length);
    for (const e of held) this.route(s, { ...e, handoff: false });
    this.updateGauges();
  }

  private drained(s: Slot, timeoutMs: number): Promise<boolean> {
    if (s.running === 0) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const t = setTimeout(() => {
        s.drained = undefined;
        resolve(false);
      }, timeoutMs);
      s.drained = () => {
        clearTimeout(t);
        s.drained = undefined;
        resolve(true);
      };
    });
  }

  private settled(timeoutMs: number): Promise<boolean> {
    if (this.running === 0) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const t = setTimeout(() => resolve(false), timeoutMs);
      this.idle = () => {
        clearTimeout(t);
        resolve(true);
      };
    });
  }

  /**
   * The members the plan gives partitions to: live, taking commands, not leaving, and accepting
   * (subscribed to their doors; this instance knows that of itself first-hand).
   */
  private candidates(): string[] {
    return this.view.live('commands').filter((m) => {
      if (m === this.view.self) return this.accepting && !this.stopping;
      const info = this.view.member(m);
      return info !== undefined && !info.leaving && info.accepting !== false;
    });
  }

  private partitionList(): number[] {
    return this.slots.map((s) => s.partition);
  }

  /** Who holds each partition, counting only live holders (a dead one's partitions are free). */
  private heldMap(): Map<number, string | undefined> {
    const held = new Map<number, string | undefined>();
    for (const s of this.slots) {
      const owner = this.view.claim(s.partition)?.owner;
      held.set(s.partition, owner !== undefined && this.view.isLive(owner) ? owner : undefined);
    }
    return held;
  }

  private updateGauges(): void {
    this.metrics.clusterOwned.set(this.slots.filter((s) => s.state === 'active').length);
    this.metrics.clusterMembers.set(this.view.live().length);
  }
}

/** The optional command headers of a message, as intake takes them. */
export function headerValues(h: MsgHdrs | undefined): CommandHeaders {
  return {
    commandId: h?.get(CommandHeader.CommandId) || undefined,
    correlationId: h?.get(CommandHeader.CorrelationId) || undefined,
    causationId: h?.get(CommandHeader.CausationId) || undefined,
    actor: h?.get(CommandHeader.Actor) || undefined,
    expectedVersion: h?.get(CommandHeader.ExpectedVersion) || undefined,
  };
}

/** A parsed request's headers, for sending it on to its owner (its command ID included, so a retry is a duplicate). */
function headersOf(req: CommandRequest): MsgHdrs {
  const h = natsHeaders();
  h.set(CommandHeader.CommandId, req.commandId);
  if (req.correlationId !== undefined) h.set(CommandHeader.CorrelationId, req.correlationId);
  if (req.causationId !== undefined) h.set(CommandHeader.CausationId, req.causationId);
  if (req.issuer) h.set(CommandHeader.Actor, `${req.issuer.type}:${req.issuer.id}`);
  if (req.expectedVersion !== undefined) h.set(CommandHeader.ExpectedVersion, String(req.expectedVersion));
  if (req.principal) h.set(FORWARDED_PRINCIPAL_HEADER, encodePrincipal(req.principal));
  return h;
}
