import { execFile, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { order, orderList } from '../actors/index.js';
import type { Strand } from '../src/app.js';
import type { CommandAccepted } from '../src/commands/types.js';
import { defineProjection, on } from '../src/projections/define.js';
import { startTestNats, type TestNats } from './support/nats.js';
import { createTestDatabase, type TestDatabase } from './support/postgres.js';
import { CommandClient, eventually, startStrandWithDb } from './support/strand.js';

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
  return cliWith({}, ...args);
}

async function cliWith(env: Record<string, string>, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { cwd: root, env: { ...process.env, STRAND_URL: url, NATS_URL: nats.url, STRAND_TOKEN: '', ...env } });
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

    // A parked event discarded for good.
    broken = true;
    const poison = (await client.send('cmd.order.cli-9.PlaceOrder', { customerId: 'BAD', items: [{ sku: 'A', quantity: 1, priceCents: 1 }] })) as CommandAccepted;
    expect((await strand.readSide!.waitFor('picky_orders', poison.seq, 10_000)).reached).toBe(true);
    const discarded = await cli('dead-letters', 'discard', 'picky_orders', String(poison.seq));
    expect(discarded.code, discarded.stderr).toBe(0);
    expect(discarded.stdout).toContain(`event ${poison.seq} discarded`);
    expect((await cli('dead-letters', 'picky_orders')).stdout).toContain('(none)');
    const again = await cli('dead-letters', 'discard', 'picky_orders', String(poison.seq));
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('DEAD_LETTER_NOT_FOUND');
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

describe('strand CLI usage', { timeout: 60_000 }, () => {
  it('answers --help, help, --version and per-command help without doing anything', async () => {
    const version = (JSON.parse(readFileSync(`${root}package.json`, 'utf8')) as { version: string }).version;
    const overviews = [['--help'], ['help'], []];
    const results = await Promise.all([...overviews.map((args) => cli(...args)), cli('--version')]);
    for (const [i, r] of results.slice(0, 3).entries()) {
      expect(r.code, overviews[i]!.join(' ')).toBe(0);
      for (const c of ['send', 'tail', 'inspect', 'projections rebuild', 'dead-letters retry']) expect(r.stdout).toContain(c);
    }
    expect(results[3]).toMatchObject({ code: 0, stdout: `strand ${version}\n` });

    const before = (await strand.readSide!.status()).map((p) => [p.name, p.activeGeneration, p.rebuild]);
    const helps = [['projections', 'rebuild', '--help'], ['help', 'projections', 'rebuild'], ['projections', 'rebuild', 'order_list', '-h']];
    for (const [i, r] of (await Promise.all(helps.map((args) => cli(...args)))).entries()) {
      expect(r.code, helps[i]!.join(' ')).toBe(0);
      expect(r.stdout).toMatch(/^usage: strand projections rebuild <name>/);
    }
    // Nothing was rebuilt (no projection named --help, nor order_list).
    expect((await strand.readSide!.status()).map((p) => [p.name, p.activeGeneration, p.rebuild])).toEqual(before);

    const each = ['send', 'tail', 'inspect', 'projections', 'dead-letters', 'dead-letters retry'];
    for (const [i, r] of (await Promise.all(each.map((c) => cli(...c.split(' '), '--help')))).entries()) {
      expect(r.code, each[i]).toBe(0);
      expect(r.stdout).toContain(`usage: strand ${each[i]}`);
    }
  });

  it('refuses bad usage with exit 2 and says what is wrong', async () => {
    const cases: [string[], string][] = [
      [['projections', 'rebuild'], 'missing <name>'],
      [['projections', 'rebuild', 'a', 'b'], 'unexpected b'],
      [['tail', '--frm-seq', '1'], "Unknown option '--frm-seq'"],
      [['send', 'task', 'bad id', 'CreateTask'], 'id "bad id" is not valid'],
      [['send', 'task', 't-1', 'CreateTask', '{not json'], 'must be JSON'],
      [['help', 'frobnicate'], 'no command frobnicate'],
    ];
    const results = await Promise.all(cases.map(([args]) => cli(...args)));
    for (const [i, r] of results.entries()) expect(r, cases[i]![0].join(' ')).toMatchObject({ code: 2, stderr: expect.stringContaining(cases[i]![1]) });
  });
});

describe('strand send, tail and inspect', { timeout: 60_000 }, () => {
  it('send: a command over NATS with its headers; the reply printed, the exit code by outcome', async () => {
    const create = await cli('send', 'task', 'cli-t1', 'CreateTask', JSON.stringify({ title: 'Call member', memberId: 'M1', assignedTo: 'CC1' }), '--header', 'Strand-Actor=user:CC9', '--command-id', 'cli-create-1');
    expect(create.code, create.stderr).toBe(0);
    expect(JSON.parse(create.stdout)).toMatchObject({ ok: true, aggregate: 'task', id: 'cli-t1', version: 1, commandId: 'cli-create-1', duplicate: false });
    const again = await cli('send', 'task', 'cli-t1', 'CreateTask', JSON.stringify({ title: 'Call member', memberId: 'M1', assignedTo: 'CC1' }), '--command-id', 'cli-create-1');
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ ok: true, duplicate: true });

    // The header reached the event: Strand-Actor is its actor.
    const history = await cli('inspect', 'task', 'cli-t1', '--json');
    expect(history.code, history.stderr).toBe(0);
    expect((JSON.parse(history.stdout) as { events: { actor: string }[] }).events[0]!.actor).toBe('user:CC9');

    const refused = await cli('send', 'task', 'cli-t1', 'CompleteTask', '-H', 'Strand-Actor=user:CC2');
    expect(refused.code).toBe(1);
    expect(JSON.parse(refused.stdout)).toMatchObject({ ok: false, error: { code: 'REJECTED', reason: 'NOT_ASSIGNEE' } });
    expect(refused.stderr).toContain('REJECTED NOT_ASSIGNEE');
    const done = await cli('send', 'task', 'cli-t1', 'CompleteTask', '{"notes":"ok"}', '--actor', 'user:CC1', '--expected-version', '1');
    expect(done.code, done.stderr).toBe(0);
    expect(JSON.parse(done.stdout)).toMatchObject({ ok: true, version: 2 });
    // Without --command-id it makes one, so a lost reply can be resent safely.
    expect((JSON.parse((await cli('send', 'task', 'cli-t2', 'CreateTask', '{"title":"t","memberId":"M","assignedTo":"A"}')).stdout) as { commandId: string }).commandId).toMatch(/^cli-/);

    const elsewhere = await startTestNats(); // a NATS server no Strand listens on
    try {
      const nobody = await cliWith({ NATS_URL: elsewhere.url }, 'send', 'task', 'cli-t3', 'CreateTask', '{}');
      expect(nobody).toMatchObject({ code: 2, stderr: expect.stringContaining('nothing takes commands on cmd.task.cli-t3.CreateTask') });
    } finally {
      await elsewhere.cleanup();
    }
    expect(await cli('send', 'task', 'cli-t3', 'CreateTask', '{}', '--nats', 'nats://127.0.0.1:9')).toMatchObject({ code: 2, stderr: expect.stringContaining('cannot reach NATS at nats://127.0.0.1:9') });
  });

  it('tail: follows the stream filtered by aggregate, id and type, from a sequence or from now', async () => {
    const first = ((await client.send('cmd.order.cli-tail-1.PlaceOrder', { customerId: 'T1', items: [{ sku: 'A', quantity: 1, priceCents: 1 }] })) as CommandAccepted).seq;
    await client.send('cmd.task.cli-tail-t.CreateTask', { title: 't', memberId: 'M', assignedTo: 'A' });
    await client.send('cmd.order.cli-tail-1.MarkPaid', { paymentId: 'P1' });

    const history = await cli('tail', '--from-seq', String(first), '--aggregate', 'order', '--id', 'cli-tail-1', '--count', '2');
    expect(history.code, history.stderr).toBe(0);
    const lines = history.stdout.trim().split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(new RegExp(`^#${first}  \\S+  order/cli-tail-1  v1  OrderPlaced  \\{"customerId":"T1"`));
    expect(lines[1]).toMatch(/order\/cli-tail-1 {2}v2 {2}OrderPaid/);
    const typed = await cli('tail', '--from-seq', String(first), '--type', 'OrderPaid', '-n', '1', '--json');
    expect(JSON.parse(typed.stdout)).toMatchObject({ type: 'OrderPaid', aggregateId: 'cli-tail-1', seq: expect.any(Number) });

    // From now: only what is appended after it started.
    let output = '';
    let errors = '';
    const follower = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'tail', '-a', 'task', '-n', '1'], { cwd: root, env: { ...process.env, NATS_URL: nats.url } });
    follower.stdout.on('data', (d: Buffer) => (output += d.toString()));
    follower.stderr.on('data', (d: Buffer) => (errors += d.toString()));
    const exited = new Promise<number | null>((resolve) => follower.once('exit', resolve));
    try {
      await eventually(() => errors.includes('following evt.task.*.* in EVENTS from now'), 'tail to start', 20_000);
      await client.send('cmd.task.cli-tail-now.CreateTask', { title: 'now', memberId: 'M', assignedTo: 'A' });
      expect(await exited).toBe(0);
      expect(output).toMatch(/^#\d+ {2}\S+ {2}task\/cli-tail-now {2}v1 {2}TaskCreated/);
    } finally {
      follower.kill('SIGKILL');
    }
  });

  it('inspect: state and history over HTTP, at a version, and a clear refusal', async () => {
    await client.send('cmd.order.cli-insp.PlaceOrder', { customerId: 'I1', items: [{ sku: 'A', quantity: 2, priceCents: 3 }] }, { 'Strand-Actor': 'user:U1', 'Strand-Command-Id': 'insp-1' });
    await client.send('cmd.order.cli-insp.MarkPaid', { paymentId: 'P' });
    const now = await cli('inspect', 'order', 'cli-insp');
    expect(now.code, now.stderr).toBe(0);
    expect(now.stdout).toContain('order cli-insp: version 2');
    expect(now.stdout).toContain('"status": "paid"');
    expect(now.stdout).toMatch(/\d+\s+1\s+OrderPlaced\s+\S+\s+user:U1\s+insp-1/);
    expect(now.stdout).toMatch(/\d+\s+2\s+OrderPaid/);
    const then = JSON.parse((await cli('inspect', 'order', 'cli-insp', '--version', '1', '--json')).stdout) as { version: number; state: { status: string }; events: unknown[] };
    expect(then).toMatchObject({ version: 1, state: { status: 'placed' } });
    expect(then.events).toHaveLength(1);
    expect(await cli('inspect', 'order', 'cli-nothing')).toMatchObject({ code: 1, stderr: expect.stringContaining('404 AGGREGATE_NOT_FOUND') });
  });
});

describe('strand CLI and HTTP authentication', { timeout: 30_000 }, () => {
  it('sends STRAND_TOKEN as a bearer token on every HTTP call and shows 401 and 403 clearly', async () => {
    const seen: (string | undefined)[] = [];
    let status = 401;
    const server = createServer((req, res) => {
      seen.push(req.headers.authorization);
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ statusCode: status, code: status === 401 ? 'UNAUTHENTICATED' : 'FORBIDDEN', message: status === 401 ? 'a bearer token is required' : 'admin role required' }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const authUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const noToken = await cliWith({ STRAND_URL: authUrl }, 'projections');
      expect(noToken.code).toBe(1);
      expect(noToken.stderr).toContain('strand: 401 UNAUTHENTICATED: a bearer token is required — the server wants a token: set STRAND_TOKEN');
      expect(seen.pop()).toBeUndefined();

      const badToken = await cliWith({ STRAND_URL: authUrl, STRAND_TOKEN: 'tok-1' }, 'inspect', 'task', 't1');
      expect(badToken.code).toBe(1);
      expect(badToken.stderr).toContain('the server did not accept STRAND_TOKEN');
      expect(seen.pop()).toBe('Bearer tok-1');

      status = 403;
      const forbidden = await cliWith({ STRAND_URL: authUrl, STRAND_TOKEN: 'tok-2' }, 'projections', 'rebuild', 'order_list');
      expect(forbidden.code).toBe(1);
      expect(forbidden.stderr).toContain('strand: 403 FORBIDDEN: admin role required — the token is valid, but its subject may not do this');
      expect(seen.pop()).toBe('Bearer tok-2');
    } finally {
      server.close();
    }
  });
});
