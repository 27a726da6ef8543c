import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, type ConsumerMessages, type JsMsg } from '@nats-io/jetstream';
import { headers, type NatsConnection } from '@nats-io/nats-core';
import type { Logger } from 'pino';
import { CommandHeader, PINNED_GROUP, commandSubject, eventSubject, isAggregateId, parseEventSubject, pinnedGroupConfig, processConsumerName } from '../../subjects/index.js';
import type { ActorSystem } from '../actor/system.js';
import type { CommandReply } from '../commands/types.js';
import { ErrorCode, StrandError } from '../errors.js';
import type { EventEnvelope, EventStore } from '../eventstore/types.js';
import { failpoint } from '../failpoints.js';
import type { StrandMetrics } from '../observability/metrics.js';
import type { DeadlineConsumer, Deadlines, FiredDeadline } from './deadlines.js';
import { HANDLE, INPUT_HANDLED, decidedSteps, inputKey, type InputHandled, type Process, type ProcessInput, type ProcessInstance, type RecordedCommand } from './define.js';
import type { ParkedInputs } from './parked.js';
import { PinWatch, ensurePinnedConsumer } from './pinned.js';
import type { CommandReplyInput } from './types.js';

/** Tuning of the process runtime (STRAND_PROCESS_* in the configuration). */
export interface ProcessRuntimeOptions {
  /** The event stream (STRAND_STREAM). */
  readonly stream: string;
  /** Deliveries of an input that keeps failing (handler throwing, invalid data) before it is parked. */
  readonly maxAttempts: number;
  /** An input not acknowledged within this long is delivered again. */
  readonly ackWaitMs: number;
  /** Input events in hand at once, per process. */
  readonly maxPending: number;
  /** How long a command sent by a process may wait for its reply. */
  readonly commandTimeoutMs: number;
  /** How long the pinned instance may go without pulling before another takes its process inputs over (STRAND_PROCESS_PIN_TTL_MS). */
  readonly pinTtlMs: number;
}

/** An input that will fail however often it is tried: parked after its deliveries. */
export class PoisonInput extends Error {
  constructor(
    readonly reason: string,
    message: string,
  ) {
    super(message);
    this.name = 'PoisonInput';
  }
}

/** Error codes of a command's reply that a re-send may cure: the input is delivered again, never parked for them. */
const TRANSIENT = new Set<string>([ErrorCode.UNAVAILABLE, ErrorCode.CONFLICT]);
const RETRY_DELAY_MS = 500;
const RETRY_DELAY_MAX_MS = 15_000;
/** Replies chained into further commands: past this a process is looping. */
const MAX_CHAIN = 64;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function nanos(ms: number): number {
  return ms * 1_000_000;
}

/**
 * A pull request's lifetime: well inside the pin timeout, so the pinned instance always has a
 * pull waiting and keeps its pin, and at most 10 s.
 */
export function pinnedPullExpiresMs(pinTtlMs: number): number {
  return Math.max(1_000, Math.min(10_000, Math.floor(pinTtlMs / 2)));
}

/**
 * Runs process managers: one durable consumer per process on the event stream (filtered to the
 * events it reacts to), and one on the deadline stream for all of them. Each input is handed to
 * its instance's actor as the internal `Handle` command: the decision is recorded (the process's
 * events and an `InputHandled` holding the commands and deadlines) in one append, and only then
 * are deadlines set or cancelled and commands sent, under IDs derived from the step. A redelivered
 * input finds its step recorded (same command ID: a duplicate) and sends the same effects again,
 * which Strand's command idempotency makes harmless. Replies come back as inputs.
 */
export class ProcessRuntime {
  private readonly byName: ReadonlyMap<string, Process>;
  private readonly consumers: ConsumerMessages[] = [];
  /** Each input consumer's pin, as this instance holds it (released on a graceful stop). */
  private readonly pins = new Map<string, PinWatch>();
  private deadlineConsumer: DeadlineConsumer | undefined;
  private stopping = false;
  private readonly tails = new Map<string, Promise<void>>();
  private readonly inFlight = new Set<Promise<void>>();
  /** Instances whose input failed and awaits redelivery: later inputs of theirs wait (in order per instance). */
  private readonly blocked = new Map<string, { seq: number; until: number }>();

  constructor(
    private readonly nc: NatsConnection,
    readonly processes: readonly Process[],
    private readonly actors: ActorSystem,
    private readonly store: EventStore,
    private readonly deadlines: Deadlines,
    private readonly parked: ParkedInputs,
    private readonly o: ProcessRuntimeOptions,
    private readonly metrics: StrandMetrics,
    private readonly log: Logger,
  ) {
    this.byName = new Map(processes.map((p) => [p.name, p]));
  }

  /** Opens the consumers: input events from now on (a process deployed later does not replay history), and fired deadlines. */
  async start(): Promise<void> {
    const jsm = await jetstreamManager(this.nc);
    const js = jetstream(this.nc);
    for (const p of this.processes) {
      const name = processConsumerName(p.name);
      const filter_subjects = [...p.reactsTo].flatMap(([agg, types]) => types.map((t) => eventSubject(agg, '*', t)));
      const config = {
        durable_name: name,
        filter_subjects,
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.New,
        ack_wait: nanos(this.o.ackWaitMs),
        max_ack_pending: this.o.maxPending,
        max_deliver: -1,
        // One Strand instance at a time receives this process's inputs (see src/processes/pinned.ts).
        ...pinnedGroupConfig(this.o.pinTtlMs),
      };
      // The definition changed what it reacts to, or the consumer predates the pinned group: it keeps its position.
      const { deliver_policy: _ignored, ...changeable } = config;
      const pin = new PinWatch();
      this.pins.set(name, pin);
      const open = async (): Promise<void> => {
        await ensurePinnedConsumer(jsm, this.o.stream, config, changeable, this.log);
        const consumer = await js.consumers.get(this.o.stream, name);
        // Aborts (and is created again below) when the consumer is deleted, rather than waiting for someone to restore it.
        // Pulls of the group: the server pins one instance's pulls and holds the others' until the pin times out.
        const messages = await consumer.consume({ group: PINNED_GROUP, max_messages: this.o.maxPending, abort_on_missing_resource: true, expires: pinnedPullExpiresMs(this.o.pinTtlMs), callback: (m) => this.take(p, m) });
        pin.id = '';
        pin.follow(messages.status());
        this.consumers.push(messages);
        // Deleted from under it, or the connection closed for good: take again unless stopping.
        void messages.closed().then(
          (err) => this.reopen(p.name, messages, err, open),
          (err: unknown) => this.reopen(p.name, messages, err, open),
        );
      };
      await open();
    }
    if (this.processes.length > 0) {
      this.deadlineConsumer = await this.deadlines.consume(
        this.processes.map((p) => p.name),
        (d) => this.fired(d),
        { durable: 'processes', ackWaitMs: this.o.ackWaitMs, maxPending: this.o.maxPending, pinTtlMs: this.o.pinTtlMs },
      );
    }
    this.log.info({ processes: this.processes.map((p) => p.name) }, 'process managers started');
  }

  private reopen(process: string, ended: ConsumerMessages, err: unknown, open: () => Promise<void>): void {
    const i = this.consumers.indexOf(ended);
    if (i >= 0) this.consumers.splice(i, 1);
    if (this.stopping) return;
    this.log.warn({ err, process }, 'process input consumer ended; opening it again');
    setTimeout(() => {
      if (this.stopping) return;
      open().catch((e: unknown) => {
        this.log.error({ err: e, process }, 'process input consumer could not be opened again; retrying');
        this.reopen(process, ended, e, open);
      });
    }, RETRY_DELAY_MS * 2).unref();
  }

  /** Stops taking inputs and lets those in hand finish. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    for (const c of this.consumers) c.stop();
    await this.deadlineConsumer?.stop();
    await Promise.allSettled([...this.inFlight]);
    // Hand the pins over at once rather than after STRAND_PROCESS_PIN_TTL_MS: what was in hand is settled or nak'd.
    const jsm = await jetstreamManager(this.nc).catch(() => undefined);
    if (jsm) await Promise.all([...this.pins].map(([name, pin]) => pin.release(jsm, this.o.stream, name)));
  }

  /** An input event arrived: decoded and correlated here, handled in order per instance. */
  private take(p: Process, m: JsMsg): void {
    if (this.stopping) return m.nak();
    let input: ProcessInput;
    let instanceId: string | undefined;
    try {
      input = { kind: 'event', event: this.toInputEvent(p, m) };
      try {
        instanceId = p.correlate(input.event);
      } catch (err) {
        throw new PoisonInput('PROCESS_HANDLER_FAILED', `correlate threw: ${(err as Error)?.message ?? String(err)}`);
      }
      if (instanceId !== undefined && (typeof instanceId !== 'string' || !isAggregateId(instanceId))) {
        throw new PoisonInput('PROCESS_DECISION_INVALID', `correlate gave ${JSON.stringify(String(instanceId).slice(0, 140))}, not an instance ID (1-128 characters of [A-Za-z0-9_-])`);
      }
    } catch (err) {
      this.track(this.failed(p, m, undefined, err));
      return;
    }
    if (instanceId === undefined) {
      m.ack();
      return;
    }
    const id = instanceId;
    const key = `${p.name}/${id}`;
    const previous = this.tails.get(key) ?? Promise.resolve();
    const run = previous.then(() => this.runEvent(p, id, key, m, input));
    this.tails.set(key, run);
    this.track(run);
    void run.finally(() => {
      if (this.tails.get(key) === run) this.tails.delete(key);
    });
  }

  private track(p: Promise<void>): void {
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p));
  }

  private async runEvent(p: Process, id: string, key: string, m: JsMsg, input: ProcessInput): Promise<void> {
    if (this.stopping) return m.nak();
    const block = this.blocked.get(key);
    if (block && m.seq > block.seq && Date.now() < block.until) {
      // An earlier input of this instance failed and will come again: this one waits for it.
      m.nak(RETRY_DELAY_MS);
      return;
    }
    try {
      await this.handle(p, id, input, undefined);
      if (input.kind === 'event') this.metrics.processLag.labels(p.name).observe(Math.max(0, Date.now() - Date.parse(input.event.time)) / 1000);
      if (block && block.seq === m.seq) this.blocked.delete(key);
      failpoint('process.beforeAck');
      // Not waited for: a lost ack redelivers the input, whose step is then recognised; the instance's next input need not wait.
      m.ack();
    } catch (err) {
      await this.failed(p, m, id, err);
    }
  }

  /** An input that failed: delivered again later, or parked when it is poison and has had its deliveries. */
  private async failed(p: Process, m: JsMsg, id: string | undefined, err: unknown): Promise<void> {
    const deliveries = m.info.deliveryCount;
    if (err instanceof PoisonInput && deliveries >= this.o.maxAttempts) {
      try {
        await this.parked.park({ process: p.name, ...(id !== undefined ? { instanceId: id } : {}), kind: 'event', seq: m.seq, subject: m.subject, reason: err.reason, error: err.message, attempts: deliveries, parkedAt: new Date().toISOString() });
      } catch (e) {
        this.log.warn({ err: e, process: p.name, seq: m.seq }, 'process input not parked; delivering it again');
        m.nak(RETRY_DELAY_MAX_MS);
        return;
      }
      this.metrics.processParked.labels(p.name).inc();
      this.log.error({ process: p.name, id, seq: m.seq, subject: m.subject, reason: err.reason, error: err.message, attempts: deliveries }, 'process input parked');
      if (id !== undefined) this.blocked.delete(`${p.name}/${id}`);
      m.term(`parked: ${err.reason}`);
      return;
    }
    if (id !== undefined) {
      const key = `${p.name}/${id}`;
      const b = this.blocked.get(key);
      if (!b || b.seq >= m.seq || Date.now() >= b.until) this.blocked.set(key, { seq: m.seq, until: Date.now() + 2 * this.o.ackWaitMs + RETRY_DELAY_MAX_MS });
    }
    const delay = Math.min(RETRY_DELAY_MAX_MS, RETRY_DELAY_MS * 2 ** Math.min(deliveries - 1, 5));
    this.log.warn({ err, process: p.name, id, seq: m.seq, deliveries }, 'process input failed; delivering it again');
    m.nak(delay);
  }

  private toInputEvent(p: Process, m: JsMsg): Extract<ProcessInput, { kind: 'event' }>['event'] {
    const s = parseEventSubject(m.subject);
    const source = s && p.sources.get(s.aggregate);
    if (!s || !source) throw new PoisonInput('PROCESS_INPUT_INVALID', `not an event of a source of ${p.name}: ${m.subject}`);
    let env: EventEnvelope;
    try {
      env = JSON.parse(decoder.decode(m.data)) as EventEnvelope;
    } catch {
      throw new PoisonInput('PROCESS_INPUT_INVALID', `${m.subject} at seq ${m.seq} is not JSON`);
    }
    if (typeof env !== 'object' || env === null || typeof env.id !== 'string' || typeof env.time !== 'string' || typeof env.version !== 'number') {
      throw new PoisonInput('PROCESS_INPUT_INVALID', `${m.subject} at seq ${m.seq} is not an event envelope`);
    }
    const type = source.events.get(s.type);
    let data = env.data;
    try {
      if (type && typeof env.schemaVersion === 'number' && env.schemaVersion !== type.version) data = source.upcast(s.type, env.schemaVersion, data);
    } catch (err) {
      throw new PoisonInput('PROCESS_INPUT_INVALID', `${m.subject} at seq ${m.seq}: ${(err as Error).message}`);
    }
    return { aggregate: s.aggregate, aggregateId: s.id, type: s.type, data, seq: m.seq, eventId: env.id, version: env.version, time: env.time };
  }

  /** A deadline fired: an input of its instance (stale ones are ignored by the instance itself). */
  private async fired(d: FiredDeadline): Promise<void> {
    const p = this.byName.get(d.owner);
    if (!p) {
      this.log.warn({ owner: d.owner, id: d.id, deadline: d.name }, 'fired deadline of no process here; dropped');
      return;
    }
    const input: ProcessInput = { kind: 'deadline', deadline: { name: d.name, token: d.token, due: d.due.toISOString(), data: d.data ?? null } };
    try {
      const recorded = await this.handle(p, d.id, input, undefined);
      this.metrics.processDeadlines.labels(p.name, recorded ? 'fired' : 'stale').inc();
    } catch (err) {
      if (err instanceof PoisonInput && d.deliveries >= this.o.maxAttempts) {
        await this.parked.park({ process: p.name, instanceId: d.id, kind: 'deadline', subject: `${d.id}.${d.name}`, reason: err.reason, error: err.message, attempts: d.deliveries, parkedAt: new Date().toISOString(), deadline: { name: d.name, token: d.token, due: d.due.toISOString(), data: d.data ?? null } });
        this.metrics.processParked.labels(p.name).inc();
        this.log.error({ process: p.name, id: d.id, deadline: d.name, reason: err.reason, error: err.message, attempts: d.deliveries }, 'process input parked');
        return;
      }
      throw err;
    }
  }

  /**
   * Hands a parked input to its instance again (after the handler was fixed): its step is
   * recorded and its effects sent, and it leaves the parked list. Resolves `found: false` when
   * there is no such parked input, `ok: false` with the error when it fails again (it stays parked).
   */
  async retryParked(process: string, key: string): Promise<{ found: boolean; ok: boolean; recorded?: boolean; error?: string }> {
    const p = this.byName.get(process);
    const parked = p && (await this.parked.get(process, key));
    if (!p || !parked) return { found: false, ok: false };
    try {
      let id = parked.instanceId;
      let input: ProcessInput;
      if (parked.kind === 'deadline' && parked.deadline) {
        input = { kind: 'deadline', deadline: parked.deadline };
      } else if (parked.kind === 'event' && parked.seq !== undefined) {
        const m = await (await jetstreamManager(this.nc)).streams.getMessage(this.o.stream, { seq: parked.seq });
        if (!m) throw new PoisonInput('PROCESS_INPUT_INVALID', `stream sequence ${parked.seq} is gone`);
        const event = this.toInputEvent(p, { subject: m.subject, seq: m.seq, data: m.data } as unknown as JsMsg);
        input = { kind: 'event', event };
        id ??= p.correlate(event);
      } else {
        throw new PoisonInput('PROCESS_INPUT_INVALID', 'the parked record holds no input');
      }
      if (id === undefined || !isAggregateId(id)) throw new PoisonInput('PROCESS_DECISION_INVALID', 'no instance for this input');
      const recorded = await this.handle(p, id, input, undefined);
      await this.parked.remove(process, key);
      this.log.info({ process, id, key }, 'parked process input retried');
      return { found: true, ok: true, recorded };
    } catch (err) {
      return { found: true, ok: false, error: (err as Error)?.message ?? String(err) };
    }
  }

  /**
   * Records the step an input makes (or finds it recorded: a redelivery) and sends its effects.
   * Resolves true when a step was recorded for it, false when the instance ignored it.
   */
  private async handle(p: Process, id: string, input: ProcessInput, correlationId: string | undefined, depth = 0): Promise<boolean> {
    const key = inputKey(input);
    const reply = await this.actors.execute({
      aggregate: p.aggregate,
      id,
      command: HANDLE,
      data: input,
      commandId: key,
      correlationId: correlationId ?? `${p.name}:${id}`,
      ...(input.kind === 'event' ? { causationId: input.event.eventId } : {}),
      issuer: { type: 'process', id: p.name },
    });
    if (!reply.ok) {
      const e = reply.error;
      if (e.code === ErrorCode.REJECTED) throw new PoisonInput(e.reason ?? 'REJECTED', e.message);
      if (e.code === ErrorCode.INTERNAL) throw new PoisonInput('INTERNAL', e.message);
      throw new StrandError(e.code, `${p.name}/${id}: ${e.message}`);
    }
    if (reply.events.length === 0) return false;
    const last = reply.events[reply.events.length - 1]!;
    failpoint('process.afterRecord');
    // Just decided here: the step is at hand. A duplicate's was decided before (maybe by another process): read it back.
    const decided = reply.duplicate ? undefined : decidedSteps.get(input);
    let step = decided ?? (await this.readStep(p, id, last.seq));
    if (reply.duplicate) step = await this.stillWanted(p, id, step);
    if (!reply.duplicate) {
      this.metrics.processSteps.labels(p.name, input.kind).inc();
      if (step.step === 1) this.metrics.processInstances.labels(p.name, 'started').inc();
      if (step.end) this.metrics.processInstances.labels(p.name, step.end).inc();
    }
    await this.dispatch(p, id, step, correlationId, depth);
    return true;
  }

  /**
   * A recorded step sent again (its input came again): later steps may have re-set or cancelled
   * its deadlines since, and setting or cancelling them again would undo that. Only what the
   * instance still expects is kept: a set whose token is the one pending now, a cancel of a name
   * not pending now. Commands are sent again as recorded (their IDs make that harmless).
   */
  private async stillWanted(p: Process, id: string, step: InputHandled): Promise<InputHandled> {
    if (step.deadlines.set.length === 0 && step.deadlines.cancel.length === 0) return step;
    const now = (await this.actors.rehydrate(p.aggregate, id)).state as ProcessInstance;
    return {
      ...step,
      deadlines: {
        set: step.deadlines.set.filter((d) => now.deadlines[d.name]?.token === d.token),
        cancel: step.deadlines.cancel.filter((n) => now.deadlines[n] === undefined),
      },
    };
  }

  /** The step recorded at `seq` (read through the leader if a replica lags). */
  private async readStep(p: Process, id: string, seq: number): Promise<InputHandled> {
    const events = await this.store.loadThrough(p.name, id, seq - 1, seq);
    const e = events.find((x) => x.seq === seq);
    if (!e || e.envelope.type !== INPUT_HANDLED) throw new StrandError(ErrorCode.INTERNAL, `${p.name}/${id}: no ${INPUT_HANDLED} at seq ${seq}`);
    return e.envelope.data as InputHandled;
  }

  /** Sends a recorded step's effects: deadlines first, then each command in order, each reply handled as an input. */
  private async dispatch(p: Process, id: string, step: InputHandled, correlationId: string | undefined, depth: number): Promise<void> {
    // A step never cancels and sets the same name, so its deadlines go out together.
    await Promise.all([
      ...step.deadlines.cancel.map(async (name) => {
        await this.deadlines.cancel({ owner: p.name, id, name });
        this.metrics.processDeadlines.labels(p.name, 'cancelled').inc();
      }),
      ...step.deadlines.set.map(async (d) => {
        await this.deadlines.set({ owner: p.name, id, name: d.name }, new Date(d.due), { token: d.token, ...(d.data !== undefined ? { data: d.data } : {}) });
        this.metrics.processDeadlines.labels(p.name, 'set').inc();
      }),
    ]);
    for (const c of step.commands) {
      const reply = await this.send(p, c, step.step, correlationId ?? `${p.name}:${id}`);
      failpoint('process.afterSend');
      if (depth >= MAX_CHAIN) throw new PoisonInput('PROCESS_DECISION_INVALID', `${p.name}/${id}: more than ${MAX_CHAIN} replies chained into further commands`);
      await this.handle(p, id, { kind: 'reply', reply }, correlationId, depth + 1);
    }
  }

  /** Sends one command (request-reply on its subject, under its step's command ID); a transient failure throws. */
  private async send(p: Process, c: RecordedCommand, step: number, correlationId: string): Promise<CommandReplyInput> {
    const h = headers();
    h.set(CommandHeader.CommandId, c.commandId);
    h.set(CommandHeader.CorrelationId, correlationId.slice(0, 128));
    h.set(CommandHeader.CausationId, c.commandId);
    h.set(CommandHeader.Actor, c.actor);
    let reply: CommandReply;
    try {
      const m = await this.nc.request(commandSubject(c.aggregate, c.id, c.command), encoder.encode(JSON.stringify(c.data)), { timeout: this.o.commandTimeoutMs, headers: h });
      reply = JSON.parse(decoder.decode(m.data)) as CommandReply;
    } catch (err) {
      this.metrics.processCommands.labels(p.name, 'failed').inc();
      throw new StrandError(ErrorCode.UNAVAILABLE, `${p.name}: command ${c.commandId} (${c.aggregate}/${c.id} ${c.command}) got no reply: ${(err as Error).message}`);
    }
    const base = { commandId: c.commandId, aggregate: c.aggregate, id: c.id, command: c.command, step };
    if (reply.ok) {
      this.metrics.processCommands.labels(p.name, 'accepted').inc();
      return { ...base, accepted: true };
    }
    if (TRANSIENT.has(reply.error.code)) {
      this.metrics.processCommands.labels(p.name, 'failed').inc();
      throw new StrandError(reply.error.code, `${p.name}: command ${c.commandId} (${c.aggregate}/${c.id} ${c.command}): ${reply.error.message}`);
    }
    this.metrics.processCommands.labels(p.name, 'rejected').inc();
    const code = reply.error.code === ErrorCode.REJECTED ? (reply.error.reason ?? ErrorCode.REJECTED) : reply.error.code;
    return { ...base, accepted: false, code, message: reply.error.message.slice(0, 500) };
  }
}
