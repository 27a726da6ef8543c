import { describe, expect, it } from 'vitest';
import { accepted, event, fired, given, rejected, TEST_NOW } from '../../src/processes/testing.js';
import { makeOrderFulfilment, orderFulfilment } from './order-fulfilment.js';

const placed = event('order', 'o-1', 'OrderPlaced', { customerId: 'c-1', items: [{ sku: 'a', quantity: 1, priceCents: 100 }], totalCents: 100 });
const paid = event('order', 'o-1', 'OrderPaid', { paymentId: 'p-1' });
const cancelledByUser = event('order', 'o-1', 'OrderCancelled', { reason: 'changed my mind' });
const in24h = new Date(TEST_NOW.getTime() + 24 * 3600_000);
const ship = { aggregate: 'order', id: 'o-1', command: 'Ship', data: { trackingNumber: 'trk-o-1' } };
const cancel = { aggregate: 'order', id: 'o-1', command: 'Cancel', data: { reason: 'payment not received in time' } };

describe('order-fulfilment', () => {
  it('OrderPlaced starts it and sets the payment deadline, sending nothing', () => {
    const o = given(orderFulfilment).when(placed).then({
      commands: [],
      events: [{ type: 'FulfilmentStarted', data: { orderId: 'o-1' } }],
      deadlines: { set: [{ name: 'payment-due', due: in24h }], cancel: [] },
      end: null,
    });
    expect(o.after).toMatchObject({ status: 'running', step: 1, state: { status: 'awaiting-payment', orderId: 'o-1' } });
    expect(o.after.deadlines['payment-due']).toEqual({ due: in24h.toISOString(), token: '1' });
  });

  it('the payment window is the option given', () => {
    given(makeOrderFulfilment({ paymentWindowMs: 5000 })).when(placed).then({ deadlines: { set: [{ name: 'payment-due', due: new Date(TEST_NOW.getTime() + 5000) }] } });
  });

  it('OrderPaid: Ship, and the payment deadline cancelled', () => {
    const o = given(orderFulfilment, placed).when(paid).then({
      commands: [ship],
      events: [{ type: 'ShipmentRequested', data: { trackingNumber: 'trk-o-1' } }],
      deadlines: { set: [], cancel: ['payment-due'] },
    });
    expect(o.step!.commands[0]!.commandId).toBe('order-fulfilment:o-1:2:1');
    expect(o.after.deadlines).toEqual({});
    expect(o.after.awaiting).toEqual(['order-fulfilment:o-1:2:1']);
  });

  it('Ship accepted (or already shipped): completed', () => {
    given(orderFulfilment, placed, paid).when(accepted('Ship')).then({ commands: [], events: [{ type: 'FulfilmentEnded', data: { status: 'shipped', reason: null } }], end: 'completed' });
    const o = given(orderFulfilment, placed, paid).when(rejected('Ship', 'ORDER_ALREADY_SHIPPED')).then({ end: 'completed' });
    expect(o.after).toMatchObject({ status: 'completed', state: { status: 'shipped' }, awaiting: [] });
  });

  it('Ship refused otherwise: failed with the reason', () => {
    const o = given(orderFulfilment, placed, paid).when(rejected('Ship', 'ORDER_NOT_PAID')).then({ end: 'failed' });
    expect(o.after.state).toMatchObject({ status: 'failed', reason: 'ORDER_NOT_PAID' });
  });

  it('the payment deadline passing: Cancel the order', () => {
    const o = given(orderFulfilment, placed).when(fired('payment-due')).then({ commands: [cancel], events: [{ type: 'PaymentOverdue', data: {} }], end: null });
    expect(o.after.deadlines).toEqual({});
    expect(o.after.state.status).toBe('cancelling');
  });

  it('Cancel accepted (or already cancelled): ended as cancelled (failed)', () => {
    const o = given(orderFulfilment, placed, fired('payment-due')).when(accepted('Cancel')).then({ events: [{ type: 'FulfilmentEnded', data: { status: 'cancelled', reason: 'payment overdue' } }], end: 'failed' });
    expect(o.after).toMatchObject({ status: 'failed', state: { status: 'cancelled' } });
    given(orderFulfilment, placed, fired('payment-due')).when(rejected('Cancel', 'ORDER_ALREADY_CANCELLED')).then({ end: 'failed' });
  });

  it('Cancel refused because the order shipped meanwhile: completed', () => {
    given(orderFulfilment, placed, fired('payment-due')).when(rejected('Cancel', 'ORDER_ALREADY_SHIPPED')).then({ end: 'completed' });
    given(orderFulfilment, placed, fired('payment-due')).when(rejected('Cancel', 'ORDER_NOT_FOUND')).then({ end: 'failed' });
  });

  it('a payment arriving while the order is being cancelled is ignored', () => {
    given(orderFulfilment, placed, fired('payment-due')).when(paid).thenIgnored();
  });

  it('an order cancelled by someone else while waiting ends it, and cancels the deadline', () => {
    const o = given(orderFulfilment, placed).when(cancelledByUser).then({ commands: [], end: 'failed', deadlines: { cancel: ['payment-due'] } });
    expect(o.after.deadlines).toEqual({});
  });

  it('a deadline firing after completion is ignored', () => {
    given(orderFulfilment, placed, paid, accepted('Ship')).when(fired('payment-due', { token: '1' })).thenIgnored();
  });

  it('a fire of a deadline since re-set or cancelled (stale token) is ignored', () => {
    given(orderFulfilment, placed, paid).when(fired('payment-due', { token: '1' })).thenIgnored();
    given(orderFulfilment, placed).when(fired('payment-due', { token: '7' })).thenIgnored();
  });

  it('events after the end, a second OrderPlaced and an unrelated reply are ignored', () => {
    given(orderFulfilment, placed, paid, accepted('Ship')).when(cancelledByUser).thenIgnored();
    given(orderFulfilment, placed).when(placed).thenIgnored();
    given(orderFulfilment).when(paid).thenIgnored();
  });
});
