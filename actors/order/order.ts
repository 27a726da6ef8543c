import { z } from 'zod';
import { defineAggregate, reject } from '../../src/aggregate/index.js';

/**
 * Orders — aggregate `order` (the rejections it gives: docs/errors.md, "Reasons of the example aggregates").
 *
 * Limits: IDs (customerId, paymentId, trackingNumber, sku) 1..128 characters; quantity a
 * positive integer up to 10 000; priceCents an integer in cents, 0..100 000 000 (one million
 * currency units); at most 10 line items; a cancellation reason 1..500. With these bounds a
 * total stays well inside Number.MAX_SAFE_INTEGER.
 */
const Id = z.string().min(1).max(128);
const Reason = z.string().min(1).max(500);
export const MAX_ITEMS = 10;

const Item = z.object({
  sku: Id,
  quantity: z.number().int().positive().max(10_000),
  priceCents: z.number().int().nonnegative().max(100_000_000),
});
export type OrderItem = z.infer<typeof Item>;
const Cents = z.number().int().nonnegative();

export type OrderStatus = 'new' | 'placed' | 'paid' | 'shipped' | 'cancelled';

export interface OrderState {
  /** `new` before OrderPlaced. */
  status: OrderStatus;
  customerId: string | null;
  items: OrderItem[];
  totalCents: number;
  placedAt: string | null;
  paidAt: string | null;
  shippedAt: string | null;
  cancelledAt: string | null;
  paymentId: string | null;
  trackingNumber: string | null;
  cancelReason: string | null;
}

const lineTotal = (i: OrderItem): number => i.quantity * i.priceCents;

export const order = defineAggregate<OrderState>()({
  name: 'order',
  commands: {
    PlaceOrder: z.object({ customerId: Id, items: z.array(Item).min(1).max(MAX_ITEMS) }),
    AddItem: Item,
    MarkPaid: z.object({ paymentId: Id }),
    Ship: z.object({ trackingNumber: Id }),
    Cancel: z.object({ reason: Reason }),
  },
  events: {
    OrderPlaced: z.object({ customerId: Id, items: z.array(Item).min(1).max(MAX_ITEMS), totalCents: Cents }),
    ItemAdded: Item.extend({ totalCents: Cents }),
    OrderPaid: z.object({ paymentId: Id }),
    OrderShipped: z.object({ trackingNumber: Id }),
    OrderCancelled: z.object({ reason: Reason }),
  },
  initialState: () => ({
    status: 'new',
    customerId: null,
    items: [],
    totalCents: 0,
    placedAt: null,
    paidAt: null,
    shippedAt: null,
    cancelledAt: null,
    paymentId: null,
    trackingNumber: null,
    cancelReason: null,
  }),
  decide: {
    PlaceOrder: (cmd, state) => {
      if (state.status !== 'new') return reject('ORDER_ALREADY_PLACED');
      const items = cmd.items.map((i) => ({ sku: i.sku, quantity: i.quantity, priceCents: i.priceCents }));
      return {
        type: 'OrderPlaced',
        data: { customerId: cmd.customerId, items, totalCents: items.reduce((t, i) => t + lineTotal(i), 0) },
      };
    },
    AddItem: (cmd, state) => {
      if (state.status === 'new') return reject('ORDER_NOT_FOUND');
      if (state.status !== 'placed') return reject('ORDER_NOT_MODIFIABLE');
      if (state.items.length >= MAX_ITEMS) return reject('TOO_MANY_ITEMS', `an order has at most ${MAX_ITEMS} items`);
      return {
        type: 'ItemAdded',
        data: {
          sku: cmd.sku,
          quantity: cmd.quantity,
          priceCents: cmd.priceCents,
          totalCents: state.totalCents + lineTotal(cmd),
        },
      };
    },
    MarkPaid: (cmd, state) => {
      if (state.status === 'new') return reject('ORDER_NOT_FOUND');
      if (state.status !== 'placed') return reject('ORDER_NOT_PAYABLE');
      return { type: 'OrderPaid', data: { paymentId: cmd.paymentId } };
    },
    Ship: (cmd, state) => {
      if (state.status === 'new') return reject('ORDER_NOT_FOUND');
      // Shipping twice names the real cause rather than "not paid".
      if (state.status === 'shipped') return reject('ORDER_ALREADY_SHIPPED');
      if (state.status !== 'paid') return reject('ORDER_NOT_PAID');
      return { type: 'OrderShipped', data: { trackingNumber: cmd.trackingNumber } };
    },
    Cancel: (cmd, state) => {
      if (state.status === 'new') return reject('ORDER_NOT_FOUND');
      if (state.status === 'shipped') return reject('ORDER_ALREADY_SHIPPED');
      if (state.status === 'cancelled') return reject('ORDER_ALREADY_CANCELLED');
      return { type: 'OrderCancelled', data: { reason: cmd.reason } };
    },
  },
  evolve: {
    OrderPlaced: (state, e, event) => ({
      ...state,
      status: 'placed',
      customerId: e.customerId,
      items: e.items,
      totalCents: e.totalCents,
      placedAt: event.time,
    }),
    ItemAdded: (state, e) => ({
      ...state,
      items: [...state.items, { sku: e.sku, quantity: e.quantity, priceCents: e.priceCents }],
      totalCents: e.totalCents,
    }),
    OrderPaid: (state, e, event) => ({ ...state, status: 'paid', paymentId: e.paymentId, paidAt: event.time }),
    OrderShipped: (state, e, event) => ({
      ...state,
      status: 'shipped',
      trackingNumber: e.trackingNumber,
      shippedAt: event.time,
    }),
    OrderCancelled: (state, e, event) => ({
      ...state,
      status: 'cancelled',
      cancelReason: e.reason,
      cancelledAt: event.time,
    }),
  },
});
