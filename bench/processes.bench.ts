/**
 * Process managers: N order-fulfilment processes (default 1,000), each through 3 steps
 * (OrderPlaced → payment deadline set; OrderPaid → Ship sent; Ship's reply → completed), with
 * the orders placed and paid at a fixed rate, on one nats-server and one Strand (in process).
 *
 *   strand — steps/s over the run, and the latency from the triggering event (OrderPaid stored:
 *            its command's reply) to the Ship command on the wire (a core subscriber on
 *            `cmd.order.*.Ship` sees it), p50/p99;
 *   raw    — the raw loop at the same rate: a durable JetStream consumer that, for each input
 *            message, publishes one message (js.publish) and acks; latency from the input's
 *            publish to the output seen on the wire.
 *
 * Then deadline accuracy through a process: D orders (default 1,000) placed at --deadline-rate/s (100) and left
* unpaid, each with a 10 s payment window (the event stream recreated first); fired − due is the time
 * the deadline's step was recorded minus its due time.
 *
 *   npx tsx bench/processes.bench.ts [--processes 1000] [--rate 170] [--deadlines 1000] [--deadline-rate 100] [--sync always|default] [--time-limit 290]
 */
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { headers, type NatsConnection } from '@nats-io/nats-core';
import { connect } from '@nats-io/transport-node';
import pino from 'pino';
import { aggregates } from '../actors/index.js';
import { makeOrderFulfilment } from '../actors/order-fulfilment/order-fulfilment.js';
import { Strand } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import type { InputHandled } from '../src/processes/define.js';
import { fmt1, fmtInt, hardLimit, intArg, machineLine, parseArgs, percentile, runBenchMain, sleep, startBenchServer, syncArg, syncLabel } from './support.js';

const args = parseArgs();
const sync = syncArg(args);
const N = intArg(args, 'processes', 1000);
const RATE = intArg(args, 'rate', 170);
const D = intArg(args, 'deadlines', 1000, 0);
const D_RATE = intArg(args, 'deadline-rate', 100);
const TIME_LIMIT_S = intArg(args, 'time-limit', 290);
const item = { sku: 'S', quantity: 1, priceCents: 1 };
const enc = new TextEncoder();

async function request(nc: NatsConnection, subject: string, body: unknown): Promise<void> {
  const r = await nc.request(subject, enc.encode(JSON.stringify(body)), { timeout: 30_000, headers: headers() });
  const reply = r.json<{ ok: boolean; error?: unknown }>();
  if (!reply.ok) throw new Error(`${subject}: ${JSON.stringify(reply.error)}`);
}

/** Runs `f(i)` for i < n, started at `rate` per second (open loop), and waits for them all. */
async function paced(n: number, rate: number, f: (i: number) => Promise<void>): Promise<void> {
  const t0 = performance.now();
  const all: Promise<void>[] = [];
  for (let i = 0; i < n; i++) {
    const at = t0 + (i * 1000) / rate;
    const wait = at - performance.now();
    if (wait > 1) await sleep(wait);
    all.push(f(i));
  }
  await Promise.all(all);
}

async function strandRun(nc: NatsConnection, strand: Strand): Promise<{ stepsPerSecond: number; latency: number[] }> {
  const paidAt = new Map<string, number>();
  const latency: number[] = [];
  let shipped = 0;
  const sub = nc.subscribe('cmd.order.*.Ship', {
    callback: (_e, m) => {
      const id = m.subject.split('.')[2]!;
      const t = paidAt.get(id);
      if (t !== undefined && !paidAt.has(`${id}#seen`)) {
        paidAt.set(`${id}#seen`, 0);
        latency.push(performance.now() - t);
        shipped++;
      }
    },
  });
  const t0 = performance.now();
  await paced(N, RATE, async (i) => {
    const id = `bench-${i}`;
    await request(nc, `cmd.order.${id}.PlaceOrder`, { customerId: 'C', items: [item] });
    await request(nc, `cmd.order.${id}.MarkPaid`, { paymentId: 'P' });
    paidAt.set(id, performance.now());
  });
  const completed = async () => {
    const m = strand.metrics.registry.getSingleMetric('strand_process_instances_total');
    return (m ? (await m.get()).values : []).filter((v) => v.labels['outcome'] === 'completed').reduce((t, v) => t + v.value, 0);
  };
  while ((await completed()) < N || shipped < N) {
    if (performance.now() - t0 > TIME_LIMIT_S * 1000) throw new Error(`only ${await completed()} of ${N} completed`);
    await sleep(20);
  }
  const seconds = (performance.now() - t0) / 1000;
  sub.unsubscribe();
  return { stepsPerSecond: (3 * N) / seconds, latency: latency.sort((a, b) => a - b) };
}

async function rawRun(nc: NatsConnection): Promise<{ latency: number[] }> {
  const jsm = await jetstreamManager(nc);
  const js = jetstream(nc);
  await jsm.streams.add({ name: 'RAWPROC', subjects: ['rawproc.in.>', 'rawproc.out.>'] });
  await jsm.consumers.add('RAWPROC', { durable_name: 'loop', filter_subject: 'rawproc.in.>', ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All, max_ack_pending: 256 });
  const consumer = await js.consumers.get('RAWPROC', 'loop');
  const messages = await consumer.consume({
    max_messages: 256,
    callback: (m) => {
      void js.publish(m.subject.replace('rawproc.in.', 'rawproc.out.'), m.data).then(() => m.ack());
    },
  });
  const sentAt = new Map<string, number>();
  const latency: number[] = [];
  const sub = nc.subscribe('rawproc.out.>', {
    callback: (_e, m) => {
      const t = sentAt.get(m.subject.slice('rawproc.out.'.length));
      if (t !== undefined) latency.push(performance.now() - t);
    },
  });
  await paced(N, RATE, async (i) => {
    sentAt.set(`m${i}`, performance.now());
    await js.publish(`rawproc.in.m${i}`, enc.encode('{}'));
  });
  while (latency.length < N) await sleep(20);
  messages.stop();
  sub.unsubscribe();
  return { latency: latency.sort((a, b) => a - b) };
}

async function deadlineRun(nc: NatsConnection, natsUrl: string): Promise<number[]> {
  const fulfilment = makeOrderFulfilment({ paymentWindowMs: 10_000 });
  // A fresh event stream (the first run's is deleted), so the process sees only these orders.
  await (await jetstreamManager(nc)).streams.delete('EVENTS');
  const config = loadConfig({ STRAND_ACTOR_IDLE_MS: '600000' });
  const strand = await Strand.start({ config, aggregates, processes: [fulfilment], natsUrl, log: pino({ level: 'silent' }), defaultMetrics: false });
  try {
    await paced(D, D_RATE, (i) => request(nc, `cmd.order.dl-${i}.PlaceOrder`, { customerId: 'C', items: [item] }));
    const jsm = await jetstreamManager(nc);
    const late: number[] = [];
    const deadline = performance.now() + 60_000;
    for (let i = 0; i < D; i++) {
      for (;;) {
        const stepEvents: { time: string; data: InputHandled }[] = [];
        try {
          const iter = await jsm.direct.getBatch('EVENTS', { seq: 1, batch: 16, next_by_subj: `evt.order-fulfilment.dl-${i}.InputHandled` });
          for await (const m of iter) stepEvents.push(m.json());
        } catch {
          // none yet
        }
        const first = stepEvents[0]?.data.deadlines.set[0];
        const fired = stepEvents.find((e) => e.data.input.kind === 'deadline');
        if (first && fired) {
          late.push(Date.parse(fired.time) - Date.parse(first.due));
          break;
        }
        if (performance.now() > deadline) throw new Error(`deadline of dl-${i} never fired`);
        await sleep(100);
      }
    }
    return late.sort((a, b) => a - b);
  } finally {
    await strand.stop();
  }
}

async function main(): Promise<number> {
  const server = await startBenchServer(sync);
  const limit = hardLimit(TIME_LIMIT_S * 1000, () => server.cleanup());
  const nc = await connect({ servers: server.url });
  try {
    console.log(`processes.bench: ${machineLine()}`);
    console.log(`nats-server ${nc.info?.version} | sync_interval: ${syncLabel(sync)} | ${fmtInt(N)} order-fulfilment processes × 3 steps, orders placed and paid at ${RATE}/s (${fmtInt(RATE * 3)} steps/s offered)`);
    const config = loadConfig({ STRAND_ACTOR_IDLE_MS: '600000' });
    const strand = await Strand.start({ config, aggregates, processes: [makeOrderFulfilment()], natsUrl: server.url, log: pino({ level: 'silent' }), defaultMetrics: false });
    let s: Awaited<ReturnType<typeof strandRun>>;
    try {
      s = await strandRun(nc, strand);
    } finally {
      await strand.stop();
    }
    const raw = await rawRun(nc);
    const ms = (xs: number[], p: number) => fmt1(percentile(xs, p));
    console.log(`strand  steps/s ${fmtInt(s.stepsPerSecond)} | OrderPaid → Ship sent p50 ${ms(s.latency, 0.5)} ms p99 ${ms(s.latency, 0.99)} ms max ${ms(s.latency, 1)} ms`);
    console.log(`raw     consume → publish p50 ${ms(raw.latency, 0.5)} ms p99 ${ms(raw.latency, 0.99)} ms max ${ms(raw.latency, 1)} ms`);
    console.log(`ratio   p50 strand/raw ${(percentile(s.latency, 0.5) / Math.max(0.001, percentile(raw.latency, 0.5))).toFixed(1)}, p99 strand/raw ${(percentile(s.latency, 0.99) / Math.max(0.001, percentile(raw.latency, 0.99))).toFixed(1)}`);
    if (D > 0) {
      const late = await deadlineRun(nc, server.url);
      console.log(`deadlines through a process (${fmtInt(D)}): fired − due p50 ${ms(late, 0.5)} ms p99 ${ms(late, 0.99)} ms max ${ms(late, 1)} ms`);
    }
    await nc.close();
    return 0;
  } finally {
    clearTimeout(limit);
    await server.cleanup();
  }
}

runBenchMain(main);
