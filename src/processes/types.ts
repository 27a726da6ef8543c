import type { z } from 'zod';
import type { Aggregate } from '../aggregate/define.js';
import type { EventData, EventSpec, NewEvent } from '../aggregate/types.js';

/** A command a process sends: to an aggregate instance, with data its schema accepts. */
export interface ProcessCommand {
  readonly aggregate: string;
  readonly id: string;
  readonly command: string;
  readonly data: unknown;
  /** Who the command is sent as (`Strand-Actor`, `<type>:<id>`); default `process:<process name>`. */
  readonly actor?: string;
}

/** A deadline to set: at a time, or after a duration from the step's `now`. Same name again replaces it. */
export type DeadlineRequest =
  | { readonly name: string; readonly at: Date | string; readonly after?: undefined; readonly data?: unknown }
  | { readonly name: string; readonly after: number; readonly at?: undefined; readonly data?: unknown };

/** What a handler decides: state changes as events, commands to send, deadlines to set or cancel, and whether the process ends. */
export interface ProcessDecision<E extends Record<string, EventSpec> = Record<string, EventSpec>> {
  readonly events?: readonly NewEvent<E>[];
  readonly commands?: readonly ProcessCommand[];
  readonly deadlines?: { readonly set?: readonly DeadlineRequest[]; readonly cancel?: readonly string[] };
  /**
   * Ends the instance: `completed` or `failed`. Its pending deadlines are cancelled, and later
   * inputs (events, replies, deadlines) are ignored.
   */
  readonly end?: 'completed' | 'failed';
}

/** What a handler may know besides its input and state: never read a clock or I/O. */
export interface ProcessContext {
  /** The time the input is handled at. */
  readonly now: Date;
  /** The process instance's ID (what correlation gave). */
  readonly processId: string;
  /** The number of the step being decided (1 for the instance's first). */
  readonly step: number;
}

/** An event a process reacts to, as it reached the process. */
export interface InputEvent<D = unknown> {
  readonly aggregate: string;
  readonly aggregateId: string;
  readonly type: string;
  readonly data: D;
  /** Its EVENTS stream sequence. */
  readonly seq: number;
  /** The event's ID. */
  readonly eventId: string;
  readonly version: number;
  /** ISO time the event was decided at. */
  readonly time: string;
}

/** The reply to a command the process sent, as an input. */
export interface CommandReplyInput {
  readonly commandId: string;
  readonly aggregate: string;
  readonly id: string;
  readonly command: string;
  /** The step that sent it. */
  readonly step: number;
  readonly accepted: boolean;
  /**
   * For a refusal: the aggregate's rejection reason (e.g. `TASK_CLOSED`) when the command was
   * `REJECTED`, otherwise the error code (e.g. `VALIDATION_FAILED`).
   */
  readonly code?: string;
  readonly message?: string;
}

/** A deadline that fired, as an input. */
export interface FiredDeadlineInput {
  readonly name: string;
  /** ISO time it was due. */
  readonly due: string;
  readonly data: unknown;
}

/** The event specs of an aggregate (type level). */
export type EventsOf<A> = A extends Aggregate<any, infer E> ? E : never;

/** A handler of an input. */
export type ProcessHandler<S, I, E extends Record<string, EventSpec>> = (state: S, input: I, ctx: ProcessContext) => ProcessDecision<E>;

/** The specification of a process manager: what it reacts to, how it correlates, its state and handlers. No I/O. */
export interface ProcessSpec<S, Src extends Record<string, Aggregate<any, any>>, E extends Record<string, EventSpec>> {
  /** Lower case, `[a-z][a-z0-9-]*`: its events are `evt.<name>.<instanceId>.<Type>`; must differ from every aggregate's. */
  readonly name: string;
  /** The aggregates whose events it reacts to, keyed by their names (`{ order }`, `{ 'eligibility-check': eligibilityCheck }`). */
  readonly sources: Src;
  /** Maps an input event to the ID of the process instance it belongs to; undefined ignores it. Pure. */
  readonly correlate: (event: InputEvent) => string | undefined;
  /** One handler per event it reacts to, by source aggregate and event type. */
  readonly on: {
    readonly [A in keyof Src]?: {
      readonly [T in keyof EventsOf<Src[A]>]?: ProcessHandler<S, InputEvent<EventData<EventsOf<Src[A]>[T]>>, E>;
    };
  };
  /** Its own event types (state changes), as an aggregate declares them. */
  readonly events: E;
  readonly initialState: () => S;
  readonly evolve: {
    readonly [K in keyof E]: (state: S, data: EventData<E[K]>) => S;
  };
  /** Replies to the commands it sent: accepted, or refused with a code. Absent: replies are ignored. */
  readonly onReply?: ProcessHandler<S, CommandReplyInput, E>;
  /** One handler per deadline name it sets. */
  readonly onDeadline?: { readonly [name: string]: ProcessHandler<S, FiredDeadlineInput, E> };
  /** Write a snapshot every N events (default from configuration). */
  readonly snapshotEvery?: number;
}

/** A zod schema's output type (re-exported for process files). */
export type Infer<T extends z.ZodType> = z.infer<T>;
