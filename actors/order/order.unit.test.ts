import { describe, expect, it } from 'vitest';
import { given, TEST_NOW } from '../../src/aggregate/testing.js';
import { order } from './order.js';

const widget = { sku: 'WIDGET', quantity: 2, priceCents: 1250 };
const gadget = { sku: 'GADGET', quantity: 1, priceCents: 999 };

const placed = { type: 'OrderPlaced', data: { customerId: 'cust-1', items: [widget, gadget], totalCents: 3499 } };
const paid = { type: 'OrderPaid', data: { paymentId: 'pay-1' } };
const shipped = { type: 'OrderShipped', data: { trackingNumber: 'TRACK-1' } };
const cancelled = { type: 'OrderCancelled', data: { reason: 'changed mind' } };

const item = (n: number) => ({ sku: `SKU-${n}`, quantity: 1, priceCents: 100 });
const placedWith = (count: number) => ({
  type: 'OrderPlaced',
  data: { customerId: 'cust-1', items: Array.from({ length: count }, (_, i) => item(i + 1)), totalCents: count * 100 },
});

describe('order', () => {
  it('declares exactly the commands and events of the contract', () => {
    expect(order.name).toBe('order');
    expect([...order.commands.keys()]).toEqual(['PlaceOrder', 'AddItem', 'MarkPaid', 'Ship', 'Cancel']);
    expect([...order.events.keys()]).toEqual(['OrderPlaced', 'ItemAdded', 'OrderPaid', 'OrderShipped', 'OrderCancelled']);
  });

  describe('PlaceOrder', () => {
    it('places an order with its total', () => {
      const outcome = given(order).when('PlaceOrder', { customerId: 'cust-1', items: [widget, gadget] });
      outcome.then(placed);
      expect(outcome.stateAfter()).toMatchObject({
        status: 'placed',
        customerId: 'cust-1',
        items: [widget, gadget],
        totalCents: 3499,
        placedAt: TEST_NOW.toISOString(),
      });
    });

    it('accepts 10 items and refuses 0 or 11 by schema', () => {
      const schema = order.commands.get('PlaceOrder')!;
      expect(schema.safeParse({ customerId: 'c', items: Array.from({ length: 10 }, (_, i) => item(i)) }).success).toBe(true);
      expect(schema.safeParse({ customerId: 'c', items: [] }).success).toBe(false);
      expect(schema.safeParse({ customerId: 'c', items: Array.from({ length: 11 }, (_, i) => item(i)) }).success).toBe(false);
    });

    it('is rejected when the order exists: ORDER_ALREADY_PLACED', () => {
      given(order, placed).when('PlaceOrder', { customerId: 'cust-1', items: [widget] }).thenRejected('ORDER_ALREADY_PLACED');
    });
  });

  describe('AddItem', () => {
    it('adds an item with the new order total', () => {
      const outcome = given(order, placed).when('AddItem', { sku: 'THING', quantity: 3, priceCents: 500 });
      outcome.then({ type: 'ItemAdded', data: { sku: 'THING', quantity: 3, priceCents: 500, totalCents: 4999 } });
      const s = outcome.stateAfter();
      expect(s.items).toEqual([widget, gadget, { sku: 'THING', quantity: 3, priceCents: 500 }]);
      expect(s.totalCents).toBe(4999);
    });

    it('accepts a 10th item', () => {
      given(order, placedWith(9))
        .when('AddItem', item(10))
        .then({ type: 'ItemAdded', data: { ...item(10), totalCents: 1000 } });
    });

    it('is rejected when the order is absent: ORDER_NOT_FOUND', () => {
      given(order).when('AddItem', widget).thenRejected('ORDER_NOT_FOUND');
    });

    it('is rejected when paid: ORDER_NOT_MODIFIABLE', () => {
      given(order, placed, paid).when('AddItem', widget).thenRejected('ORDER_NOT_MODIFIABLE');
    });

    it('is rejected when shipped: ORDER_NOT_MODIFIABLE', () => {
      given(order, placed, paid, shipped).when('AddItem', widget).thenRejected('ORDER_NOT_MODIFIABLE');
    });

    it('is rejected when cancelled: ORDER_NOT_MODIFIABLE', () => {
      given(order, placed, cancelled).when('AddItem', widget).thenRejected('ORDER_NOT_MODIFIABLE');
    });

    it('is rejected for an 11th item: TOO_MANY_ITEMS', () => {
      given(order, placedWith(10)).when('AddItem', item(11)).thenRejected('TOO_MANY_ITEMS');
    });

    it('is rejected for an 11th item reached by adding: TOO_MANY_ITEMS', () => {
      given(order, placedWith(9), { type: 'ItemAdded', data: { ...item(10), totalCents: 1000 } })
        .when('AddItem', item(11))
        .thenRejected('TOO_MANY_ITEMS');
    });
  });

  describe('MarkPaid', () => {
    it('marks a placed order paid', () => {
      const outcome = given(order, placed).when('MarkPaid', { paymentId: 'pay-1' });
      outcome.then(paid);
      expect(outcome.stateAfter()).toMatchObject({ status: 'paid', paymentId: 'pay-1', paidAt: TEST_NOW.toISOString() });
    });

    it('is rejected when the order is absent: ORDER_NOT_FOUND', () => {
      given(order).when('MarkPaid', { paymentId: 'pay-1' }).thenRejected('ORDER_NOT_FOUND');
    });

    it('is rejected when already paid: ORDER_NOT_PAYABLE', () => {
      given(order, placed, paid).when('MarkPaid', { paymentId: 'pay-2' }).thenRejected('ORDER_NOT_PAYABLE');
    });

    it('is rejected when shipped: ORDER_NOT_PAYABLE', () => {
      given(order, placed, paid, shipped).when('MarkPaid', { paymentId: 'pay-2' }).thenRejected('ORDER_NOT_PAYABLE');
    });

    it('is rejected when cancelled: ORDER_NOT_PAYABLE', () => {
      given(order, placed, cancelled).when('MarkPaid', { paymentId: 'pay-2' }).thenRejected('ORDER_NOT_PAYABLE');
    });
  });

  describe('Ship', () => {
    it('ships a paid order', () => {
      const outcome = given(order, placed, paid).when('Ship', { trackingNumber: 'TRACK-1' });
      outcome.then(shipped);
      expect(outcome.stateAfter()).toMatchObject({
        status: 'shipped',
        trackingNumber: 'TRACK-1',
        shippedAt: TEST_NOW.toISOString(),
      });
    });

    it('is rejected when the order is absent: ORDER_NOT_FOUND', () => {
      given(order).when('Ship', { trackingNumber: 'TRACK-1' }).thenRejected('ORDER_NOT_FOUND');
    });

    it('is rejected when not paid: ORDER_NOT_PAID', () => {
      given(order, placed).when('Ship', { trackingNumber: 'TRACK-1' }).thenRejected('ORDER_NOT_PAID');
    });

    it('is rejected when cancelled unpaid: ORDER_NOT_PAID', () => {
      given(order, placed, cancelled).when('Ship', { trackingNumber: 'TRACK-1' }).thenRejected('ORDER_NOT_PAID');
    });

    it('is rejected when cancelled after payment: ORDER_NOT_PAID', () => {
      given(order, placed, paid, cancelled).when('Ship', { trackingNumber: 'TRACK-1' }).thenRejected('ORDER_NOT_PAID');
    });

    it('is rejected when shipped already: ORDER_ALREADY_SHIPPED', () => {
      given(order, placed, paid, shipped).when('Ship', { trackingNumber: 'TRACK-2' }).thenRejected('ORDER_ALREADY_SHIPPED');
    });
  });

  describe('Cancel', () => {
    it('cancels a placed order', () => {
      const outcome = given(order, placed).when('Cancel', { reason: 'changed mind' });
      outcome.then(cancelled);
      expect(outcome.stateAfter()).toMatchObject({
        status: 'cancelled',
        cancelReason: 'changed mind',
        cancelledAt: TEST_NOW.toISOString(),
      });
    });

    it('cancels a paid order', () => {
      given(order, placed, paid).when('Cancel', { reason: 'changed mind' }).then(cancelled);
    });

    it('is rejected when the order is absent: ORDER_NOT_FOUND', () => {
      given(order).when('Cancel', { reason: 'x' }).thenRejected('ORDER_NOT_FOUND');
    });

    it('is rejected when shipped: ORDER_ALREADY_SHIPPED', () => {
      given(order, placed, paid, shipped).when('Cancel', { reason: 'x' }).thenRejected('ORDER_ALREADY_SHIPPED');
    });

    it('is rejected when cancelled: ORDER_ALREADY_CANCELLED', () => {
      given(order, placed, cancelled).when('Cancel', { reason: 'x' }).thenRejected('ORDER_ALREADY_CANCELLED');
    });
  });
});
