/**
 * Operating the read side: the lag metric, dead letters retried through the runner that holds
 * the projection's lock (from any instance, pushed to live clients) or discarded, a runner that
 * fails in its own loop giving its lock back, and a rebuild's progress.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { order, projections as exampleProjections } from '../actors/index.js';
import type { Strand } from '../src/app.js';
import type { CommandAccepted } from '../src/commands/types.js';
import { armFailpoint } from '../src/failpoints.js';
import { defineProjection, on } from '../src/projections/define.js';
import { LiveClient } from './support/live.js';
import { startTestNats, type TestNats } from './support/nats.js';
import { createTestDatabase, type TestDatabase } from './support/postgres.js';
import { CommandClient, eventually, startStrand, startStrandWithDb } from './support/strand.js';

let nats: TestNats;
let writer: Strand;
let client: CommandClient;
const databases: TestDatabase[] = [];

beforeAll(async () => {
  nats = await startTestNats();
  writer = await startStrand(nats.url);
  client = await CommandClient.connect(nats.url);
});

afterAll(async () => {
  await client?.close();
  await writer?.stop();
  for (const db of databases) await db.drop().catch(() => undefined);
  await nats?.cleanup();
});

async function database(): Promise<TestDatabase> {
  const db = await createTestDatabase();
  databases.push(db);
  return db;
}

async function gauge(s: Strand, name: string, labels: Record<string, string>): Promise<number | undefined> {
  const m = (await s.metrics.registry.getMetricsAsJSON()).find((x) => x.name === name);
  return (m?.values as { value: number; labels: Record<string, unknown> }[] | undefined)?.find((v) => Object.entries(labels).every(([k, x]) => String(v.labels[k]) === x))?.value;
}

function placeOrder(id: string, customerId: string): Promise<CommandAccepted> {
  return client.send(`cmd.order.${id}.PlaceOrder`, { customerId, items: [{ sku: 'A', quantity: 1, priceCents: 1 }] }) as Promise<CommandAccepted>;
}

describe('the read side in operation', { timeout: 60_000 }, () => {
  it('reports as lag the age of the oldest event not applied, not the time since the last one applied', async () => {
    const db = await database();
    // Batches of this unwatched projection linger a minute: a new event stays pending long enough to be seen.
    const s = await startStrandWithDb(nats.url, db.url, { STRAND_ROLES: 'projections', STRAND_PROJECTION_BATCH_MS: '60000' }, exampleProjections.filter((p) => p.name === 'order_list'));
    try {
      const first = await placeOrder('lag-1', 'C1');
      expect((await s.readSide!.waitFor('order_list', first.seq, 10_000)).reached).toBe(true);
      // Idle for a while, then one new event.
      await new Promise((r) => setTimeout(r, 3000));
      await placeOrder('lag-2', 'C1');
      await eventually(async () => ((await gauge(s, 'strand_projection_pending_events', { projection: 'order_list' })) ?? 0) > 0, 'the new event pending', 5000);
      const lag = (await gauge(s, 'strand_projection_lag_seconds', { projection: 'order_list' }))!;
      expect(lag).toBeGreaterThanOrEqual(0);
      expect(lag).toBeLessThan(2.5); // the new event's age; the last applied one is over 3 s old
    } finally {
      await s.stop();
    }
  });

  describe('dead letters', () => {
    let broken = true;
    const ops = defineProjection({
      name: 'ops_orders',
      version: 1,
      migrations: ['CREATE TABLE ops_orders (order_id text PRIMARY KEY, customer_id text NOT NULL)'],
      tables: { ops_orders: { key: ['order_id'] } },
      views: { ops_orders: { relation: 'ops_orders', key: 'orderId', columns: { orderId: 'order_id', customerId: 'customer_id' }, filters: ['customerId'] } },
      handlers: [
        on(order, {
          OrderPlaced: (e, db) => {
            if (!e.aggregateId.startsWith('ops-')) return;
            if (broken && e.data.customerId === 'POISON') throw new Error('cannot handle this customer');
            db.upsert('ops_orders', { order_id: e.aggregateId, customer_id: e.data.customerId });
          },
        }),
      ],
    });

    it('are retried by the instance that holds the lock, whichever instance is asked, and live clients see the row', async () => {
      const db = await database();
      const applier = await startStrandWithDb(nats.url, db.url, { STRAND_ROLES: 'projections', STRAND_PROJECTION_MAX_ATTEMPTS: '1' }, [ops]);
      // Serves reads and operators only: it never holds the projection's lock.
      const other = await startStrandWithDb(nats.url, db.url, { STRAND_ROLES: 'commands', STRAND_QUEUE_GROUP: 'ops-other' }, [ops]);
      const url = `${(await applier.http.listen({ port: 0, host: '127.0.0.1' })).replace('http', 'ws')}/live`;
      const live = await LiveClient.connect(url, { keyOf: () => 'orderId' });
      try {
        await placeOrder('ops-1', 'C1');
        const poison = await placeOrder('ops-2', 'POISON');
        const after = await placeOrder('ops-3', 'C3');
        expect((await applier.readSide!.waitFor('ops_orders', after.seq, 10_000)).reached).toBe(true);
        expect((await other.readSide!.deadLetters('ops_orders')).map((d) => d.seq)).toEqual([poison.seq]);

        live.send({ type: 'subscribe', id: 'all', view: 'ops_orders' });
        await live.until((c) => c.of('snapshot').length === 1, 'the first snapshot');
        expect([...live.copies.get('all')!.keys()].sort()).toEqual(['ops-1', 'ops-3']);

        // Asked on the instance that does not apply it, still failing: the error comes back, the event stays parked.
        expect(await other.readSide!.retryDeadLetter('ops_orders', poison.seq, 10_000)).toMatchObject({ found: true, ok: false, error: expect.stringContaining('cannot handle') });
        expect((await other.readSide!.deadLetters('ops_orders'))[0]).toMatchObject({ seq: poison.seq, attempts: 2 });

        broken = false;
        // Over HTTP on the other instance: applied by the lock holder, then gone from the dead letters.
        const res = await other.http.inject({ method: 'POST', url: `/projections/ops_orders/dead-letters/${poison.seq}/retry` });
        expect(res.statusCode).toBe(200);
        expect(res.json()).toEqual({ retried: poison.seq });
        expect(await other.readSide!.deadLetters('ops_orders')).toEqual([]);
        expect((await other.views!.row('ops_orders', 'ops-2')).row).toEqual({ orderId: 'ops-2', customerId: 'POISON' });
        // The live client gets a fresh snapshot that holds the retried row.
        await live.until((c) => c.copies.get('all')?.has('ops-2') === true, 'the retried row pushed to the live client');
      } finally {
        broken = true;
        await live.close();
        await other.stop();
        await applier.stop();
      }
    });

    it('answer UNAVAILABLE when no instance applies the projection, and can be discarded', async () => {
      const db = await database();
      const applier = await startStrandWithDb(nats.url, db.url, { STRAND_ROLES: 'projections', STRAND_PROJECTION_MAX_ATTEMPTS: '1' }, [ops]);
      let poisonSeq: number;
      try {
        const poison = await placeOrder('ops-9', 'POISON');
        poisonSeq = poison.seq;
        expect((await applier.readSide!.waitFor('ops_orders', poison.seq, 10_000)).reached).toBe(true);
      } finally {
        await applier.stop();
      }
      const reader = await startStrandWithDb(nats.url, db.url, { STRAND_ROLES: 'commands', STRAND_QUEUE_GROUP: 'ops-reader' }, [ops]);
      try {
        await expect(reader.readSide!.retryDeadLetter('ops_orders', poisonSeq, 1500)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
        const gone = await reader.http.inject({ method: 'DELETE', url: `/projections/ops_orders/dead-letters/${poisonSeq}` });
        expect(gone.statusCode).toBe(200);
        expect(gone.json()).toEqual({ discarded: poisonSeq });
        // (The stream also holds the earlier test's poison event, parked here too.)
        expect((await reader.readSide!.deadLetters('ops_orders')).map((d) => d.seq)).not.toContain(poisonSeq);
        const again = await reader.http.inject({ method: 'DELETE', url: `/projections/ops_orders/dead-letters/${poisonSeq}` });
        expect(again.statusCode).toBe(404);
        expect(again.json()).toMatchObject({ code: 'DEAD_LETTER_NOT_FOUND' });
      } finally {
        await reader.stop();
      }
    });
  });

  it('a runner that fails in its own loop gives its lock back, and the projection goes on', async () => {
    const db = await database();
    const orderList = exampleProjections.filter((p) => p.name === 'order_list');
    const a = await startStrandWithDb(nats.url, db.url, { STRAND_ROLES: 'projections', STRAND_PROJECTION_STANDBY_MS: '200' }, orderList);
    const b = await startStrandWithDb(nats.url, db.url, { STRAND_ROLES: 'projections', STRAND_PROJECTION_STANDBY_MS: '200' }, orderList);
    try {
      const r1 = await placeOrder('loop-1', 'C1');
      expect((await a.readSide!.waitFor('order_list', r1.seq, 10_000)).reached).toBe(true);
      armFailpoint('projection.loop:1:throw');
      const r2 = await placeOrder('loop-2', 'C2');
      // Whichever runner held the lock threw; a runner (there or on the other instance) takes over.
      expect((await b.readSide!.waitFor('order_list', r2.seq, 15_000)).reached).toBe(true);
      expect((await b.views!.row('order_list', 'loop-2')).row).toMatchObject({ customerId: 'C2' });
      const local = [...(await a.readSide!.status()), ...(await b.readSide!.status())].filter((x) => x.local);
      expect(local).toHaveLength(1);
    } finally {
      armFailpoint('');
      await a.stop();
      await b.stop();
    }
  });

  it("reports a rebuild's progress as its checkpoint's share of the stream, never 1 before it has caught up", async () => {
    const db = await database();
    // Orders first, then many events no order projection sees: the rebuild's own events end early.
    for (let i = 0; i < 20; i++) await placeOrder(`prog-${i}`, 'C1');
    let last = 0;
    for (let i = 0; i < 1500; i += 100) {
      const replies = await Promise.all(Array.from({ length: 100 }, (_, j) => client.send(`cmd.task.prog-t${i + j}.CreateTask`, { title: 't', memberId: 'M1', assignedTo: 'CC1' })));
      for (const r of replies) last = Math.max(last, (r as CommandAccepted).seq);
    }
    const orderList = exampleProjections.filter((p) => p.name === 'order_list');
    const s = await startStrandWithDb(nats.url, db.url, { STRAND_ROLES: 'projections' }, orderList);
    try {
      expect((await s.readSide!.waitFor('order_list', last, 20_000)).reached).toBe(true);
      const generation = (await s.readSide!.rebuild('order_list'))!;
      const seen: { progress: number; checkpoint: number }[] = [];
      await eventually(async () => {
        const st = (await s.readSide!.status()).find((x) => x.name === 'order_list')!;
        if (st.rebuild) seen.push({ progress: st.rebuild.progress, checkpoint: st.rebuild.checkpoint });
        return st.activeGeneration === generation;
      }, 'the rebuild to switch over', 20_000);
      for (const x of seen) {
        expect(x.progress).toBeCloseTo(Math.min(1, x.checkpoint / last), 2);
        if (x.checkpoint < last) expect(x.progress).toBeLessThan(1);
      }
      expect(await gauge(s, 'strand_projection_rebuild_progress', { projection: 'order_list', generation: String(generation) })).toBe(1);
    } finally {
      await s.stop();
    }
  });
});
