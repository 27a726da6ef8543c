/**
 * Process managers end to end over a real nats-server: the two examples, replies, deadlines
 * through a process (fired once on time after a restart, cancelled never fires, due during an
 * outage fires on recovery), poison inputs parked, and 1,000 concurrent onboardings.
 */
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { aggregates } from '../actors/index.js';
import { makeMemberOnboarding } from '../actors/member-onboarding/member-onboarding.js';
import { makeOrderFulfilment } from '../actors/order-fulfilment/order-fulfilment.js';
import { order } from '../actors/order/order.js';
import { z } from 'zod';
import { defineProcess } from '../src/processes/define.js';
import { Strand } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { startNatsServer, type RunningNatsServer } from '../src/nats/server.js';
import type { Process, ProcessInstance } from '../src/processes/define.js';
import { makeTempDir } from './support/nats.js';
import { createTestDatabase } from './support/postgres.js';
import { processInstancesProjection } from '../src/processes/projection.js';
import { LiveClient } from './support/live.js';
import { CommandClient, eventually, streamEvents } from './support/strand.js';

let dir: { dir: string; cleanup(): Promise<void> };
let nats: RunningNatsServer;
let client: CommandClient;

beforeAll(async () => {
  dir = await makeTempDir();
  nats = await startNatsServer({ storeDir: dir.dir, sync: 'always' });
  client = await CommandClient.connect(nats.url);
});

afterAll(async () => {
  await client?.close();
  await nats?.stop();
  await dir?.cleanup();
});

const item = { sku: 'SKU-1', quantity: 1, priceCents: 1000 };

async function start(processes: readonly Process[], env: Record<string, string> = {}): Promise<Strand> {
  const config = loadConfig({ STRAND_ACTOR_IDLE_MS: '600000', STRAND_PROCESS_ACK_WAIT_MS: '5000', ...env });
  const log = pino({ level: process.env['TEST_LOG_LEVEL'] ?? 'silent' });
  return Strand.start({ config, aggregates, processes, natsUrl: nats.url, log, defaultMetrics: false });
}

async function instance<S>(strand: Strand, process: string, id: string): Promise<ProcessInstance<S> | undefined> {
  const r = await strand.http.inject({ method: 'GET', url: `/aggregates/${process}/${id}` });
  return r.statusCode === 200 ? (r.json<{ state: ProcessInstance<S> }>().state) : undefined;
}

async function commandIds(aggregate: string, id: string): Promise<string[]> {
  return (await streamEvents(client.nc, 'EVENTS', aggregate, id)).map((e) => e.envelope.metadata.commandId!);
}

describe('order-fulfilment over NATS', { timeout: 60_000 }, () => {
  it('placed, paid: shipped once by the process, and the process completed', async () => {
    const strand = await start([makeOrderFulfilment()]);
    try {
      expect((await client.send('cmd.order.of-1.PlaceOrder', { customerId: 'C1', items: [item] })).ok).toBe(true);
      await eventually(async () => (await instance(strand, 'order-fulfilment', 'of-1'))?.status === 'running', 'the process to start', 10_000);
      const started = await instance<{ status: string }>(strand, 'order-fulfilment', 'of-1');
      expect(Object.keys(started!.deadlines)).toEqual(['payment-due']);
      const pending = await strand.http.inject({ method: 'GET', url: '/processes/order-fulfilment/of-1/deadlines' });
      expect(pending.json()).toMatchObject({ deadlines: [{ name: 'payment-due', token: '1' }] });

      expect((await client.send('cmd.order.of-1.MarkPaid', { paymentId: 'P1' })).ok).toBe(true);
      await eventually(async () => (await instance(strand, 'order-fulfilment', 'of-1'))?.status === 'completed', 'the process to complete', 10_000);
      const events = await streamEvents(client.nc, 'EVENTS', 'order', 'of-1');
      expect(events.map((e) => e.envelope.type)).toEqual(['OrderPlaced', 'OrderPaid', 'OrderShipped']);
      expect(events[2]!.envelope.metadata.commandId).toBe('order-fulfilment:of-1:2:1');
      expect(events[2]!.envelope.actor).toBe('process:order-fulfilment');
      const done = await instance<{ status: string }>(strand, 'order-fulfilment', 'of-1');
      expect(done).toMatchObject({ status: 'completed', step: 3, state: { status: 'shipped' }, deadlines: {}, awaiting: [] });
      // History of the process instance: its own events and the steps that recorded them.
      const history = await strand.http.inject({ method: 'GET', url: '/aggregates/order-fulfilment/of-1/events' });
      expect(history.json<{ events: { type: string }[] }>().events.map((e) => e.type)).toEqual(['FulfilmentStarted', 'InputHandled', 'ShipmentRequested', 'InputHandled', 'FulfilmentEnded', 'InputHandled']);
      expect((await strand.http.inject({ method: 'GET', url: '/processes/order-fulfilment/of-1/deadlines' })).json()).toMatchObject({ deadlines: [] });
    } finally {
      await strand.stop();
    }
  });
});

const team = { 'Strand-Actor': 'user:onboarding-team' };

async function onboard(strand: Strand, check: string, account: string, eligible: boolean): Promise<void> {
  expect((await client.send(`cmd.eligibility-check.${check}.Initiate`, { accountId: account })).ok).toBe(true);
  expect((await client.send(`cmd.eligibility-check.${check}.RecordResponse`, { requestId: 'r1', responseCode: '200', latencyMs: 5, eligible })).ok).toBe(true);
  void strand;
}

describe('member-onboarding over NATS', { timeout: 120_000 }, () => {
  it('eligible: task created, completed, member welcomed once; the process completed', async () => {
    const strand = await start([makeMemberOnboarding()]);
    try {
      await onboard(strand, 'mo-1', 'acct-mo-1', true);
      await eventually(async () => (await streamEvents(client.nc, 'EVENTS', 'task', 'onboarding-mo-1')).length === 1, 'the task to be created', 10_000);
      expect((await client.send('cmd.task.onboarding-mo-1.CompleteTask', {}, team)).ok).toBe(true);
      await eventually(async () => (await instance(strand, 'member-onboarding', 'mo-1'))?.status === 'completed', 'the onboarding to complete', 10_000);
      expect((await streamEvents(client.nc, 'EVENTS', 'member', 'acct-mo-1')).map((e) => e.envelope.type)).toEqual(['WelcomeSent']);
      expect(await commandIds('task', 'onboarding-mo-1')).toEqual(['member-onboarding:mo-1:2:1', expect.any(String)]);
      expect((await instance(strand, 'member-onboarding', 'mo-1'))!).toMatchObject({ state: { status: 'welcomed' }, deadlines: {} });
    } finally {
      await strand.stop();
    }
  });

  it('not eligible: compensation marks the onboarding failed, no task', async () => {
    const strand = await start([makeMemberOnboarding()]);
    try {
      await onboard(strand, 'mo-2', 'acct-mo-2', false);
      await eventually(async () => (await instance(strand, 'member-onboarding', 'mo-2'))?.status === 'failed', 'the onboarding to fail', 10_000);
      // The end is recorded with the compensation, which is sent right after.
      await eventually(async () => (await types('member', 'acct-mo-2')).length > 0, 'the compensation', 10_000);
      expect((await streamEvents(client.nc, 'EVENTS', 'member', 'acct-mo-2')).map((e) => e.envelope.type)).toEqual(['OnboardingFailed']);
      expect(await streamEvents(client.nc, 'EVENTS', 'task', 'onboarding-mo-2')).toEqual([]);
    } finally {
      await strand.stop();
    }
  });

  it('a task not done in time is escalated to the supervisor, then cancelled with the onboarding failed', async () => {
    const strand = await start([makeMemberOnboarding({ profileSetupMs: 1500, abandonAfterMs: 1500, supervisor: 'sup-1' })]);
    try {
      await onboard(strand, 'mo-3', 'acct-mo-3', true);
      await eventually(async () => (await instance(strand, 'member-onboarding', 'mo-3'))?.status === 'failed', 'the onboarding to be abandoned', 20_000);
      await eventually(async () => (await types('member', 'acct-mo-3')).length > 0, 'the compensation', 10_000);
      const task = (await streamEvents(client.nc, 'EVENTS', 'task', 'onboarding-mo-3')).map((e) => e.envelope);
      expect(task.map((e) => e.type)).toEqual(['TaskCreated', 'TaskAssigned', 'TaskCancelled']);
      expect(task[1]!.data).toMatchObject({ assignedTo: 'sup-1' });
      expect((await streamEvents(client.nc, 'EVENTS', 'member', 'acct-mo-3')).map((e) => e.envelope.type)).toEqual(['OnboardingFailed']);
    } finally {
      await strand.stop();
    }
  });
});

/** The recorded steps of a process instance (InputHandled data, with the time each was recorded). */
async function steps(process: string, id: string): Promise<{ time: string; input: { kind: string; name?: string }; step: number }[]> {
  return (await streamEvents(client.nc, 'EVENTS', process, id)).filter((e) => e.envelope.type === 'InputHandled').map((e) => ({ time: e.envelope.time, ...(e.envelope.data as { input: { kind: string }; step: number }) }));
}

describe('deadlines through a process', { timeout: 120_000 }, () => {
  it('a deadline set, Strand restarted: it fires once, on time (within 1 s), and the order is cancelled once', async () => {
    const fulfilment = makeOrderFulfilment({ paymentWindowMs: 3000 });
    let strand = await start([fulfilment]);
    expect((await client.send('cmd.order.dl-1.PlaceOrder', { customerId: 'C1', items: [item] })).ok).toBe(true);
    await eventually(async () => (await instance(strand, 'order-fulfilment', 'dl-1'))?.status === 'running', 'the process to start', 10_000);
    const due = Date.parse((await instance(strand, 'order-fulfilment', 'dl-1'))!.deadlines['payment-due']!.due);
    await strand.stop();
    strand = await start([fulfilment]);
    try {
      await eventually(async () => (await instance(strand, 'order-fulfilment', 'dl-1'))?.status === 'failed', 'the order to be cancelled', 15_000);
      const fired = (await steps('order-fulfilment', 'dl-1')).filter((s) => s.input.kind === 'deadline');
      expect(fired).toHaveLength(1);
      const late = Date.parse(fired[0]!.time) - due;
      expect(late).toBeGreaterThanOrEqual(0);
      expect(late).toBeLessThanOrEqual(1000);
      expect((await streamEvents(client.nc, 'EVENTS', 'order', 'dl-1')).map((e) => e.envelope.type)).toEqual(['OrderPlaced', 'OrderCancelled']);
      // Nothing more comes later.
      await new Promise((r) => setTimeout(r, 1500));
      expect((await steps('order-fulfilment', 'dl-1')).filter((s) => s.input.kind === 'deadline')).toHaveLength(1);
    } finally {
      await strand.stop();
    }
  });

  it('a cancelled deadline never fires', async () => {
    const strand = await start([makeOrderFulfilment({ paymentWindowMs: 1500 })]);
    try {
      expect((await client.send('cmd.order.dl-2.PlaceOrder', { customerId: 'C1', items: [item] })).ok).toBe(true);
      await eventually(async () => (await instance(strand, 'order-fulfilment', 'dl-2'))?.status === 'running', 'the process to start', 10_000);
      expect((await client.send('cmd.order.dl-2.MarkPaid', { paymentId: 'P' })).ok).toBe(true);
      await eventually(async () => (await instance(strand, 'order-fulfilment', 'dl-2'))?.status === 'completed', 'the process to complete', 10_000);
      await new Promise((r) => setTimeout(r, 3000)); // well past the due time
      expect((await steps('order-fulfilment', 'dl-2')).map((s) => s.input.kind)).toEqual(['event', 'event', 'reply']);
      const counted = (await strand.metrics.registry.getSingleMetric('strand_process_deadlines_total')!.get()).values;
      const count = (action: string) => counted.find((v) => v.labels['action'] === action)?.value ?? 0;
      expect({ set: count('set'), cancelled: count('cancelled'), fired: count('fired') }).toEqual({ set: 1, cancelled: 1, fired: 0 });
      expect((await strand.deadlines!.pending('order-fulfilment', 'dl-2'))).toEqual([]);
      expect((await streamEvents(client.nc, 'EVENTS', 'order', 'dl-2')).map((e) => e.envelope.type)).toEqual(['OrderPlaced', 'OrderPaid', 'OrderShipped']);
    } finally {
      await strand.stop();
    }
  });

  it('a deadline due while Strand and NATS were down fires once on recovery', async () => {
    const fulfilment = makeOrderFulfilment({ paymentWindowMs: 1500 });
    let strand = await start([fulfilment]);
    expect((await client.send('cmd.order.dl-3.PlaceOrder', { customerId: 'C1', items: [item] })).ok).toBe(true);
    await eventually(async () => (await instance(strand, 'order-fulfilment', 'dl-3'))?.status === 'running', 'the process to start', 10_000);
    await strand.stop();
    await client.close();
    const port = nats.port;
    await nats.stop();
    await new Promise((r) => setTimeout(r, 3000)); // the deadline passes while everything is down
    nats = await startNatsServer({ storeDir: dir.dir, sync: 'always', port });
    client = await CommandClient.connect(nats.url);
    strand = await start([fulfilment]);
    try {
      await eventually(async () => (await instance(strand, 'order-fulfilment', 'dl-3'))?.status === 'failed', 'the order to be cancelled after recovery', 20_000);
      expect((await steps('order-fulfilment', 'dl-3')).filter((s) => s.input.kind === 'deadline')).toHaveLength(1);
      expect((await streamEvents(client.nc, 'EVENTS', 'order', 'dl-3')).map((e) => e.envelope.type)).toEqual(['OrderPlaced', 'OrderCancelled']);
    } finally {
      await strand.stop();
    }
  });
});

async function counter(strand: Strand, name: string, labels: Record<string, string>): Promise<number> {
  const m = strand.metrics.registry.getSingleMetric(name);
  const values = m ? (await m.get()).values : [];
  return values.filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want)).reduce((t, v) => t + v.value, 0);
}

describe('the input consumer', { timeout: 60_000 }, () => {
  it('deleted from under a running instance, is opened again and inputs flow', async () => {
    const strand = await start([makeOrderFulfilment()]);
    try {
      const { jetstreamManager } = await import('@nats-io/jetstream');
      const jsm = await jetstreamManager(client.nc);
      await jsm.consumers.delete('EVENTS', 'process_order-fulfilment');
      // It comes back from the end of the stream: wait for it before appending what it must see.
      await eventually(async () => (await jsm.consumers.info('EVENTS', 'process_order-fulfilment').catch(() => undefined)) !== undefined, 'the consumer to be created again', 45_000);
      expect((await client.send('cmd.order.cd-1.PlaceOrder', { customerId: 'C1', items: [item] })).ok).toBe(true);
      await eventually(async () => (await instance(strand, 'order-fulfilment', 'cd-1'))?.status === 'running', 'the process to start after the consumer came back', 30_000);
    } finally {
      await strand.stop();
    }
  });
});

describe('a consumer created by an earlier version, without the priority group', { timeout: 60_000 }, () => {
  it('is given the pinned group in place and keeps its position: the input waiting in it is handled', async () => {
    const legacy = defineProcess<{ orders: number }>()({
      name: 'legacy-orders',
      sources: { order },
      correlate: (e) => ((e.data as { customerId: string }).customerId === 'legacy' ? e.aggregateId : undefined),
      events: { Counted: z.object({}) },
      initialState: () => ({ orders: 0 }),
      evolve: { Counted: (s) => ({ orders: s.orders + 1 }) },
      on: { order: { OrderPlaced: () => ({ events: [{ type: 'Counted', data: {} }] }) } },
    });
    const { jetstreamManager, AckPolicy, DeliverPolicy } = await import('@nats-io/jetstream');
    const jsm = await jetstreamManager(client.nc);
    const before = await start([]);
    try {
      // As earlier versions created it.
      await jsm.consumers.add('EVENTS', { durable_name: 'process_legacy-orders', filter_subjects: ['evt.order.*.OrderPlaced'], ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.New, ack_wait: 30_000_000_000, max_ack_pending: 256, max_deliver: -1 });
      expect((await client.send('cmd.order.lg-1.PlaceOrder', { customerId: 'legacy', items: [item] })).ok).toBe(true);
    } finally {
      await before.stop();
    }
    expect((await jsm.consumers.info('EVENTS', 'process_legacy-orders')).num_pending).toBe(1);
    const strand = await start([legacy]);
    try {
      const info = await jsm.consumers.info('EVENTS', 'process_legacy-orders');
      expect(info.config).toMatchObject({ priority_groups: ['strand'], priority_policy: 'pinned_client', priority_timeout: 5_000_000_000 });
      await eventually(async () => (await instance(strand, 'legacy-orders', 'lg-1'))?.step === 1, 'the input appended before the upgrade to be handled', 30_000);
    } finally {
      await strand.stop();
    }
  });
});

describe('poison inputs', { timeout: 60_000 }, () => {
  it('a handler that throws: the input is parked after STRAND_PROCESS_MAX_ATTEMPTS deliveries and listed; the other instances go on', async () => {
    const { defineProcess } = await import('../src/processes/define.js');
    const { z } = await import('zod');
    const { order } = await import('../actors/order/order.js');
    const probe = defineProcess<{ seen: number }>()({
      name: 'poison-probe',
      sources: { order },
      correlate: (e) => (e.aggregateId.startsWith('pz-') ? e.aggregateId : undefined),
      events: { Seen: z.object({}) },
      initialState: () => ({ seen: 0 }),
      evolve: { Seen: (s) => ({ seen: s.seen + 1 }) },
      on: {
        order: {
          OrderPlaced: (_s, e) => {
            if (e.data.customerId === 'boom') throw new Error('cannot handle boom');
            return { events: [{ type: 'Seen', data: {} }] };
          },
        },
      },
    });
    const strand = await start([probe], { STRAND_PROCESS_MAX_ATTEMPTS: '2' });
    try {
      expect((await client.send('cmd.order.pz-1.PlaceOrder', { customerId: 'boom', items: [item] })).ok).toBe(true);
      expect((await client.send('cmd.order.pz-2.PlaceOrder', { customerId: 'fine', items: [item] })).ok).toBe(true);
      await eventually(async () => (await instance(strand, 'poison-probe', 'pz-2'))?.status === 'running', 'the healthy instance to go on', 10_000);
      let parked: { reason: string; attempts: number; instanceId: string; subject: string }[] = [];
      await eventually(async () => {
        parked = (await strand.http.inject({ method: 'GET', url: '/processes/poison-probe/parked' })).json<{ parked: typeof parked }>().parked;
        return parked.length > 0;
      }, 'the poison input to be parked', 15_000);
      expect(parked).toEqual([expect.objectContaining({ instanceId: 'pz-1', subject: 'evt.order.pz-1.OrderPlaced', reason: 'PROCESS_HANDLER_FAILED', attempts: 2 })]);
      expect(await counter(strand, 'strand_process_inputs_parked_total', { process: 'poison-probe' })).toBe(1);
      expect(await instance(strand, 'poison-probe', 'pz-1')).toBeUndefined();
    } finally {
      await strand.stop();
    }
  });
});

describe('1,000 concurrent onboardings', { timeout: 300_000 }, () => {
  it('each ends with one task, one welcome and the process completed', async () => {
    const strand = await start([makeMemberOnboarding()], { STRAND_PROCESS_ACK_WAIT_MS: '30000' });
    const n = 1000;
    const ids = Array.from({ length: n }, (_, i) => i);
    async function inBatches(f: (i: number) => Promise<void>): Promise<void> {
      for (let i = 0; i < n; i += 100) await Promise.all(ids.slice(i, i + 100).map(f));
    }
    try {
      await inBatches(async (i) => {
        expect((await client.send(`cmd.eligibility-check.many-${i}.Initiate`, { accountId: `acct-many-${i}` })).ok).toBe(true);
        expect((await client.send(`cmd.eligibility-check.many-${i}.RecordResponse`, { requestId: 'r', responseCode: '200', latencyMs: 1, eligible: true })).ok).toBe(true);
      });
      await eventually(async () => (await counter(strand, 'strand_process_commands_total', { process: 'member-onboarding', reply: 'accepted' })) >= n, 'every task to be created', 120_000);
      await inBatches(async (i) => {
        const r = await client.send(`cmd.task.onboarding-many-${i}.CompleteTask`, {}, team);
        expect(r.ok, JSON.stringify(r)).toBe(true);
      });
      await eventually(async () => (await counter(strand, 'strand_process_instances_total', { process: 'member-onboarding', outcome: 'completed' })) >= n, 'every onboarding to complete', 120_000);
      expect(await counter(strand, 'strand_process_instances_total', { process: 'member-onboarding', outcome: 'started' })).toBe(n);
      expect(await counter(strand, 'strand_process_instances_total', { process: 'member-onboarding', outcome: 'failed' })).toBe(0);
      await inBatches(async (i) => {
        expect(await types('member', `acct-many-${i}`)).toEqual(['WelcomeSent']);
        expect(await types('task', `onboarding-many-${i}`)).toEqual(['TaskCreated', 'TaskCompleted']);
        expect(await instance(strand, 'member-onboarding', `many-${i}`)).toMatchObject({ status: 'completed', step: 5, state: { status: 'welcomed' } });
      });
    } finally {
      await strand.stop();
    }
  });
});

async function types(aggregate: string, id: string): Promise<string[]> {
  return (await streamEvents(client.nc, 'EVENTS', aggregate, id)).map((e) => e.envelope.type);
}

describe('the process_instances projection', { timeout: 60_000 }, () => {
  it('shows each instance: status, step, last input, next deadline, commands sent', async () => {
    const db = await createTestDatabase();
    const fulfilment = makeOrderFulfilment();
    const config = loadConfig({ STRAND_ACTOR_IDLE_MS: '600000', STRAND_PROJECTION_BATCH_MS: '5' });
    const strand = await Strand.start({ config, aggregates, processes: [fulfilment], projections: [processInstancesProjection([fulfilment])], natsUrl: nats.url, databaseUrl: db.url, log: pino({ level: 'silent' }), defaultMetrics: false });
    const row = async () => (await strand.http.inject({ method: 'GET', url: '/views/process_instances?process=order-fulfilment' })).json<{ rows: Record<string, unknown>[] }>().rows.find((r) => r['instanceId'] === 'pi-1');
    try {
      expect((await client.send('cmd.order.pi-1.PlaceOrder', { customerId: 'C1', items: [item] })).ok).toBe(true);
      await eventually(async () => (await row()) !== undefined, 'the row', 15_000);
      const placed = (await row())!;
      expect(placed).toMatchObject({ process: 'order-fulfilment', status: 'running', step: 1, lastInput: 'order.OrderPlaced', nextDeadline: 'payment-due', commandsSent: 0, endedAt: null });
      expect(Date.parse(String(placed['nextDeadlineAt']))).toBeGreaterThan(Date.now() + 23 * 3600_000);
      expect((await client.send('cmd.order.pi-1.MarkPaid', { paymentId: 'P1' })).ok).toBe(true);
      await eventually(async () => (await row())?.['status'] === 'completed', 'the row to show the end', 15_000);
      expect(await row()).toMatchObject({ status: 'completed', step: 3, lastInput: 'reply Ship accepted', nextDeadline: null, nextDeadlineAt: null, commandsSent: 1 });

      // A live subscription to a process instance, as to an aggregate instance: its state, then its events.
      const url = await strand.http.listen({ port: 0, host: '127.0.0.1' });
      expect((await client.send('cmd.order.pi-2.PlaceOrder', { customerId: 'C1', items: [item] })).ok).toBe(true);
      await eventually(async () => (await instance(strand, 'order-fulfilment', 'pi-2'))?.status === 'running', 'the second instance', 15_000);
      const w = await LiveClient.connect(`${url.replace('http', 'ws')}/live`);
      try {
        w.send({ type: 'subscribe', id: 'p', aggregate: 'order-fulfilment', aggregateId: 'pi-2' });
        await w.until((c) => c.of('state').length === 1, 'the instance state');
        expect(w.of('state')[0]).toMatchObject({ version: 2, state: { status: 'running', state: { status: 'awaiting-payment' } } });
        expect((await client.send('cmd.order.pi-2.MarkPaid', { paymentId: 'P2' })).ok).toBe(true);
        await w.until((c) => c.of('event').length >= 4, 'the two steps to come live');
        expect(w.of('event').map((e) => [e.version, e.event['type']])).toEqual([
          [3, 'ShipmentRequested'],
          [4, 'InputHandled'],
          [5, 'FulfilmentEnded'],
          [6, 'InputHandled'],
        ]);
      } finally {
        await w.close();
      }
    } finally {
      await strand.stop();
      await db.drop();
    }
  });
});

describe('two Strand instances sharing the process consumers', { timeout: 300_000 }, () => {
  it('300 onboardings end correct, each command taking effect once, whichever instance handled each step', async () => {
    const onboarding = makeMemberOnboarding();
    const a = await start([onboarding]);
    const b = await start([onboarding]);
    const n = 300;
    const ids = Array.from({ length: n }, (_, i) => i);
    try {
      for (let i = 0; i < n; i += 100) {
        await Promise.all(ids.slice(i, i + 100).map(async (k) => {
          expect((await client.send(`cmd.eligibility-check.two-${k}.Initiate`, { accountId: `acct-two-${k}` })).ok).toBe(true);
          expect((await client.send(`cmd.eligibility-check.two-${k}.RecordResponse`, { requestId: 'r', responseCode: '200', latencyMs: 1, eligible: true })).ok).toBe(true);
        }));
      }
      const created = async () => (await counter(a, 'strand_process_commands_total', { reply: 'accepted' })) + (await counter(b, 'strand_process_commands_total', { reply: 'accepted' }));
      await eventually(async () => (await created()) >= n, 'every task to be created', 120_000);
      for (let i = 0; i < n; i += 100) {
        await Promise.all(ids.slice(i, i + 100).map(async (k) => expect((await client.send(`cmd.task.onboarding-two-${k}.CompleteTask`, {}, team)).ok).toBe(true)));
      }
      const completed = async () => (await counter(a, 'strand_process_instances_total', { outcome: 'completed' })) + (await counter(b, 'strand_process_instances_total', { outcome: 'completed' }));
      await eventually(async () => (await completed()) >= n, 'every onboarding to complete', 120_000);
      // The input consumers are pinned: one instance handled every step (both took commands).
      const steps = [await counter(a, 'strand_process_steps_total', {}), await counter(b, 'strand_process_steps_total', {})];
      expect(steps.filter((n) => n > 0)).toHaveLength(1);
      for (let i = 0; i < n; i += 100) {
        await Promise.all(ids.slice(i, i + 100).map(async (k) => {
          expect(await types('member', `acct-two-${k}`)).toEqual(['WelcomeSent']);
          expect(await types('task', `onboarding-two-${k}`)).toEqual(['TaskCreated', 'TaskCompleted']);
          expect(await instance(a, 'member-onboarding', `two-${k}`)).toMatchObject({ status: 'completed', step: 5 });
        }));
      }
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });
});

/** One instance per customer: every order the customer places is an input of the same instance. */
const customerOrders = defineProcess<{ orders: number }>()({
  name: 'customer-orders',
  sources: { order },
  correlate: (e) => (e.data as { customerId: string }).customerId,
  events: { OrderCounted: z.object({ orderId: z.string() }) },
  initialState: () => ({ orders: 0 }),
  evolve: { OrderCounted: (s) => ({ orders: s.orders + 1 }) },
  on: { order: { OrderPlaced: (_s, e) => ({ events: [{ type: 'OrderCounted', data: { orderId: e.aggregateId } }] }) } },
});

describe('two Strand instances: one process instance\'s inputs in stream order', { timeout: 300_000 }, () => {
  it('orders placed at once by many clients are recorded by each customer\'s instance in stream order, by one Strand instance', async () => {
    const a = await start([customerOrders], { STRAND_PROCESS_PIN_TTL_MS: '2000' });
    const b = await start([customerOrders], { STRAND_PROCESS_PIN_TTL_MS: '2000' });
    const customers = Array.from({ length: 5 }, (_, c) => `cust-${c}`);
    const perCustomer = 60;
    try {
      // Both instances take the commands (one queue group): the OrderPlaced events interleave in the stream.
      for (let k = 0; k < perCustomer; k += 20) {
        await Promise.all(customers.flatMap((c) => Array.from({ length: 20 }, (_, j) => client.send(`cmd.order.${c}-o${k + j}.PlaceOrder`, { customerId: c, items: [item] }).then((r) => expect(r.ok).toBe(true)))));
      }
      const handled = async (c: string) => (await streamEvents(client.nc, 'EVENTS', 'customer-orders', c)).filter((e) => e.envelope.type === 'InputHandled').map((e) => (e.envelope.data as { input: { seq: number } }).input.seq);
      // Not thrown here: the comparison below says what is missing or out of order.
      await eventually(async () => (await Promise.all(customers.map(handled))).every((s) => s.length >= perCustomer), 'every order to be counted', 60_000).catch(() => undefined);
      for (const c of customers) {
        const seqs = await handled(c);
        // The stream's order of the customer's OrderPlaced events, each once.
        const placed = (await Promise.all(Array.from({ length: perCustomer }, (_, k) => streamEvents(client.nc, 'EVENTS', 'order', `${c}-o${k}`)))).map((e) => e[0]!.seq).sort((x, y) => x - y);
        expect(seqs, c).toEqual(placed);
      }
      const steps = [await counter(a, 'strand_process_steps_total', { process: 'customer-orders' }), await counter(b, 'strand_process_steps_total', { process: 'customer-orders' })];
      expect(steps.filter((n) => n > 0), 'one Strand instance handled every input').toEqual([customers.length * perCustomer]);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });
});
