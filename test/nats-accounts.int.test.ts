/**
 * deploy/nats/accounts.conf, run as it is by the real nats-server (only addresses, ports and the
 * store directory overridden by flags), with a real Strand connected as its `strand` user and a
 * client as its `clients` user: a permitted command works end to end (actors, snapshots,
 * projections, the live feed: everything Strand itself needs is allowed), so does a durable
 * command across the service import (PubAck, processing, outcome), a forbidden publish or
 * subscription is refused by nats-server, and Strand itself never hits a permission violation.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { jetstream } from '@nats-io/jetstream';
import { connect, headers, type NatsConnection } from '@nats-io/transport-node';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Strand } from '../src/app.js';
import type { CommandReply } from '../src/commands/types.js';
import { Deadlines } from '../src/processes/deadlines.js';
import { launchNatsServer, resolveNatsServerBinary, type RunningNatsServer } from '../src/nats/server.js';
import { LiveClient } from './support/live.js';
import { makeTempDir } from './support/nats.js';
import { createTestDatabase, type TestDatabase } from './support/postgres.js';
import { startStrandWithDb } from './support/strand.js';

const conf = fileURLToPath(new URL('../deploy/nats/accounts.conf', import.meta.url));
const STRAND_PASSWORD = 'strand-test-password';
const CLIENTS_PASSWORD = 'clients-test-password';

let tmp: { dir: string; cleanup(): Promise<void> };
let server: RunningNatsServer;
let logFile: string;
let db: TestDatabase;
let strand: Strand;
let client: NatsConnection;

const decode = (data: Uint8Array) => JSON.parse(new TextDecoder().decode(data)) as CommandReply;

async function send(nc: NatsConnection, subject: string, body: unknown, hdrs: Record<string, string> = {}): Promise<CommandReply> {
  const h = headers();
  for (const [k, v] of Object.entries(hdrs)) h.set(k, v);
  return decode((await nc.request(subject, JSON.stringify(body), { timeout: 10_000, headers: h })).data);
}

beforeAll(async () => {
  tmp = await makeTempDir();
  logFile = path.join(tmp.dir, 'nats-server.log');
  // nats-server resolves `$STRAND_NATS_PASSWORD` and `$CLIENTS_NATS_PASSWORD` from its environment (inherited).
  process.env['STRAND_NATS_PASSWORD'] = STRAND_PASSWORD;
  process.env['CLIENTS_NATS_PASSWORD'] = CLIENTS_PASSWORD;
  server = await launchNatsServer({
    binary: await resolveNatsServerBinary(),
    args: ['-c', conf, '-sd', tmp.dir, '-a', '127.0.0.1', '-p', '-1', '-m', '-1', '-l', logFile],
    runDir: tmp.dir,
    storeDir: tmp.dir,
    logFile,
  });
  db = await createTestDatabase();
  strand = await startStrandWithDb(server.url, db.url, { NATS_USER: 'strand', NATS_PASSWORD: STRAND_PASSWORD, STRAND_SNAPSHOT_EVERY: '2', STRAND_DURABLE_INTAKE: 'true' });
  await strand.http.listen({ port: 0, host: '127.0.0.1' });
  client = await connect({ servers: server.url, user: 'clients', pass: CLIENTS_PASSWORD, reconnect: false });
}, 60_000);

afterAll(async () => {
  await client?.close().catch(() => undefined);
  await strand?.stop();
  await db?.drop();
  await server?.stop();
  await tmp?.cleanup();
});

describe('deploy/nats/accounts.conf', () => {
  it('refuses a connection without credentials or with a wrong password', async () => {
    await expect(connect({ servers: server.url, reconnect: false })).rejects.toThrow(/Authorization Violation/i);
    await expect(connect({ servers: server.url, user: 'clients', pass: 'wrong', reconnect: false })).rejects.toThrow(/Authorization Violation/i);
  });

  it('lets the clients user send task commands; Strand carries them through actors, snapshots, projections and the live feed', async () => {
    const port = (strand.http.server.address() as { port: number }).port;
    const live = await LiveClient.connect(`ws://127.0.0.1:${port}/live`);
    live.send({ type: 'subscribe', id: 'events', aggregate: 'task', aggregateId: 'acc-1' });
    live.send({ type: 'subscribe', id: 'rows', view: 'task_list_view', key: 'acc-1' });
    await live.until((c) => c.of('state').length > 0 && c.of('snapshot').length > 0, 'both subscriptions to start');

    const created = await send(client, 'cmd.task.acc-1.CreateTask', { title: 'Call member', memberId: 'M1', assignedTo: 'CC1' });
    expect(created).toMatchObject({ ok: true, version: 1 });
    expect(await send(client, 'cmd.task.acc-1.AssignTask', { assignedTo: 'CC2' })).toMatchObject({ ok: true, version: 2 });
    const done = await send(client, 'cmd.task.acc-1.CompleteTask', { notes: 'done' }, { 'Strand-Actor': 'user:CC2' });
    expect(done).toMatchObject({ ok: true, version: 3 });

    // The projection applied and acknowledged all three (its consumer acks are allowed).
    const r = await strand.http.inject({ url: `/views/task_list_view/acc-1?minSeq=${done.ok ? done.seq : 0}` });
    expect(r.statusCode).toBe(200);
    expect(r.json().row).toMatchObject({ taskId: 'acc-1', status: 'completed', assignedTo: 'CC2', completedBy: 'CC2' });
    // Both live feeds: the aggregate's events (from the stream) and the view's change (between instances).
    await live.until((c) => c.of('event').length >= 3, 'three events on the aggregate feed');
    await live.until((c) => c.copies.get('rows')?.get('acc-1')?.['status'] === 'completed', 'the completed row on the view feed');
    await live.close();

    // A snapshot was written (every 2 events) and reloading the instance from it works.
    strand.actors.passivate('task', 'acc-1');
    expect(await send(client, 'cmd.task.acc-1.CancelTask', { reason: 'x' })).toMatchObject({ ok: false, error: { code: 'REJECTED', reason: 'TASK_CLOSED' } });
  });

  it('lets the clients user publish durable task commands into the STRAND account\'s command stream, with its PubAck, and read their outcomes', async () => {
    const js = jetstream(client);
    const durable = async (id: string, command: string, body: unknown, commandId: string) => {
      const h = headers();
      h.set('Strand-Command-Id', commandId);
      return js.publish(`cmdq.task.${id}.${command}`, JSON.stringify(body), { headers: h, msgID: commandId, timeout: 10_000 });
    };
    // The PubAck comes back through the service import: the command is stored in the STRAND account's stream.
    const first = await durable('acc-d1', 'CreateTask', { title: 'Durable', memberId: 'M1', assignedTo: 'CC1' }, 'acc-d1-c1');
    expect(first).toMatchObject({ stream: 'EVENTS_COMMANDS', duplicate: false });
    expect(first.seq).toBeGreaterThan(0);
    await durable('acc-d1', 'AssignTask', { assignedTo: 'CC2' }, 'acc-d1-c2');
    // A repeated publish is dropped by the stream's duplicate window, and says so.
    expect(await durable('acc-d1', 'AssignTask', { assignedTo: 'CC2' }, 'acc-d1-c2')).toMatchObject({ duplicate: true });
    // Bad input is processed too (its error recorded), not retried.
    await durable('acc-d1', 'AssignTask', { assignedTo: '' }, 'acc-d1-bad');

    // Outcomes, read by the clients user through the imported `strand.outcome.get`.
    const outcome = async (commandId: string): Promise<CommandReply> => decode((await client.request('strand.outcome.get', commandId, { timeout: 10_000 })).data);
    let last: CommandReply | undefined;
    for (let i = 0; i < 100; i++) {
      last = await outcome('acc-d1-bad');
      if (last.ok || last.error.code !== 'OUTCOME_NOT_FOUND') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(last).toMatchObject({ ok: false, error: { code: 'VALIDATION_FAILED' }, commandId: 'acc-d1-bad' });
    expect(await outcome('acc-d1-c1')).toMatchObject({ ok: true, version: 1, commandId: 'acc-d1-c1' });
    expect(await outcome('acc-d1-c2')).toMatchObject({ ok: true, version: 2, commandId: 'acc-d1-c2' });
    expect((await outcome('no-such-command')).ok).toBe(false);
    const task = await strand.http.inject({ url: '/aggregates/task/acc-d1' });
    expect(task.json()).toMatchObject({ version: 2, state: { assignedTo: 'CC2' } });
  });

  it('lets the strand user set, list, cancel and consume deadlines (message schedules on dl.>)', async () => {
    const nc = await connect({ servers: server.url, user: 'strand', pass: STRAND_PASSWORD, reconnect: false });
    const deadlines = await Deadlines.open(nc, { stream: 'EVENTS', replicas: 1 }, pino({ level: 'silent' }));
    try {
      const fired: string[] = [];
      await deadlines.consume(['accounts-check'], async (d) => void fired.push(`${d.id}/${d.token}`));
      await deadlines.set({ owner: 'accounts-check', id: 'a1', name: 'soon' }, new Date(Date.now() + 300), { token: 'fires' });
      await deadlines.set({ owner: 'accounts-check', id: 'a1', name: 'later' }, new Date(Date.now() + 60_000), { token: 'cancelled' });
      expect((await deadlines.pending('accounts-check', 'a1')).map((d) => d.name).sort()).toEqual(['later', 'soon']);
      await deadlines.cancel({ owner: 'accounts-check', id: 'a1', name: 'later' });
      for (let i = 0; i < 100 && fired.length === 0; i++) await new Promise((r) => setTimeout(r, 100));
      expect(fired).toEqual(['a1/fires']);
      expect(await deadlines.pending('accounts-check', 'a1')).toEqual([]);
    } finally {
      await deadlines.close();
      await nc.close();
    }
  });

  it('refuses, in nats-server, a publish outside cmd.task.>, cmdq.task.> and strand.outcome.get, and a subscription outside _INBOX.>', async () => {
    // The violation comes back as an error of the request: nats-server refused the publish.
    await expect(send(client, 'cmd.order.o-1.PlaceOrder', { customerId: 'C1', items: [{ sku: 'S', quantity: 1, priceCents: 1 }] })).rejects.toThrow(/Permissions Violation for Publish to "cmd\.order\.o-1\.PlaceOrder"/);
    const sub = client.subscribe('evt.>');
    const subErr = await (async () => {
      try {
        for await (const _ of sub) return undefined;
      } catch (err) {
        return err as Error;
      }
      return undefined;
    })();
    expect(String(subErr)).toMatch(/Permissions Violation for Subscription to "evt\.>"/);
    await expect(send(client, 'cmd.task.acc-1.MarkOverdue', { dueAt: '2026-01-01T00:00:00.000Z' })).rejects.toThrow(/Permissions Violation for Publish to "cmd\.task\.acc-1\.MarkOverdue"/);
    await expect(jetstream(client).publish('cmdq.task.acc-2.MarkOverdue', JSON.stringify({ dueAt: '2026-01-01T00:00:00.000Z' }), { timeout: 5000 })).rejects.toThrow();
    await expect(jetstream(client).publish('cmdq.order.o-2.PlaceOrder', '{}', { timeout: 5000 })).rejects.toThrow();
    client.publish('evt.task.acc-1.TaskCreated', '{}');
    client.publish('$JS.API.STREAM.NAMES', '{}');
    await client.flush();

    // The order command never reached Strand: no such instance exists.
    const order = await strand.http.inject({ url: '/aggregates/order/o-1' });
    expect(order.json().code).toBe('AGGREGATE_NOT_FOUND');

    // nats-server logged each refusal of the clients user, and none of Strand's.
    let log = '';
    for (let i = 0; i < 50 && !/Publish Violation.*\$JS\.API\.STREAM\.NAMES/.test(log); i++) {
      await new Promise((r) => setTimeout(r, 100));
      log = await fs.readFile(logFile, 'utf8');
    }
    const violations = log.split('\n').filter((l) => /Violation/.test(l));
    const byClients = violations.filter((l) => l.includes('"CLIENTS/user:clients"'));
    for (const subject of ['cmd.order.o-1.PlaceOrder', 'cmd.task.acc-1.MarkOverdue', 'cmdq.task.acc-2.MarkOverdue', 'cmdq.order.o-2.PlaceOrder', 'evt.>', 'evt.task.acc-1.TaskCreated', '$JS.API.STREAM.NAMES']) {
      expect(byClients.filter((l) => l.includes(`Subject "${subject}"`)), subject).toHaveLength(1);
    }
    expect(violations.filter((l) => !l.includes('"CLIENTS/user:clients"')), 'violations by Strand itself').toEqual([]);
  });
});
