import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { order } from '../../actors/order/order.js';
import { defineProcess, stepCommandId } from './define.js';
import { event, given } from './testing.js';

const placed = event('order', 'o-1', 'OrderPlaced', { customerId: 'c', items: [{ sku: 'a', quantity: 1, priceCents: 1 }], totalCents: 1 });

function make(handler: () => unknown) {
  return defineProcess<{ n: number }>()({
    name: 'probe',
    sources: { order },
    correlate: (e) => e.aggregateId,
    events: { Seen: z.object({ n: z.number() }) },
    initialState: () => ({ n: 0 }),
    evolve: { Seen: (s, e) => ({ n: s.n + e.n }) },
    on: { order: { OrderPlaced: handler as never } },
  });
}

describe('defineProcess', () => {
  it('refuses a bad name, a source keyed by another name, a handler for an unknown event, a reserved event type', () => {
    expect(() => defineProcess()({ name: 'Bad', sources: { order }, correlate: () => undefined, events: {}, initialState: () => ({}), evolve: {}, on: { order: { OrderPlaced: () => ({}) } } })).toThrow(/must match/);
    expect(() => defineProcess()({ name: 'p', sources: { orders: order }, correlate: () => undefined, events: {}, initialState: () => ({}), evolve: {}, on: {} })).toThrow(/keyed by its name/);
    expect(() => defineProcess()({ name: 'p', sources: { order }, correlate: () => undefined, events: {}, initialState: () => ({}), evolve: {}, on: { order: { Nope: () => ({}) } as never } })).toThrow(/no event Nope/);
    expect(() => defineProcess()({ name: 'p', sources: { order }, correlate: () => undefined, events: { InputHandled: z.object({}) }, initialState: () => ({}), evolve: { InputHandled: (s) => s }, on: { order: { OrderPlaced: () => ({}) } } })).toThrow(/runtime's own/);
  });

  it('lists what it reacts to', () => {
    const p = make(() => ({}));
    expect([...p.reactsTo]).toEqual([['order', ['OrderPlaced']]]);
    expect(p.aggregate.name).toBe('probe');
    expect([...p.aggregate.events.keys()]).toEqual(['Seen', 'InputHandled']);
  });

  it('a handler that throws, an invalid event or command: poison, with its reason', () => {
    given(make(() => { throw new Error('boom'); })).when(placed).thenRejected('PROCESS_HANDLER_FAILED');
    given(make(() => ({ events: [{ type: 'Seen', data: { n: 'x' } }] }))).when(placed).thenRejected('PROCESS_DECISION_INVALID');
    given(make(() => ({ events: [{ type: 'Other', data: {} }] }))).when(placed).thenRejected('PROCESS_DECISION_INVALID');
    given(make(() => ({ commands: [{ aggregate: 'order', id: 'bad id!', command: 'Ship', data: {} }] }))).when(placed).thenRejected('PROCESS_DECISION_INVALID');
    given(make(() => ({ deadlines: { set: [{ name: 'x', at: 'not a date' }] } }))).when(placed).thenRejected('PROCESS_DECISION_INVALID');
  });

  it('an input event that does not match its schema is poison', () => {
    given(make(() => ({ events: [{ type: 'Seen', data: { n: 1 } }] }))).when(event('order', 'o-1', 'OrderPlaced', { nope: true })).thenRejected('PROCESS_INPUT_INVALID');
  });

  it('an event redelivered (seq at or before the last handled) is ignored', () => {
    const p = make(() => ({ events: [{ type: 'Seen', data: { n: 1 } }] }));
    const o = given(p).when(placed).then({ events: [{ type: 'Seen', data: { n: 1 } }] });
    expect(o.after.lastEventSeq).toBe(1);
    const redelivered = p.aggregate.decide('Handle', { kind: 'event', event: { aggregate: 'order', aggregateId: 'o-1', type: 'OrderPlaced', data: {}, seq: 1, eventId: 'x', version: 1, time: '2026-01-01T00:00:00.000Z' } }, o.after, { now: new Date(), aggregateId: 'o-1', version: 2, metadata: {} });
    expect(redelivered).toEqual([]);
  });

  it('command IDs are <process>:<instance>:<step>:<n>, hashed past 128 characters', () => {
    expect(stepCommandId('p', 'i', 3, 1)).toBe('p:i:3:1');
    const long = stepCommandId('p', 'x'.repeat(128), 3, 2);
    expect(long.length).toBeLessThanOrEqual(128);
    expect(long).toMatch(/^p:[0-9a-f]{40}:3:2$/);
  });
});
