/**
 * The HTTP API (src/http) against a real nats-server and PostgreSQL, through `inject()` (no
 * port). Every route is exercised, every error it can answer with is provoked where it can be,
 * and the published OpenAPI document is checked against what was seen here: every route fastify
 * serves is documented (a test), every documented route was exercised and every error a route
 * answered with is listed for it (after all tests: see expectOpenApiMatchesWhatWasSeen). Each
 * test makes what it reads, so any one runs alone (`-t`) and in any order (`--sequence.shuffle`).
 */
import { STATUS_CODES } from 'node:http';
import { jetstream } from '@nats-io/jetstream';
import { headers as natsHeaders } from '@nats-io/transport-node';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, type RunnerTestCase, type RunnerTestFile, type RunnerTestSuite } from 'vitest';
import { eligibilityCheck } from '../actors/eligibility-check/eligibility-check.js';
import { order } from '../actors/order/order.js';
import { task } from '../actors/task/task.js';
import { z } from 'zod';
import { defineProcess } from '../src/processes/define.js';
import { Strand } from '../src/app.js';
import type { CommandAccepted, CommandFailed, CommandReply } from '../src/commands/types.js';
import { loadConfig } from '../src/config.js';
import { ErrorCode } from '../src/errors.js';
import { COMMAND_BODY_CAP } from '../src/http/commands.js';
import { defineProjection, on } from '../src/projections/define.js';
import { startTestNats, type TestNats } from './support/nats.js';
import { createTestDatabase, type TestDatabase } from './support/postgres.js';
import { CommandClient, eventually } from './support/strand.js';

const aggregates = [task, order, eligibilityCheck] as const;

/** Toggled by the dead-letter test: until healed, the handler refuses tasks titled "boom". */
const flaky = { healed: false };

const ordersProjection = defineProjection({
  name: 'http_test_orders',
  version: 1,
  migrations: [
    'CREATE TABLE orders (order_id text PRIMARY KEY, status text NOT NULL, customer_id text, total_cents bigint NOT NULL DEFAULT 0)',
    'CREATE INDEX ON orders (status)',
    'CREATE INDEX ON orders (customer_id)',
  ],
  tables: { orders: { key: ['order_id'] } },
  views: {
    test_orders: {
      relation: 'orders',
      columns: { orderId: 'order_id', status: 'status', customerId: 'customer_id', totalCents: 'total_cents' },
      key: 'orderId',
      filters: ['status', 'customerId'],
    },
  },
  handlers: [
    on(order, {
      OrderPlaced: (e, s) => s.upsert('orders', { order_id: e.aggregateId, status: 'placed', customer_id: e.data.customerId, total_cents: e.data.totalCents }),
      ItemAdded: (e, s) => s.upsert('orders', { order_id: e.aggregateId, total_cents: e.data.totalCents }),
      OrderPaid: (e, s) => s.upsert('orders', { order_id: e.aggregateId, status: 'paid' }),
      OrderShipped: (e, s) => s.upsert('orders', { order_id: e.aggregateId, status: 'shipped' }),
      OrderCancelled: (e, s) => s.upsert('orders', { order_id: e.aggregateId, status: 'cancelled' }),
    }),
  ],
});

const flakyProjection = defineProjection({
  name: 'http_test_flaky',
  version: 1,
  migrations: ['CREATE TABLE tasks (task_id text PRIMARY KEY, title text NOT NULL)'],
  tables: { tasks: { key: ['task_id'] } },
  views: { test_tasks: { relation: 'tasks', columns: { taskId: 'task_id', title: 'title' }, key: 'taskId', order: 'desc', filters: [] } },
  handlers: [
    on(task, {
      TaskCreated: (e, s) => {
        if (e.data.title === 'boom' && !flaky.healed) throw new Error('flaky handler refused boom');
        s.upsert('tasks', { task_id: e.aggregateId, title: e.data.title });
      },
    }),
  ],
});

/** A process of its own (the examples would act on the orders other tests place): orders `proc-http-*` get a deadline; customer `boom` fails until healed. */
const boom = { healed: false };
const httpTestProcess = defineProcess<{ placed: boolean }>()({
  name: 'http-test-process',
  sources: { order },
  correlate: (e) => (e.aggregateId.startsWith('proc-http-') ? e.aggregateId : undefined),
  events: { Noted: z.object({}) },
  initialState: () => ({ placed: false }),
  evolve: { Noted: () => ({ placed: true }) },
  on: {
    order: {
      OrderPlaced: (_s, e) => {
        if (e.data.customerId === 'boom' && !boom.healed) throw new Error('boom refused');
        return { events: [{ type: 'Noted', data: {} }], deadlines: { set: [{ name: 'reminder', after: 3_600_000 }] } };
      },
    },
  },
});

let nats: TestNats;
let db: TestDatabase;
let strand: Strand;
let client: CommandClient;

/** Routes fastify registered (method, url), collected with an onRoute hook. */
const registered: { method: string; url: string }[] = [];
/** Every response seen: route (fastify's url pattern), method, status, and error code if any. */
const seen: { method: string; route: string | undefined; status: number; code?: string }[] = [];

beforeAll(async () => {
  nats = await startTestNats();
  db = await createTestDatabase();
  strand = await Strand.start({
    config: loadConfig({
      STRAND_ACTOR_IDLE_MS: '600000',
      STRAND_MAX_COMMAND_BYTES: '2048',
      STRAND_MIN_SEQ_WAIT_MS: '1000',
      STRAND_PROJECTION_MAX_ATTEMPTS: '1',
      STRAND_PROJECTION_BATCH_MS: '5',
      STRAND_DURABLE_INTAKE: 'true',
      STRAND_PROCESS_MAX_ATTEMPTS: '1',
    }),
    aggregates,
    processes: [httpTestProcess],
    natsUrl: nats.url,
    databaseUrl: db.url,
    projections: [ordersProjection, flakyProjection],
    log: pino({ level: process.env['TEST_LOG_LEVEL'] ?? 'silent' }),
    defaultMetrics: false,
  });
  // Added before the first inject, so they see every plugin's routes and replies.
  strand.http.addHook('onRoute', (r) => {
    for (const method of [r.method].flat()) registered.push({ method: String(method), url: r.url });
  });
  strand.http.addHook('onSend', async (req, reply, payload) => {
    let code: string | undefined;
    if (reply.statusCode >= 400 && typeof payload === 'string') {
      try {
        const b = JSON.parse(payload) as { code?: string; error?: { code?: string } };
        code = b.code ?? b.error?.code;
      } catch {
        // not JSON (e.g. /health/ready is JSON anyway; /metrics never fails)
      }
    }
    seen.push({ method: req.method, route: req.routeOptions.url, status: reply.statusCode, ...(code ? { code } : {}) });
    return payload;
  });
  client = await CommandClient.connect(nats.url);
});

afterAll(async ({}, file) => {
  try {
    if (testsOf(file).every((t) => t.result?.state === 'pass')) await expectOpenApiMatchesWhatWasSeen();
  } finally {
    await client?.close();
    await strand?.stop();
    await db?.drop();
    await nats?.cleanup();
  }
});

interface Res<T = any> {
  status: number;
  body: T;
  headers: Record<string, unknown>;
}

async function request(method: 'GET' | 'POST' | 'DELETE', url: string, payload?: string | Buffer, headers: Record<string, string> = {}): Promise<Res> {
  const r = await strand.http.inject({ method, url, ...(payload !== undefined ? { payload } : {}), headers });
  let body: unknown = r.body;
  if (String(r.headers['content-type'] ?? '').startsWith('application/json')) body = r.json();
  return { status: r.statusCode, body, headers: r.headers };
}
const get = (url: string) => request('GET', url);
/** POST a command as JSON, the way a client would. */
function command(path: string, data?: unknown, headers: Record<string, string> = {}): Promise<Res<CommandReply>> {
  return request('POST', `/commands/${path}`, data === undefined ? undefined : JSON.stringify(data), data === undefined ? headers : { 'content-type': 'application/json', ...headers });
}

/** The `{statusCode, code, error, message}` shape, with the status the registry gives the code. */
function expectError(r: Res, status: number, code: ErrorCode): void {
  expect({ status: r.status, code: r.body?.code }, JSON.stringify(r.body)).toEqual({ status, code });
  expect(r.body.statusCode).toBe(status);
  expect(r.body.error).toBe(STATUS_CODES[status]);
  expect(typeof r.body.message).toBe('string');
  expect(JSON.stringify(r.body)).not.toMatch(/\n\s+at /); // never a stack
}

function expectFailed(r: Res<CommandReply>, status: number, code: ErrorCode): CommandFailed {
  expect({ status: r.status, body: r.body }).toMatchObject({ status, body: { ok: false, error: { code } } });
  expect(Object.keys(r.body).sort()).toEqual(['error', 'ok']);
  return r.body as CommandFailed;
}

function expectAccepted(r: Res<CommandReply>): CommandAccepted {
  expect({ status: r.status, body: r.body }).toMatchObject({ status: 200, body: { ok: true } });
  return r.body as CommandAccepted;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const placeOrder = (customerId: string, priceCents = 250) => ({ customerId, items: [{ sku: 'SKU-1', quantity: 2, priceCents }] });

describe('every error has one shape', () => {
  it('an unknown route is 404 NOT_FOUND; so is a known path with the wrong method', async () => {
    const r = await get('/no/such/route?x=1');
    expectError(r, 404, ErrorCode.NOT_FOUND);
    expect(r.body.message).toBe('no route for GET /no/such/route');
    expectError(await request('POST', '/aggregates/order/o-1'), 404, ErrorCode.NOT_FOUND);
    expectError(await get('/commands/order/o-1/PlaceOrder'), 404, ErrorCode.NOT_FOUND);
  });
});

describe('GET /aggregates/:aggregate/:id (state and time travel)', () => {
  const id = 'tt-1';
  /** The state as GET answered right after each command: index N-1 is version N. */
  const afterEach: Res[] = [];

  beforeAll(async () => {
    const steps: [string, unknown][] = [
      ['PlaceOrder', placeOrder('C-tt')],
      ['AddItem', { sku: 'SKU-2', quantity: 1, priceCents: 1000 }],
      ['AddItem', { sku: 'SKU-3', quantity: 3, priceCents: 5 }],
      ['MarkPaid', { paymentId: 'pay-1' }],
      ['Ship', { trackingNumber: 'TRK-1' }],
    ];
    for (const [name, data] of steps) {
      expectAccepted(await command(`order/${id}/${name}`, data));
      const r = await get(`/aggregates/order/${id}`);
      expect(r.status).toBe(200);
      afterEach.push(r);
      await sleep(5); // distinct event times, so `at` can single out each event
    }
  });

  it('answers the current state with its version and sequence', async () => {
    const r = await get(`/aggregates/order/${id}`);
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ aggregate: 'order', id, version: 5, state: { status: 'shipped', customerId: 'C-tt', totalCents: 1515, trackingNumber: 'TRK-1' } });
    expect(r.body.state.items).toHaveLength(3);
    const events = (await get(`/aggregates/order/${id}/events`)).body.events;
    expect(r.body.seq).toBe(events[4].seq);
  });

  it('?version=N equals the state that was current when only N events had been written', async () => {
    for (let n = 1; n <= 5; n++) {
      const r = await get(`/aggregates/order/${id}?version=${n}`);
      expect(r.status).toBe(200);
      expect(r.body).toEqual(afterEach[n - 1]!.body);
    }
  });

  it('?at=<time of event N> equals the state after event N; a later time the current state', async () => {
    const events = (await get(`/aggregates/order/${id}/events`)).body.events as { version: number; time: string }[];
    for (const e of events) {
      const r = await get(`/aggregates/order/${id}?at=${encodeURIComponent(e.time)}`);
      expect(r.status).toBe(200);
      expect(r.body).toEqual(afterEach[e.version - 1]!.body);
    }
    const later = await get(`/aggregates/order/${id}?at=2999-01-01T00:00:00Z`);
    expect(later.body).toEqual(afterEach[4]!.body);
    const offset = await get(`/aggregates/order/${id}?at=${encodeURIComponent('2999-01-01T00:00:00.000+01:00')}`);
    expect(offset.body).toEqual(afterEach[4]!.body);
  });

  it('a version beyond the current one, or a time before the first event, is 404 AGGREGATE_NOT_FOUND', async () => {
    const r = await get(`/aggregates/order/${id}?version=6`);
    expectError(r, 404, ErrorCode.AGGREGATE_NOT_FOUND);
    expect(r.body.message).toContain('is at version 5');
    const first = (await get(`/aggregates/order/${id}/events?limit=1`)).body.events[0].time as string;
    const before = new Date(Date.parse(first) - 1000).toISOString();
    expectError(await get(`/aggregates/order/${id}?at=${before}`), 404, ErrorCode.AGGREGATE_NOT_FOUND);
  });

  it('an instance with no events is 404 AGGREGATE_NOT_FOUND, also with version or at', async () => {
    expectError(await get('/aggregates/order/never-written'), 404, ErrorCode.AGGREGATE_NOT_FOUND);
    expectError(await get('/aggregates/order/never-written?version=1'), 404, ErrorCode.AGGREGATE_NOT_FOUND);
    expectError(await get('/aggregates/order/never-written?at=2999-01-01T00:00:00Z'), 404, ErrorCode.AGGREGATE_NOT_FOUND);
  });

  it('an unknown aggregate is 404 UNKNOWN_AGGREGATE; a bad ID 400 BAD_REQUEST; a 128-character ID is fine', async () => {
    expectError(await get('/aggregates/nosuch/x'), 404, ErrorCode.UNKNOWN_AGGREGATE);
    expectError(await get('/aggregates/Order/x'), 404, ErrorCode.UNKNOWN_AGGREGATE);
    const bad = await get('/aggregates/order/a%24b');
    expectError(bad, 400, ErrorCode.BAD_REQUEST);
    expect(bad.body.message).toBe('id must be 1-128 characters of [A-Za-z0-9_-], got "a$b"');
    expectError(await get('/aggregates/order/a.b'), 400, ErrorCode.BAD_REQUEST);
    expectError(await get(`/aggregates/order/${'x'.repeat(128)}`), 404, ErrorCode.AGGREGATE_NOT_FOUND);
    expectError(await get(`/aggregates/order/${'x'.repeat(129)}`), 400, ErrorCode.BAD_REQUEST);
  });

  it('bad query parameters are 400 BAD_REQUEST naming the problem, never 500', async () => {
    for (const q of ['version=0', 'version=-1', 'version=abc', 'version=1.5', 'version=', 'at=notadate', 'at=2024-01-01', 'at=2024-01-01T00:00:00', 'version=1&at=2024-01-01T00:00:00Z', 'verison=3', 'version=1&version=2']) {
      const r = await get(`/aggregates/order/${id}?${q}`);
      expectError(r, 400, ErrorCode.BAD_REQUEST);
    }
    const r = await get(`/aggregates/order/${id}?version=0`);
    expect(r.body.message).toBe('querystring/version must be >= 1');
    expect(r.body.details).toEqual([{ in: 'querystring', path: '/version', message: 'must be >= 1', params: { comparison: '>=', limit: 1 } }]);
    expect((await get(`/aggregates/order/${id}?verison=3`)).body.details[0].params).toEqual({ additionalProperty: 'verison' });
  });
});

describe('GET /aggregates/:aggregate/:id/events (audit trail)', () => {
  const id = 'trail-1';
  let all: any[];

  beforeAll(async () => {
    expectAccepted(await command(`order/${id}/PlaceOrder`, placeOrder('C-trail'), { 'Strand-Actor': 'user:U1', 'Strand-Correlation-Id': 'corr-trail' }));
    for (let i = 0; i < 6; i++) expectAccepted(await command(`order/${id}/AddItem`, { sku: `S${i}`, quantity: 1, priceCents: 1 }));
    all = (await get(`/aggregates/order/${id}/events`)).body.events;
  });

  it('lists every event in version order, each envelope with its stream sequence', async () => {
    const r = await get(`/aggregates/order/${id}/events`);
    expect(r.status).toBe(200);
    expect(r.body.next).toBeUndefined();
    expect(r.body).toMatchObject({ aggregate: 'order', id });
    expect(all.map((e) => e.version)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    for (let i = 1; i < all.length; i++) expect(all[i].seq).toBeGreaterThan(all[i - 1].seq);
    expect(all[0]).toMatchObject({ type: 'OrderPlaced', aggregate: 'order', aggregateId: id, schemaVersion: 1, actor: 'user:U1', metadata: { correlationId: 'corr-trail' }, data: { customerId: 'C-trail' } });
    expect(Object.keys(all[0]).sort()).toEqual(['actor', 'aggregate', 'aggregateId', 'data', 'id', 'metadata', 'schemaVersion', 'seq', 'time', 'type', 'version']);
    // The same envelopes the stream holds.
    const catalog = (await get('/catalog')).body;
    for (const key of catalog.envelope.required as string[]) expect(all[0]).toHaveProperty(key);
  });

  it('pages with limit; `next` passed as ?after= continues with no gap or repeat', async () => {
    const pages: any[][] = [];
    let url = `/aggregates/order/${id}/events?limit=3`;
    for (;;) {
      const r = await get(url);
      expect(r.status).toBe(200);
      pages.push(r.body.events);
      if (r.body.next === undefined) break;
      expect(r.body.next).toBe(r.body.events[r.body.events.length - 1].seq);
      url = `/aggregates/order/${id}/events?limit=3&after=${r.body.next}`;
    }
    expect(pages.map((p) => p.length)).toEqual([3, 3, 1]);
    expect(pages.flat()).toEqual(all);
    // Exactly a full last page: no `next` when nothing follows.
    expect((await get(`/aggregates/order/${id}/events?limit=7`)).body.next).toBeUndefined();
  });

  it('fromVersion starts at that version, and pages from there', async () => {
    const r = await get(`/aggregates/order/${id}/events?fromVersion=4`);
    expect(r.body.events.map((e: any) => e.version)).toEqual([4, 5, 6, 7]);
    const p1 = await get(`/aggregates/order/${id}/events?fromVersion=4&limit=2`);
    expect(p1.body.events.map((e: any) => e.version)).toEqual([4, 5]);
    const p2 = await get(`/aggregates/order/${id}/events?fromVersion=4&limit=2&after=${p1.body.next}`);
    expect(p2.body.events.map((e: any) => e.version)).toEqual([6, 7]);
    expect(p2.body.next).toBeUndefined();
  });

  it('past the end is an empty page; an instance with no events 404; bad parameters 400', async () => {
    const end = await get(`/aggregates/order/${id}/events?after=${all[6].seq}`);
    expect(end.status).toBe(200);
    expect(end.body.events).toEqual([]);
    expect((await get(`/aggregates/order/${id}/events?fromVersion=99`)).body.events).toEqual([]);
    expectError(await get('/aggregates/order/never-written/events'), 404, ErrorCode.AGGREGATE_NOT_FOUND);
    expectError(await get('/aggregates/order/never-written/events?after=5'), 404, ErrorCode.AGGREGATE_NOT_FOUND);
    expectError(await get('/aggregates/nosuch/x/events'), 404, ErrorCode.UNKNOWN_AGGREGATE);
    expectError(await get('/aggregates/order/a%24b/events'), 400, ErrorCode.BAD_REQUEST);
    for (const q of ['limit=0', 'limit=-1', 'limit=abc', 'limit=1001', 'after=-1', 'after=x', 'fromVersion=0', 'from=1']) {
      expectError(await get(`/aggregates/order/${id}/events?${q}`), 400, ErrorCode.BAD_REQUEST);
    }
    expect((await get(`/aggregates/order/${id}/events?limit=1000`)).status).toBe(200);
  });
});

describe('POST /commands/:aggregate/:id/:command (the NATS contract over HTTP)', () => {
  /** The same command over NATS: the reply HTTP must equal. */
  const nats = (subject: string, body: unknown, headers: Record<string, string> = {}) => client.send(subject, body, headers);

  it('replies exactly like NATS: same shape, and for the same input the same body', async () => {
    const viaHttp = expectAccepted(await command('order/eq-http/PlaceOrder', placeOrder('C-eq'), { 'Strand-Command-Id': 'eq-http-1' }));
    const viaNats = (await nats('cmd.order.eq-nats.PlaceOrder', placeOrder('C-eq'), { 'Strand-Command-Id': 'eq-nats-1' })) as CommandAccepted;
    expect(Object.keys(viaHttp).sort()).toEqual(Object.keys(viaNats).sort());
    expect({ ...viaHttp, id: '', seq: 0, commandId: '', events: [] }).toEqual({ ...viaNats, id: '', seq: 0, commandId: '', events: [] });
    expect(viaHttp).toMatchObject({ aggregate: 'order', id: 'eq-http', version: 1, commandId: 'eq-http-1', duplicate: false, events: [{ type: 'OrderPlaced', version: 1, seq: viaHttp.seq }] });

    // Failures: the HTTP body is the NATS reply, byte for byte.
    const cases: [string, string, unknown, Record<string, string>][] = [
      ['order/eq-nats/Ship', 'cmd.order.eq-nats.Ship', { trackingNumber: 'T' }, {}],
      ['order/eq-nats/Explode', 'cmd.order.eq-nats.Explode', {}, {}],
      ['nosuch/x/Do', 'cmd.nosuch.x.Do', {}, {}],
      ['order/eq-nats/PlaceOrder', 'cmd.order.eq-nats.PlaceOrder', { customerId: 5, items: [] }, {}],
      ['order/eq-nats/MarkPaid', 'cmd.order.eq-nats.MarkPaid', { paymentId: 'p' }, { 'Strand-Expected-Version': '7' }],
      ['order/eq-nats/MarkPaid', 'cmd.order.eq-nats.MarkPaid', { paymentId: 'p' }, { 'Strand-Actor': 'nobody' }],
      ['order/a%24b/MarkPaid', 'cmd.order.a$b.MarkPaid', { paymentId: 'p' }, {}],
    ];
    for (const [path, subject, data, headers] of cases) {
      const h = await command(path, data, headers);
      const n = await nats(subject, data, headers);
      expect(h.body, path).toEqual(n);
    }
  });

  it('REJECTED is 422 with the reason; UNKNOWN_COMMAND and UNKNOWN_AGGREGATE 404; VALIDATION_FAILED 400 with details', async () => {
    expectAccepted(await command('order/rej-1/PlaceOrder', placeOrder('C-rej')));
    const rejected = expectFailed(await command('order/rej-1/Ship', { trackingNumber: 'T' }), 422, ErrorCode.REJECTED);
    expect(rejected.error.reason).toBe('ORDER_NOT_PAID');
    expectFailed(await command('order/rej-1/Explode', {}), 404, ErrorCode.UNKNOWN_COMMAND);
    expectFailed(await command('nosuch/rej-1/PlaceOrder', {}), 404, ErrorCode.UNKNOWN_AGGREGATE);
    const invalid = expectFailed(await command('order/rej-2/PlaceOrder', { customerId: '', items: [] }), 400, ErrorCode.VALIDATION_FAILED);
    expect(invalid.error.details).toEqual(expect.arrayContaining([expect.objectContaining({ path: ['customerId'] }), expect.objectContaining({ path: ['items'] })]));
  });

  it('WRONG_VERSION is 409; the expected version, when right, lets the command through', async () => {
    expectAccepted(await command('order/ver-1/PlaceOrder', placeOrder('C-ver')));
    const wrong = expectFailed(await command('order/ver-1/MarkPaid', { paymentId: 'p' }, { 'Strand-Expected-Version': '0' }), 409, ErrorCode.WRONG_VERSION);
    expect(wrong.error.details).toEqual({ expected: 0, actual: 1 });
    expect(expectAccepted(await command('order/ver-1/MarkPaid', { paymentId: 'p' }, { 'Strand-Expected-Version': '1' })).version).toBe(2);
  });

  it('a repeated Strand-Command-Id is a duplicate, over HTTP and across HTTP and NATS', async () => {
    const first = expectAccepted(await command('order/dup-1/PlaceOrder', placeOrder('C-dup'), { 'Strand-Command-Id': 'dup-cmd-1' }));
    const again = expectAccepted(await command('order/dup-1/PlaceOrder', placeOrder('C-dup'), { 'Strand-Command-Id': 'dup-cmd-1' }));
    expect(again).toEqual({ ...first, duplicate: true });
    const overNats = (await client.send('cmd.order.dup-1.PlaceOrder', placeOrder('C-dup'), { 'Strand-Command-Id': 'dup-cmd-1' })) as CommandAccepted;
    expect(overNats).toEqual({ ...first, duplicate: true });
    const events = (await get('/aggregates/order/dup-1/events')).body.events;
    expect(events).toHaveLength(1);
  });

  it('takes the Strand-* headers like NATS, and an absent or empty body as {}', async () => {
    expectAccepted(await command('task/hdr-1/CreateTask', { title: 'Call', memberId: 'M1', assignedTo: 'CC456' }, { 'Strand-Correlation-Id': 'corr-h', 'Strand-Causation-Id': 'cause-h', 'Strand-Actor': 'user:CC1' }));
    // No body at all, and no Content-Type: {} (CompleteTask's notes are optional).
    const done = expectAccepted(await command('task/hdr-1/CompleteTask', undefined, { 'Strand-Actor': 'user:CC456' }));
    expect(done.version).toBe(2);
    const [created] = (await get('/aggregates/task/hdr-1/events')).body.events;
    expect(created).toMatchObject({ actor: 'user:CC1', metadata: { correlationId: 'corr-h', causationId: 'cause-h' } });
    // An empty JSON body is {} too.
    expectAccepted(await command('task/hdr-2/CreateTask', { title: 'Call', memberId: 'M1', assignedTo: 'CC456' }));
    expectAccepted(await request('POST', '/commands/task/hdr-2/CompleteTask', '', { 'content-type': 'application/json', 'Strand-Actor': 'user:CC456' }));
    // An empty header counts as absent, as on NATS.
    expectAccepted(await command('order/hdr-3/PlaceOrder', placeOrder('C-h'), { 'Strand-Command-Id': '' }));
  });

  it('BAD_REQUEST 400 for bad JSON, a body over the limit, a bad header or ID, another content type, a huge body', async () => {
    const badJson = expectFailed(await request('POST', '/commands/order/bad-1/PlaceOrder', '{"customerId":', { 'content-type': 'application/json' }), 400, ErrorCode.BAD_REQUEST);
    expect(badJson.error.message).toMatch(/^body is not valid JSON/);
    const big = JSON.stringify({ customerId: 'x'.repeat(3000), items: [] });
    const tooBig = expectFailed(await request('POST', '/commands/order/bad-1/PlaceOrder', big, { 'content-type': 'application/json' }), 400, ErrorCode.BAD_REQUEST);
    expect(tooBig.error.message).toBe(`body is ${big.length} bytes, the limit is 2048`);
    expect(tooBig).toEqual(await client.send('cmd.order.bad-1.PlaceOrder', big));
    const notUtf8 = expectFailed(await request('POST', '/commands/order/bad-1/PlaceOrder', Buffer.from([0x7b, 0xff, 0x7d]), { 'content-type': 'application/json' }), 400, ErrorCode.BAD_REQUEST);
    expect(notUtf8.error.message).toMatch(/^body is not valid JSON/);
    expectFailed(await command('order/bad-1/PlaceOrder', placeOrder('C'), { 'Strand-Expected-Version': '01' }), 400, ErrorCode.BAD_REQUEST);
    expectFailed(await command(`order/${'x'.repeat(129)}/PlaceOrder`, placeOrder('C')), 400, ErrorCode.BAD_REQUEST);
    const text = expectFailed(await request('POST', '/commands/order/bad-1/PlaceOrder', JSON.stringify(placeOrder('C')), { 'content-type': 'text/plain' }), 400, ErrorCode.BAD_REQUEST);
    expect(text.error.message).toContain('Content-Type text/plain');
    const huge = expectFailed(await request('POST', '/commands/order/bad-1/PlaceOrder', Buffer.alloc(COMMAND_BODY_CAP + 1, 0x20), { 'content-type': 'application/json' }), 400, ErrorCode.BAD_REQUEST);
    expect(huge.error.message).toBe('request body is too large');
    expect((await get('/aggregates/order/bad-1/events')).status).toBe(404); // nothing was appended
  });

  it('counts HTTP commands in strand_commands_total like NATS ones, unknown names as _invalid', async () => {
    const series = [
      'aggregate="order",command="PlaceOrder",result="ok"',
      'aggregate="order",command="PlaceOrder",result="duplicate"',
      'aggregate="order",command="Ship",result="REJECTED"',
      'aggregate="_invalid",command="_invalid",result="UNKNOWN_COMMAND"',
    ];
    const counts = async () => {
      const text = (await get('/metrics')).body as string;
      return series.map((labels) => Number(text.split('\n').find((line) => line.startsWith(`strand_commands_total{${labels}} `))?.split(' ')[1] ?? 0));
    };
    const before = await counts();
    expectAccepted(await command('order/metric-1/PlaceOrder', placeOrder('C-metric'), { 'Strand-Command-Id': 'metric-cmd-1' }));
    expectAccepted(await command('order/metric-1/PlaceOrder', placeOrder('C-metric'), { 'Strand-Command-Id': 'metric-cmd-1' }));
    expectFailed(await command('order/metric-1/Ship', { trackingNumber: 'T' }), 422, ErrorCode.REJECTED);
    expectFailed(await command('order/metric-1/Explode', {}), 404, ErrorCode.UNKNOWN_COMMAND);
    expectFailed(await command('nosuch/metric-1/PlaceOrder', {}), 404, ErrorCode.UNKNOWN_AGGREGATE);
    expect(await counts()).toEqual(before.map((n) => n + 1));
    const text = (await get('/metrics')).body as string;
    expect(text).not.toContain('Explode');
    expect(text).not.toContain('nosuch');
  });
});

describe('GET /views, /views/:view, /views/:view/:key', () => {
  it('lists the views with key, columns and filters', async () => {
    const r = await get('/views');
    expect(r.status).toBe(200);
    expect(r.body.views).toEqual(
      expect.arrayContaining([
        { name: 'test_orders', projection: 'http_test_orders', key: 'orderId', order: 'asc', columns: ['orderId', 'status', 'customerId', 'totalCents'], filters: ['status', 'customerId'] },
        { name: 'test_tasks', projection: 'http_test_flaky', key: 'taskId', order: 'desc', columns: ['taskId', 'title'], filters: [] },
      ]),
    );
  });

  it('minSeq reads your own write: the row of the command just sent, at a checkpoint at or past its seq', async () => {
    const reply = expectAccepted(await command('order/ryw-1/PlaceOrder', placeOrder('C-ryw', 300)));
    const row = await get(`/views/test_orders/ryw-1?minSeq=${reply.seq}`);
    expect(row.status).toBe(200);
    expect(row.body.row).toEqual({ orderId: 'ryw-1', status: 'placed', customerId: 'C-ryw', totalCents: 600 });
    expect(row.body.checkpoint).toBeGreaterThanOrEqual(reply.seq);
    const paid = expectAccepted(await command('order/ryw-1/MarkPaid', { paymentId: 'p' }));
    const page = await get(`/views/test_orders?customerId=C-ryw&minSeq=${paid.seq}`);
    expect(page.status).toBe(200);
    expect(page.body.rows).toEqual([{ orderId: 'ryw-1', status: 'paid', customerId: 'C-ryw', totalCents: 600 }]);
    expect(page.body.checkpoint).toBeGreaterThanOrEqual(paid.seq);
    expect(page.body.next).toBeUndefined();
  });

  it('filters on columns (ANDed) and pages with the cursor, with no gap or repeat', async () => {
    let last = 0;
    for (let i = 1; i <= 5; i++) last = expectAccepted(await command(`order/pg-${i}/PlaceOrder`, placeOrder('C-page'))).seq;
    for (const i of [2, 4]) last = expectAccepted(await command(`order/pg-${i}/MarkPaid`, { paymentId: 'p' })).seq;
    const paid = await get(`/views/test_orders?customerId=C-page&status=paid&minSeq=${last}`);
    expect(paid.body.rows.map((r: any) => r.orderId)).toEqual(['pg-2', 'pg-4']);

    const ids: string[] = [];
    let url = '/views/test_orders?customerId=C-page&limit=2';
    const sizes: number[] = [];
    for (;;) {
      const r = await get(url);
      expect(r.status).toBe(200);
      sizes.push(r.body.rows.length);
      ids.push(...r.body.rows.map((x: any) => x.orderId));
      if (!r.body.next) break;
      url = `/views/test_orders?customerId=C-page&limit=2&cursor=${encodeURIComponent(r.body.next)}`;
    }
    expect(sizes).toEqual([2, 2, 1]);
    expect(ids).toEqual(['pg-1', 'pg-2', 'pg-3', 'pg-4', 'pg-5']);
    // Default page size and an empty result.
    expect((await get('/views/test_orders?customerId=nobody')).body).toMatchObject({ rows: [] });
  });

  it('NOT_CAUGHT_UP 503 with the checkpoint and Retry-After when minSeq is not reached in time', async () => {
    // The projection has applied something, and everything so far: its checkpoint stays put.
    const placed = expectAccepted(await command('order/ncu-1/PlaceOrder', placeOrder('C-ncu')));
    expect((await get(`/views/test_orders/ncu-1?minSeq=${placed.seq}`)).status).toBe(200);
    const t0 = Date.now();
    const r = await get('/views/test_orders?minSeq=1000000000000');
    expectError(r, 503, ErrorCode.NOT_CAUGHT_UP);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900); // STRAND_MIN_SEQ_WAIT_MS=1000
    expect(typeof r.body.checkpoint).toBe('number');
    expect(r.body.checkpoint).toBeGreaterThan(0);
    expect(r.headers['retry-after']).toBe('1');
    const row = await get('/views/test_orders/ncu-1?minSeq=1000000000000');
    expectError(row, 503, ErrorCode.NOT_CAUGHT_UP);
    expect(row.body.checkpoint).toBe(r.body.checkpoint);
  });

  it('unknown view 404, unknown column 400, bad cursor 400, missing row 404 with checkpoint, bad parameters 400', async () => {
    expectError(await get('/views/nosuch'), 404, ErrorCode.UNKNOWN_VIEW);
    expectError(await get('/views/nosuch/k'), 404, ErrorCode.UNKNOWN_VIEW);
    const col = await get('/views/test_orders?totalCents=5');
    expectError(col, 400, ErrorCode.UNKNOWN_COLUMN);
    expect(col.body.message).toContain('filterable: status, customerId');
    // A wrong column fails at once, without waiting for minSeq.
    expectError(await get('/views/test_orders?nope=1&minSeq=1000000000000'), 400, ErrorCode.UNKNOWN_COLUMN);
    expectError(await get('/views/test_orders?cursor=garbage'), 400, ErrorCode.BAD_CURSOR);
    expectError(await get(`/views/test_orders?cursor=${Buffer.from('{"a":1}').toString('base64url')}`), 400, ErrorCode.BAD_CURSOR);
    const missing = await get('/views/test_orders/no-such-order');
    expectError(missing, 404, ErrorCode.ROW_NOT_FOUND);
    expect(typeof missing.body.checkpoint).toBe('number');
    for (const q of ['limit=-1', 'limit=0', 'limit=abc', 'limit=501', 'minSeq=-1', 'minSeq=abc', 'status=a&status=b', 'cursor=']) {
      expectError(await get(`/views/test_orders?${q}`), 400, ErrorCode.BAD_REQUEST);
    }
    for (const q of ['minSeq=-1', 'limit=5']) expectError(await get(`/views/test_orders/ryw-1?${q}`), 400, ErrorCode.BAD_REQUEST);
    expect((await get('/views/test_orders?limit=500&minSeq=0')).status).toBe(200);
  });
});

describe('projections admin', () => {
  it('GET /projections and /projections/:name show where each stands; an unknown name is 404 UNKNOWN_PROJECTION', async () => {
    const placed = expectAccepted(await command('order/proj-1/PlaceOrder', placeOrder('C-proj')));
    expect((await get(`/views/test_orders/proj-1?minSeq=${placed.seq}`)).status).toBe(200);
    const all = await get('/projections');
    expect(all.status).toBe(200);
    expect(all.body.projections.map((p: any) => p.name).sort()).toEqual(['http_test_flaky', 'http_test_orders']);
    const one = await get('/projections/http_test_orders');
    expect(one.status).toBe(200);
    // The generation is 1, or 2 once the rebuild test below has run.
    expect(one.body).toMatchObject({ name: 'http_test_orders', version: 1, buildingGeneration: null, local: true, rebuild: null, deadLetters: 0 });
    expect([1, 2]).toContain(one.body.activeGeneration);
    expect(one.body.checkpoint).toBeGreaterThanOrEqual(placed.seq);
    expectError(await get('/projections/nosuch'), 404, ErrorCode.UNKNOWN_PROJECTION);
    expectError(await request('POST', '/projections/nosuch/rebuild'), 404, ErrorCode.UNKNOWN_PROJECTION);
    expectError(await get('/projections/nosuch/dead-letters'), 404, ErrorCode.UNKNOWN_PROJECTION);
    expectError(await request('POST', '/projections/nosuch/dead-letters/1/retry'), 404, ErrorCode.UNKNOWN_PROJECTION);
  });

  it('a parked event is listed, fails again on retry (422 RETRY_FAILED), then applies once fixed and is gone', async () => {
    const reply = expectAccepted(await command('task/boom-1/CreateTask', { title: 'boom', memberId: 'M1', assignedTo: 'CC1' }));
    let parked: any[] = [];
    await eventually(async () => {
      parked = (await get('/projections/http_test_flaky/dead-letters')).body.deadLetters;
      return parked.length > 0;
    }, 'the event to be parked');
    expect(parked).toHaveLength(1);
    expect(parked[0]).toMatchObject({ projection: 'http_test_flaky', seq: reply.seq, subject: 'evt.task.boom-1.TaskCreated', attempts: 1, event: { type: 'TaskCreated', aggregateId: 'boom-1' } });
    expect(parked[0].error).toContain('flaky handler refused boom');
    expect((await get('/projections/http_test_flaky')).body.deadLetters).toBe(1);

    const again = await request('POST', `/projections/http_test_flaky/dead-letters/${reply.seq}/retry`);
    expectError(again, 422, ErrorCode.RETRY_FAILED);
    expect(again.body.message).toContain('flaky handler refused boom');
    expect((await get('/projections/http_test_flaky/dead-letters?limit=1')).body.deadLetters[0].attempts).toBe(2);

    // A second one is discarded for good: it leaves the table and is never applied.
    const second = expectAccepted(await command('task/boom-2/CreateTask', { title: 'boom', memberId: 'M1', assignedTo: 'CC1' }));
    await eventually(async () => (await get('/projections/http_test_flaky/dead-letters')).body.deadLetters.length === 2, 'the second event to be parked');
    expect(await request('DELETE', `/projections/http_test_flaky/dead-letters/${second.seq}`)).toMatchObject({ status: 200, body: { discarded: second.seq } });
    expect((await get('/projections/http_test_flaky/dead-letters')).body.deadLetters.map((d: any) => d.seq)).toEqual([reply.seq]);
    expectError(await request('DELETE', `/projections/http_test_flaky/dead-letters/${second.seq}`), 404, ErrorCode.DEAD_LETTER_NOT_FOUND);
    expectError(await request('DELETE', '/projections/nosuch/dead-letters/1'), 404, ErrorCode.UNKNOWN_PROJECTION);
    for (const seq of ['0', 'Infinity']) expectError(await request('DELETE', `/projections/http_test_flaky/dead-letters/${seq}`), 400, ErrorCode.BAD_REQUEST);

    flaky.healed = true;
    const ok = await request('POST', `/projections/http_test_flaky/dead-letters/${reply.seq}/retry`, '{}', { 'content-type': 'application/json' });
    expect(ok).toMatchObject({ status: 200, body: { retried: reply.seq } });
    expect((await get('/projections/http_test_flaky/dead-letters')).body.deadLetters).toEqual([]);
    expect((await get('/views/test_tasks/boom-1')).body.row).toEqual({ taskId: 'boom-1', title: 'boom' });
    expectError(await get('/views/test_tasks/boom-2'), 404, ErrorCode.ROW_NOT_FOUND);
    expectError(await request('POST', `/projections/http_test_flaky/dead-letters/${reply.seq}/retry`), 404, ErrorCode.DEAD_LETTER_NOT_FOUND);
    for (const seq of ['0', 'abc', '-1']) expectError(await request('POST', `/projections/http_test_flaky/dead-letters/${seq}/retry`), 400, ErrorCode.BAD_REQUEST);
    for (const q of ['limit=0', 'limit=x', 'limit=1001']) expectError(await get(`/projections/http_test_flaky/dead-letters?${q}`), 400, ErrorCode.BAD_REQUEST);
  });

  it('rebuild: 202 with the new generation, 409 REBUILD_IN_PROGRESS meanwhile, then the new generation serves the same rows', async () => {
    let last = 0;
    for (let i = 1; i <= 6; i++) last = expectAccepted(await command(`order/rb-${i}/PlaceOrder`, placeOrder('C-rebuild', i))).seq;
    const before = (await get(`/views/test_orders?limit=500&minSeq=${last}`)).body.rows;
    expect(before.length).toBeGreaterThan(5);
    expectError(await request('POST', '/projections/http_test_orders/rebuild', 'x'.repeat(2000), { 'content-type': 'application/json' }), 400, ErrorCode.BAD_REQUEST);
    const [a, b] = await Promise.all([request('POST', '/projections/http_test_orders/rebuild'), request('POST', '/projections/http_test_orders/rebuild')]);
    const started = [a, b].find((r) => r.status === 202)!;
    const refused = [a, b].find((r) => r.status !== 202)!;
    expect(started.body).toEqual({ generation: 2 });
    expectError(refused, 409, ErrorCode.REBUILD_IN_PROGRESS);
    await eventually(async () => {
      const s = (await get('/projections/http_test_orders')).body;
      return s.activeGeneration === 2 && s.buildingGeneration === null;
    }, 'the rebuild to switch over', 15_000);
    expect((await get('/views/test_orders?limit=500')).body.rows).toEqual(before);
  });
});

describe('GET /commands/:commandId', () => {
  it('answers the outcome of a durable command, OUTCOME_NOT_FOUND before it has one, BAD_REQUEST for what cannot be an ID', async () => {
    expectError(await get('/commands/http-durable-1'), 404, ErrorCode.OUTCOME_NOT_FOUND);
    expectError(await get(`/commands/${'x'.repeat(129)}`), 400, ErrorCode.BAD_REQUEST);
    const h = natsHeaders();
    h.set('Strand-Command-Id', 'http-durable-1');
    await jetstream(client.nc).publish('cmdq.order.http-durable-o1.PlaceOrder', JSON.stringify({ customerId: 'c1', items: [{ sku: 's', quantity: 1, priceCents: 100 }] }), { headers: h });
    await eventually(async () => (await get('/commands/http-durable-1')).status === 200, 'the durable command to be processed', 10_000);
    const r = await get('/commands/http-durable-1');
    expect(r.body).toMatchObject({ ok: true, aggregate: 'order', id: 'http-durable-o1', command: 'PlaceOrder', commandId: 'http-durable-1', version: 1, events: [{ type: 'OrderPlaced', version: 1 }] });
  });
});

describe('GET /cluster', () => {
  it('shows this instance owning every partition, as the only member', async () => {
    await eventually(() => strand.region!.ready, 'the instance to hold its share', 10_000);
    const r = await get('/cluster');
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ instance: strand.region!.instance, partitions: 64, ready: true, waiting: 0 });
    expect(r.body.owners).toHaveLength(64);
    expect(new Set(r.body.owners)).toEqual(new Set([strand.region!.instance]));
    expect(r.body.members).toEqual([expect.objectContaining({ instance: strand.region!.instance, live: true, owned: 64, roles: ['commands', 'projections', 'processes'] })]);
  });
});

describe('GET /catalog, /asyncapi.json, /openapi.json', () => {
  /** Every `$ref` in the document points at something in it. */
  function expectRefsResolve(doc: unknown): void {
    const walk = (node: unknown): void => {
      if (Array.isArray(node)) return node.forEach(walk);
      if (node === null || typeof node !== 'object') return;
      for (const [k, v] of Object.entries(node)) {
        if (k === '$ref') {
          expect(typeof v).toBe('string');
          let target: unknown = doc;
          for (const part of (v as string).replace(/^#\//, '').split('/')) target = (target as Record<string, unknown> | undefined)?.[part.replace(/~1/g, '/').replace(/~0/g, '~')];
          expect(target, `unresolved ${String(v)}`).toBeDefined();
        } else walk(v);
      }
    };
    walk(doc);
  }

  it('the catalog has every command and event with its JSON Schema, the subjects, the envelope and the replies', async () => {
    const r = await get('/catalog');
    expect(r.status).toBe(200);
    const c = r.body;
    expect(c.aggregates.map((a: any) => a.name)).toEqual(['task', 'order', 'eligibility-check']);
    for (const a of aggregates) {
      const entry = c.aggregates.find((x: any) => x.name === a.name);
      expect(Object.keys(entry.commands).sort()).toEqual([...a.commands.keys()].sort());
      expect(Object.keys(entry.events).sort()).toEqual([...a.events.keys()].sort());
      for (const [name, ev] of a.events) expect(entry.events[name].schemaVersion).toBe(ev.version);
      expect(entry.subjects).toEqual({ commands: `cmd.${a.name}.{id}.{Command}`, events: `evt.${a.name}.{id}.{EventType}` });
    }
    const o = c.aggregates.find((x: any) => x.name === 'order');
    expect(o.commands.PlaceOrder).toMatchObject({ type: 'object', required: ['customerId', 'items'], properties: { items: { type: 'array', maxItems: 10 } } });
    expect(c.aggregates.find((x: any) => x.name === 'task').events.TaskCreated.schemaVersion).toBe(2);
    expect(c.envelope.required).toEqual(expect.arrayContaining(['id', 'type', 'aggregate', 'aggregateId', 'version', 'schemaVersion', 'time', 'data', 'metadata']));
    expect(c.replies.accepted.properties.ok.const).toBe(true);
    expect(c.replies.failed.properties.error.properties.code.enum).toEqual(expect.arrayContaining(['REJECTED', 'VALIDATION_FAILED']));
    expect(c.headers.command).toContain('Strand-Command-Id');
    expect(c.headers.event).toEqual(['Nats-Msg-Id', 'Strand-Event-Type', 'Strand-Version']);
  });

  it('the AsyncAPI 3.0.0 document has a channel and operation for every command and event, with the reply', async () => {
    const r = await get('/asyncapi.json');
    expect(r.status).toBe(200);
    const d = r.body;
    expect(d.asyncapi).toBe('3.0.0');
    expect(d.info).toMatchObject({ title: expect.any(String), version: expect.any(String) });
    expect(d.servers.nats.protocol).toBe('nats');
    const addresses = Object.values(d.channels).map((ch: any) => ch.address);
    for (const a of aggregates) {
      for (const cmd of a.commands.keys()) {
        const key = `cmd.${a.name}.${cmd}`;
        expect(d.channels[key].address).toBe(`cmd.${a.name}.{id}.${cmd}`);
        expect(Object.keys(d.channels[key].parameters)).toEqual(['id']);
        expect(d.operations[key]).toMatchObject({ action: 'receive', channel: { $ref: `#/channels/${key}` }, reply: { channel: { $ref: '#/channels/commandReply' } } });
        expect(d.components.messages[key].headers).toEqual({ $ref: '#/components/schemas/CommandHeaders' });
        // The same command, durably: stored in a stream, no reply (its outcome is read back).
        expect(d.channels[`cmdq.${a.name}.${cmd}`].address).toBe(`cmdq.${a.name}.{id}.${cmd}`);
        expect(d.operations[`cmdq.${a.name}.${cmd}`]).toMatchObject({ action: 'receive', messages: [{ $ref: `#/channels/cmdq.${a.name}.${cmd}/messages/${cmd}` }] });
        expect(d.operations[`cmdq.${a.name}.${cmd}`].reply).toBeUndefined();
      }
      for (const [type, ev] of a.events) {
        const key = `evt.${a.name}.${type}`;
        expect(addresses).toContain(`evt.${a.name}.{id}.${type}`);
        expect(d.operations[key].action).toBe('send');
        const m = d.components.messages[key];
        expect(Object.keys(m.headers.properties)).toEqual(['Nats-Msg-Id', 'Strand-Event-Type', 'Strand-Version']);
        expect(m.payload.properties.type.const).toBe(type);
        expect(m.payload.properties.schemaVersion.maximum).toBe(ev.version);
        expect(m.payload.properties.data.type).toBe('object');
      }
    }
    expect(Object.keys(d.components.schemas.CommandHeaders.properties)).toEqual(['Strand-Command-Id', 'Strand-Correlation-Id', 'Strand-Causation-Id', 'Strand-Actor', 'Strand-Expected-Version']);
    expect(d.operations['strand.outcome.get']).toMatchObject({ action: 'receive', reply: { channel: { $ref: '#/channels/outcomeReply' } } });
    for (const key of Object.keys(d.channels)) expect(key).toMatch(/^[A-Za-z0-9._-]+$/);
    expectRefsResolve(d);
  });

  it('the OpenAPI 3.1 document covers every route fastify serves, and nothing else', async () => {
    const r = await get('/openapi.json');
    expect(r.status).toBe(200);
    const d = r.body;
    expect(d.openapi).toBe('3.1.0');
    expectRefsResolve(d);
    const documented = new Set<string>();
    for (const [path, ops] of Object.entries(d.paths as Record<string, Record<string, any>>)) {
      for (const [method, op] of Object.entries(ops)) {
        documented.add(`${method.toUpperCase()} ${path}`);
        expect(op.responses, `${method} ${path}`).toBeDefined();
        for (const code of op['x-error-codes'] as string[]) expect(Object.values(ErrorCode)).toContain(code);
        const params = path.match(/\{(\w+)\}/g)?.map((p) => p.slice(1, -1)) ?? [];
        for (const p of params) expect(op.parameters.some((x: any) => x.in === 'path' && x.name === p), `${method} ${path} documents {${p}}`).toBe(true);
      }
    }
    // HEAD routes are fastify's automatic twins of GET routes.
    const served = new Set(registered.filter((x) => x.method !== 'HEAD').map((x) => `${x.method} ${x.url.replace(/:(\w+)/g, '{$1}')}`));
    expect(served.size).toBeGreaterThan(15);
    expect([...served].filter((x) => !documented.has(x)), 'routes missing from /openapi.json').toEqual([]);
    expect([...documented].filter((x) => !served.has(x)), 'documented routes fastify does not serve').toEqual([]);
  });

  it('process managers: the list, an instance (aggregate routes), its pending deadlines, the parked inputs', async () => {
    const list = await get('/processes');
    expect(list.status).toBe(200);
    expect(list.body.processes).toEqual([{ name: 'http-test-process', reactsTo: [{ aggregate: 'order', events: ['OrderPlaced'] }], handlesReplies: false, deadlines: [] }]);
    expect((await command('order/proc-http-1/PlaceOrder', { customerId: 'C', items: [{ sku: 'S', quantity: 1, priceCents: 1 }] })).status).toBe(200);
    let state: Res = await get('/aggregates/http-test-process/proc-http-1');
    for (let i = 0; i < 100 && state.status !== 200; i++) {
      await new Promise((r) => setTimeout(r, 50));
      state = await get('/aggregates/http-test-process/proc-http-1');
    }
    expect(state.body.state).toMatchObject({ status: 'running', state: { placed: true } });
    const pending = await get('/processes/http-test-process/proc-http-1/deadlines');
    expect(pending.status).toBe(200);
    expect(pending.body.deadlines).toEqual([expect.objectContaining({ name: 'reminder', token: '1' })]);
    expectError(await get('/processes/nosuch/x/deadlines'), 404, ErrorCode.UNKNOWN_AGGREGATE);
    expectError(await get('/processes/http-test-process/bad%20id/deadlines'), 400, ErrorCode.BAD_REQUEST);
    const parked = await get('/processes/http-test-process/parked');
    expect(parked).toMatchObject({ status: 200, body: { process: 'http-test-process', parked: [] } });
    expectError(await get('/processes/nosuch/parked'), 404, ErrorCode.UNKNOWN_AGGREGATE);
    // Poison inputs: parked, listed, retried (failing again, then healed) and discarded.
    for (const id of ['proc-http-boom-1', 'proc-http-boom-2']) {
      expect((await command(`order/${id}/PlaceOrder`, { customerId: 'boom', items: [{ sku: 'S', quantity: 1, priceCents: 1 }] })).status).toBe(200);
    }
    let parkedList: Res = await get('/processes/http-test-process/parked');
    for (let i = 0; i < 100 && parkedList.body.parked.length < 2; i++) {
      await new Promise((r) => setTimeout(r, 50));
      parkedList = await get('/processes/http-test-process/parked');
    }
    const [first, second] = parkedList.body.parked as { key: string; instanceId: string; reason: string }[];
    expect([first!.instanceId, second!.instanceId]).toEqual(['proc-http-boom-1', 'proc-http-boom-2']);
    expect(first!.reason).toBe('PROCESS_HANDLER_FAILED');
    expectError(await request('POST', `/processes/http-test-process/parked/${first!.key}/retry`), 422, ErrorCode.RETRY_FAILED);
    boom.healed = true;
    expect(await request('POST', `/processes/http-test-process/parked/${first!.key}/retry`)).toMatchObject({ status: 200, body: { retried: first!.key, recorded: true } });
    expect((await get('/aggregates/http-test-process/proc-http-boom-1')).body.state).toMatchObject({ status: 'running', state: { placed: true } });
    expectError(await request('POST', `/processes/http-test-process/parked/${first!.key}/retry`), 404, ErrorCode.DEAD_LETTER_NOT_FOUND);
    expectError(await request('POST', '/processes/nosuch/parked/x/retry'), 404, ErrorCode.UNKNOWN_AGGREGATE);
    expect(await request('DELETE', `/processes/http-test-process/parked/${second!.key}`)).toMatchObject({ status: 200, body: { discarded: second!.key } });
    expectError(await request('DELETE', `/processes/http-test-process/parked/${second!.key}`), 404, ErrorCode.DEAD_LETTER_NOT_FOUND);
    expectError(await request('DELETE', '/processes/nosuch/parked/x'), 404, ErrorCode.UNKNOWN_AGGREGATE);
    expect((await get('/processes/http-test-process/parked')).body.parked).toEqual([]);
    // A process takes no command from outside.
    const handle = await command('http-test-process/proc-http-1/Handle', {});
    expect({ status: handle.status, code: (handle.body as { error?: { code?: string } }).error?.code }).toEqual({ status: 404, code: ErrorCode.UNKNOWN_AGGREGATE });
  });

  it('serves the live dashboard page', async () => {
    const page = await get('/dashboard');
    expect(page.status).toBe(200);
    expect(String(page.body)).toContain('/live');
  });

  it('health and readiness answer as documented', async () => {
    expect(await get('/health/live')).toMatchObject({ status: 200, body: { status: 'live' } });
    const ready = await get('/health/ready');
    expect(ready).toMatchObject({ status: 200, body: { status: 'ready', checks: { nats: true, commands: true } } });
  });
});

/**
 * Every documented route was exercised by this file's tests, and every error a route answered
 * with is listed for it. A property of the whole file, so it is checked after all its tests,
 * whatever their order (`--sequence.shuffle`), and only when every one of them ran and passed
 * (not when some are picked with `-t`, or when a failure already says what is wrong).
 */
async function expectOpenApiMatchesWhatWasSeen(): Promise<void> {
  const d = (await get('/openapi.json')).body;
  const toPath = (route: string) => route.replace(/:(\w+)/g, '{$1}');
  const exercised = new Set(seen.filter((s) => s.route).map((s) => `${s.method} ${toPath(s.route!)}`));
  const missing: string[] = [];
  const undocumented: string[] = [];
  const statuses: string[] = [];
  for (const [path, ops] of Object.entries(d.paths as Record<string, Record<string, any>>)) {
    for (const [method, op] of Object.entries(ops)) {
      const key = `${method.toUpperCase()} ${path}`;
      if (!exercised.has(key)) missing.push(key);
      const codes = new Set(op['x-error-codes'] as string[]);
      for (const s of seen) {
        if (!s.code || !s.route || `${s.method} ${toPath(s.route)}` !== key) continue;
        if (!codes.has(s.code)) undocumented.push(`${key}: ${s.code}`);
        if (op.responses[String(s.status)] === undefined) statuses.push(`${key}: ${s.status}`);
      }
    }
  }
  expect(missing, 'documented routes this file never called').toEqual([]);
  expect([...new Set(undocumented)], 'error codes a route answered with that /openapi.json does not list for it').toEqual([]);
  expect([...new Set(statuses)], 'statuses a route answered with that /openapi.json does not document for it').toEqual([]);
  // The not-found handler answers for unknown routes.
  expect(seen.some((s) => s.code === 'NOT_FOUND')).toBe(true);
}

function testsOf(s: Readonly<RunnerTestSuite | RunnerTestFile>): RunnerTestCase[] {
  return s.tasks.flatMap((t) => (t.type === 'test' ? [t] : t.type === 'suite' ? testsOf(t) : []));
}
