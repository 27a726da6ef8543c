import { createHash } from 'node:crypto';
import { z } from 'zod';
import { isAggregateId, isAggregateName } from '../../subjects/index.js';
import type { Aggregate, DecidedEvent, EventType } from '../aggregate/define.js';
import { Rejection, type EventSpec, type VersionedEvent } from '../aggregate/types.js';
import type {
  CommandReplyInput,
  DeadlineRequest,
  FiredDeadlineInput,
  InputEvent,
  ProcessCommand,
  ProcessContext,
  ProcessDecision,
  ProcessSpec,
} from './types.js';

/** Where a process instance is in its life. `new` before its first recorded step. */
export type ProcessStatus = 'new' | 'running' | 'completed' | 'failed';

/** A deadline the instance has set and not yet seen fire or cancelled. */
export interface PendingDeadline {
  readonly due: string;
  /** Identifies this setting of the deadline: a fire carrying another token is stale and ignored. */
  readonly token: string;
}

/**
 * The state of a process instance as stored and served (`GET /aggregates/<process>/<id>`): the
 * user's state plus what the runtime needs to keep effects exactly once.
 */
export interface ProcessInstance<S = unknown> {
  readonly status: ProcessStatus;
  /** Steps recorded so far (one per input that changed anything). */
  readonly step: number;
  /** The process's own state, as its `evolve` built it. */
  readonly state: S;
  readonly deadlines: Readonly<Record<string, PendingDeadline>>;
  /** IDs of commands sent whose replies have not been handled yet. */
  readonly awaiting: readonly string[];
  /** EVENTS stream sequence of the last input event handled: an event at or before it is a redelivery. */
  readonly lastEventSeq: number;
  readonly startedAt: string | null;
  readonly endedAt: string | null;
}

/** An input of a process instance: the data of its internal `Handle` command. */
export type ProcessInput =
  | { readonly kind: 'event'; readonly event: InputEvent }
  | { readonly kind: 'reply'; readonly reply: CommandReplyInput }
  | { readonly kind: 'deadline'; readonly deadline: FiredDeadlineInput & { readonly token: string } };

/** A command as recorded in a step, with the ID it is sent under. */
export interface RecordedCommand extends ProcessCommand {
  readonly commandId: string;
  readonly actor: string;
}

/** A deadline as recorded in a step: when it is due and the token its fire will carry. */
export interface RecordedDeadline {
  readonly name: string;
  readonly due: string;
  readonly token: string;
  readonly data?: unknown;
}

/** The data of `InputHandled`: one input and every decision taken on it, recorded in the same append as the process's events. */
export interface InputHandled {
  readonly input: InputSummary;
  readonly step: number;
  readonly commands: readonly RecordedCommand[];
  readonly deadlines: { readonly set: readonly RecordedDeadline[]; readonly cancel: readonly string[] };
  readonly end: 'completed' | 'failed' | null;
  /** The soonest deadline still pending after this step (for read models: `process_instances`). */
  readonly next: { readonly name: string; readonly due: string } | null;
}

/** What `InputHandled` keeps of its input (the input event itself is in the stream already). */
export interface InputSummary {
  readonly kind: 'event' | 'reply' | 'deadline';
  /** The input's idempotency key: also the ID the step was recorded under. */
  readonly key: string;
  readonly aggregate?: string;
  readonly aggregateId?: string;
  readonly type?: string;
  readonly seq?: number;
  readonly commandId?: string;
  readonly accepted?: boolean;
  readonly code?: string;
  readonly name?: string;
}

/**
 * The step `decide` produced last for an input object (the `Handle` command's data): the
 * runtime reads the step it just recorded from here instead of the store. Only for a reply
 * that is not a duplicate; a duplicate's step is read back from the stream.
 */
export const decidedSteps = new WeakMap<object, InputHandled>();

/** The event type that records a step; no process may declare its own of this name. */
export const INPUT_HANDLED = 'InputHandled';
/** The internal command that hands an input to a process instance (never accepted from outside). */
export const HANDLE = 'Handle';
/** Reasons a step is refused: the input is poison (parked after its deliveries). */
export const ProcessReason = {
  HANDLER_FAILED: 'PROCESS_HANDLER_FAILED',
  DECISION_INVALID: 'PROCESS_DECISION_INVALID',
  INPUT_INVALID: 'PROCESS_INPUT_INVALID',
} as const;

const Str = z.string();
const InputHandledSchema = z.object({
  input: z.object({
    kind: z.enum(['event', 'reply', 'deadline']),
    key: Str,
    aggregate: Str.optional(),
    aggregateId: Str.optional(),
    type: Str.optional(),
    seq: z.number().int().optional(),
    commandId: Str.optional(),
    accepted: z.boolean().optional(),
    code: Str.optional(),
    name: Str.optional(),
  }),
  step: z.number().int().positive(),
  commands: z.array(z.object({ commandId: Str, aggregate: Str, id: Str, command: Str, data: z.unknown(), actor: Str })),
  deadlines: z.object({
    set: z.array(z.object({ name: Str, due: z.iso.datetime(), token: Str, data: z.unknown().optional() })),
    cancel: z.array(Str),
  }),
  end: z.enum(['completed', 'failed']).nullable(),
  next: z.object({ name: Str, due: z.iso.datetime() }).nullable(),
});

/** A defined process manager, as the runtime sees it. */
export interface Process<S = unknown> {
  readonly name: string;
  /** Source aggregate name → the event types it reacts to. */
  readonly reactsTo: ReadonlyMap<string, readonly string[]>;
  /** Source aggregates, by name (their schemas validate input events). */
  readonly sources: ReadonlyMap<string, Aggregate>;
  /** Whether replies to its commands are inputs. */
  readonly handlesReplies: boolean;
  /** Names of the deadlines it has handlers for. */
  readonly deadlineNames: readonly string[];
  /** The instance ID an event belongs to, or undefined. Throws when correlation itself fails. */
  correlate(event: InputEvent): string | undefined;
  /** The process as an aggregate: what the actor system, the event store and the HTTP routes run. */
  readonly aggregate: Aggregate<ProcessInstance<S>>;
  readonly initialState: () => S;
}

/** The command ID a step's i-th command (from 1) is sent under: `<process>:<instanceId>:<step>:<i>`, hashed when longer than 128. */
export function stepCommandId(process: string, instanceId: string, step: number, i: number): string {
  const id = `${process}:${instanceId}:${step}:${i}`;
  if (id.length <= 128) return id;
  return `${process.slice(0, 40)}:${createHash('sha256').update(`${process}:${instanceId}`).digest('hex').slice(0, 40)}:${step}:${i}`;
}

/** The idempotency key of an input: also the ID its step is recorded under. */
export function inputKey(input: ProcessInput): string {
  switch (input.kind) {
    case 'event':
      return `event:${input.event.seq}`;
    case 'reply':
      return `reply:${input.reply.commandId}`.slice(0, 128);
    case 'deadline':
      return `deadline:${input.deadline.name}:${input.deadline.token}`.slice(0, 128);
  }
}

function isVersioned(spec: EventSpec): spec is VersionedEvent {
  return typeof spec === 'object' && spec !== null && 'schema' in spec && !(spec instanceof z.ZodType);
}

/**
 * Declares a process manager with state type `S` (given first, as with defineAggregate): the
 * aggregates whose events it reacts to, correlation, its own events and `evolve`, and pure
 * handlers returning events, commands and deadlines. It touches no I/O; the runtime records
 * each step in one append before sending anything (docs/processes.md).
 */
export function defineProcess<S>() {
  return <Src extends Record<string, Aggregate<any, any>>, E extends Record<string, EventSpec>>(spec: ProcessSpec<S, Src, E>): Process<S> =>
    buildProcess(spec as unknown as ProcessSpec<S, Record<string, Aggregate>, Record<string, EventSpec>>);
}

type AnyHandler<S> = (state: S, input: unknown, ctx: ProcessContext) => ProcessDecision;

function buildProcess<S>(spec: ProcessSpec<S, Record<string, Aggregate>, Record<string, EventSpec>>): Process<S> {
  if (!isAggregateName(spec.name)) throw new Error(`process name ${JSON.stringify(spec.name)} must match [a-z][a-z0-9-]*`);
  const sources = new Map<string, Aggregate>();
  const reactsTo = new Map<string, string[]>();
  const handlers = new Map<string, AnyHandler<S>>();
  for (const [key, agg] of Object.entries(spec.sources)) {
    if (agg.name !== key) throw new Error(`process ${spec.name}: source ${JSON.stringify(key)} must be keyed by its name ${JSON.stringify(agg.name)}`);
    if (agg.name === spec.name) throw new Error(`process ${spec.name} has the name of an aggregate`);
    sources.set(key, agg);
  }
  for (const [aggName, byType] of Object.entries(spec.on as Record<string, Record<string, AnyHandler<S>> | undefined>)) {
    const agg = sources.get(aggName);
    if (!agg) throw new Error(`process ${spec.name}: handlers for ${aggName}, which is not among its sources`);
    const types: string[] = [];
    for (const [type, h] of Object.entries(byType ?? {})) {
      if (!agg.events.has(type)) throw new Error(`process ${spec.name}: aggregate ${aggName} has no event ${type}`);
      if (typeof h !== 'function') continue;
      handlers.set(`${aggName}.${type}`, h);
      types.push(type);
    }
    if (types.length > 0) reactsTo.set(aggName, types);
  }
  if (reactsTo.size === 0) throw new Error(`process ${spec.name} reacts to no event`);

  const events = new Map<string, EventType>();
  for (const [name, es] of Object.entries(spec.events)) {
    if (name === INPUT_HANDLED) throw new Error(`process ${spec.name}: ${INPUT_HANDLED} is the runtime's own event type`);
    if (!/^[A-Za-z][A-Za-z0-9]*$/.test(name)) throw new Error(`event type ${name} must be alphanumeric`);
    const v: EventType = isVersioned(es) ? { name, schema: es.schema, version: es.version, upcast: es.upcast ?? {} } : { name, schema: es as z.ZodType, version: 1, upcast: {} };
    for (let from = 1; from < v.version; from++) {
      if (typeof v.upcast[from] !== 'function') throw new Error(`event ${name} is at version ${v.version} but has no upcaster from version ${from}`);
    }
    if (typeof (spec.evolve as Record<string, unknown>)[name] !== 'function') throw new Error(`process ${spec.name}: no evolve handler for event ${name}`);
    events.set(name, v);
  }
  events.set(INPUT_HANDLED, { name: INPUT_HANDLED, schema: InputHandledSchema, version: 1, upcast: {} });
  const evolveUser = spec.evolve as Record<string, (s: S, d: unknown) => S>;
  const onReply = spec.onReply as AnyHandler<S> | undefined;
  const onDeadline = (spec.onDeadline ?? {}) as Record<string, AnyHandler<S>>;

  const hash = createHash('sha256');
  hash.update(`process\0${spec.name}\0${String(spec.initialState)}`);
  for (const [name, ev] of [...events].sort(([a], [b]) => a.localeCompare(b))) {
    hash.update(`\0${name}@${ev.version}\0${String(evolveUser[name] ?? 'runtime')}`);
  }
  const fingerprint = hash.digest('hex').slice(0, 32);

  const initialInstance = (): ProcessInstance<S> => ({
    status: 'new',
    step: 0,
    state: spec.initialState(),
    deadlines: {},
    awaiting: [],
    lastEventSeq: 0,
    startedAt: null,
    endedAt: null,
  });

  /** The decision on one input: the events to append (the process's own, then InputHandled), none when the input changes nothing, or why it is poison. */
  function decideInput(input: ProcessInput, inst: ProcessInstance<S>, now: Date, processId: string): DecidedEvent[] | Rejection {
    if (inst.status === 'completed' || inst.status === 'failed') return [];
    let handler: AnyHandler<S> | undefined;
    let arg: unknown;
    switch (input.kind) {
      case 'event': {
        const e = input.event;
        if (e.seq <= inst.lastEventSeq) return [];
        handler = handlers.get(`${e.aggregate}.${e.type}`);
        const type = sources.get(e.aggregate)?.events.get(e.type);
        if (!handler || !type) return [];
        // The runtime has upcast it to the current schema version; what does not parse is poison.
        const parsed = type.schema.safeParse(e.data);
        if (!parsed.success) return new Rejection(ProcessReason.INPUT_INVALID, `${e.aggregate}.${e.type} at seq ${e.seq} does not match its schema: ${parsed.error.message}`);
        arg = { ...e, data: parsed.data };
        break;
      }
      case 'reply':
        if (!inst.awaiting.includes(input.reply.commandId)) return [];
        handler = onReply;
        arg = input.reply;
        // A reply nobody handles still clears what the instance awaits.
        if (!handler) handler = () => ({});
        break;
      case 'deadline': {
        const d = input.deadline;
        if (inst.deadlines[d.name]?.token !== d.token) return []; // re-set or cancelled since: stale
        handler = onDeadline[d.name] ?? (() => ({}));
        arg = { name: d.name, due: d.due, data: d.data ?? null };
        break;
      }
    }
    const step = inst.step + 1;
    let out: ProcessDecision;
    try {
      out = handler(inst.state, arg, { now, processId, step }) ?? {};
    } catch (err) {
      return new Rejection(ProcessReason.HANDLER_FAILED, `${spec.name} handler threw: ${(err as Error)?.message ?? String(err)}`);
    }
    const decided: DecidedEvent[] = [];
    for (const e of out.events ?? []) {
      const type = events.get(e.type);
      if (!type || e.type === INPUT_HANDLED) return new Rejection(ProcessReason.DECISION_INVALID, `${spec.name} decided an unknown event type ${String(e.type)}`);
      const ok = type.schema.safeParse(e.data);
      if (!ok.success) return new Rejection(ProcessReason.DECISION_INVALID, `${spec.name} decided a ${e.type} that does not match its schema: ${ok.error.message}`);
      decided.push({ type: e.type, data: ok.data });
    }
    const commands: RecordedCommand[] = [];
    for (const c of out.commands ?? []) {
      if (!isAggregateName(c.aggregate) || !isAggregateId(c.id) || !/^[A-Za-z][A-Za-z0-9]*$/.test(c.command)) {
        return new Rejection(ProcessReason.DECISION_INVALID, `${spec.name} decided a command with an invalid address ${JSON.stringify([c.aggregate, c.id, c.command])}`);
      }
      commands.push({
        commandId: stepCommandId(spec.name, processId, step, commands.length + 1),
        aggregate: c.aggregate,
        id: c.id,
        command: c.command,
        data: c.data ?? {},
        actor: c.actor ?? `process:${spec.name}`,
      });
    }
    const set: RecordedDeadline[] = [];
    for (const d of (out.deadlines?.set ?? []) as DeadlineRequest[]) {
      const dueMs = d.at !== undefined ? new Date(d.at).getTime() : now.getTime() + d.after!;
      if (!Number.isFinite(dueMs) || typeof d.name !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(d.name)) {
        return new Rejection(ProcessReason.DECISION_INVALID, `${spec.name} decided an invalid deadline ${JSON.stringify(d.name)}`);
      }
      set.push({ name: d.name, due: new Date(dueMs).toISOString(), token: String(step), ...(d.data !== undefined ? { data: d.data } : {}) });
    }
    const setNames = new Set(set.map((d) => d.name));
    let cancel = [...new Set(out.deadlines?.cancel ?? [])].filter((n) => inst.deadlines[n] !== undefined && !setNames.has(n));
    const end = out.end ?? null;
    if (end) {
      // Ending cancels every deadline still pending (the fired one, if any, is cleared by evolve).
      cancel = [...new Set([...cancel, ...Object.keys(inst.deadlines)])].filter((n) => !setNames.has(n));
      set.length = 0;
    }
    // An event that changes nothing is not recorded (no instance is created for it); a reply or a fire always is (it clears what is awaited).
    const changed = decided.length > 0 || commands.length > 0 || set.length > 0 || cancel.length > 0 || end !== null;
    if (!changed && input.kind === 'event') return [];
    const pending = new Map(Object.entries(inst.deadlines).map(([n, d]) => [n, d.due]));
    if (input.kind === 'deadline') pending.delete(input.deadline.name);
    for (const n of cancel) pending.delete(n);
    for (const d of set) pending.set(d.name, d.due);
    const soonest = end ? undefined : [...pending].sort((a, b) => a[1].localeCompare(b[1]))[0];
    const handled: InputHandled = { input: summarise(input), step, commands, deadlines: { set, cancel }, end, next: soonest ? { name: soonest[0], due: soonest[1] } : null };
    decided.push({ type: INPUT_HANDLED, data: handled });
    return decided;
  }

  const aggregate: Aggregate<ProcessInstance<S>> = {
    name: spec.name,
    commands: new Map([[HANDLE, z.unknown()]]),
    events,
    snapshotEvery: spec.snapshotEvery,
    rememberCommands: 256,
    fingerprint,
    initialState: initialInstance,
    decide(command, data, inst, ctx) {
      if (command !== HANDLE) return new Rejection(ProcessReason.INPUT_INVALID, `a process takes no command ${command}`);
      const out = decideInput(data as ProcessInput, inst, ctx.now, ctx.aggregateId);
      if (typeof data === 'object' && data !== null) {
        const step = Array.isArray(out) ? out.find((e) => e.type === INPUT_HANDLED)?.data : undefined;
        if (step) decidedSteps.set(data, step as InputHandled);
        else decidedSteps.delete(data);
      }
      return out;
    },
    evolve(inst, type, data, event) {
      if (type !== INPUT_HANDLED) {
        const h = evolveUser[type];
        if (!h) throw new Error(`process ${spec.name}: unknown event type ${type}`);
        return { ...inst, state: h(inst.state, data) };
      }
      const d = data as InputHandled;
      const deadlines: Record<string, PendingDeadline> = { ...inst.deadlines };
      if (d.input.kind === 'deadline' && d.input.name !== undefined) delete deadlines[d.input.name];
      for (const n of d.deadlines.cancel) delete deadlines[n];
      for (const s of d.deadlines.set) deadlines[s.name] = { due: s.due, token: s.token };
      let awaiting = inst.awaiting;
      if (d.input.kind === 'reply' && d.input.commandId !== undefined) awaiting = awaiting.filter((c) => c !== d.input.commandId);
      if (d.commands.length > 0) awaiting = [...awaiting, ...d.commands.map((c) => c.commandId)];
      return {
        status: d.end ?? 'running',
        step: d.step,
        state: inst.state,
        deadlines,
        awaiting: d.end ? [] : awaiting,
        lastEventSeq: d.input.kind === 'event' && d.input.seq !== undefined ? Math.max(inst.lastEventSeq, d.input.seq) : inst.lastEventSeq,
        startedAt: inst.startedAt ?? event.time,
        endedAt: d.end ? event.time : null,
      };
    },
    upcast(type, fromVersion, data) {
      const ev = events.get(type);
      if (!ev) throw new Error(`process ${spec.name}: unknown event type ${type}`);
      if (fromVersion > ev.version) throw new Error(`event ${type} has schema version ${fromVersion}, newer than this code's ${ev.version}`);
      let out = data;
      for (let v = fromVersion; v < ev.version; v++) out = ev.upcast[v]!(out);
      return out;
    },
  };

  return {
    name: spec.name,
    reactsTo,
    sources,
    handlesReplies: onReply !== undefined,
    deadlineNames: Object.keys(onDeadline),
    correlate: (event) => spec.correlate(event),
    aggregate,
    initialState: spec.initialState,
  };
}

function summarise(input: ProcessInput): InputSummary {
  const key = inputKey(input);
  switch (input.kind) {
    case 'event': {
      const e = input.event;
      return { kind: 'event', key, aggregate: e.aggregate, aggregateId: e.aggregateId, type: e.type, seq: e.seq };
    }
    case 'reply': {
      const r = input.reply;
      return { kind: 'reply', key, aggregate: r.aggregate, aggregateId: r.id, type: r.command, commandId: r.commandId, accepted: r.accepted, ...(r.code !== undefined ? { code: r.code } : {}) };
    }
    case 'deadline':
      return { kind: 'deadline', key, name: input.deadline.name };
  }
}
