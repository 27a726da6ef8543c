import { deepStrictEqual, fail } from 'node:assert/strict';
import type { Aggregate, DecidedEvent } from './define.js';
import { Rejection, type CommandContext, type Issuer } from './types.js';

/** The fixed clock of given/when/then tests unless a test names another. */
export const TEST_NOW = new Date('2026-01-01T00:00:00.000Z');

/** Options of one `when`: the context fields a test may set. */
export interface WhenOptions {
  readonly now?: Date;
  readonly issuer?: Issuer;
  readonly aggregateId?: string;
}

/** A past event of a test's history; `issuer` is who caused it, when that matters to `evolve`. */
export interface GivenEvent extends DecidedEvent {
  readonly issuer?: Issuer;
}

/** What `when` produced, with assertions. */
export interface Outcome<S> {
  /** The state the command was decided on. */
  readonly state: S;
  /** Events decided, or the rejection. */
  readonly result: DecidedEvent[] | Rejection;
  /** Asserts exactly these events (type and data), in order. */
  then(...events: DecidedEvent[]): Outcome<S>;
  /** Asserts a rejection with this reason. */
  thenRejected(reason: string): Outcome<S>;
  /** The state after applying the decided events (asserts the command was not rejected). */
  stateAfter(): S;
}

function roundTrip<T>(v: T, what: string): T {
  const text = JSON.stringify(v);
  if (text === undefined) fail(`${what} does not survive JSON`);
  const back = JSON.parse(text) as T;
  deepStrictEqual(back, v, `${what} does not survive JSON unchanged`);
  return back;
}

/**
 * Given/when/then for an aggregate's business rules, with no infrastructure. Like Akka's
 * test kit it sends every command, event and state through JSON and validates events against
 * their schemas, so a type that would not survive the stream fails here first.
 */
export function given<S>(aggregate: Aggregate<S>, ...history: GivenEvent[]) {
  return {
    when(command: string, data: unknown, opts: WhenOptions = {}): Outcome<S> {
      const aggregateId = opts.aggregateId ?? 'test-1';
      let state = aggregate.initialState();
      let version = 0;
      const replay = (s: S, e: GivenEvent, v: number, time: string, issuer?: Issuer): S => {
        const type = aggregate.events.get(e.type);
        if (!type) fail(`${aggregate.name} has no event type ${e.type}`);
        const parsed = type.schema.safeParse(roundTrip(e.data, `event ${e.type}`));
        if (!parsed.success) fail(`event ${e.type} does not match its schema: ${parsed.error.message}`);
        const by = e.issuer ?? issuer;
        return roundTrip(aggregate.evolve(s, e.type, parsed.data, { type: e.type, version: v, time, ...(by ? { issuer: by } : {}), metadata: {} }), 'state');
      };
      for (const e of history) state = replay(state, e, ++version, TEST_NOW.toISOString());

      const schema = aggregate.commands.get(command);
      if (!schema) fail(`${aggregate.name} has no command ${command}`);
      const parsed = schema.safeParse(roundTrip(data, `command ${command}`));
      if (!parsed.success) fail(`command ${command} does not match its schema: ${parsed.error.message}`);
      const ctx: CommandContext = {
        now: opts.now ?? TEST_NOW,
        aggregateId,
        version,
        ...(opts.issuer ? { issuer: opts.issuer } : {}),
        metadata: { commandId: 'test-command' },
      };
      const result = aggregate.decide(command, parsed.data, state, ctx);
      if (!(result instanceof Rejection)) {
        for (const e of result) {
          const type = aggregate.events.get(e.type);
          if (!type) fail(`decide produced unknown event type ${e.type}`);
          const ok = type.schema.safeParse(roundTrip(e.data, `event ${e.type}`));
          if (!ok.success) fail(`decided event ${e.type} does not match its schema: ${ok.error.message}`);
        }
      }
      const before = state;
      const outcome: Outcome<S> = {
        state: before,
        result,
        then(...events) {
          if (result instanceof Rejection) fail(`expected events, got rejection ${result.reason}`);
          deepStrictEqual(
            result.map((e) => ({ type: e.type, data: e.data })),
            events.map((e) => ({ type: e.type, data: e.data })),
          );
          return outcome;
        },
        thenRejected(reason) {
          if (!(result instanceof Rejection)) fail(`expected rejection ${reason}, got ${JSON.stringify(result)}`);
          deepStrictEqual(result.reason, reason);
          return outcome;
        },
        stateAfter() {
          if (result instanceof Rejection) fail(`command was rejected: ${result.reason}`);
          let s = before;
          let v = version;
          for (const e of result) s = replay(s, e, ++v, ctx.now.toISOString(), ctx.issuer);
          return s;
        },
      };
      return outcome;
    },
  };
}
