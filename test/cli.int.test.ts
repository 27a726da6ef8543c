import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { order, orderList } from '../actors/index.js';
import type { Strand } from '../src/app.js';
import type { CommandAccepted } from '../src/commands/types.js';
import { defineProjection, on } from '../src/projections/define.js';
import { startTestNats, type TestNats } from './support/nats.js';
import { createTestDatabase, type TestDatabase } from './support/postgres.js';
import { CommandClient, startStrandWithDb } from './support/strand.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const run = promisify(execFile);

let nats: TestNats;
let db: TestDatabase;
let strand: Strand;
let client: CommandClient;
let url: string;
let broken = true;

/** Parks orders of customer BAD while `broken`. */
const picky = defineProjection({
  name: 'picky_orders',
  version: 1,
  migrations: ['CREATE TABLE picky_orders (order_id text PRIMARY KEY, customer_id text NOT NULL)'],
  tables: { picky_orders: { key: ['order_id'] } },
  views: { picky_orders: { relation: 'picky_orders', key: 'orderId', columns: { orderId: 'order_id', customerId: 'customer_id' }, filters: [] } },
  handlers: [
    on(order, {
      OrderPlaced: (e, store) => {
        if (broken && e.data.customerId === 'BAD') throw new Error('customer BAD is not handled yet');
        store.upsert('picky_orders', { order_id: e.aggregateId, customer_id: e.data.customerId });
      },
    }),
  ],
});

/** Runs `npm run strand -- …` as a user would (without npm's banner), against this test's instance. */
async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { cwd: root, env: { ...process.env, STRAND_URL: url } });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

beforeAll(async () => {
  nats = await startTestNats();
  db = await createTestDatabase();
  strand = await startStrandWithDb(nats.url, db.url, { STRAND_PROJECTION_MAX_ATTEMPTS: '1' }, [orderList, picky]);
  url = await strand.http.listen({ port: 0, host: '127.0.0.1' });
  client = await CommandClient.connect(nats.url);
});

afterAll(async () => {
  await client?.close();
  await strand?.stop();
  await db?.drop();
  await nats?.cleanup();
});

describe('the strand CLI', { timeout: 60_000 }, () => {
  it('lists projections, rebuilds one with progress, and lists and retries dead letters', async () => {
    let last = 0;
    for (const [i, customer] of ['C1', 'BAD', 'C2'].entries()) {
      last = ((await client.send(`cmd.order.cli-${i}.PlaceOrder`, { customerId: customer, items: [{ sku: 'A', quantity: 1, priceCents: 1 }] })) as CommandAccepted).seq;
    }
    expect((await strand.readSide!.waitFor('picky_orders', last, 10_000)).reached).toBe(true);

    const list = await cli('projections');
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/order_list\s+1\s+1\s+\d+/);
    expect(list.stdout).toMatch(/picky_orders\s+1\s+1\s+\d+\s+\S+\s+true\s+-\s+1/);

    const rebuilt = await cli('projections', 'rebuild', 'order_list');
    expect(rebuilt.code, rebuilt.stderr).toBe(0);
    expect(rebuilt.stderr).toContain('rebuilding order_list into generation 2');
    expect(rebuilt.stdout).toContain('order_list: generation 2 is serving');
    expect((await strand.views!.row('order_list', 'cli-2')).row).toMatchObject({ customerId: 'C2' });

    const parked = await cli('dead-letters', 'picky_orders');
    expect(parked.code).toBe(0);
    const seq = /^(\d+)\s+evt\.order\.cli-1\.OrderPlaced/m.exec(parked.stdout)?.[1];
    expect(seq, parked.stdout).toBeDefined();
    expect(parked.stdout).toContain('customer BAD is not handled yet');

    const stillBroken = await cli('dead-letters', 'retry', 'picky_orders', seq!);
    expect(stillBroken.code).toBe(1);
    expect(stillBroken.stderr).toContain('RETRY_FAILED');
    broken = false;
    const retried = await cli('dead-letters', 'retry', 'picky_orders', seq!);
    expect(retried.code, retried.stderr).toBe(0);
    expect((await cli('dead-letters', 'picky_orders')).stdout).toContain('(none)');
    expect((await strand.views!.row('picky_orders', 'cli-1')).row).toEqual({ orderId: 'cli-1', customerId: 'BAD' });
  });

  it('says what is wrong with bad usage, unknown names and an unreachable server', async () => {
    expect((await cli('frobnicate')).code).toBe(2);
    const unknown = await cli('projections', 'rebuild', 'no_such');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('UNKNOWN_PROJECTION');
    const r = await run(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'projections'], { cwd: root, env: { ...process.env, STRAND_URL: 'http://127.0.0.1:9' } }).catch((e: { code: number; stderr: string }) => e);
    expect((r as { code: number }).code).toBe(2);
    expect((r as { stderr: string }).stderr).toContain('cannot reach');
  });
});
