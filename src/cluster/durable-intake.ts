/**
 * Durable command intake: commands published to `cmdq.<aggregate>.<id>.<Command>` are kept in the
 * work-queue stream `<STREAM>_COMMANDS` until the owner of their partition has processed them,
 * so one published while no instance runs is processed when one starts. The stream's subject
 * transform stores each as `cmdq.<partition>.…` (nats-server computes the partition with the
 * same FNV-1a hash as Strand), and each partition's owner reads only its partition, through a
 * durable consumer. Consumers exist only while their partition has commands to process (on an
 * R3 cluster each is a raft group of its own): the owner opens one when it activates a partition
 * that has a backlog, or when a publish on `cmdq.*.*.*` (a plain subscription: the doorbell)
 * names the partition, and deletes it once the partition has been idle for a while. It stops
 * reading, and leaves the consumer to the next owner, when it hands the partition over.
 *
 * A command runs through the region, as a request-reply command does, under its command ID
 * (`Strand-Command-Id`, else `cmdq-<stream sequence>`): a redelivery is answered by the actor from
 * the command it remembers, so its events are written once. Its outcome is recorded by command ID
 * (the first one stays), and only then is the message acknowledged. Bad input is recorded as its
 * error and terminated, never redelivered; `UNAVAILABLE` is retried after a pause.
 */
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, type ConsumerMessages, type JetStreamManager, type JsMsg, type MsgRequest } from '@nats-io/jetstream';
import type { NatsConnection, Subscription } from '@nats-io/nats-core';
import type { Logger } from 'pino';
import { DURABLE_COMMAND_PREFIX, commandStreamConfig, commandStreamName, durablePartitionCommands, parseDurableCommandSubject, type EventStreamOptions } from '../../subjects/index.js';
import { isCommandId, type CommandIntake } from '../commands/intake.js';
import { failed, type CommandReply } from '../commands/types.js';
import { ErrorCode } from '../errors.js';
import { failpoint } from '../failpoints.js';
import { IncompatibleStream, streamInfo } from '../eventstore/jetstream.js';
import type { StrandMetrics } from '../observability/metrics.js';
import type { OutcomeStore } from './outcomes.js';
import { partitionOf } from './partition.js';
import { headerValues, type PartitionListener, type Region } from './region.js';

/** Settings of the durable intake (documented in docs/configuration.md). */
export interface DurableIntakeOptions extends EventStreamOptions {
  /** STRAND_PARTITIONS: the stream's transform computes the same partitions. */
  readonly partitions: number;
  /** Commands of one partition delivered and not yet acknowledged (the consumer's max_ack_pending). */
  readonly maxPending: number;
  /** How long a delivered command may go unacknowledged before it is delivered again. */
  readonly ackWaitMs: number;
  /** Longest a handoff waits for the partition's durable commands in progress. */
  readonly drainTimeoutMs: number;
}

const NANOS_PER_MS = 1_000_000;
/** Pause before a command answered UNAVAILABLE (or whose outcome could not be recorded) is delivered again. */
const RETRY_DELAY_MS = 500;
/** Pause before a message that reached a partition no longer active here goes back (to the next owner). */
const HANDBACK_DELAY_MS = 100;
/** Pause before a consumer that could not be opened is tried again, doubling after each failure up to the longest. */
const REOPEN_DELAY_MS = 1000;
const REOPEN_DELAY_MAX_MS = 30_000;
/** A partition's consumer with nothing delivered for this long (and nothing pending) is deleted. */
const IDLE_CLOSE_MS = 10_000;
/** How often idle consumers are closed, and partitions without a consumer checked for a backlog whose doorbell was missed. */
const SWEEP_MS = 5_000;
/** Activations within this long are looked at together. */
const SCAN_DELAY_MS = 50;
/** Outcomes of malformed commands: terminated (recorded, never delivered again) rather than acknowledged. */
const MALFORMED: ReadonlySet<string> = new Set([ErrorCode.BAD_REQUEST, ErrorCode.UNKNOWN_AGGREGATE, ErrorCode.UNKNOWN_COMMAND, ErrorCode.VALIDATION_FAILED]);

/**
 * Creates the durable command stream, or checks an existing one: a work queue on
 * `cmdq.*.*.*`. A transform for another partition count is replaced (with a warning: commands
 * already stored keep the partition they were given).
 */
export async function ensureCommandStream(nc: NatsConnection, o: EventStreamOptions & { readonly partitions: number }, log: Logger): Promise<void> {
  const jsm = await jetstreamManager(nc);
  const wanted = commandStreamConfig(o);
  const existing = await streamInfo(jsm, wanted.name);
  if (!existing) {
    await jsm.streams.add(wanted);
    log.info({ stream: wanted.name, replicas: o.replicas, partitions: o.partitions }, 'created durable command stream');
    return;
  }
  const diffs: string[] = [];
  if (existing.retention !== wanted.retention) diffs.push(`retention is ${existing.retention}, need ${wanted.retention}`);
  if (JSON.stringify(existing.subjects) !== JSON.stringify(wanted.subjects)) diffs.push(`subjects are ${JSON.stringify(existing.subjects)}, need ${JSON.stringify(wanted.subjects)}`);
  if (diffs.length > 0) throw new IncompatibleStream(wanted.name, diffs);
  if (existing.subject_transform?.dest !== wanted.subject_transform?.dest) {
    log.warn({ stream: wanted.name, was: existing.subject_transform?.dest, now: wanted.subject_transform?.dest }, 'durable command stream partitions changed: commands stored before keep their old partition');
    await jsm.streams.update(wanted.name, { ...existing, subject_transform: wanted.subject_transform! });
  }
}

/** One partition's durable consumer here. */
interface Lane {
  readonly partition: number;
  active: boolean;
  messages: ConsumerMessages | undefined;
  opening: Promise<void> | undefined;
  retry: NodeJS.Timeout | undefined;
  /** Consecutive failures to open its consumer (the backoff of the next attempt). */
  failures: number;
  /** Commands taken and not yet settled. */
  readonly inFlight: Set<Promise<void>>;
  /** performance.now() of the last command delivered (or of opening). */
  lastAt: number;
  /** Its idle consumer being deleted. */
  closing: Promise<void> | undefined;
  /** A doorbell rang while it was closing: open it again after. */
  rang: boolean;
}

export class DurableIntake implements PartitionListener {
  private readonly lanes = new Map<number, Lane>();
  private readonly stream: string;
  private stopped = false;
  private doorbell: Subscription | undefined;
  private sweeper: NodeJS.Timeout | undefined;
  private scanTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly nc: NatsConnection,
    private readonly region: Region,
    private readonly intake: CommandIntake,
    private readonly outcomes: OutcomeStore,
    private readonly o: DurableIntakeOptions,
    private readonly metrics: StrandMetrics,
    private readonly log: Logger,
  ) {
    this.stream = commandStreamName(o.name);
  }

  private jsm: Promise<JetStreamManager> | undefined;

  /** One manager for the life of the intake, without the account-info request each new one makes. */
  private manager(): Promise<JetStreamManager> {
    return (this.jsm ??= jetstreamManager(this.nc, { checkAPI: false }));
  }

  private consumerName(partition: number): string {
    return `strand_cmdq_p${partition}`;
  }

  /** Listens for publishes (the doorbell) and starts the sweep; call before the region starts. */
  start(): void {
    this.doorbell = this.nc.subscribe(`${DURABLE_COMMAND_PREFIX}.*.*.*`, {
      callback: (err, msg) => (err ? this.log.error({ err }, 'durable command doorbell failed') : this.ring(msg.subject)),
    });
    this.sweeper = setInterval(() => void this.sweep(), SWEEP_MS);
    this.sweeper.unref();
  }

  activated(partition: number): void {
    if (this.stopped) return;
    let lane = this.lanes.get(partition);
    if (!lane) {
      lane = { partition, active: false, messages: undefined, opening: undefined, retry: undefined, failures: 0, inFlight: new Set(), lastAt: 0, closing: undefined, rang: false };
      this.lanes.set(partition, lane);
    }
    if (lane.active) return;
    lane.active = true;
    // Partitions are activated by the dozen (at start, after a takeover): one look at the stream for all of them.
    if (!this.scanTimer) {
      this.scanTimer = setTimeout(() => {
        this.scanTimer = undefined;
        void this.openWaiting();
      }, SCAN_DELAY_MS);
      this.scanTimer.unref();
    }
  }

  /** A command was published: the owner of its partition opens the partition's consumer if it has none. */
  private ring(subject: string): void {
    const t = subject.split('.');
    if (t.length !== 4) return;
    const lane = this.lanes.get(partitionOf(t[1]!, t[2]!, this.o.partitions));
    if (!lane?.active || lane.messages) return;
    // Closing, or opening after finding nothing stored yet: open (again) once that is done.
    if (lane.closing || lane.opening) lane.rang = true;
    else this.open(lane, true);
  }

  /** Deletes idle consumers; opens those of partitions with a backlog and no consumer (a doorbell missed while disconnected). */
  private async sweep(): Promise<void> {
    if (this.stopped) return;
    const now = performance.now();
    for (const lane of this.lanes.values()) {
      if (lane.active && lane.messages && !lane.closing && lane.inFlight.size === 0 && now - lane.lastAt > IDLE_CLOSE_MS) this.close(lane);
    }
    await this.openWaiting();
  }

  /**
   * For every active partition here that is not being read: opens its consumer when commands wait
   * for it, and deletes one a previous owner left idle. Two requests (the stream's count and the
   * consumers) when nothing waits and nothing was left.
   */
  private async openWaiting(): Promise<void> {
    const closed = [...this.lanes.values()].filter((l) => l.active && !l.messages && !l.opening && !l.closing && !l.retry);
    if (closed.length === 0 || this.stopped) return;
    let waiting: number;
    const left = new Map<string, { pending: number }>();
    try {
      const jsm = await this.manager();
      waiting = (await jsm.streams.info(this.stream)).state.messages;
      for (const c of await jsm.consumers.list(this.stream).next()) left.set(c.name, { pending: c.num_pending + c.num_ack_pending });
    } catch {
      return; // the next sweep asks again
    }
    for (const lane of closed) {
      if (!lane.active || lane.messages || lane.opening || lane.closing || this.stopped) continue;
      const c = left.get(this.consumerName(lane.partition));
      if (c && c.pending === 0) this.close(lane);
      else if (c || waiting > 0) this.open(lane, false);
    }
  }

  /** Stops reading an idle partition and deletes its consumer, unless something is pending on it; then looks again for a backlog. */
  private close(lane: Lane): void {
    const messages = lane.messages;
    lane.closing = (async () => {
      const jsm = await this.manager();
      const name = this.consumerName(lane.partition);
      const info = await jsm.consumers.info(this.stream, name);
      if (info.num_pending > 0 || info.num_ack_pending > 0 || lane.inFlight.size > 0) {
        lane.lastAt = performance.now();
        return;
      }
      lane.messages = undefined;
      messages?.stop();
      await jsm.consumers.delete(this.stream, name);
    })()
      .catch((err: unknown) => this.log.warn({ err, partition: lane.partition }, 'idle durable command consumer not deleted'))
      .finally(() => {
        lane.closing = undefined;
        // What was published meanwhile (or stored between the check and the delete) is found here.
        if (lane.active && !lane.messages && !lane.opening && !this.stopped) this.open(lane, this.takeRang(lane));
      });
  }

  private takeRang(lane: Lane): boolean {
    const rang = lane.rang;
    lane.rang = false;
    return rang;
  }

  /** Stops taking the partition's commands and waits (bounded) for those in progress to be recorded. */
  async releasing(partition: number): Promise<void> {
    const lane = this.lanes.get(partition);
    if (!lane) return;
    lane.active = false;
    clearTimeout(lane.retry);
    lane.retry = undefined;
    // An opening or closing under way sees the lane inactive and stops reading itself; the handoff does not wait for it.
    lane.messages?.stop();
    lane.messages = undefined;
    if (lane.inFlight.size === 0) return;
    let timer: NodeJS.Timeout | undefined;
    const finished = await Promise.race([
      Promise.all(lane.inFlight).then(() => true),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(false), this.o.drainTimeoutMs))),
    ]);
    clearTimeout(timer);
    if (!finished) this.log.warn({ partition, inFlight: lane.inFlight.size }, 'durable commands still in progress at handoff; the next owner gets them again (their command IDs keep them from taking effect twice)');
  }

  /** Closes every consumer (the region has released its partitions by now). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.sweeper);
    clearTimeout(this.scanTimer);
    this.doorbell?.unsubscribe();
    await Promise.all([...this.lanes.keys()].map((p) => this.releasing(p)));
  }

  /** Opens the partition's consumer; unless `force`, only when one exists already or the partition has commands waiting. */
  private open(lane: Lane, force: boolean): void {
    clearTimeout(lane.retry);
    lane.retry = undefined;
    lane.opening = this.openConsumer(lane, force)
      .catch((err: unknown) => {
        if (!lane.active || this.stopped) return;
        lane.failures++;
        this.log.warn({ err, partition: lane.partition, failures: lane.failures }, 'durable command consumer not opened; trying again');
        this.reopenLater(lane);
      })
      .finally(() => {
        lane.opening = undefined;
        if (this.takeRang(lane) && lane.active && !lane.messages && !lane.closing && !lane.retry && !this.stopped) this.open(lane, true);
      });
  }

  private reopenLater(lane: Lane): void {
    clearTimeout(lane.retry);
    lane.retry = setTimeout(() => {
      lane.retry = undefined;
      if (lane.active && !this.stopped && !lane.messages && !lane.opening && !lane.closing) this.open(lane, true);
    }, Math.min(REOPEN_DELAY_MAX_MS, REOPEN_DELAY_MS * 2 ** Math.min(lane.failures, 5)));
    lane.retry.unref();
  }

  /**
   * Binds to the partition's durable consumer. One with commands delivered and not acknowledged
   * (its previous owner died or was cut off with them) is recreated: in a work queue what is
   * left in the stream is exactly what was not processed, so the new consumer delivers those at
   * once rather than after their ack wait.
   */
  private async openConsumer(lane: Lane, force: boolean): Promise<void> {
    const jsm = await this.manager();
    const name = this.consumerName(lane.partition);
    const config = {
      durable_name: name,
      description: `Strand durable commands of partition ${lane.partition}`,
      filter_subject: durablePartitionCommands(lane.partition),
      deliver_policy: DeliverPolicy.All,
      ack_policy: AckPolicy.Explicit,
      ack_wait: this.o.ackWaitMs * NANOS_PER_MS,
      max_ack_pending: this.o.maxPending,
    };
    const info = await jsm.consumers.info(this.stream, name).catch((err: unknown) => {
      if ((err as { name?: string }).name === 'ConsumerNotFoundError' || (err as { api_error?: { err_code?: number } }).api_error?.err_code === 10014) return undefined;
      throw err;
    });
    // No consumer, and nothing stored for the partition: nothing to read until a doorbell rings.
    // (nats.js types leave next_by_subj out of getMessage's request, though the server and the call take it.)
    if (!info && !force && !(await jsm.streams.getMessage(this.stream, { next_by_subj: durablePartitionCommands(lane.partition), seq: 0 } as unknown as MsgRequest))) return;
    const same = info && info.num_ack_pending === 0 && info.config.ack_wait === config.ack_wait && info.config.max_ack_pending === config.max_ack_pending && info.config.filter_subject === config.filter_subject;
    if (!same) {
      if (info) {
        await jsm.consumers.delete(this.stream, name);
        if (info.num_ack_pending > 0) this.log.info({ partition: lane.partition, unacknowledged: info.num_ack_pending }, 'durable command consumer recreated to deliver what its previous owner left unacknowledged');
      }
      await jsm.consumers.add(this.stream, config);
    }
    if (!lane.active || this.stopped) return;
    const consumer = await jetstream(this.nc).consumers.get(this.stream, name);
    const messages = await consumer.consume({ max_messages: this.o.maxPending, callback: (m) => this.take(lane, m) });
    if (!lane.active || this.stopped) {
      messages.stop();
      return;
    }
    lane.messages = messages;
    lane.failures = 0;
    lane.lastAt = performance.now();
    void messages.closed().then(
      (err) => this.ended(lane, messages, err),
      (err: unknown) => this.ended(lane, messages, err),
    );
  }

  /** A consumer that ended while its partition is still active here (deleted, its server gone) is opened again. */
  private ended(lane: Lane, messages: ConsumerMessages, err: unknown): void {
    if (lane.messages !== messages || !lane.active || this.stopped) return;
    lane.messages = undefined;
    this.log.warn({ err, partition: lane.partition }, 'durable command consumer ended; opening it again');
    this.reopenLater(lane);
  }

  private take(lane: Lane, m: JsMsg): void {
    // Handed over meanwhile: back to the stream, for the partition's next owner.
    if (!lane.active || !this.region.isActive(lane.partition)) return m.nak(HANDBACK_DELAY_MS);
    lane.lastAt = performance.now();
    const p = this.process(m).catch((err: unknown) => {
      this.log.error({ err, partition: lane.partition, seq: m.seq }, 'durable command failed unexpectedly; delivering it again');
      m.nak(RETRY_DELAY_MS);
    });
    lane.inFlight.add(p);
    void p.finally(() => lane.inFlight.delete(p));
  }

  /** Runs one stored command (synchronously up to the region, so commands reach the actors in stream order), records its outcome, then acknowledges it. */
  private async process(m: JsMsg): Promise<void> {
    const t0 = performance.now();
    const s = parseDurableCommandSubject(m.subject);
    const h = headerValues(m.headers);
    const derived = `cmdq-${m.seq}`;
    let commandId = h.commandId ?? derived;
    let reply: CommandReply;
    if (!s) reply = failed(ErrorCode.BAD_REQUEST, `subject must be cmdq.<aggregate>.<id>.<Command>, stored as ${m.subject.slice(0, 300)}`);
    else if (!isCommandId(commandId)) {
      // Recorded under the ID the sender can still find: the stream sequence its publish was acknowledged with.
      commandId = derived;
      reply = failed(ErrorCode.BAD_REQUEST, 'header Strand-Command-Id must be 1-128 printable ASCII characters');
    } else {
      const parsed = this.intake.parse(s.aggregate, s.id, s.command, m.data, { ...h, commandId });
      reply = 'ok' in parsed ? parsed : await this.region.submit(parsed, m.data);
    }
    // Tests crash here: the command has taken effect, its outcome is not recorded, the message not acknowledged.
    failpoint('intake.beforeRecord');
    const aggregate = s?.aggregate ?? '';
    const command = s?.command ?? '';
    if (!reply.ok && reply.error.code === ErrorCode.UNAVAILABLE) {
      this.metrics.durableCommands.labels('retried').inc();
      return m.nak(RETRY_DELAY_MS);
    }
    let recorded: boolean;
    try {
      recorded = await this.outcomes.record({ ...reply, commandId, aggregate, id: s?.id ?? '', command, recordedAt: new Date().toISOString() });
    } catch (err) {
      this.log.warn({ err, commandId }, 'outcome of a durable command not recorded; delivering it again');
      this.metrics.durableCommands.labels('retried').inc();
      return m.nak(RETRY_DELAY_MS);
    }
    const result = reply.ok ? (reply.duplicate || !recorded ? 'duplicate' : 'ok') : recorded ? reply.error.code : 'duplicate';
    this.metrics.durableCommands.labels(result).inc();
    const known = this.intake.registry.get(aggregate)?.commands.has(command) === true;
    this.metrics.command(known ? aggregate : '_invalid', known ? command : '_invalid', result, (performance.now() - t0) / 1000);
    if (!reply.ok && MALFORMED.has(reply.error.code)) m.term(`${reply.error.code}: ${reply.error.message}`.slice(0, 200));
    else m.ack();
  }
}
