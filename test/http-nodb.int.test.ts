/**
 * The HTTP API where the read side is absent (no database: 503 UNAVAILABLE), where the store
 * or the actors fail (503, or 500 INTERNAL with nothing of the error in the reply), and where
 * an actor's mailbox overflows (UNAVAILABLE in the NATS reply shape).
 */
import { STATUS_CODES } from 'node:http';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eligibilityCheck } from '../actors/eligibility-check/eligibility-check.js';
import { order } from '../actors/order/order.js';
import { task } from '../actors/task/task.js';
import type { ActorSystem } from '../src/actor/system.js';
import type { Aggregate } from '../src/aggregate/define.js';
import type { Strand } from '../src/app.js';
import { allowAll } from '../src/auth/access.js';
import { createAuthenticator } from '../src/auth/tokens.js';
import { CommandIntake } from '../src/commands/intake.js';
import { loadConfig } from '../src/config.js';
import { ErrorCode } from '../src/errors.js';
import { StoreUnavailable } from '../src/eventstore/errors.js';
import type { EventStore } from '../src/eventstore/types.js';
import { INTERNAL_MESSAGE } from '../src/http/errors.js';
import { buildHttpServer, type ApiDeps } from '../src/http/server.js';
import { StrandMetrics } from '../src/observability/metrics.js';
import type { ReadSide } from '../src/projections/host.js';
import type { ViewReader } from '../src/projections/views.js';
import { startTestNats, type TestNats } from './support/nats.js';
import { startStrand } from './support/strand.js';

const aggregates: readonly Aggregate[] = [task, order, eligibilityCheck] as unknown as Aggregate[];

function expectError(r: { statusCode: number; json(): any; body: string }, status: number, code: ErrorCode): void {
  expect({ status: r.statusCode, code: r.json().code }, r.body).toEqual({ status, code });
  expect(r.json()).toMatchObject({ statusCode: status, error: STATUS_CODES[status], message: expect.any(String) });
}

describe('without a database', () => {
  let nats: TestNats;
  let strand: Strand;

  beforeAll(async () => {
    nats = await startTestNats();
    strand = await startStrand(nats.url, { STRAND_MAILBOX_LIMIT: '1' }, aggregates);
  });

  afterAll(async () => {
    await strand?.stop();
    await nats?.cleanup();
  });

  it('views and projections answer 503 UNAVAILABLE with Retry-After', async () => {
    const calls: ['GET' | 'POST', string][] = [
      ['GET', '/views'],
      ['GET', '/views/test_orders'],
      ['GET', '/views/test_orders/k?minSeq=5'],
      ['GET', '/projections'],
      ['GET', '/projections/p'],
      ['POST', '/projections/p/rebuild'],
      ['GET', '/projections/p/dead-letters'],
      ['POST', '/projections/p/dead-letters/1/retry'],
    ];
    for (const [method, url] of calls) {
      const r = await strand.http.inject({ method, url });
      expectError(r, 503, ErrorCode.UNAVAILABLE);
      expect(r.json().message).toContain('no database');
      expect(r.headers['retry-after']).toBe('1');
    }
  });

  it('the rest works: commands, state, events, catalog and documents', async () => {
    const c = await strand.http.inject({ method: 'POST', url: '/commands/order/nodb-1/PlaceOrder', payload: { customerId: 'C', items: [{ sku: 'S', quantity: 1, priceCents: 1 }] } });
    expect(c.statusCode).toBe(200);
    expect((await strand.http.inject({ url: '/aggregates/order/nodb-1' })).json()).toMatchObject({ version: 1, state: { status: 'placed' } });
    expect((await strand.http.inject({ url: '/aggregates/order/nodb-1/events' })).json().events).toHaveLength(1);
    for (const url of ['/catalog', '/asyncapi.json', '/openapi.json']) expect((await strand.http.inject({ url })).statusCode).toBe(200);
  });

  it('a full mailbox is UNAVAILABLE 503 in the NATS reply shape, with Retry-After', async () => {
    const place = { customerId: 'C', items: [{ sku: 'S', quantity: 1, priceCents: 1 }] };
    expect((await strand.http.inject({ method: 'POST', url: '/commands/order/mb-1/PlaceOrder', payload: place })).statusCode).toBe(200);
    const replies = await Promise.all(
      Array.from({ length: 20 }, (_, i) => strand.http.inject({ method: 'POST', url: '/commands/order/mb-1/AddItem', payload: { sku: `S${i}`, quantity: 1, priceCents: 1 } })),
    );
    const refused = replies.filter((r) => r.statusCode === 503);
    expect(refused.length).toBeGreaterThan(0);
    expect(refused[0]!.json()).toEqual({ ok: false, error: { code: 'UNAVAILABLE', message: 'too many commands waiting for order/mb-1 (limit 1)' } });
    expect(refused[0]!.headers['retry-after']).toBe('1');
  });
});

describe('when what the routes depend on fails', () => {
  const logs: { level: number; msg: string; err?: { message?: string } }[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) if (line) logs.push(JSON.parse(line));
      done();
    },
  });

  async function server(over: Partial<ApiDeps>) {
    const metrics = new StrandMetrics({ defaultMetrics: false });
    const api: ApiDeps = {
      aggregates: new Map(aggregates.map((a) => [a.name, a])),
      actors: {} as ActorSystem,
      store: {} as EventStore,
      intake: new CommandIntake(aggregates, { maxBodyBytes: 1024 }),
      metrics,
      readSide: undefined,
      views: undefined,
      minSeqWaitMs: 100,
      maxCommandBytes: 1024,
      acceptingCommands: () => true as const,
      stream: 'EVENTS',
      access: allowAll,
      ...over,
    };
    return buildHttpServer({ log: pino({ level: 'info' }, sink), registry: metrics.registry, checks: [], auth: await createAuthenticator(loadConfig({})), api });
  }

  it('an unexpected error is 500 INTERNAL: logged, and nothing of it in the reply', async () => {
    const app = await server({
      actors: { rehydrate: async () => { throw new Error('secret detail of the failure'); } } as unknown as ActorSystem,
      store: { load: async () => { throw new TypeError('another secret'); } } as unknown as EventStore,
    });
    for (const url of ['/aggregates/order/x', '/aggregates/order/x/events']) {
      const r = await app.inject({ url });
      expectError(r, 500, ErrorCode.INTERNAL);
      expect(r.json().message).toBe(INTERNAL_MESSAGE);
      expect(r.body).not.toContain('secret');
      expect(r.body).not.toContain('.ts:');
    }
    const logged = logs.filter((l) => l.level === 50 && l.msg === 'request failed unexpectedly');
    expect(logged.map((l) => l.err?.message)).toEqual(['secret detail of the failure', 'another secret']);
    await app.close();
  });

  it('a store that cannot be reached is 503 UNAVAILABLE with its message', async () => {
    const app = await server({ actors: { rehydrate: async () => { throw new StoreUnavailable('event stream EVENTS is not reachable (no responders)'); } } as unknown as ActorSystem });
    const r = await app.inject({ url: '/aggregates/order/x' });
    expectError(r, 503, ErrorCode.UNAVAILABLE);
    expect(r.json().message).toBe('event stream EVENTS is not reachable (no responders)');
    expect(r.headers['retry-after']).toBe('1');
    await app.close();
  });

  it('a failure inside the command route is still a NATS-shaped reply: 500 INTERNAL', async () => {
    const intake = { parse: () => { throw new Error('secret'); } } as unknown as CommandIntake;
    const app = await server({ intake });
    const r = await app.inject({ method: 'POST', url: '/commands/order/x/PlaceOrder', payload: {} });
    expect(r.statusCode).toBe(500);
    expect(r.json()).toEqual({ ok: false, error: { code: 'INTERNAL', message: INTERNAL_MESSAGE } });
    await app.close();
  });

  it('a read side that fails unexpectedly is 500 INTERNAL; a view reader error keeps its code', async () => {
    const readSide = {
      status: async () => { throw new Error('connection terminated'); },
      projection: () => undefined,
      waitFor: async () => ({ reached: true, checkpoint: 0 }),
    } as unknown as ReadSide;
    const views = {
      view: (name: string) => ({ name, projection: { name: 'p' }, spec: { key: 'k', columns: { k: 'k' }, filters: [] } }),
      all: () => [],
      page: async () => { throw new Error('boom'); },
      row: async () => ({ row: undefined, checkpoint: 7 }),
    } as unknown as ViewReader;
    const app = await server({ readSide, views });
    expectError(await app.inject({ url: '/projections' }), 500, ErrorCode.INTERNAL);
    expectError(await app.inject({ url: '/views/v' }), 500, ErrorCode.INTERNAL);
    const missing = await app.inject({ url: '/views/v/k1' });
    expectError(missing, 404, ErrorCode.ROW_NOT_FOUND);
    expect(missing.json().checkpoint).toBe(7);
    await app.close();
  });
});
