import type { z } from 'zod';

/** Who issued a command, from the `Strand-Actor` header (`<type>:<id>`). */
export interface Issuer {
  readonly type: string;
  readonly id: string;
}

/** Tracing identifiers carried from a command to every event it produced. */
export interface EventMetadata {
  readonly commandId?: string;
  readonly correlationId?: string;
  readonly causationId?: string;
}

/** What `decide` may know besides the command and the state: never read a clock or I/O. */
export interface CommandContext {
  /** The time the command is decided at; use it instead of `new Date()`. */
  readonly now: Date;
  /** The aggregate instance's ID. */
  readonly aggregateId: string;
  /** The aggregate's version before the command (0 when it has no events). */
  readonly version: number;
  /** Who issued the command, when the `Strand-Actor` header named someone. */
  readonly issuer?: Issuer;
  readonly metadata: EventMetadata;
}

/** What `evolve` may know about the event besides its data. */
export interface EventContext {
  readonly type: string;
  /** The aggregate's version after this event. */
  readonly version: number;
  /** ISO time the event was decided at. */
  readonly time: string;
  readonly issuer?: Issuer;
  readonly metadata: EventMetadata;
}

/** An older schema version's data upgraded one step: `upcast[n]` turns version n into n+1. */
export type Upcaster = (data: any) => unknown;

/** An event type: its zod schema, plus the schema version and upcasters once it has evolved. */
export interface VersionedEvent<S extends z.ZodType = z.ZodType> {
  readonly schema: S;
  /** The current schema version (1 when omitted). Events written now carry it. */
  readonly version: number;
  /** `upcast[n]` upgrades data written at version n to version n + 1. */
  readonly upcast?: Readonly<Record<number, Upcaster>>;
}

/** An event is declared as a bare zod schema (version 1) or a {@link VersionedEvent}. */
export type EventSpec = z.ZodType | VersionedEvent;

/** The data type of an event spec, as written now (after upcasting). */
export type EventData<E> = E extends VersionedEvent<infer S> ? z.infer<S> : E extends z.ZodType ? z.infer<E> : never;

/** An event `decide` asks to append; Strand adds the envelope (id, version, time, metadata). */
export type NewEvent<E extends Record<string, EventSpec>> = {
  [K in keyof E & string]: { readonly type: K; readonly data: EventData<E[K]> };
}[keyof E & string];

/** A business rule said no: a reply with `REJECTED` and this `reason`, never an exception. */
export class Rejection {
  constructor(
    /** The aggregate's own code, in capitals, e.g. `TASK_ALREADY_COMPLETED`. */
    readonly reason: string,
    readonly message: string = reason,
    readonly details?: unknown,
  ) {}
}

/** What `decide` returns: the events to append (possibly none) or a rejection. */
export type Decision<E extends Record<string, EventSpec>> =
  | NewEvent<E>
  | readonly NewEvent<E>[]
  | Rejection;

/** The specification a user writes: the whole domain contract of one aggregate, free of I/O. */
export interface AggregateSpec<
  S,
  C extends Record<string, z.ZodType>,
  E extends Record<string, EventSpec>,
> {
  /** Lower case, `[a-z][a-z0-9-]*`: the `<aggregate>` token of subjects. */
  readonly name: string;
  readonly commands: C;
  readonly events: E;
  readonly initialState: () => S;
  /** One handler per command: decide the events from the command and the current state. */
  readonly decide: {
    readonly [K in keyof C]: (command: z.infer<C[K]>, state: S, ctx: CommandContext) => Decision<E>;
  };
  /** One handler per event type: the state after the event. Must be pure. */
  readonly evolve: {
    readonly [K in keyof E]: (state: S, data: EventData<E[K]>, event: EventContext) => S;
  };
  /** Write a snapshot every N events (default from configuration; 0 disables). */
  readonly snapshotEvery?: number;
  /** How many recent command IDs an instance remembers for idempotency (default 128). */
  readonly rememberCommands?: number;
}
