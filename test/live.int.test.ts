import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { taskAccess } from '../actors/access.js';
import type { Strand } from '../src/app.js';
import type { CommandAccepted } from '../src/commands/types.js';
import { startTestNats, type TestNats } from './support/nats.js';
import { createTestDatabase, type TestDatabase } from './support/postgres.js';
import { LiveClient } from './support/live.js';
import { CommandClient, startStrandWithDb } from './support/strand.js';
import { loadConfig } from '../src/config.js';
import { Strand as StrandApp } from '../src/app.js';
import pino from 'pino';
import { aggregates, projections } from '../actors/index.js';

let nats: TestNats;
let db: TestDatabase;
let strand: Strand;
let client: CommandClient;
let wsUrl: string;

beforeAll(async () => {
  nats = await startTestNats();
  db = await createTestDatabase();
  strand = await startStrandWithDb(nats.url, db.url, { STRAND_WS_RATE: '200' });
  const url = await strand.http.listen({ port: 0, host: '127.0.0.1' });
  wsUrl = `${url.replace('http', 'ws')}/live`;
  client = await CommandClient.connect(nats.url);
});

afterAll(async () => {
  await client?.close();
  await strand?.stop();
  await db?.drop();
  await nats?.cleanup();
});

async function createTask(id: string, assignedTo: string): Promise<CommandAccepted> {
  const r = await client.send(`cmd.task.${id}.CreateTask`, { title: `Task ${id}`, memberId: 'M1', assignedTo });
  expect(r.ok).toBe(true);
  return r as CommandAccepted;
}

describe('live views over WebSocket', { timeout: 120_000 }, () => {
  it('sends the current rows, then each change in order with its version', async () => {
    await createTask('lv-1', 'CC1');
    await createTask('lv-2', 'CC2');
    const w = await LiveClient.connect(wsUrl);
    const last = await createTask('lv-3', 'CC1');
    w.send({ type: 'subscribe', id: 'board', view: 'task_list_view', filter: { assignedTo: 'CC1' }, minSeq: last.seq });
    await w.until((c) => c.of('snapshot').length === 1, 'the snapshot');
    const snap = w.of('snapshot')[0]!;
    expect(snap.checkpoint).toBeGreaterThanOrEqual(last.seq);
    expect(snap.rows.map((r) => r['taskId']).sort()).toEqual(['lv-1', 'lv-3']);
    expect(snap).toMatchObject({ complete: true, fresh: false });

    await createTask('lv-4', 'CC1'); // joins the filter
    await client.send('cmd.task.lv-1.AssignTask', { assignedTo: 'CC9' }); // leaves it: a delete
    await client.send('cmd.task.lv-3.CompleteTask', {}, { 'Strand-Actor': 'user:CC1' }); // changes inside it
    await createTask('lv-5', 'CC2'); // never shown
    await w.until((c) => c.copies.get('board')?.get('lv-3')?.['status'] === 'completed' && !c.copies.get('board')?.has('lv-1'), 'the changes');
    const changes = w.of('change');
    // However the commands fell into batches, the client sees these row changes in this order.
    expect(changes.flatMap((c) => c.changes.map((x) => [x.op, x.key]))).toEqual([
      ['upsert', 'lv-4'],
      ['delete', 'lv-1'],
      ['upsert', 'lv-3'],
    ]);
    const versions = changes.map((c) => c.version);
    expect([...versions].sort((a, b) => a - b)).toEqual(versions);
    expect(versions[0]).toBeGreaterThan(snap.checkpoint);
    expect([...w.copies.get('board')!.keys()].sort()).toEqual(['lv-3', 'lv-4']);
    // Metrics of what happened: this connection and subscription, the messages, the push latency.
    const m = await strand.metrics.registry.getMetricsAsJSON();
    const value = (name: string) => m.find((x) => x.name === name)?.values.find((v) => !('le' in v.labels))?.value ?? 0;
    expect(value('strand_live_connections')).toBeGreaterThanOrEqual(1);
    expect(value('strand_live_subscriptions')).toBeGreaterThanOrEqual(1);
    expect(value('strand_live_messages_sent_total')).toBeGreaterThanOrEqual(w.messages.length);
    const pushes = m.find((x) => x.name === 'strand_live_push_latency_seconds')?.values.find((v) => (v as { metricName?: string }).metricName === 'strand_live_push_latency_seconds_count');
    expect(pushes?.value).toBeGreaterThan(0);
    await w.close();
  });

  it('sends an aggregate state then its events, and resumes after a version', async () => {
    await createTask('agg-1', 'CC1');
    const w = await LiveClient.connect(wsUrl);
    w.send({ type: 'subscribe', id: 'a', aggregate: 'task', aggregateId: 'agg-1' });
    await w.until((c) => c.of('state').length === 1, 'state');
    expect(w.of('state')[0]).toMatchObject({ version: 1, state: { status: 'pending', assignedTo: 'CC1' }, fresh: false });
    await client.send('cmd.task.agg-1.AssignTask', { assignedTo: 'CC2' });
    await client.send('cmd.task.agg-1.AssignTask', { assignedTo: 'CC3' });
    await w.until((c) => c.of('event').length === 2, 'two events');
    expect(w.of('event').map((e) => [e.version, e.event['type']])).toEqual([
      [2, 'TaskAssigned'],
      [3, 'TaskAssigned'],
    ]);
    await w.close();
    const again = await LiveClient.connect(wsUrl);
    again.send({ type: 'subscribe', id: 'a', aggregate: 'task', aggregateId: 'agg-1', afterVersion: 1 });
    await again.until((c) => c.of('event').length === 2, 'missed events');
    expect(again.of('resumed')).toHaveLength(1);
    expect(again.of('event').map((e) => e.version)).toEqual([2, 3]);
    await again.close();
  });

  it('ends equal to the view after 100 reconnects in the middle of a stream of changes', async () => {
    const ids = Array.from({ length: 30 }, (_, i) => `rc-${i}`);
    for (const id of ids) await createTask(id, 'RC1');
    let writing = true;
    const writer = (async () => {
      let n = 0;
      while (writing) {
        const id = ids[n % ids.length]!;
        await client.send(`cmd.task.${id}.AssignTask`, { assignedTo: n % 3 === 0 ? 'RC2' : 'RC1' });
        n++;
      }
      return n;
    })();
    let copy = new Map<string, Record<string, unknown>>();
    let version: number | undefined;
    let first = 0;
    let fresh = 0;
    let resumed = 0;
    for (let i = 0; i < 100; i++) {
      const w = await LiveClient.connect(wsUrl);
      // The client keeps its copy and version across connections; a snapshot replaces them.
      w.copies.set('s', new Map(copy));
      if (version !== undefined) w.versions.set('s', version);
      w.send({ type: 'subscribe', id: 's', view: 'task_list_view', filter: { assignedTo: 'RC1' }, ...(version !== undefined ? { after: version } : {}) });
      await w.until((c) => c.of('snapshot').length + c.of('resumed').length > 0, 'snapshot or resumed');
      if (w.of('resumed').length > 0) resumed++;
      else if (w.of('snapshot')[0]!.fresh) fresh++;
      else first++;
      await new Promise((r) => setTimeout(r, 5 + (i % 4) * 10));
      copy = new Map(w.copies.get('s'));
      version = w.versions.get('s');
      w.ws.terminate(); // an abrupt drop, as a network failure would
    }
    writing = false;
    const sent = await writer;
    const last = ((await client.send('cmd.task.rc-0.AssignTask', { assignedTo: 'RC1' })) as CommandAccepted).seq;
    await strand.readSide!.waitFor('task_list_view', last, 20_000);
    const w = await LiveClient.connect(wsUrl);
    w.copies.set('s', new Map(copy));
    w.versions.set('s', version!);
    w.send({ type: 'subscribe', id: 's', view: 'task_list_view', filter: { assignedTo: 'RC1' }, after: version });
    await w.until((c) => c.of('snapshot').length + c.of('resumed').length > 0, 'final resume');
    await w.until((c) => (c.versions.get('s') ?? 0) >= last || c.of('snapshot').some((s) => s.checkpoint >= last), 'the last change');
    const truth = JSON.parse(JSON.stringify((await strand.views!.page('task_list_view', { assignedTo: 'RC1' }, 500)).rows)) as unknown[];
    const mine = [...w.copies.get('s')!.values()].sort((a, b) => String(a['taskId']).localeCompare(String(b['taskId'])));
    expect(mine).toEqual(truth);
    expect(sent).toBeGreaterThan(100);
    // The first subscription has nothing to resume; every later one names its version and is
    // answered by a resume, or, when what it missed is not available, by a snapshot marked fresh.
    expect({ first, resumedOrFresh: resumed + fresh }).toEqual({ first: 1, resumedOrFresh: 99 });
    // Nothing this test does outruns the buffer: a fresh snapshot comes only when the gateway
    // resynchronised (a gap in the change feed), so most reconnects resume exactly.
    expect(resumed).toBeGreaterThan(fresh);
    expect(resumed).toBeGreaterThan(50);
    await w.close();
  });

  it('shares changes between instances: a client on an instance without projections sees them', async () => {
    const config = loadConfig({ STRAND_ROLES: 'commands', STRAND_ACTOR_IDLE_MS: '600000' });
    const second = await StrandApp.start({ config, aggregates, projections, natsUrl: nats.url, databaseUrl: db.url, log: pino({ level: 'silent' }), defaultMetrics: false });
    try {
      const url = await second.http.listen({ port: 0, host: '127.0.0.1' });
      const w = await LiveClient.connect(`${url.replace('http', 'ws')}/live`);
      w.send({ type: 'subscribe', id: 'x', view: 'task_list_view', key: 'inst-1' });
      await w.until((c) => c.of('snapshot').length === 1, 'snapshot');
      expect(w.of('snapshot')[0]!.rows).toEqual([]);
      await createTask('inst-1', 'CC7');
      await w.until((c) => c.copies.get('x')?.get('inst-1')?.['assignedTo'] === 'CC7', 'the row from the other instance');
      await w.close();
    } finally {
      await second.stop();
    }
  });

  it('answers malformed, oversized, unknown and excessive messages with errors and keeps the connection', async () => {
    const w = await LiveClient.connect(wsUrl);
    w.send('this is not json');
    w.send({ type: 'subscribe' });
    w.send({ type: 'subscribe', id: 'u', view: 'no_such_view' });
    w.send({ type: 'subscribe', id: 'c', view: 'task_list_view', filter: { title: 'x' } });
    w.send({ type: 'subscribe', id: 'g', aggregate: 'task', aggregateId: 'bad id!' });
    w.send({ type: 'unsubscribe', id: 'never' });
    w.send({ type: 'ping', nonce: 'x'.repeat(20_000) });
    // Keys that would reach Object.prototype, and values that are not strings: refused, never
    // dropped (a dropped filter would subscribe to the whole view). Written as text: an object
    // literal's "__proto__" would set its prototype instead of being sent.
    w.send('{"type":"subscribe","id":"proto","view":"task_list_view","filter":{"__proto__":{"assignedTo":"x"}}}');
    w.send('{"type":"subscribe","id":"ctor","view":"task_list_view","filter":{"constructor":"x","assignedTo":"CC1"}}');
    w.send({ type: 'subscribe', id: 'num', view: 'task_list_view', filter: { assignedTo: 5 } });
    w.send({ type: 'subscribe', id: '', view: 'task_list_view' }); // not a valid ID: the error names none
    w.send({ type: 'ping', nonce: 'still-here' });
    await w.until((c) => c.of('pong').some((p) => p.nonce === 'still-here'), 'pong');
    await w.until((c) => c.of('error').length === 11, 'eleven errors');
    // Subscriptions answer asynchronously, so compare by subscription rather than by arrival.
    expect(w.of('error').map((e) => `${e.sub ?? '-'}:${e.code}`).sort()).toEqual(
      [
        '-:BAD_MESSAGE',
        '-:BAD_MESSAGE',
        'u:UNKNOWN_VIEW',
        'c:UNKNOWN_COLUMN',
        'g:BAD_REQUEST',
        'never:UNKNOWN_SUBSCRIPTION',
        '-:MESSAGE_TOO_LARGE',
        'proto:BAD_MESSAGE',
        'ctor:BAD_MESSAGE',
        'num:BAD_MESSAGE',
        '-:BAD_MESSAGE',
      ].sort(),
    );
    expect(w.of('error').find((e) => e.sub === 'proto')!.message).toContain('filter.__proto__');
    expect(w.of('snapshot')).toEqual([]);
    expect(w.closed).toBeUndefined();
    await w.close();

    // Subscription bookkeeping: duplicates, unsubscribe, and the per-connection limit (100 here).
    const subs = await LiveClient.connect(wsUrl);
    subs.send({ type: 'subscribe', id: 'k0', view: 'task_list_view', key: 'none-0' });
    subs.send({ type: 'subscribe', id: 'k0', view: 'task_list_view', key: 'none-0' });
    await subs.until((c) => c.of('snapshot').length === 1 && c.of('error').length === 1, 'duplicate refused');
    expect(subs.of('error')[0]).toMatchObject({ sub: 'k0', code: 'DUPLICATE_SUBSCRIPTION' });
    subs.send({ type: 'unsubscribe', id: 'k0' });
    await subs.until((c) => c.of('unsubscribed').length === 1, 'unsubscribed');
    for (let i = 1; i <= 101; i++) subs.send({ type: 'subscribe', id: `k${i}`, view: 'task_list_view', key: `none-${i}` });
    await subs.until((c) => c.of('snapshot').length === 101 && c.of('error').length === 2, 'the limit', 10_000);
    expect(subs.of('error')[1]).toMatchObject({ sub: 'k101', code: 'TOO_MANY_SUBSCRIPTIONS' });
    expect(subs.closed).toBeUndefined();
    await subs.close();

    const flood = await LiveClient.connect(wsUrl);
    for (let i = 0; i < 600; i++) flood.send({ type: 'ping', nonce: String(i) });
    await flood.until((c) => c.of('pong').length + c.of('error').length >= 600, 'all answers', 10_000);
    expect(flood.of('error').filter((e) => e.code === 'RATE_LIMITED').length).toBeGreaterThan(0);
    expect(flood.closed).toBeUndefined();
    await flood.close();
  });

  it('coalesces a lagging client\'s updates by key, latest wins, and it ends equal to the view', async () => {
    const local = await startStrandWithDb(nats.url, db.url, { STRAND_ROLES: 'commands', STRAND_WS_SEND_QUEUE_BYTES: '8192', STRAND_WS_MAX_PENDING: '1000' });
    try {
      const url = `${(await local.http.listen({ port: 0, host: '127.0.0.1' })).replace('http', 'ws')}/live`;
      const description = 'y'.repeat(1900);
      const ids = Array.from({ length: 30 }, (_, i) => `co-${i}`);
      await Promise.all(ids.map((id) => client.send(`cmd.task.${id}.CreateTask`, { title: 'Churn', description, memberId: 'M1', assignedTo: 'COAL1' })));
      const lagging = await LiveClient.connect(url);
      lagging.send({ type: 'subscribe', id: 'c', view: 'task_list_view', filter: { assignedTo: 'COAL1' } });
      await lagging.until((c) => c.copies.get('c')?.size === 30, 'snapshot of the 30 tasks');
      (lagging.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket.pause();
      // About 9 MB of updates to the same 30 rows: the socket fills, then updates wait and merge.
      // Each round is applied before the next is sent, so each is a change message of its own
      // (a projection that falls behind merges rounds into one batch, and sends less).
      let last = 0;
      for (let round = 0; round < 140; round++) {
        const replies = await Promise.all(ids.map((id) => client.send(`cmd.task.${id}.AssignTask`, { assignedTo: 'COAL1' })));
        for (const r of replies) last = Math.max(last, (r as CommandAccepted).seq);
        await strand.readSide!.waitFor('task_list_view', last, 30_000);
      }
      (lagging.ws as unknown as { _socket: { resume(): void } })._socket.resume();
      await lagging.until((c) => (c.versions.get('c') ?? 0) >= last, 'the latest version', 30_000);
      expect(lagging.closed).toBeUndefined();
      const coalesced = (await local.metrics.liveCoalesced.get()).values[0]?.value ?? 0;
      expect(coalesced).toBeGreaterThan(0);
      const truth = JSON.parse(JSON.stringify((await strand.views!.page('task_list_view', { assignedTo: 'COAL1' }, 500)).rows)) as unknown[];
      const mine = [...lagging.copies.get('c')!.values()].sort((a, b) => String(a['taskId']).localeCompare(String(b['taskId'])));
      expect(mine).toEqual(truth);
      await lagging.close();
    } finally {
      await local.stop();
    }
  });

  it('closes a connection that stops answering pings with 4000', async () => {
    const local = await startStrandWithDb(nats.url, db.url, { STRAND_ROLES: 'commands', STRAND_WS_HEARTBEAT_MS: '1000' });
    try {
      const url = `${(await local.http.listen({ port: 0, host: '127.0.0.1' })).replace('http', 'ws')}/live`;
      const mute = await LiveClient.connect(url, { autoPong: false });
      const healthy = await LiveClient.connect(url);
      await mute.until((c) => c.closed !== undefined, 'the heartbeat to close it', 5000);
      expect(mute.closed).toMatchObject({ code: 4000, reason: 'no pong' });
      expect(healthy.closed).toBeUndefined();
      await healthy.close();
    } finally {
      await local.stop();
    }
  });

  it('stops within a few seconds when a client does not answer the close frame', async () => {
    const local = await startStrandWithDb(nats.url, db.url, { STRAND_ROLES: 'commands' });
    const url = `${(await local.http.listen({ port: 0, host: '127.0.0.1' })).replace('http', 'ws')}/live`;
    const deaf = await LiveClient.connect(url);
    const polite = await LiveClient.connect(url);
    (deaf.ws as unknown as { _socket: { pause(): void } })._socket.pause();
    const t0 = Date.now();
    await local.stop();
    expect(Date.now() - t0).toBeLessThan(5000); // not ws's 30 s close timeout
    await polite.until((c) => c.closed !== undefined, 'the close frame');
    expect(polite.closed).toMatchObject({ code: 1001, reason: 'server shutting down' });
    deaf.ws.terminate();
  });

  it('holds a client that does not read to bounded memory, coalesces, closes it, and does not slow others', async () => {
    // 1000 held row changes: more than one batch of the projection can bring (at most 500
    // events, here one row each), so a client that reads is never taken for a slow one because
    // a large batch found its socket busy; the paused client holds all 4000 rows minus what the
    // socket buffers take.
    const local = await startStrandWithDb(nats.url, db.url, { STRAND_ROLES: 'commands', STRAND_WS_SEND_QUEUE_BYTES: '8192', STRAND_WS_MAX_PENDING: '1000' });
    try {
      const url = `${(await local.http.listen({ port: 0, host: '127.0.0.1' })).replace('http', 'ws')}/live`;
      const slow = await LiveClient.connect(url);
      const fast = await LiveClient.connect(url);
      for (const c of [slow, fast]) c.send({ type: 'subscribe', id: 'all', view: 'task_list_view', filter: { assignedTo: 'SLOW1' } });
      await slow.until((c) => c.of('snapshot').length === 1, 'slow snapshot');
      await fast.until((c) => c.of('snapshot').length === 1, 'fast snapshot');
      (slow.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket.pause();
      // Enough data (about 9 MB of rows) to fill the loopback socket buffers (4 MB send side here) of the paused client.
      let last = 0;
      const description = 'x'.repeat(1900);
      for (let i = 0; i < 4000; i += 50) {
        const replies = await Promise.all(
          Array.from({ length: 50 }, (_, j) => client.send(`cmd.task.slow-${i + j}.CreateTask`, { title: 'Slow', description, memberId: 'M1', assignedTo: 'SLOW1' })),
        );
        for (const r of replies) last = Math.max(last, (r as CommandAccepted).seq);
      }
      await fast.until((c) => (c.versions.get('all') ?? 0) >= last, 'the fast client to get everything', 30_000);
      // Every row from its changes: no fresh snapshot replaced its copy (a filtered snapshot
      // holds at most `limit` rows, 500 here, so a resynchronisation would show as rows missing).
      expect(fast.of('snapshot').map((s) => s.fresh)).toEqual([false]);
      expect(fast.closed).toBeUndefined();
      expect(fast.copies.get('all')!.size).toBe(4000);
      const truth: Record<string, unknown>[] = [];
      for (let cursor: string | undefined, first = true; first || cursor; first = false) {
        const page = await strand.views!.page('task_list_view', { assignedTo: 'SLOW1' }, 1000, cursor);
        truth.push(...(JSON.parse(JSON.stringify(page.rows)) as Record<string, unknown>[]));
        cursor = page.next;
      }
      const byId = (a: Record<string, unknown>, b: Record<string, unknown>) => String(a['taskId']).localeCompare(String(b['taskId']));
      expect([...fast.copies.get('all')!.values()].sort(byId)).toEqual(truth.sort(byId));
      (slow.ws as unknown as { _socket: { resume(): void } })._socket.resume();
      await slow.until((c) => c.closed !== undefined, 'the slow client to be closed', 10_000);
      expect(slow.closed!.code).toBe(4408);
      const dropped = (await local.metrics.liveDropped.get()).values[0]?.value ?? 0;
      expect(dropped).toBeGreaterThan(0);
      await fast.close();
    } finally {
      await local.stop();
    }
  });
});

describe('live authentication and authorization', { timeout: 60_000 }, () => {
  const secret = 'a-test-secret-of-at-least-32-characters!';
  let secured: Strand;
  let url: string;
  const token = (sub: string, roles: string[], key = secret) =>
    new SignJWT({ roles }).setProtectedHeader({ alg: 'HS256' }).setSubject(sub).setExpirationTime('5m').sign(new TextEncoder().encode(key));

  beforeAll(async () => {
    const config = loadConfig({ STRAND_AUTH: 'jwt', STRAND_JWT_SECRET: secret, STRAND_ROLES: 'commands', STRAND_ACTOR_IDLE_MS: '600000' });
    secured = await StrandApp.start({ config, aggregates, projections, access: taskAccess, natsUrl: nats.url, databaseUrl: db.url, log: pino({ level: 'silent' }), defaultMetrics: false });
    url = `${(await secured.http.listen({ port: 0, host: '127.0.0.1' })).replace('http', 'ws')}/live`;
  });
  afterAll(async () => {
    await secured?.stop();
  });

  it('closes a connection without a token, or with a bad one, with 4401', async () => {
    const none = await LiveClient.connect(url);
    await none.until((c) => c.closed !== undefined, 'close');
    expect(none.closed).toMatchObject({ code: 4401, reason: 'no bearer token' });
    const bad = await LiveClient.connect(url, { token: await token('CC1', ['coordinator'], 'another-secret-of-at-least-32-characters') });
    await bad.until((c) => c.closed !== undefined, 'close');
    expect(bad.closed).toMatchObject({ code: 4401, reason: 'bad signature' });
  });

  it('lets a coordinator see only their own tasks; a forbidden subscription is an error and the connection stays', async () => {
    await createTask('auth-1', 'CC1');
    const last = await createTask('auth-2', 'CC2');
    const w = await LiveClient.connect(url, { token: await token('CC1', ['coordinator']) });
    w.send({ type: 'subscribe', id: 'other', view: 'task_list_view', filter: { assignedTo: 'CC2' } });
    w.send({ type: 'subscribe', id: 'all', view: 'task_list_view' });
    w.send({ type: 'subscribe', id: 'mine', view: 'task_list_view', filter: { assignedTo: 'CC1' }, minSeq: last.seq });
    await w.until((c) => c.of('snapshot').length === 1 && c.of('error').length === 2, 'answers');
    expect(w.of('error').map((e) => [e.sub, e.code])).toEqual([
      ['other', 'FORBIDDEN'],
      ['all', 'FORBIDDEN'],
    ]);
    expect(w.of('snapshot')[0]!.rows.map((r) => r['taskId'])).toContain('auth-1');
    expect(w.of('snapshot')[0]!.rows.every((r) => r['assignedTo'] === 'CC1')).toBe(true);
    expect(w.closed).toBeUndefined();
    await w.close();
  });
});
