import { deepStrictEqual, fail } from 'node:assert/strict';
import { Rejection } from '../aggregate/types.js';
import { TEST_NOW } from '../aggregate/testing.js';
import { HANDLE, INPUT_HANDLED, type InputHandled, type Process, type ProcessInput, type ProcessInstance } from './define.js';

export { TEST_NOW };

/** An input of a given/when/then test, in the terms a test writes it. */
export type TestInput =
  | { readonly kind: 'event'; readonly aggregate: string; readonly id: string; readonly type: string; readonly data: unknown }
  | { readonly kind: 'reply'; readonly command: string; readonly accepted: boolean; readonly code?: string }
  | { readonly kind: 'deadline'; readonly name: string; readonly token?: string; readonly data?: unknown };

/** An event of a source aggregate reaching the process. */
export function event(aggregate: string, id: string, type: string, data: unknown): TestInput {
  return { kind: 'event', aggregate, id, type, data };
}
/** The reply accepting the last command of this name the instance sent and awaits. */
export function accepted(command: string): TestInput {
  return { kind: 'reply', command, accepted: true };
}
/** The reply refusing the last command of this name the instance awaits, with a rejection reason or error code. */
export function rejected(command: string, code: string): TestInput {
  return { kind: 'reply', command, accepted: false, code };
}
/** A deadline firing; with `token`, a fire of an earlier setting (which must be ignored). */
export function fired(name: string, opts: { token?: string; data?: unknown } = {}): TestInput {
  return { kind: 'deadline', name, ...opts };
}

/** What a `then` may assert; each field left out is not checked. */
export interface Expected {
  readonly commands?: readonly { aggregate: string; id: string; command: string; data: unknown }[];
  /** The process's own events (InputHandled left out). */
  readonly events?: readonly { type: string; data: unknown }[];
  readonly deadlines?: { readonly set?: readonly { name: string; due: string | Date }[]; readonly cancel?: readonly string[] };
  readonly end?: 'completed' | 'failed' | null;
}

/** What `when` produced, with assertions. */
export interface ProcessOutcome<S> {
  /** The instance before the input. */
  readonly before: ProcessInstance<S>;
  /** The recorded step, or undefined when the input was ignored. */
  readonly step: InputHandled | undefined;
  then(expected: Expected): ProcessOutcome<S>;
  /** Asserts the input changed nothing and sent nothing (a stale deadline, an event after the end). */
  thenIgnored(): ProcessOutcome<S>;
  /** Asserts the input is poison with this reason (e.g. PROCESS_HANDLER_FAILED). */
  thenRejected(reason: string): ProcessOutcome<S>;
  /** The instance after the step. */
  readonly after: ProcessInstance<S>;
}

function roundTrip<T>(v: T, what: string): T {
  const text = JSON.stringify(v);
  if (text === undefined) fail(`${what} does not survive JSON`);
  const back = JSON.parse(text) as T;
  deepStrictEqual(back, v, `${what} does not survive JSON unchanged`);
  return back;
}

/**
 * Given/when/then for a process manager, with no infrastructure: the given inputs are decided
 * and folded exactly as the runtime would (through JSON, schemas checked), then `when`'s input
 * is decided and the step it records is compared with what the test expects.
 */
export function given<S>(process: Process<S>, ...history: TestInput[]) {
  const agg = process.aggregate;
  let inst = agg.initialState();
  let version = 0;
  let seq = 0;
  const processIdFor = (input: TestInput, current: string | undefined): string => {
    if (input.kind !== 'event') return current ?? 'test-1';
    const id = process.correlate({ aggregate: input.aggregate, aggregateId: input.id, type: input.type, data: input.data, seq: 0, eventId: 'e', version: 1, time: TEST_NOW.toISOString() });
    if (id === undefined) fail(`${process.name} does not correlate ${input.aggregate}.${input.type} of ${input.id} to any instance`);
    return id;
  };
  let processId: string | undefined;

  const toInput = (t: TestInput): ProcessInput => {
    switch (t.kind) {
      case 'event':
        return { kind: 'event', event: { aggregate: t.aggregate, aggregateId: t.id, type: t.type, data: roundTrip(t.data, `event ${t.type}`), seq: ++seq, eventId: `event-${seq}`, version: 1, time: TEST_NOW.toISOString() } };
      case 'reply': {
        // The latest command of that name the instance sent (awaited or not: a reply it no longer awaits must be ignored).
        const awaited = [...sentCommands].reverse().map(([id, c]) => ({ id, c })).find((x) => x.c.command === t.command);
        if (!awaited) fail(`${process.name} sent no ${t.command}`);
        const c = awaited.c!;
        return { kind: 'reply', reply: { commandId: awaited.id, aggregate: c.aggregate, id: c.id, command: c.command, step: c.step, accepted: t.accepted, ...(t.code !== undefined ? { code: t.code } : {}) } };
      }
      case 'deadline': {
        const pending = inst.deadlines[t.name];
        return { kind: 'deadline', deadline: { name: t.name, token: t.token ?? pending?.token ?? 'never-set', due: pending?.due ?? TEST_NOW.toISOString(), data: t.data ?? null } };
      }
    }
  };
  const sentCommands = new Map<string, { aggregate: string; id: string; command: string; step: number }>();

  let own: { type: string; data: unknown }[] = [];
  const apply = (input: ProcessInput, now: Date): InputHandled | undefined | Rejection => {
    own = [];
    const result = agg.decide(HANDLE, roundTrip(input, 'input'), inst, { now, aggregateId: processId!, version, metadata: {} });
    if (result instanceof Rejection) return result;
    let step: InputHandled | undefined;
    for (const e of result) {
      const type = agg.events.get(e.type);
      if (!type) fail(`decided unknown event type ${e.type}`);
      const ok = type.schema.safeParse(roundTrip(e.data, `event ${e.type}`));
      if (!ok.success) fail(`decided ${e.type} does not match its schema: ${ok.error.message}`);
      inst = roundTrip(agg.evolve(inst, e.type, ok.data, { type: e.type, version: ++version, time: now.toISOString(), metadata: {} }), 'instance');
      if (e.type === INPUT_HANDLED) step = e.data as InputHandled;
      else own.push({ type: e.type, data: e.data });
    }
    for (const c of step?.commands ?? []) sentCommands.set(c.commandId, { aggregate: c.aggregate, id: c.id, command: c.command, step: step!.step });
    return step;
  };

  for (const h of history) {
    processId = processIdFor(h, processId);
    const r = apply(toInput(h), TEST_NOW);
    if (r instanceof Rejection) fail(`given input ${JSON.stringify(h)} was refused: ${r.reason} ${r.message}`);
  }

  return {
    when(input: TestInput, opts: { now?: Date } = {}): ProcessOutcome<S> {
      processId = processIdFor(input, processId);
      const before = inst;
      const r = apply(toInput(input), opts.now ?? TEST_NOW);
      const ownEvents = own;
      const step = r instanceof Rejection ? undefined : r;
      const outcome: ProcessOutcome<S> = {
        before,
        step,
        after: inst,
        then(expected) {
          if (r instanceof Rejection) fail(`expected a step, got poison ${r.reason}: ${r.message}`);
          if (!step) fail('expected a step, but the input was ignored');
          if (expected.commands) deepStrictEqual(step.commands.map((c) => ({ aggregate: c.aggregate, id: c.id, command: c.command, data: c.data })), expected.commands.map((c) => ({ ...c })));
          if (expected.events) deepStrictEqual(ownEvents, expected.events.map((e) => ({ type: e.type, data: e.data })));
          if (expected.deadlines?.set) {
            deepStrictEqual(step.deadlines.set.map((d) => ({ name: d.name, due: d.due })), expected.deadlines.set.map((d) => ({ name: d.name, due: new Date(d.due).toISOString() })));
          }
          if (expected.deadlines?.cancel) deepStrictEqual([...step.deadlines.cancel].sort(), [...expected.deadlines.cancel].sort());
          if (expected.end !== undefined) deepStrictEqual(step.end, expected.end);
          return outcome;
        },
        thenIgnored() {
          if (r instanceof Rejection) fail(`expected the input ignored, got poison ${r.reason}`);
          if (step) fail(`expected the input ignored, got step ${JSON.stringify(step)}`);
          deepStrictEqual(inst, before);
          return outcome;
        },
        thenRejected(reason) {
          if (!(r instanceof Rejection)) fail(`expected poison ${reason}, got ${JSON.stringify(step)}`);
          deepStrictEqual(r.reason, reason);
          return outcome;
        },
      };
      return outcome;
    },
  };
}
