import type { IncomingMessage } from 'node:http';
import { exportSPKI, generateKeyPair, SignJWT, type CryptoKey, type JWTPayload } from 'jose';
import { beforeAll, describe, expect, it } from 'vitest';
import { taskAccess } from '../actors/access.js';
import { ConfigError, loadConfig, type Config } from '../src/config.js';
import {
  allowAll,
  bearerToken,
  checkSubscribe,
  createAuthenticator,
  rowVisible,
  selectSubprotocol,
  subscriptionRequest,
  type AccessPolicy,
  type Principal,
  type SubscriptionRequest,
} from '../src/live/auth.js';

const SECRET = 'a-test-secret-that-is-at-least-32-characters-long';
const OTHER_SECRET = 'another-secret-that-is-at-least-32-characters-long';

/** A fake upgrade request: the authenticator only reads headers and url. */
function req(headers: Record<string, string> = {}, url = '/live'): IncomingMessage {
  const lower = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  return { headers: lower, url } as unknown as IncomingMessage;
}
const bearer = (token: string) => req({ Authorization: `Bearer ${token}` });

function config(env: Record<string, string> = {}): Config {
  return loadConfig(env);
}

const now = () => Math.floor(Date.now() / 1000);

async function hs256(claims: JWTPayload, secret = SECRET, header: Record<string, unknown> = {}): Promise<string> {
  return new SignJWT(claims).setProtectedHeader({ alg: 'HS256', ...header }).sign(new TextEncoder().encode(secret));
}

const b64url = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');

let rsa: { privateKey: CryptoKey; publicKey: CryptoKey; pem: string };
beforeAll(async () => {
  const { privateKey, publicKey } = await generateKeyPair('RS256');
  rsa = { privateKey, publicKey, pem: await exportSPKI(publicKey) };
});
const rs256 = (claims: JWTPayload) => new SignJWT(claims).setProtectedHeader({ alg: 'RS256' }).sign(rsa.privateKey);

describe('auth mode', () => {
  it('defaults to dev outside production: every token-less connection is the dev admin', async () => {
    const auth = await createAuthenticator(config());
    expect(auth.mode).toBe('dev');
    const out = await auth.authenticate(req());
    expect(out).toEqual({ ok: true, principal: { sub: 'dev', roles: ['admin'], claims: {} } });
  });

  it('defaults to jwt in production, and needs a key there', async () => {
    await expect(createAuthenticator(config({ NODE_ENV: 'production' }))).rejects.toThrow(ConfigError);
    await expect(createAuthenticator(config({ NODE_ENV: 'production' }))).rejects.toThrow(/STRAND_JWT_SECRET.*STRAND_JWT_PUBLIC_KEY/);
    const auth = await createAuthenticator(config({ NODE_ENV: 'production', STRAND_JWT_SECRET: SECRET }));
    expect(auth.mode).toBe('jwt');
    expect(await auth.authenticate(req())).toEqual({ ok: false, reason: 'no bearer token' });
  });

  it('refuses STRAND_AUTH=dev in production', async () => {
    const p = createAuthenticator(config({ NODE_ENV: 'production', STRAND_AUTH: 'dev', STRAND_JWT_SECRET: SECRET }));
    await expect(p).rejects.toThrow(ConfigError);
    await expect(p).rejects.toThrow(/development default is off in production/);
  });

  it('refuses STRAND_AUTH=jwt without a key, and a public key that is not SPKI PEM', async () => {
    await expect(createAuthenticator(config({ STRAND_AUTH: 'jwt' }))).rejects.toThrow(ConfigError);
    await expect(createAuthenticator(config({ STRAND_AUTH: 'jwt', STRAND_JWT_PUBLIC_KEY: 'not a key' }))).rejects.toThrow(/STRAND_JWT_PUBLIC_KEY/);
  });

  it('dev mode still verifies a presented token, and refuses a bad one', async () => {
    const auth = await createAuthenticator(config({ STRAND_JWT_SECRET: SECRET }));
    expect(auth.mode).toBe('dev');
    const good = await auth.authenticate(bearer(await hs256({ sub: 'alice', roles: ['coordinator'] })));
    expect(good).toMatchObject({ ok: true, principal: { sub: 'alice', roles: ['coordinator'] } });
    expect(await auth.authenticate(bearer(await hs256({ sub: 'alice' }, OTHER_SECRET)))).toEqual({ ok: false, reason: 'bad signature' });
  });

  it('dev mode without a key refuses a presented token instead of ignoring it', async () => {
    const auth = await createAuthenticator(config());
    const out = await auth.authenticate(bearer(await hs256({ sub: 'alice' })));
    expect(out.ok).toBe(false);
  });
});

describe('jwt mode', () => {
  const hsConfig = () => config({ STRAND_AUTH: 'jwt', STRAND_JWT_SECRET: SECRET });
  const rsConfig = () => config({ STRAND_AUTH: 'jwt', STRAND_JWT_PUBLIC_KEY: rsa.pem });

  it('accepts an HS256 token', async () => {
    const auth = await createAuthenticator(hsConfig());
    const out = await auth.authenticate(bearer(await hs256({ sub: 'alice', roles: ['coordinator'], exp: now() + 60 })));
    expect(out.ok).toBe(true);
    if (!out.ok) return;
    expect(out.principal.sub).toBe('alice');
    expect(out.principal.roles).toEqual(['coordinator']);
    expect(out.principal.claims).toMatchObject({ sub: 'alice', roles: ['coordinator'] });
  });

  it('accepts an RS256 token', async () => {
    const auth = await createAuthenticator(rsConfig());
    const out = await auth.authenticate(bearer(await rs256({ sub: 'bob', role: 'admin' })));
    expect(out).toMatchObject({ ok: true, principal: { sub: 'bob', roles: ['admin'] } });
  });

  it('accepts a public key written with literal \\n, as environment files often do', async () => {
    const auth = await createAuthenticator(config({ STRAND_AUTH: 'jwt', STRAND_JWT_PUBLIC_KEY: rsa.pem.trim().replace(/\n/g, '\\n') }));
    expect((await auth.authenticate(bearer(await rs256({ sub: 'bob' })))).ok).toBe(true);
  });

  it('accepts either algorithm when both keys are configured', async () => {
    const auth = await createAuthenticator(config({ STRAND_AUTH: 'jwt', STRAND_JWT_SECRET: SECRET, STRAND_JWT_PUBLIC_KEY: rsa.pem }));
    expect((await auth.authenticate(bearer(await hs256({ sub: 'a' })))).ok).toBe(true);
    expect((await auth.authenticate(bearer(await rs256({ sub: 'b' })))).ok).toBe(true);
  });

  it('refuses a wrong secret', async () => {
    const auth = await createAuthenticator(hsConfig());
    expect(await auth.authenticate(bearer(await hs256({ sub: 'alice' }, OTHER_SECRET)))).toEqual({ ok: false, reason: 'bad signature' });
  });

  it('refuses a token signed by another RSA key', async () => {
    const auth = await createAuthenticator(rsConfig());
    const other = await generateKeyPair('RS256');
    const token = await new SignJWT({ sub: 'bob' }).setProtectedHeader({ alg: 'RS256' }).sign(other.privateKey);
    expect(await auth.authenticate(bearer(token))).toEqual({ ok: false, reason: 'bad signature' });
  });

  it('refuses an expired token, with 5 s of tolerance', async () => {
    const auth = await createAuthenticator(hsConfig());
    expect(await auth.authenticate(bearer(await hs256({ sub: 'a', exp: now() - 60 })))).toEqual({ ok: false, reason: 'token expired' });
    expect((await auth.authenticate(bearer(await hs256({ sub: 'a', exp: now() - 2 })))).ok).toBe(true);
  });

  it('refuses a token that is not yet valid, with 5 s of tolerance', async () => {
    const auth = await createAuthenticator(hsConfig());
    expect(await auth.authenticate(bearer(await hs256({ sub: 'a', nbf: now() + 60 })))).toEqual({ ok: false, reason: 'token not yet valid' });
    expect((await auth.authenticate(bearer(await hs256({ sub: 'a', nbf: now() + 2 })))).ok).toBe(true);
  });

  it('checks issuer and audience when configured', async () => {
    const auth = await createAuthenticator(
      config({ STRAND_AUTH: 'jwt', STRAND_JWT_SECRET: SECRET, STRAND_JWT_ISSUER: 'https://idp.example', STRAND_JWT_AUDIENCE: 'strand' }),
    );
    const ok = await auth.authenticate(bearer(await hs256({ sub: 'a', iss: 'https://idp.example', aud: ['other', 'strand'] })));
    expect(ok.ok).toBe(true);
    expect(await auth.authenticate(bearer(await hs256({ sub: 'a', iss: 'https://evil.example', aud: 'strand' })))).toEqual({
      ok: false,
      reason: 'wrong issuer',
    });
    expect(await auth.authenticate(bearer(await hs256({ sub: 'a', iss: 'https://idp.example', aud: 'other' })))).toEqual({
      ok: false,
      reason: 'wrong audience',
    });
    // Missing iss/aud are refused too (by the same reasons).
    expect(await auth.authenticate(bearer(await hs256({ sub: 'a', aud: 'strand' })))).toEqual({ ok: false, reason: 'wrong issuer' });
    expect(await auth.authenticate(bearer(await hs256({ sub: 'a', iss: 'https://idp.example' })))).toEqual({ ok: false, reason: 'wrong audience' });
  });

  it('requires a non-empty string sub', async () => {
    const auth = await createAuthenticator(hsConfig());
    expect(await auth.authenticate(bearer(await hs256({ roles: ['admin'] })))).toEqual({ ok: false, reason: 'token has no subject' });
    expect(await auth.authenticate(bearer(await hs256({ sub: '' })))).toEqual({ ok: false, reason: 'token has no subject' });
    // A non-string sub cannot be produced with SignJWT's claims, so sign the raw payload.
    const header = b64url({ alg: 'HS256' });
    const payload = b64url({ sub: 42 });
    const { createHmac } = await import('node:crypto');
    const sig = createHmac('sha256', SECRET).update(`${header}.${payload}`).digest('base64url');
    expect(await auth.authenticate(bearer(`${header}.${payload}.${sig}`))).toEqual({ ok: false, reason: 'token has no subject' });
  });

  it('refuses alg none', async () => {
    const auth = await createAuthenticator(hsConfig());
    const token = `${b64url({ alg: 'none', typ: 'JWT' })}.${b64url({ sub: 'admin', roles: ['admin'] })}.`;
    const out = await auth.authenticate(bearer(token));
    expect(out).toEqual({ ok: false, reason: 'algorithm not allowed' });
  });

  it('refuses an HS256 token signed with the RSA public key against an RS256-only config (algorithm confusion)', async () => {
    const auth = await createAuthenticator(rsConfig());
    // The classic attack: use the (public) PEM as the HMAC secret.
    const forged = await hs256({ sub: 'mallory', roles: ['admin'] }, rsa.pem);
    expect(await auth.authenticate(bearer(forged))).toEqual({ ok: false, reason: 'algorithm not allowed' });
    // And the other way round: an RS256 token against an HS256-only config.
    const hsAuth = await createAuthenticator(hsConfig());
    expect(await hsAuth.authenticate(bearer(await rs256({ sub: 'bob' })))).toEqual({ ok: false, reason: 'algorithm not allowed' });
  });

  it('refuses malformed tokens with a short reason that does not leak internals', async () => {
    const auth = await createAuthenticator(hsConfig());
    for (const token of ['garbage', 'a.b.c', `${b64url({ alg: 'HS256' })}.not-json.sig`, 'x'.repeat(10_000)]) {
      const out = await auth.authenticate(bearer(token));
      expect(out.ok).toBe(false);
      if (!out.ok) expect(['malformed token', 'bad signature', 'invalid token']).toContain(out.reason);
    }
  });

  it('refuses a missing token', async () => {
    const auth = await createAuthenticator(hsConfig());
    expect(await auth.authenticate(req())).toEqual({ ok: false, reason: 'no bearer token' });
    expect(await auth.authenticate(req({ Authorization: 'Basic dXNlcjpwYXNz' }))).toEqual({ ok: false, reason: 'no bearer token' });
    expect(await auth.authenticate(req({ 'Sec-WebSocket-Protocol': 'strand.v1' }))).toEqual({ ok: false, reason: 'no bearer token' });
    expect(await auth.authenticate(req({}, '/live?access_token='))).toEqual({ ok: false, reason: 'no bearer token' });
  });

  describe('token carriers', () => {
    it('the Authorization header (scheme case-insensitive)', async () => {
      const auth = await createAuthenticator(hsConfig());
      const token = await hs256({ sub: 'h' });
      expect(await auth.authenticate(req({ Authorization: `Bearer ${token}` }))).toMatchObject({ ok: true, principal: { sub: 'h' } });
      expect(await auth.authenticate(req({ Authorization: `bearer ${token}` }))).toMatchObject({ ok: true, principal: { sub: 'h' } });
    });

    it('a bearer.<token> entry of Sec-WebSocket-Protocol', async () => {
      const auth = await createAuthenticator(hsConfig());
      const token = await hs256({ sub: 'p' });
      const out = await auth.authenticate(req({ 'Sec-WebSocket-Protocol': `strand.v1, bearer.${token}` }));
      expect(out).toMatchObject({ ok: true, principal: { sub: 'p' } });
    });

    it('the access_token query parameter', async () => {
      const auth = await createAuthenticator(hsConfig());
      const token = await hs256({ sub: 'q' });
      const out = await auth.authenticate(req({}, `/live?foo=1&access_token=${encodeURIComponent(token)}`));
      expect(out).toMatchObject({ ok: true, principal: { sub: 'q' } });
    });

    it('takes the header first, then the subprotocol, then the query', () => {
      const r = req({ Authorization: 'Bearer h', 'Sec-WebSocket-Protocol': 'strand.v1, bearer.p' }, '/live?access_token=q');
      expect(bearerToken(r)).toBe('h');
      expect(bearerToken(req({ 'Sec-WebSocket-Protocol': 'strand.v1, bearer.p' }, '/live?access_token=q'))).toBe('p');
      expect(bearerToken(req({}, '/live?access_token=q'))).toBe('q');
      expect(bearerToken(req())).toBeUndefined();
    });

    it('the server selects strand.v1, never the token entry', () => {
      expect(selectSubprotocol(new Set(['bearer.abc', 'strand.v1']))).toBe('strand.v1');
      expect(selectSubprotocol(new Set(['bearer.abc']))).toBe(false);
    });
  });

  describe('roles', () => {
    it('from the roles claim (string entries only)', async () => {
      const auth = await createAuthenticator(hsConfig());
      const out = await auth.authenticate(bearer(await hs256({ sub: 'a', roles: ['admin', 7, 'coordinator'] })));
      expect(out.ok && out.principal.roles).toEqual(['admin', 'coordinator']);
    });

    it('from a role string', async () => {
      const auth = await createAuthenticator(hsConfig());
      const out = await auth.authenticate(bearer(await hs256({ sub: 'a', role: 'coordinator' })));
      expect(out.ok && out.principal.roles).toEqual(['coordinator']);
    });

    it('none when neither is there', async () => {
      const auth = await createAuthenticator(hsConfig());
      const out = await auth.authenticate(bearer(await hs256({ sub: 'a', roles: 'admin' })));
      expect(out.ok && out.principal.roles).toEqual([]);
    });
  });
});

describe('authorization hook', () => {
  const principal = (sub: string, roles: string[]): Principal => ({ sub, roles, claims: {} });
  const admin = principal('root', ['admin']);
  const alice = principal('alice', ['coordinator']);
  const nobody = principal('eve', []);
  const view = (extra: Partial<Extract<SubscriptionRequest, { kind: 'view' }>> = {}): SubscriptionRequest => ({ kind: 'view', view: 'task_list_view', ...extra });
  const row = (assignedTo: string) => ({ taskId: 't-1', assignedTo, status: 'pending' });

  it('allowAll allows everything and shows every row', () => {
    expect(allowAll.canSubscribe(nobody, view())).toBe(true);
    expect(rowVisible(allowAll, nobody, 'task_list_view', row('x'))).toBe(true);
  });

  it('taskAccess: an admin subscribes to anything and sees every row', () => {
    expect(taskAccess.canSubscribe(admin, view())).toBe(true);
    expect(taskAccess.canSubscribe(admin, { kind: 'view', view: 'order_list' })).toBe(true);
    expect(taskAccess.canSubscribe(admin, { kind: 'aggregate', aggregate: 'order', id: 'o-1' })).toBe(true);
    expect(rowVisible(taskAccess, admin, 'task_list_view', row('bob'))).toBe(true);
  });

  it('taskAccess: a coordinator may filter on their own assignedTo, other columns alongside', () => {
    expect(taskAccess.canSubscribe(alice, view({ filter: { assignedTo: 'alice' } }))).toBe(true);
    expect(taskAccess.canSubscribe(alice, view({ filter: { assignedTo: 'alice', status: 'pending' } }))).toBe(true);
    expect(rowVisible(taskAccess, alice, 'task_list_view', row('alice'))).toBe(true);
  });

  it("taskAccess: a coordinator may not filter on someone else's tasks, or subscribe without a filter", () => {
    const other = taskAccess.canSubscribe(alice, view({ filter: { assignedTo: 'bob' } }));
    expect(other).toEqual(expect.stringContaining('assignedTo'));
    expect(taskAccess.canSubscribe(alice, view())).toEqual(expect.any(String));
    expect(taskAccess.canSubscribe(alice, view({ filter: { status: 'pending' } }))).toEqual(expect.any(String));
  });

  it('taskAccess: a coordinator may subscribe by key, and sees the row only while it is theirs', () => {
    expect(taskAccess.canSubscribe(alice, view({ key: 't-1' }))).toBe(true);
    expect(taskAccess.canSee?.(alice, 'task_list_view', row('alice'))).toBe(true);
    expect(taskAccess.canSee?.(alice, 'task_list_view', row('bob'))).toBe(false);
    expect(taskAccess.canSee?.(alice, 'order_list', { assignedTo: 'alice' })).toBe(false);
  });

  it('taskAccess: a coordinator may follow task aggregates, nothing else', () => {
    expect(taskAccess.canSubscribe(alice, { kind: 'aggregate', aggregate: 'task', id: 't-1' })).toBe(true);
    expect(taskAccess.canSubscribe(alice, { kind: 'aggregate', aggregate: 'order', id: 'o-1' })).toEqual(expect.any(String));
    expect(taskAccess.canSubscribe(alice, { kind: 'view', view: 'order_list' })).toEqual(expect.any(String));
    expect(taskAccess.canSubscribe(alice, { kind: 'view', view: 'member_task_history', filter: { assignedTo: 'alice' } })).toEqual(
      expect.any(String),
    );
  });

  it('taskAccess: a principal without a role is refused everything', () => {
    expect(taskAccess.canSubscribe(nobody, view({ filter: { assignedTo: 'eve' } }))).toEqual(expect.stringContaining('role'));
    expect(taskAccess.canSubscribe(nobody, { kind: 'aggregate', aggregate: 'task', id: 't-1' })).toEqual(expect.any(String));
    expect(rowVisible(taskAccess, nobody, 'task_list_view', row('eve'))).toBe(false);
  });

  it('the dev principal is an admin under taskAccess', async () => {
    const out = await (await createAuthenticator(config())).authenticate(req());
    expect(out.ok && taskAccess.canSubscribe(out.principal, view())).toBe(true);
  });

  it('checkSubscribe and rowVisible fail closed when a policy throws', () => {
    const broken: AccessPolicy = {
      canSubscribe: () => {
        throw new Error('db down');
      },
      canSee: () => {
        throw new Error('db down');
      },
    };
    expect(checkSubscribe(broken, admin, view())).toBe('authorization check failed');
    expect(rowVisible(broken, admin, 'task_list_view', row('root'))).toBe(false);
    expect(checkSubscribe(taskAccess, alice, view({ filter: { assignedTo: 'alice' } }))).toBe(true);
  });

  it('subscriptionRequest maps protocol messages', () => {
    expect(subscriptionRequest({ type: 'subscribe', id: 's1', view: 'task_list_view', filter: { assignedTo: 'alice' } })).toEqual({
      kind: 'view',
      view: 'task_list_view',
      filter: { assignedTo: 'alice' },
    });
    expect(subscriptionRequest({ type: 'subscribe', id: 's1', view: 'task_list_view', key: 't-1', after: 4 })).toEqual({
      kind: 'view',
      view: 'task_list_view',
      key: 't-1',
    });
    expect(subscriptionRequest({ type: 'subscribe', id: 's2', aggregate: 'task', aggregateId: 't-1', afterVersion: 3 })).toEqual({
      kind: 'aggregate',
      aggregate: 'task',
      id: 't-1',
    });
  });
});
