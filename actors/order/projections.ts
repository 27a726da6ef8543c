import { defineProjection, on } from '../../src/projections/define.js';
import { order } from './order.js';

/** One row per order: its customer, status, line items, total and times. */
export const orderList = defineProjection({
  name: 'order_list',
  version: 1,
  migrations: [
    `CREATE TABLE order_list (
       order_id     text PRIMARY KEY,
       customer_id  text,
       status       text,
       item_count   integer NOT NULL DEFAULT 0,
       total_cents  bigint  NOT NULL DEFAULT 0,
       placed_at    timestamptz,
       paid_at      timestamptz,
       shipped_at   timestamptz,
       cancelled_at timestamptz,
       version      integer NOT NULL,
       updated_at   timestamptz NOT NULL)`,
    'CREATE INDEX order_list_customer ON order_list (customer_id, order_id)',
    'CREATE INDEX order_list_status ON order_list (status, order_id)',
  ],
  tables: { order_list: { key: ['order_id'] } },
  views: {
    order_list: {
      relation: 'order_list',
      key: 'orderId',
      columns: {
        orderId: 'order_id',
        customerId: 'customer_id',
        status: 'status',
        itemCount: 'item_count',
        totalCents: 'total_cents',
        placedAt: 'placed_at',
        paidAt: 'paid_at',
        shippedAt: 'shipped_at',
        cancelledAt: 'cancelled_at',
        version: 'version',
      },
      filters: ['customerId', 'status'],
    },
  },
  handlers: [
    on(order, {
      OrderPlaced: (e, db) =>
        db.upsert('order_list', {
          order_id: e.aggregateId,
          customer_id: e.data.customerId,
          status: 'placed',
          item_count: e.data.items.length,
          total_cents: e.data.totalCents,
          placed_at: e.time,
          version: e.version,
          updated_at: e.time,
        }),
      ItemAdded: (e, db) => {
        db.upsert('order_list', { order_id: e.aggregateId, total_cents: e.data.totalCents, version: e.version, updated_at: e.time });
        db.increment('order_list', { order_id: e.aggregateId }, { item_count: 1 });
      },
      OrderPaid: (e, db) => db.upsert('order_list', { order_id: e.aggregateId, status: 'paid', paid_at: e.time, version: e.version, updated_at: e.time }),
      OrderShipped: (e, db) => db.upsert('order_list', { order_id: e.aggregateId, status: 'shipped', shipped_at: e.time, version: e.version, updated_at: e.time }),
      OrderCancelled: (e, db) => db.upsert('order_list', { order_id: e.aggregateId, status: 'cancelled', cancelled_at: e.time, version: e.version, updated_at: e.time }),
    }),
  ],
});
