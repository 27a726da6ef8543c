/**
 * Deadlines of aggregates: a rule names the event that sets a deadline of an instance (due a fixed
 * time after the event), the events that cancel it, and the command sent to the instance when it
 * fires (e.g. the task's `overdue`: set by TaskCreated, cancelled by TaskCompleted and
 * TaskCancelled, MarkOverdue when it fires). The events are read from the event stream through a
 * durable consumer (`strand_deadline_rules`), so a crash between an append and its deadline's
 * `set` only delays the `set`; the fired deadlines through the deadline store's consumer.
 *
 * The command's ID is derived from the deadline's token (the stream sequence of the event that
 * set it), so a fired deadline delivered twice takes effect once. A fire of a deadline that was
 * cancelled as it fired is sent anyway: the aggregate's own rules refuse it (a closed task refuses
 * MarkOverdue with TASK_CLOSED), and a refusal ends the matter. A fire of a deadline since set
 * again (a newer token pending) is dropped here.
 */
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, type ConsumerMessages, type JsMsg } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Logger } from 'pino';
import { eventSubject, parseEventSubject } from '../../subjects/index.js';
import type { CommandHeaders } from '../commands/intake.js';
import type { CommandReply } from '../commands/types.js';
import { ErrorCode } from '../errors.js';
import { PULL_EXPIRES_MS, type DeadlineConsumer, type Deadlines, type FiredDeadline } from './deadlines.js';

/** A deadline an aggregate keeps (see the module's comment). */
export interface AggregateDeadlineRule {
  /** The aggregate (the deadline's owner). */
  readonly aggregate: string;
  /** The deadline's name. */
  readonly name: string;
  /** The event type that sets it, due `afterMs` after the event's time (again, replacing it, if appended again). */
  readonly setOn: string;
  readonly afterMs: number;
  /** Event types that cancel it. */
  readonly cancelOn: readonly string[];
  /** The command sent to the instance when it fires; its body is `{ "dueAt": "<ISO time>" }`. */
  readonly command: string;
}

/** Sends one command to its instance, in-process (the region routes it to the partition's owner). */
export type SubmitCommand = (aggregate: string, id: string, command: string, body: Uint8Array, headers: CommandHeaders) => Promise<CommandReply>;

const DURABLE = 'strand_deadline_rules';
const NANOS_PER_MS = 1_000_000;
const RETRY_DELAY_MS = 1_000;
/** Who the commands sent for deadlines are issued by (`Strand-Actor`). */
export const DEADLINE_ACTOR = 'system:deadlines';
/** Refusals that say the command is wrong, not the moment: sending it again cannot help. */
const FINAL = new Set<string>([ErrorCode.REJECTED, ErrorCode.BAD_REQUEST, ErrorCode.VALIDATION_FAILED, ErrorCode.UNKNOWN_AGGREGATE, ErrorCode.UNKNOWN_COMMAND, ErrorCode.WRONG_VERSION, ErrorCode.FORBIDDEN]);

export class AggregateDeadlines {
  private events: ConsumerMessages | undefined;
  private fired: DeadlineConsumer | undefined;
  private stopping = false;
  private readonly inFlight = new Set<Promise<void>>();
  private readonly tails = new Map<string, Promise<void>>();

  constructor(
    private readonly nc: NatsConnection,
    private readonly deadlines: Deadlines,
    private readonly rules: readonly AggregateDeadlineRule[],
    private readonly submit: SubmitCommand,
    private readonly o: { readonly stream: string; readonly ackWaitMs: number },
    private readonly log: Logger,
  ) {
    for (const r of rules) {
      if (!Number.isInteger(r.afterMs) || r.afterMs < 0) throw new Error(`deadline rule ${r.aggregate}/${r.name}: afterMs must be a non-negative integer, got ${r.afterMs}`);
    }
  }

  /** Opens both consumers. Every instance that takes commands runs them; each event and fire goes to one. */
  async start(): Promise<void> {
    if (this.rules.length === 0 || this.events) return;
    const jsm = await jetstreamManager(this.nc);
    const filters = [...new Set(this.rules.flatMap((r) => [r.setOn, ...r.cancelOn].map((t) => eventSubject(r.aggregate, '*', t))))].sort();
    const config = {
      durable_name: DURABLE,
      description: 'Strand: events that set or cancel aggregates\' deadlines',
      filter_subjects: filters,
      // Every event from the first: turned on for an existing stream, the open instances get their deadlines (past ones fire at once).
      deliver_policy: DeliverPolicy.All,
      ack_policy: AckPolicy.Explicit,
      ack_wait: this.o.ackWaitMs * NANOS_PER_MS,
      max_ack_pending: 256,
      max_deliver: -1,
    };
    try {
      await jsm.consumers.add(this.o.stream, config);
    } catch (err) {
      if ((err as { api_error?: { err_code?: number } }).api_error?.err_code !== 10148) throw err;
      await jsm.consumers.update(this.o.stream, DURABLE, config);
    }
    const consumer = await jetstream(this.nc).consumers.get(this.o.stream, DURABLE);
    this.fired ??= await this.deadlines.consume([...new Set(this.rules.map((r) => r.aggregate))].sort(), (d) => this.fire(d));
    this.events = await consumer.consume({ max_messages: 256, expires: PULL_EXPIRES_MS, callback: (m) => this.take(m) });
    void this.events.closed().then((err) => {
      if (!this.stopping) this.log.warn({ err }, 'deadline rule consumer ended');
    });
  }

  /** Stops taking events and fired deadlines; those in progress finish (their commands included). */
  async stop(): Promise<void> {
    this.stopping = true;
    this.events?.stop();
    await Promise.allSettled([...this.inFlight]);
    await this.fired?.stop();
  }

  private take(m: JsMsg): void {
    if (this.stopping) return m.nak();
    const s = parseEventSubject(m.subject);
    const key = s ? `${s.aggregate}.${s.id}` : m.subject;
    const p = (this.tails.get(key) ?? Promise.resolve()).then(() => this.apply(m)).catch((err: unknown) => this.log.warn({ err, subject: m.subject }, 'deadline rule event not settled; it is delivered again after its ack wait'));
    this.tails.set(key, p);
    this.inFlight.add(p);
    void p.finally(() => {
      this.inFlight.delete(p);
      if (this.tails.get(key) === p) this.tails.delete(key);
    });
  }

  /** Sets or cancels the deadlines an event names, then acknowledges it. */
  private async apply(m: JsMsg): Promise<void> {
    if (this.stopping) return m.nak();
    const s = parseEventSubject(m.subject);
    try {
      for (const r of this.rules) {
        if (!s || r.aggregate !== s.aggregate) continue;
        const ref = { owner: r.aggregate, id: s.id, name: r.name };
        if (r.setOn === s.type) {
          const time = Date.parse((JSON.parse(new TextDecoder().decode(m.data)) as { time?: string }).time ?? '');
          // The event's time, not now: a redelivery, or a start with a backlog, sets the same due time.
          const base = Number.isFinite(time) ? time : m.info.timestampNanos / NANOS_PER_MS;
          await this.deadlines.set(ref, new Date(base + r.afterMs), { token: String(m.seq) });
        } else if (r.cancelOn.includes(s.type)) {
          await this.deadlines.cancel(ref);
        }
      }
    } catch (err) {
      this.log.warn({ err, subject: m.subject, seq: m.seq }, 'deadline of an event not set or cancelled; delivering it again');
      m.nak(RETRY_DELAY_MS);
      return;
    }
    m.ack();
  }

  /** Sends the rule's command for a fired deadline; throws (so it is delivered again) only when trying again may help. */
  private async fire(d: FiredDeadline): Promise<void> {
    const rule = this.rules.find((r) => r.aggregate === d.owner && r.name === d.name);
    if (!rule) {
      this.log.warn({ owner: d.owner, id: d.id, deadline: d.name }, 'fired deadline has no rule; dropped');
      return;
    }
    // Set again since (a newer token waits): this fire is stale.
    const newer = (await this.deadlines.pending(d.owner, d.id)).find((p) => p.name === d.name && p.token !== d.token);
    if (newer) return;
    const body = new TextEncoder().encode(JSON.stringify({ dueAt: d.due.toISOString() }));
    const reply = await this.submit(d.owner, d.id, rule.command, body, { commandId: `deadline-${d.name}-${d.token}`.slice(0, 128), actor: DEADLINE_ACTOR });
    if (reply.ok) return;
    if (FINAL.has(reply.error.code)) {
      this.log.debug({ owner: d.owner, id: d.id, deadline: d.name, code: reply.error.code, reason: reply.error.reason }, 'deadline command refused');
      return;
    }
    throw new Error(`${rule.command} for ${d.owner}/${d.id}: ${reply.error.code} ${reply.error.message}`);
  }
}
