/**
 * Authentication and authorization of the HTTP API (src/http/auth.ts, src/auth/), against a
 * real nats-server and PostgreSQL: Strand in `jwt` mode with an issuer and an audience, the
 * example policy `taskAccess` (actors/access.ts). Every outcome: no token, a bad one, a wrong
 * issuer or audience, an expired one; open routes; commands allowed, refused before the actor
 * and refused inside it on the state they are decided on; the issuer taken from the token, not
 * the header; admin-only routes; reads filtered by the policy.
 */
import { STATUS_CODES } from 'node:http';
import { exportSPKI, generateKeyPair, SignJWT, type CryptoKey, type JWTPayload } from 'jose';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { taskAccess } from '../actors/access.js';
import { aggregates, projections } from '../actors/index.js';
import { Strand } from '../src/app.js';
import { partitionOf } from '../src/cluster/partition.js';
import type { CommandReply } from '../src/commands/types.js';
import { loadConfig } from '../src/config.js';
import { ErrorCode } from '../src/errors.js';
import { startTestNats, type TestNats } from './support/nats.js';
import { createTestDatabase, type TestDatabase } from './support/postgres.js';
import { CommandClient, eventually, startStrand, streamEvents } from './support/strand.js';

const SECRET = 'http-auth-test-secret-of-at-least-32-characters';
const ISSUER = 'https://id.test';
const AUDIENCE = 'strand';

let nats: TestNats;
let db: TestDatabase;
let strand: Strand;
let rsa: { privateKey: CryptoKey; pem: string };
let nc: CommandClient;

const now = () => Math.floor(Date.now() / 1000);

async function token(claims: JWTPayload, opts: { secret?: string; iss?: string; aud?: string; exp?: number; alg?: 'HS256' | 'RS256' } = {}): Promise<string> {
  const jwt = new SignJWT({ iss: opts.iss ?? ISSUER, aud: opts.aud ?? AUDIENCE, exp: opts.exp ?? now() + 300, ...claims });
  if (opts.alg === 'RS256') return jwt.setProtectedHeader({ alg: 'RS256' }).sign(rsa.privateKey);
  return jwt.setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode(opts.secret ?? SECRET));
}

const tokens = {} as Record<'admin' | 'cc1' | 'cc2' | 'nobody', string>;

beforeAll(async () => {
  const pair = await generateKeyPair('RS256');
  rsa = { privateKey: pair.privateKey, pem: await exportSPKI(pair.publicKey) };
  nats = await startTestNats();
  db = await createTestDatabase();
  strand = await Strand.start({
    config: loadConfig({
      STRAND_AUTH: 'jwt',
      STRAND_JWT_SECRET: SECRET,
      STRAND_JWT_PUBLIC_KEY: rsa.pem,
      STRAND_JWT_ISSUER: ISSUER,
      STRAND_JWT_AUDIENCE: AUDIENCE,
      STRAND_ACTOR_IDLE_MS: '600000',
      STRAND_MIN_SEQ_WAIT_MS: '3000',
    }),
    aggregates,
    projections,
    access: taskAccess,
    natsUrl: nats.url,
    databaseUrl: db.url,
    log: pino({ level: process.env['TEST_LOG_LEVEL'] ?? 'silent' }),
    defaultMetrics: false,
  });
  nc = await CommandClient.connect(nats.url);
  tokens.admin = await token({ sub: 'ops-1', roles: ['admin'] });
  tokens.cc1 = await token({ sub: 'CC1', roles: ['coordinator'] });
  tokens.cc2 = await token({ sub: 'CC2', role: 'coordinator' });
  tokens.nobody = await token({ sub: 'eve' });
});

afterAll(async () => {
  await nc?.close();
  await strand?.stop();
  await db?.drop();
  await nats?.cleanup();
});

interface Res<T = any> {
  status: number;
  body: T;
  headers: Record<string, unknown>;
}

async function request(method: 'GET' | 'POST' | 'DELETE', url: string, opts: { token?: string; headers?: Record<string, string>; payload?: unknown; on?: Strand } = {}): Promise<Res> {
  const headers: Record<string, string> = { ...(opts.headers ?? {}) };
  if (opts.token !== undefined) headers['authorization'] = `Bearer ${opts.token}`;
  if (opts.payload !== undefined) headers['content-type'] = 'application/json';
  const r = await (opts.on ?? strand).http.inject({ method, url, headers, ...(opts.payload !== undefined ? { payload: JSON.stringify(opts.payload) } : {}) });
  const body: unknown = String(r.headers['content-type'] ?? '').startsWith('application/json') ? r.json() : r.body;
  return { status: r.statusCode, body, headers: r.headers };
}
const get = (url: string, token?: string) => request('GET', url, token !== undefined ? { token } : {});
const command = (path: string, data: unknown, token?: string, headers: Record<string, string> = {}, on?: Strand): Promise<Res<CommandReply>> =>
  request('POST', `/commands/${path}`, { payload: data, headers, ...(token !== undefined ? { token } : {}), ...(on ? { on } : {}) });

function expectError(r: Res, status: number, code: ErrorCode, message?: string): void {
  expect({ status: r.status, code: r.body?.code }, JSON.stringify(r.body)).toEqual({ status, code });
  expect(r.body).toMatchObject({ statusCode: status, error: STATUS_CODES[status], message: expect.any(String) });
  if (message !== undefined) expect(r.body.message).toBe(message);
}

function expectFailed(r: Res<CommandReply>, status: number, code: ErrorCode, message?: string | RegExp): void {
  expect({ status: r.status, body: r.body }).toMatchObject({ status, body: { ok: false, error: { code } } });
  expect(Object.keys(r.body).sort()).toEqual(['error', 'ok']);
  if (message !== undefined && !r.body.ok) expect(r.body.error.message).toMatch(message);
}

function expectOk(r: Res<CommandReply>): Extract<CommandReply, { ok: true }> {
  expect({ status: r.status, body: r.body }).toMatchObject({ status: 200, body: { ok: true } });
  return r.body as Extract<CommandReply, { ok: true }>;
}

const newTask = (assignedTo: string) => ({ title: 'Call member', memberId: 'M1', assignedTo });

/** Every route that needs a token, with a request that would otherwise succeed or fail for another reason. */
const PROTECTED: [string, string][] = [
  ['GET', '/aggregates/task/t-1'],
  ['GET', '/aggregates/task/t-1/events'],
  ['GET', '/views'],
  ['GET', '/views/task_list_view?assignedTo=CC1'],
  ['GET', '/views/task_list_view/t-1'],
  ['GET', '/projections'],
  ['GET', '/projections/task_list_view'],
  ['POST', '/projections/task_list_view/rebuild'],
  ['GET', '/projections/task_list_view/dead-letters'],
  ['POST', '/projections/task_list_view/dead-letters/1/retry'],
  ['DELETE', '/projections/task_list_view/dead-letters/1'],
  ['GET', '/catalog'],
  ['GET', '/asyncapi.json'],
  ['GET', '/openapi.json'],
  ['GET', '/no/such/route'],
];

describe('authentication (STRAND_AUTH=jwt)', () => {
  it('no token: 401 UNAUTHORIZED in the documented shape with a Bearer challenge, on every route but the open ones', async () => {
    for (const [method, url] of PROTECTED) {
      const r = await request(method as 'GET' | 'POST' | 'DELETE', url);
      expectError(r, 401, ErrorCode.UNAUTHORIZED, 'no bearer token');
      expect(r.headers['www-authenticate'], url).toBe('Bearer realm="strand"');
    }
    // Commands answer in the NATS reply shape, also when refused by authentication.
    const c = await command('task/t-1/CreateTask', newTask('CC1'));
    expectFailed(c, 401, ErrorCode.UNAUTHORIZED, 'no bearer token');
    expect(c.headers['www-authenticate']).toBe('Bearer realm="strand"');
    // Nothing reached the actor.
    expect(await streamEvents(nc.nc, 'EVENTS', 'task', 't-1')).toEqual([]);
  });

  it('health, metrics and the dashboard page are open', async () => {
    expect((await get('/health/live')).status).toBe(200);
    expect((await get('/health/ready')).status).toBe(200);
    const metrics = await get('/metrics');
    expect(metrics.status).toBe(200);
    expect(String(metrics.body)).toContain('strand_commands_total');
    expect((await get('/dashboard')).status).toBe(200);
    // Even with a token that does not verify: they do not look at it.
    expect((await get('/health/ready', 'garbage')).status).toBe(200);
  });

  it('a bad token: 401 with the reason and error="invalid_token"', async () => {
    const cases: [string, string][] = [
      [await token({ sub: 'CC1' }, { secret: 'another-secret-of-at-least-32-characters!!' }), 'bad signature'],
      ['not.a.jwt', 'malformed token'],
      ['x'.repeat(9000), 'malformed token'],
      [await token({ sub: '' }), 'token has no subject'],
      [await token({ sub: 'CC1', nbf: now() + 600 }), 'token not yet valid'],
    ];
    for (const [t, reason] of cases) {
      const r = await get('/views', t);
      expectError(r, 401, ErrorCode.UNAUTHORIZED, reason);
      expect(r.headers['www-authenticate']).toBe(`Bearer realm="strand", error="invalid_token", error_description="${reason}"`);
      expectFailed(await command('task/t-bad/CreateTask', newTask('CC1'), t), 401, ErrorCode.UNAUTHORIZED, reason);
    }
  });

  it('an Authorization header that is not Bearer: 401 error="invalid_request"', async () => {
    for (const value of ['Basic dXNlcjpwYXNz', 'Bearer', 'Bearer a b', tokens.cc1]) {
      const r = await request('GET', '/views', { headers: { authorization: value } });
      expectError(r, 401, ErrorCode.UNAUTHORIZED, 'the Authorization header is not Bearer <token>');
      expect(r.headers['www-authenticate']).toMatch(/error="invalid_request"/);
    }
  });

  it('wrong issuer, wrong audience: 401', async () => {
    expectError(await get('/views', await token({ sub: 'CC1' }, { iss: 'https://evil.test' })), 401, ErrorCode.UNAUTHORIZED, 'wrong issuer');
    expectError(await get('/views', await token({ sub: 'CC1' }, { aud: 'someone-else' })), 401, ErrorCode.UNAUTHORIZED, 'wrong audience');
    expectFailed(await command('task/t-iss/CreateTask', newTask('CC1'), await token({ sub: 'CC1', roles: ['admin'] }, { iss: 'https://evil.test' })), 401, ErrorCode.UNAUTHORIZED, 'wrong issuer');
  });

  it('an expired token: 401 token expired (beyond the 5 s tolerance)', async () => {
    const expired = await token({ sub: 'ops-1', roles: ['admin'] }, { exp: now() - 60 });
    expectError(await get('/projections', expired), 401, ErrorCode.UNAUTHORIZED, 'token expired');
    expectFailed(await command('task/t-exp/CreateTask', newTask('CC1'), expired), 401, ErrorCode.UNAUTHORIZED, 'token expired');
  });

  it('HS256 and RS256 tokens are both accepted (both keys configured)', async () => {
    expect((await get('/views', tokens.cc1)).status).toBe(200);
    expect((await get('/views', await token({ sub: 'CC1', roles: ['coordinator'] }, { alg: 'RS256' }))).status).toBe(200);
  });

  it('the contract documents need a token, and nothing more', async () => {
    for (const url of ['/catalog', '/asyncapi.json', '/openapi.json']) expect((await get(url, tokens.nobody)).status, url).toBe(200);
  });
});

describe('commands: the issuer is the token\'s subject', () => {
  it("records user:<sub> from the token; a Strand-Actor header naming the same issuer is fine, anyone else is 403 FORBIDDEN", async () => {
    const ok = expectOk(await command('task/iss-1/CreateTask', newTask('CC1'), tokens.cc1));
    expect(expectOk(await command('task/iss-2/CreateTask', newTask('CC1'), tokens.cc1, { 'Strand-Actor': 'user:CC1' })).version).toBe(1);
    const forged = await command('task/iss-3/CreateTask', newTask('CC1'), tokens.cc1, { 'Strand-Actor': 'user:CC2' });
    expectFailed(forged, 403, ErrorCode.FORBIDDEN, /Strand-Actor names "user:CC2", but the token's issuer is "user:CC1"/);
    // A malformed header is still a BAD_REQUEST, checked first.
    expectFailed(await command('task/iss-3/CreateTask', newTask('CC1'), tokens.cc1, { 'Strand-Actor': 'nobody' }), 400, ErrorCode.BAD_REQUEST);
    const events = await streamEvents(nc.nc, 'EVENTS', 'task', 'iss-1');
    expect(events.map((e) => e.envelope.actor)).toEqual(['user:CC1']);
    expect(events[0]!.seq).toBe(ok.seq);
    expect(await streamEvents(nc.nc, 'EVENTS', 'task', 'iss-3')).toEqual([]);
  });

  it("the issuer decides the aggregate's own rules: NOT_ASSIGNEE follows the token, not a header", async () => {
    expectOk(await command('task/iss-4/CreateTask', newTask('CC1'), tokens.admin));
    // The admin may send it (policy), but is not the assignee (the task's own rule).
    const r = await command('task/iss-4/CompleteTask', {}, tokens.admin);
    expectFailed(r, 422, ErrorCode.REJECTED);
    expect(!r.body.ok && r.body.error.reason).toBe('NOT_ASSIGNEE');
    expectFailed(await command('task/iss-4/CompleteTask', {}, tokens.admin, { 'Strand-Actor': 'user:CC1' }), 403, ErrorCode.FORBIDDEN);
    expectOk(await command('task/iss-4/CompleteTask', {}, tokens.cc1));
    const events = await streamEvents(nc.nc, 'EVENTS', 'task', 'iss-4');
    expect(events.map((e) => [e.envelope.type, e.envelope.actor])).toEqual([['TaskCreated', 'user:ops-1'], ['TaskCompleted', 'user:CC1']]);
  });

  it('the actor_type claim names the issuer type; one outside the Strand-Actor format is refused', async () => {
    const svc = await token({ sub: 'billing', roles: ['admin'], actor_type: 'service' });
    expectOk(await command('order/svc-1/PlaceOrder', { customerId: 'C1', items: [{ sku: 'S', quantity: 1, priceCents: 5 }] }, svc));
    expect((await streamEvents(nc.nc, 'EVENTS', 'order', 'svc-1')).map((e) => e.envelope.actor)).toEqual(['service:billing']);
    for (const bad of [await token({ sub: 'billing', roles: ['admin'], actor_type: 'not ok' }), await token({ sub: 'x'.repeat(129), roles: ['admin'] }), await token({ sub: 'a b', roles: ['admin'] })]) {
      expectFailed(await command('order/svc-2/PlaceOrder', { customerId: 'C1', items: [{ sku: 'S', quantity: 1, priceCents: 5 }] }, bad), 403, ErrorCode.FORBIDDEN, /cannot name a command's issuer/);
    }
  });
});

describe("commands: the access policy (taskAccess)", () => {
  it('before the actor (canCommand): a coordinator may not send order commands; a principal without a role nothing', async () => {
    expectFailed(await command('order/pol-1/PlaceOrder', { customerId: 'C1', items: [{ sku: 'S', quantity: 1, priceCents: 5 }] }, tokens.cc1), 403, ErrorCode.FORBIDDEN, 'coordinators may send commands only to tasks');
    expectFailed(await command('task/pol-1/CreateTask', newTask('eve'), tokens.nobody), 403, ErrorCode.FORBIDDEN, 'commands need the admin or coordinator role');
    expect(await streamEvents(nc.nc, 'EVENTS', 'order', 'pol-1')).toEqual([]);
    expect(await streamEvents(nc.nc, 'EVENTS', 'task', 'pol-1')).toEqual([]);
    // Intake's own checks come first: an invalid command is refused as such, whoever sends it.
    expectFailed(await command('task/pol-1/CreateTask', { title: 5 }, tokens.nobody), 400, ErrorCode.VALIDATION_FAILED);
  });

  it('inside the actor, on the state it decides on (canDecide): a coordinator completes only tasks assigned to them', async () => {
    expectOk(await command('task/pol-2/CreateTask', newTask('CC1'), tokens.admin));
    expectFailed(await command('task/pol-2/CompleteTask', {}, tokens.cc2), 403, ErrorCode.FORBIDDEN, 'coordinators may complete only tasks assigned to them');
    // Reassigned to CC2: now CC2 may, and CC1 no longer.
    expectOk(await command('task/pol-2/AssignTask', { assignedTo: 'CC2' }, tokens.cc1));
    expectFailed(await command('task/pol-2/CompleteTask', {}, tokens.cc1), 403, ErrorCode.FORBIDDEN);
    const done = expectOk(await command('task/pol-2/CompleteTask', { notes: 'ok' }, tokens.cc2));
    expect(done.version).toBe(3);
    // Other commands are not limited to the assignee.
    expectOk(await command('task/pol-3/CreateTask', newTask('CC1'), tokens.cc2));
  });

  it('a refusal on a state another instance has since changed is decided again on the fresh state', async () => {
    const other = await startStrand(nats.url, { STRAND_AUTH: 'jwt', STRAND_JWT_SECRET: SECRET, STRAND_JWT_ISSUER: ISSUER, STRAND_JWT_AUDIENCE: AUDIENCE, STRAND_ROLES: 'commands' });
    try {
      // This instance caches the task assigned to CC1.
      expectOk(await command('task/pol-4/CreateTask', newTask('CC1'), tokens.admin));
      // The other instance (its own actor for the task) reassigns it to CC2.
      expectOk(await nc.send('cmd.task.pol-4.AssignTask', { assignedTo: 'CC2' }).then((body) => ({ status: body.ok ? 200 : 0, body, headers: {} })));
      // Sent here, where the cached state still says CC1: the refusal is checked against the
      // stream's head, the actor catches up, and CC2 may complete it.
      expectOk(await command('task/pol-4/CompleteTask', {}, tokens.cc2));
    } finally {
      await other.stop();
    }
  });

  it("a command forwarded to the instance that owns its partition is checked there, on the owner's state", async () => {
    // Another instance of the same deployment: same configuration, same policy, no database.
    const other = await Strand.start({
      config: loadConfig({ STRAND_AUTH: 'jwt', STRAND_JWT_SECRET: SECRET, STRAND_JWT_ISSUER: ISSUER, STRAND_JWT_AUDIENCE: AUDIENCE, STRAND_ROLES: 'commands', STRAND_ACTOR_IDLE_MS: '600000' }),
      aggregates,
      access: taskAccess,
      natsUrl: nats.url,
      log: pino({ level: process.env['TEST_LOG_LEVEL'] ?? 'silent' }),
      defaultMetrics: false,
    });
    try {
      const self = strand.region!.status().instance;
      const them = other.region!.status().instance;
      // Wait until the other instance owns partitions, then pick a task ID in one of them.
      let id = '';
      await eventually(() => {
        const owners = strand.region!.status().owners;
        const partitions = owners.length;
        for (let i = 0; i < 500 && !id; i++) if (owners[partitionOf('task', `fwd-${i}`, partitions)] === them) id = `fwd-${i}`;
        return id !== '' && owners.includes(self);
      }, 'the other instance to own partitions', 20_000);
      expectOk(await command(`task/${id}/CreateTask`, newTask('CC1'), tokens.admin));
      // Sent here, decided there: the owner's actor rebuilt the policy's check from the forwarded principal.
      expectFailed(await command(`task/${id}/CompleteTask`, {}, tokens.cc2), 403, ErrorCode.FORBIDDEN, 'coordinators may complete only tasks assigned to them');
      expectOk(await command(`task/${id}/CompleteTask`, {}, tokens.cc1));
      expect((await streamEvents(nc.nc, 'EVENTS', 'task', id)).map((e) => e.envelope.actor)).toEqual(['user:ops-1', 'user:CC1']);
    } finally {
      await other.stop();
    }
  });

  it("an instance's first command, decided on a guessed empty state, is authorized on the loaded state", async () => {
    expectOk(await command('task/pol-5/CreateTask', newTask('CC1'), tokens.admin));
    // Dropped from memory: the next command is the instance's first in this process again.
    expect(strand.actors.passivate('task', 'pol-5')).toBe(true);
    expectOk(await command('task/pol-5/CompleteTask', {}, tokens.cc1));
  });
});

describe('operator routes: the admin role', () => {
  it('a coordinator is refused 403 FORBIDDEN on every projection route; an admin is let through', async () => {
    const routes: [string, string][] = [
      ['GET', '/projections'],
      ['GET', '/projections/task_list_view'],
      ['POST', '/projections/task_list_view/rebuild'],
      ['GET', '/projections/task_list_view/dead-letters'],
      ['POST', '/projections/task_list_view/dead-letters/1/retry'],
      ['DELETE', '/projections/task_list_view/dead-letters/1'],
    ];
    for (const [method, url] of routes) {
      expectError(await request(method as 'GET' | 'POST' | 'DELETE', url, { token: tokens.cc1 }), 403, ErrorCode.FORBIDDEN);
      expectError(await request(method as 'GET' | 'POST' | 'DELETE', url, { token: tokens.nobody }), 403, ErrorCode.FORBIDDEN);
    }
    expectError(await request('DELETE', '/projections/task_list_view/dead-letters/1', { token: tokens.admin }), 404, ErrorCode.DEAD_LETTER_NOT_FOUND);
    expect((await get('/projections', tokens.admin)).status).toBe(200);
    expect((await get('/projections/task_list_view', tokens.admin)).status).toBe(200);
    expect((await get('/projections/task_list_view/dead-letters', tokens.admin)).body).toEqual({ deadLetters: [] });
    expectError(await request('POST', '/projections/task_list_view/dead-letters/1/retry', { token: tokens.admin }), 404, ErrorCode.DEAD_LETTER_NOT_FOUND);
    const rebuild = await request('POST', '/projections/member_task_history/rebuild', { token: tokens.admin });
    expect(rebuild.status).toBe(202);
  });
});

describe('reads: the access policy (taskAccess)', () => {
  let seq = 0;
  beforeAll(async () => {
    expectOk(await command('task/read-1/CreateTask', newTask('CC1'), tokens.admin));
    seq = expectOk(await command('task/read-2/CreateTask', newTask('CC2'), tokens.admin)).seq;
  });

  it('views: a coordinator reads their own tasks, filtered on assignedTo = sub; other views, or no filter, are 403', async () => {
    const own = await get(`/views/task_list_view?assignedTo=CC1&minSeq=${seq}`, tokens.cc1);
    expect(own.status).toBe(200);
    expect(own.body.rows.map((r: any) => r.taskId)).toContain('read-1');
    expect(own.body.rows.every((r: any) => r.assignedTo === 'CC1')).toBe(true);
    expectError(await get('/views/task_list_view?assignedTo=CC2', tokens.cc1), 403, ErrorCode.FORBIDDEN);
    expectError(await get('/views/task_list_view', tokens.cc1), 403, ErrorCode.FORBIDDEN);
    expectError(await get('/views/order_list', tokens.cc1), 403, ErrorCode.FORBIDDEN);
    expectError(await get('/views/task_list_view?assignedTo=eve', tokens.nobody), 403, ErrorCode.FORBIDDEN, 'reading needs the admin or coordinator role');
    // An admin sees everyone's.
    const all = await get(`/views/task_list_view?minSeq=${seq}`, tokens.admin);
    expect(all.body.rows.map((r: any) => r.taskId)).toEqual(expect.arrayContaining(['read-1', 'read-2']));
  });

  it("a row by key: shown when it is the coordinator's, 404 ROW_NOT_FOUND when it is someone else's", async () => {
    expect((await get(`/views/task_list_view/read-1?minSeq=${seq}`, tokens.cc1)).body.row).toMatchObject({ taskId: 'read-1', assignedTo: 'CC1' });
    const hidden = await get(`/views/task_list_view/read-2?minSeq=${seq}`, tokens.cc1);
    expectError(hidden, 404, ErrorCode.ROW_NOT_FOUND);
    expect(hidden.body).not.toHaveProperty('row');
    expectError(await get(`/views/task_list_view/no-such-task`, tokens.cc1), 404, ErrorCode.ROW_NOT_FOUND);
  });

  it('aggregates: a coordinator may read tasks, not orders', async () => {
    expect((await get('/aggregates/task/read-2', tokens.cc1)).status).toBe(200);
    expect((await get('/aggregates/task/read-2/events', tokens.cc1)).status).toBe(200);
    expectError(await get('/aggregates/order/svc-1', tokens.cc1), 403, ErrorCode.FORBIDDEN, 'coordinators may read only task aggregates');
    expectError(await get('/aggregates/order/svc-1/events', tokens.cc1), 403, ErrorCode.FORBIDDEN);
    expect((await get('/aggregates/order/svc-1', tokens.admin)).status).toBe(200);
  });
});

describe('STRAND_AUTH=dev', () => {
  it('a token-less request is the dev admin and its Strand-Actor header is trusted; a presented token is verified and names the issuer', async () => {
    const dev = await startStrand(nats.url, { STRAND_AUTH: 'dev', STRAND_JWT_SECRET: SECRET, STRAND_JWT_ISSUER: ISSUER, STRAND_JWT_AUDIENCE: AUDIENCE });
    try {
      expectOk(await command('task/dev-1/CreateTask', newTask('CC1'), undefined, { 'Strand-Actor': 'user:CC9' }, dev));
      expectOk(await command('task/dev-1/AssignTask', { assignedTo: 'CC2' }, tokens.cc1, {}, dev));
      expectFailed(await command('task/dev-1/CancelTask', { reason: 'x' }, 'garbage', {}, dev), 401, ErrorCode.UNAUTHORIZED, 'malformed token');
      expect((await streamEvents(nc.nc, 'EVENTS', 'task', 'dev-1')).map((e) => e.envelope.actor)).toEqual(['user:CC9', 'user:CC1']);
      expect((await request('GET', '/aggregates/task/dev-1', { on: dev })).status).toBe(200);
    } finally {
      await dev.stop();
    }
  });
});

describe('/openapi.json', () => {
  it('declares the bearer scheme, and UNAUTHORIZED on every route but the open ones', async () => {
    const d = (await get('/openapi.json', tokens.nobody)).body;
    expect(d.components.securitySchemes.bearer).toMatchObject({ type: 'http', scheme: 'bearer', bearerFormat: 'JWT' });
    const open = ['/health/live', '/health/ready', '/metrics', '/dashboard'];
    for (const [path, ops] of Object.entries(d.paths as Record<string, Record<string, any>>)) {
      for (const op of Object.values(ops)) {
        if (open.includes(path)) {
          expect(op.security, path).toEqual([]);
          expect(op['x-error-codes'], path).not.toContain('UNAUTHORIZED');
        } else {
          expect(op.security, path).toEqual([{ bearer: [] }]);
          expect(op['x-error-codes'], path).toContain('UNAUTHORIZED');
          expect(op.responses['401'], path).toBeDefined();
        }
      }
    }
    for (const path of ['/commands/{aggregate}/{id}/{command}', '/aggregates/{aggregate}/{id}', '/views/{view}', '/projections/{name}/rebuild']) {
      expect((Object.values(d.paths[path] as Record<string, any>)[0] as any)['x-error-codes'], path).toContain('FORBIDDEN');
    }
  });
});
