import { createHash } from 'node:crypto';
import { z } from 'zod';
import { isAggregateName } from '../../subjects/index.js';
import {
  Rejection,
  type AggregateSpec,
  type CommandContext,
  type EventContext,
  type EventSpec,
  type Upcaster,
  type VersionedEvent,
} from './types.js';

/** An event as `decide` produced it, after normalisation. */
export interface DecidedEvent {
  readonly type: string;
  readonly data: unknown;
}

/** The runtime form of an event type. */
export interface EventType {
  readonly name: string;
  readonly schema: z.ZodType;
  readonly version: number;
  readonly upcast: Readonly<Record<number, Upcaster>>;
}

/**
 * A defined aggregate, as the runtime sees it: untyped at the edges (commands arrive as JSON),
 * typed inside the user's handlers.
 */
export interface Aggregate<S = unknown, E extends Record<string, EventSpec> = Record<string, EventSpec>> {
  readonly name: string;
  /** Type-level only: the event specs, so projections get typed event data. Never set. */
  readonly __events?: E;
  readonly commands: ReadonlyMap<string, z.ZodType>;
  readonly events: ReadonlyMap<string, EventType>;
  readonly snapshotEvery: number | undefined;
  readonly rememberCommands: number;
  /** Hash of what determines state: event types, their schemas and versions, the evolve code. */
  readonly fingerprint: string;
  initialState(): S;
  /** Runs the command's handler; returns the events (possibly none) or a rejection. */
  decide(command: string, data: unknown, state: S, ctx: CommandContext): DecidedEvent[] | Rejection;
  /** Applies one event's (already upcast) data. */
  evolve(state: S, type: string, data: unknown, event: EventContext): S;
  /** Upgrades data written at `fromVersion` to the event type's current schema version. */
  upcast(type: string, fromVersion: number, data: unknown): unknown;
}

/** Says no to a command: the reply is `REJECTED` with this reason (the aggregate's own code). */
export function reject(reason: string, message?: string, details?: unknown): Rejection {
  return new Rejection(reason, message ?? reason, details);
}

function isVersioned(spec: EventSpec): spec is VersionedEvent {
  return typeof spec === 'object' && spec !== null && 'schema' in spec && !(spec instanceof z.ZodType);
}

function jsonSchemaText(schema: z.ZodType): string {
  try {
    return JSON.stringify(z.toJSONSchema(schema, { unrepresentable: 'any' }));
  } catch {
    return String((schema as { def?: { type?: string } }).def?.type ?? 'unknown');
  }
}

/**
 * Declares an aggregate with state type `S`: zod schemas for its commands and events, its
 * initial state, and one `decide` handler per command and one `evolve` handler per event (a
 * missing one is a type error). The result is what the actor system runs; it touches no I/O.
 *
 * The state type is given first (`defineAggregate<OrderState>()({...})`) because TypeScript
 * cannot infer it from `initialState` without widening the literal types handlers return.
 */
export function defineAggregate<S>() {
  return <C extends Record<string, z.ZodType>, E extends Record<string, EventSpec>>(
    spec: AggregateSpec<S, C, E>,
  ): Aggregate<S, E> => buildAggregate(spec);
}

function buildAggregate<S, C extends Record<string, z.ZodType>, E extends Record<string, EventSpec>>(
  spec: AggregateSpec<S, C, E>,
): Aggregate<S, E> {
  if (!isAggregateName(spec.name)) {
    throw new Error(`aggregate name ${JSON.stringify(spec.name)} must match [a-z][a-z0-9-]*`);
  }
  const commands = new Map<string, z.ZodType>(Object.entries(spec.commands));
  const events = new Map<string, EventType>();
  for (const [name, es] of Object.entries(spec.events)) {
    if (!/^[A-Za-z][A-Za-z0-9]*$/.test(name)) throw new Error(`event type ${name} must be alphanumeric`);
    const v: EventType = isVersioned(es)
      ? { name, schema: es.schema, version: es.version, upcast: es.upcast ?? {} }
      : { name, schema: es as z.ZodType, version: 1, upcast: {} };
    if (!Number.isInteger(v.version) || v.version < 1) throw new Error(`event ${name}: version must be an integer >= 1`);
    for (let from = 1; from < v.version; from++) {
      if (typeof v.upcast[from] !== 'function') {
        throw new Error(`event ${name} is at version ${v.version} but has no upcaster from version ${from}`);
      }
    }
    events.set(name, v);
  }
  for (const name of commands.keys()) {
    if (!/^[A-Za-z][A-Za-z0-9]*$/.test(name)) throw new Error(`command ${name} must be alphanumeric`);
    if (typeof (spec.decide as Record<string, unknown>)[name] !== 'function') {
      throw new Error(`aggregate ${spec.name}: no decide handler for command ${name}`);
    }
  }
  for (const name of events.keys()) {
    if (typeof (spec.evolve as Record<string, unknown>)[name] !== 'function') {
      throw new Error(`aggregate ${spec.name}: no evolve handler for event ${name}`);
    }
  }

  const hash = createHash('sha256');
  hash.update(spec.name);
  hash.update(String(spec.initialState));
  for (const [name, ev] of [...events].sort(([a], [b]) => a.localeCompare(b))) {
    hash.update(`\0${name}@${ev.version}\0${jsonSchemaText(ev.schema)}`);
    hash.update(String((spec.evolve as Record<string, unknown>)[name]));
  }
  const fingerprint = hash.digest('hex').slice(0, 32);

  const decideHandlers = spec.decide as Record<string, (c: unknown, s: S, ctx: CommandContext) => unknown>;
  const evolveHandlers = spec.evolve as Record<string, (s: S, d: unknown, e: EventContext) => S>;

  return {
    name: spec.name,
    commands,
    events,
    snapshotEvery: spec.snapshotEvery,
    rememberCommands: spec.rememberCommands ?? 128,
    fingerprint,
    initialState: spec.initialState,
    decide(command, data, state, ctx) {
      const out = decideHandlers[command]!(data, state, ctx);
      if (out instanceof Rejection) return out;
      if (Array.isArray(out)) return out as DecidedEvent[];
      return [out as DecidedEvent];
    },
    evolve(state, type, data, event) {
      const handler = evolveHandlers[type];
      if (!handler) throw new Error(`aggregate ${spec.name}: unknown event type ${type}`);
      return handler(state, data, event);
    },
    upcast(type, fromVersion, data) {
      const ev = events.get(type);
      if (!ev) throw new Error(`aggregate ${spec.name}: unknown event type ${type}`);
      if (fromVersion > ev.version) {
        throw new Error(`event ${type} has schema version ${fromVersion}, newer than this code's ${ev.version}`);
      }
      let out = data;
      for (let v = fromVersion; v < ev.version; v++) out = ev.upcast[v]!(out);
      return out;
    },
  };
}
