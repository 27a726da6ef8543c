import { z } from 'zod';
import { defineProcess } from '../../src/processes/define.js';
import { order } from '../order/order.js';

/**
 * Order fulfilment — process `order-fulfilment` (docs/processes.md): an order placed waits for
 * its payment; paid, it is shipped; not paid before the `payment-due` deadline, it is cancelled.
 * One instance per order (its ID is the order's). A deadline that fires after the end is ignored.
 */
export type FulfilmentStatus = 'awaiting-payment' | 'shipping' | 'cancelling' | 'shipped' | 'cancelled' | 'failed';

export interface FulfilmentState {
  status: FulfilmentStatus | 'new';
  orderId: string | null;
  /** Why it failed or was cancelled (a rejection reason, or `payment overdue`). */
  reason: string | null;
}

export interface FulfilmentOptions {
  /** How long an order may wait for its payment (default 24 hours). */
  readonly paymentWindowMs: number;
}

/** The process with its timing; `orderFulfilment` is it with the defaults. */
export function makeOrderFulfilment(o: Partial<FulfilmentOptions> = {}) {
  const paymentWindowMs = o.paymentWindowMs ?? 24 * 3600_000;
  const ended = (status: 'shipped' | 'cancelled' | 'failed', reason: string | null) => ({
    events: [{ type: 'FulfilmentEnded' as const, data: { status, reason } }],
    end: status === 'shipped' ? ('completed' as const) : ('failed' as const),
  });
  return defineProcess<FulfilmentState>()({
    name: 'order-fulfilment',
    sources: { order },
    correlate: (e) => e.aggregateId,
    events: {
      FulfilmentStarted: z.object({ orderId: z.string() }),
      ShipmentRequested: z.object({ trackingNumber: z.string() }),
      PaymentOverdue: z.object({}),
      FulfilmentEnded: z.object({ status: z.enum(['shipped', 'cancelled', 'failed']), reason: z.string().nullable() }),
    },
    initialState: () => ({ status: 'new', orderId: null, reason: null }),
    evolve: {
      FulfilmentStarted: (s, e) => ({ ...s, status: 'awaiting-payment', orderId: e.orderId }),
      ShipmentRequested: (s) => ({ ...s, status: 'shipping' }),
      PaymentOverdue: (s) => ({ ...s, status: 'cancelling', reason: 'payment overdue' }),
      FulfilmentEnded: (s, e) => ({ ...s, status: e.status, reason: e.reason ?? s.reason }),
    },
    on: {
      order: {
        OrderPlaced: (s, e) =>
          s.status !== 'new'
            ? {}
            : {
                events: [{ type: 'FulfilmentStarted', data: { orderId: e.aggregateId } }],
                deadlines: { set: [{ name: 'payment-due', after: paymentWindowMs }] },
              },
        OrderPaid: (s, e) =>
          s.status !== 'awaiting-payment'
            ? {}
            : {
                events: [{ type: 'ShipmentRequested', data: { trackingNumber: `trk-${e.aggregateId}` } }],
                commands: [{ aggregate: 'order', id: e.aggregateId, command: 'Ship', data: { trackingNumber: `trk-${e.aggregateId}` } }],
                deadlines: { cancel: ['payment-due'] },
              },
        // Cancelled by someone else while waiting: nothing left to do.
        OrderCancelled: (s, e) =>
          s.status !== 'awaiting-payment' ? {} : ended('cancelled', e.data.reason),
      },
    },
    onDeadline: {
      'payment-due': (s, _d) =>
        s.status !== 'awaiting-payment'
          ? {}
          : {
              events: [{ type: 'PaymentOverdue', data: {} }],
              commands: [{ aggregate: 'order', id: s.orderId!, command: 'Cancel', data: { reason: 'payment not received in time' } }],
            },
    },
    onReply: (s, r) => {
      if (r.command === 'Ship') {
        if (r.accepted || r.code === 'ORDER_ALREADY_SHIPPED') return ended('shipped', null);
        return ended('failed', r.code ?? 'refused');
      }
      if (r.command === 'Cancel') {
        if (r.accepted || r.code === 'ORDER_ALREADY_CANCELLED') return ended('cancelled', s.reason);
        // Shipped after all (paid at the last moment and shipped by hand): the order is fulfilled.
        if (r.code === 'ORDER_ALREADY_SHIPPED') return ended('shipped', null);
        return ended('failed', r.code ?? 'refused');
      }
      return {};
    },
  });
}

export const orderFulfilment = makeOrderFulfilment();
