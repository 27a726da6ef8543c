/**
 * Exactly-once effects of process managers across kill -9: Strand (src/main.ts, with the example
 * processes) kills itself at a failpoint between two steps of a process — before a step is
 * recorded, after it is recorded and before its effects are sent, after a command is sent and
 * before its reply is recorded, after everything and before the input is acknowledged — and a
 * second instance finishes the work. Each command takes effect once; each process ends right.
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNatsServer, type RunningNatsServer } from '../src/nats/server.js';
import { spawnInstance, type InstanceProcess } from './support/instance.js';
import { makeTempDir } from './support/nats.js';
import { createTestDatabase, type TestDatabase } from './support/postgres.js';
import { CommandClient, eventually, streamEvents } from './support/strand.js';

let dir: { dir: string; cleanup(): Promise<void> };
let nats: RunningNatsServer;
let db: TestDatabase;
let client: CommandClient;
let nc: NatsConnection;
const running: InstanceProcess[] = [];

beforeAll(async () => {
  dir = await makeTempDir();
  nats = await startNatsServer({ storeDir: dir.dir, sync: 'always' });
  db = await createTestDatabase();
  client = await CommandClient.connect(nats.url);
  nc = await connect({ servers: nats.url });
});

afterAll(async () => {
  await Promise.all(running.splice(0).map((i) => i.kill9()));
  await client?.close();
  await nc?.close();
  await db?.drop();
  await nats?.stop();
  await dir?.cleanup();
});

async function instance(extra: Record<string, string> = {}): Promise<InstanceProcess> {
  const i = await spawnInstance({ NATS_URL: nats.url, DATABASE_URL: db.url, STRAND_PROCESS_ACK_WAIT_MS: '2000', ...extra });
  running.push(i);
  await i.ready(60_000);
  return i;
}

/** Sends a command, again under the same ID while no instance answers (one is being replaced). */
async function send(subject: string, body: unknown, headers: Record<string, string>): Promise<void> {
  const end = Date.now() + 60_000;
  for (;;) {
    try {
      const r = await client.send(subject, body, headers, 3000);
      if (r.ok || r.error.code !== 'UNAVAILABLE') return;
    } catch {
      // no responders or timeout: the instance is dying or starting
    }
    if (Date.now() > end) throw new Error(`${subject} never answered`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

interface Step {
  step: number;
  input: { kind: string; key: string };
  commands: { commandId: string }[];
  end: string | null;
}
async function stepsOf(process: string, id: string): Promise<Step[]> {
  return (await streamEvents(nc, 'EVENTS', process, id)).filter((e) => e.envelope.type === 'InputHandled').map((e) => e.envelope.data as Step);
}
async function types(aggregate: string, id: string): Promise<string[]> {
  return (await streamEvents(nc, 'EVENTS', aggregate, id)).map((e) => e.envelope.type);
}

/**
 * Waits until every input of the example processes has been acknowledged: an input left in the
 * killed instance's hands comes back to the survivor (after the pin timeout and the ack wait)
 * and must not be left for the next test's instance.
 */
async function settled(): Promise<void> {
  const { jetstreamManager } = await import('@nats-io/jetstream');
  const jsm = await jetstreamManager(nc);
  await eventually(async () => {
    for (const c of ['process_order-fulfilment', 'process_member-onboarding']) {
      const info = await jsm.consumers.info('EVENTS', c);
      if (info.num_ack_pending > 0 || info.num_pending > 0) return false;
    }
    return true;
  }, 'every process input to be acknowledged', 60_000);
}

/** The failpoints between the steps of order-fulfilment (placed → paid → Ship → reply), each crossing once. */
const orderPoints = [
  'actor.beforeAppend:3', // the third append: the process's first step, or MarkPaid when it comes first
  'process.afterRecord:1',
  'process.afterRecord:2',
  'process.afterSend:1',
  'process.afterRecord:3',
  'process.beforeAck:1',
  'process.beforeAck:2',
];

describe('order-fulfilment survives kill -9 between every pair of steps', { timeout: 600_000 }, () => {
  for (const [n, point] of orderPoints.entries()) {
    it(`killed at ${point}: shipped once, the process completed with three steps`, async () => {
      const id = `k9-order-${n}`;
      const doomed = await instance({ STRAND_FAILPOINT: point });
      const next = doomed.exited.then(() => instance());
      await send(`cmd.order.${id}.PlaceOrder`, { customerId: 'C1', items: [{ sku: 'S', quantity: 1, priceCents: 1 }] }, { 'Strand-Command-Id': `${id}-place` });
      await send(`cmd.order.${id}.MarkPaid`, { paymentId: 'P1' }, { 'Strand-Command-Id': `${id}-pay` });
      const exited = await Promise.race([doomed.exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 20_000))]);
      expect(exited, `the instance reached ${point} and died`).toBe(true);
      expect(doomed.output()).toContain(`failpoint ${point.split(':')[0]} reached; killing the process`);
      const survivor = await next;
      await eventually(async () => (await stepsOf('order-fulfilment', id)).some((s) => s.end !== null), `order-fulfilment/${id} to end`, 60_000);
      expect(await types('order', id)).toEqual(['OrderPlaced', 'OrderPaid', 'OrderShipped']);
      const steps = await stepsOf('order-fulfilment', id);
      expect(steps.map((s) => s.step)).toEqual([1, 2, 3]);
      expect(steps.map((s) => s.input.kind)).toEqual(['event', 'event', 'reply']);
      expect(steps[2]!.end).toBe('completed');
      await settled();
      expect(await survivor.stop()).toBe(0);
    });
  }
});

describe('member-onboarding survives kill -9 between its steps', { timeout: 600_000 }, () => {
  const points = ['process.afterRecord:2', 'process.afterSend:1', 'process.beforeAck:2', 'process.afterSend:2'];
  for (const [n, point] of points.entries()) {
    it(`killed at ${point}: one task, one welcome, the onboarding completed`, async () => {
      const check = `k9-mo-${n}`;
      const account = `acct-k9-${n}`;
      const doomed = await instance({ STRAND_FAILPOINT: point });
      await send(`cmd.eligibility-check.${check}.Initiate`, { accountId: account }, { 'Strand-Command-Id': `${check}-init` });
      await send(`cmd.eligibility-check.${check}.RecordResponse`, { requestId: 'r', responseCode: '200', latencyMs: 1, eligible: true }, { 'Strand-Command-Id': `${check}-resp` }).catch(() => undefined);
      // The next instance starts as soon as this one dies; the commands below are sent (again, same IDs) until one answers.
      const next = doomed.exited.then(() => instance());
      await send(`cmd.eligibility-check.${check}.RecordResponse`, { requestId: 'r', responseCode: '200', latencyMs: 1, eligible: true }, { 'Strand-Command-Id': `${check}-resp` });
      await eventually(async () => (await types('task', `onboarding-${check}`)).length >= 1, 'the task', 60_000);
      await send(`cmd.task.onboarding-${check}.CompleteTask`, {}, { 'Strand-Command-Id': `${check}-done`, 'Strand-Actor': 'user:onboarding-team' });
      const exited = await Promise.race([doomed.exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 20_000))]);
      expect(exited, `the instance reached ${point} and died`).toBe(true);
      expect(doomed.output()).toContain(`failpoint ${point.split(':')[0]} reached; killing the process`);
      const survivor = await next;
      await eventually(async () => (await stepsOf('member-onboarding', check)).some((s) => s.end !== null), `member-onboarding/${check} to end`, 60_000);
      expect(await types('task', `onboarding-${check}`)).toEqual(['TaskCreated', 'TaskCompleted']);
      expect(await types('member', account)).toEqual(['WelcomeSent']);
      const steps = await stepsOf('member-onboarding', check);
      expect(steps.map((s) => s.input.kind)).toEqual(['event', 'event', 'reply', 'event', 'reply']);
      expect(steps.at(-1)!.end).toBe('completed');
      await settled();
      expect(await survivor.stop()).toBe(0);
    });
  }
});

/** A counter of an instance's /metrics, summed over the series whose labels include `labels`. */
async function metric(i: InstanceProcess, name: string, labels: Record<string, string>): Promise<number> {
  const text = await (await fetch(`${i.url}/metrics`)).text();
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) total += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return total;
}

async function pinnedClient(consumer: string): Promise<string | undefined> {
  const { jetstreamManager } = await import('@nats-io/jetstream');
  const info = await (await jetstreamManager(nc)).consumers.info('EVENTS', consumer);
  return (info as { priority_groups?: { pinned_client_id?: string }[] }).priority_groups?.[0]?.pinned_client_id;
}

describe('two instances, the pinned one killed -9', { timeout: 300_000 }, () => {
  it('the other is pinned within the pin timeout and every order ships once, its steps in order', async () => {
    const pinTtlMs = 2000;
    const env = { STRAND_PROCESS_PIN_TTL_MS: String(pinTtlMs) };
    const [a, b] = await Promise.all([instance(env), instance(env)]);
    const n = 20;
    const ids = Array.from({ length: n }, (_, k) => `pin-order-${k}`);
    await Promise.all(ids.map((id) => send(`cmd.order.${id}.PlaceOrder`, { customerId: 'C1', items: [{ sku: 'S', quantity: 1, priceCents: 1 }] }, { 'Strand-Command-Id': `${id}-place` })));
    await eventually(async () => (await Promise.all(ids.map((id) => stepsOf('order-fulfilment', id)))).every((s) => s.length === 1), 'every fulfilment to start', 30_000);
    // One instance handled every step so far: the pinned one.
    const steps = await Promise.all([a, b].map((i) => metric(i, 'strand_process_steps_total', { process: 'order-fulfilment' })));
    expect(steps.filter((s) => s > 0)).toEqual([n]);
    const [pinned, other] = steps[0]! > 0 ? [a, b] : [b, a];
    const pin = await pinnedClient('process_order-fulfilment');
    expect(pin).toBeTruthy();
    // Half are paid just before the kill: some of those inputs die in the pinned instance's hands.
    await Promise.all(ids.slice(0, n / 2).map((id) => send(`cmd.order.${id}.MarkPaid`, { paymentId: 'P1' }, { 'Strand-Command-Id': `${id}-pay` })));
    await pinned.kill9();
    const killedAt = Date.now();
    const paid = Promise.all(ids.slice(n / 2).map((id) => send(`cmd.order.${id}.MarkPaid`, { paymentId: 'P1' }, { 'Strand-Command-Id': `${id}-pay` })));
    await eventually(async () => {
      const now = await pinnedClient('process_order-fulfilment');
      return now !== undefined && now !== pin;
    }, 'another instance to be pinned', 30_000);
    const takeoverMs = Date.now() - killedAt;
    expect(takeoverMs, 'takeover within the pin timeout and a margin').toBeLessThan(pinTtlMs + 3000);
    await paid;
    await eventually(async () => (await Promise.all(ids.map((id) => stepsOf('order-fulfilment', id)))).every((s) => s.some((x) => x.end !== null)), 'every fulfilment to end', 60_000);
    for (const id of ids) {
      expect(await types('order', id), id).toEqual(['OrderPlaced', 'OrderPaid', 'OrderShipped']);
      const s = await stepsOf('order-fulfilment', id);
      expect(s.map((x) => x.step), id).toEqual([1, 2, 3]);
      expect(s.map((x) => x.input.kind), id).toEqual(['event', 'event', 'reply']);
      expect(s[2]!.end, id).toBe('completed');
    }
    expect(await metric(other, 'strand_process_steps_total', { process: 'order-fulfilment' })).toBeGreaterThan(0);
    await settled();
    expect(await other.stop()).toBe(0);
  });
});
