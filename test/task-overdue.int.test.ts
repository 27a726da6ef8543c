/**
 * The task's `overdue` deadline (STRAND_DEADLINES=true): set by TaskCreated, cancelled when the
 * task is completed or cancelled, MarkOverdue → TaskOverdue once when it fires, with two Strand
 * instances, across a restart of Strand while it falls due, and on a 3-node cluster at R3.
 */
import { jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { aggregates, processes, taskOverdue } from '../actors/index.js';
import { Strand } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { R3, startTestCluster, type TestCluster } from './support/cluster.js';
import { startTestNats, type TestNats } from './support/nats.js';
import { CommandClient, eventually, streamEvents } from './support/strand.js';

const OVERDUE_MS = 4_000;
const env = { STRAND_DEADLINES: 'true', STRAND_TASK_OVERDUE_MS: String(OVERDUE_MS), STRAND_ACTOR_IDLE_MS: '600000' };
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function start(url: string, extra: Record<string, string> = {}, withProcesses = false): Promise<Strand> {
  const config = loadConfig({ ...env, ...extra });
  return Strand.start({
    config,
    aggregates,
    ...(withProcesses ? { processes } : {}),
    natsUrl: url,
    log: pino({ level: process.env['TEST_LOG_LEVEL'] ?? 'silent' }),
    defaultMetrics: false,
    deadlineRules: [taskOverdue(config.STRAND_TASK_OVERDUE_MS)],
  });
}

const create = (c: CommandClient, id: string) => c.send(`cmd.task.${id}.CreateTask`, { title: 'Call member', memberId: 'M1', assignedTo: 'cc1' });

describe('task overdue deadline', { timeout: 90_000 }, () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let client: CommandClient;
  beforeAll(async () => {
    nats = await startTestNats();
    nc = await connect({ servers: nats.url });
    client = await CommandClient.connect(nats.url);
  });
  afterAll(async () => {
    await client?.close();
    await nc?.close();
    await nats?.cleanup();
  });

  const types = async (id: string): Promise<string[]> => (await streamEvents(nc, 'EVENTS', 'task', id)).map((e) => e.envelope.type);

  it('marks an open task overdue once, on time, with two instances; a completed or cancelled one never', async () => {
    const a = await start(nats.url);
    const b = await start(nats.url);
    try {
      expect(await create(client, 'od-open')).toMatchObject({ ok: true });
      expect(await create(client, 'od-done')).toMatchObject({ ok: true });
      expect(await create(client, 'od-cancelled')).toMatchObject({ ok: true });
      expect(await client.send('cmd.task.od-done.CompleteTask', {}, { 'Strand-Actor': 'user:cc1' })).toMatchObject({ ok: true });
      expect(await client.send('cmd.task.od-cancelled.CancelTask', { reason: 'duplicate' })).toMatchObject({ ok: true });
      // The deadline of the open task is pending; those of the closed ones are cancelled (the rule consumer reads the events in order).
      await eventually(async () => (await a.deadlines!.pending('task', 'od-open')).length === 1, 'the open task\'s deadline set', 10_000);
      await eventually(async () => (await a.deadlines!.pending('task', 'od-done')).length === 0 && (await a.deadlines!.pending('task', 'od-cancelled')).length === 0, 'the closed tasks\' deadlines cancelled', 10_000);

      await eventually(async () => (await types('od-open')).includes('TaskOverdue'), 'TaskOverdue', 15_000);
      await sleep(2_000);
      const events = await streamEvents(nc, 'EVENTS', 'task', 'od-open');
      expect(events.map((e) => e.envelope.type)).toEqual(['TaskCreated', 'TaskOverdue']);
      const created = Date.parse(events[0]!.envelope.time);
      const overdue = events[1]!.envelope;
      expect(Date.parse((overdue.data as { dueAt: string }).dueAt)).toBe(created + OVERDUE_MS);
      expect(Date.parse(overdue.time) - (created + OVERDUE_MS)).toBeGreaterThanOrEqual(0);
      expect(Date.parse(overdue.time) - (created + OVERDUE_MS)).toBeLessThanOrEqual(3_000);
      expect(overdue.actor).toBe('system:deadlines');
      // Counted on the instances that did each step (the metrics of both together).
      const count = async (action: string): Promise<number> => {
        let n = 0;
        for (const s of [a, b]) {
          const m = (await s.metrics.registry.getMetricsAsJSON()).find((x) => x.name === 'strand_deadlines_total');
          for (const v of (m?.values ?? []) as { value: number; labels: Record<string, unknown> }[]) if (v.labels['owner'] === 'task' && v.labels['action'] === action) n += v.value;
        }
        return n;
      };
      expect([await count('set'), await count('cancelled'), await count('fired'), await count('handled'), await count('failed')]).toEqual([3, 2, 1, 1, 0]);
      expect(await types('od-done')).toEqual(['TaskCreated', 'TaskCompleted']);
      expect(await types('od-cancelled')).toEqual(['TaskCreated', 'TaskCancelled']);
      // The task state says so, and it can still be completed.
      const state = await a.http.inject({ url: '/aggregates/task/od-open' });
      expect(state.json().state).toMatchObject({ status: 'pending', overdueAt: (overdue.data as { dueAt: string }).dueAt });
      expect(await client.send('cmd.task.od-open.CompleteTask', {}, { 'Strand-Actor': 'user:cc1' })).toMatchObject({ ok: true });
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  it('marks a task overdue whose deadline fell due while no Strand ran', async () => {
    const a = await start(nats.url);
    expect(await create(client, 'od-restart')).toMatchObject({ ok: true });
    await eventually(async () => (await a.deadlines!.pending('task', 'od-restart')).length === 1, 'the deadline set', 10_000);
    await a.stop();
    await sleep(OVERDUE_MS + 1_000);
    expect(await types('od-restart')).toEqual(['TaskCreated']);
    const b = await start(nats.url);
    try {
      await eventually(async () => (await types('od-restart')).includes('TaskOverdue'), 'TaskOverdue after the restart', 15_000);
      await sleep(1_500);
      expect(await types('od-restart')).toEqual(['TaskCreated', 'TaskOverdue']);
    } finally {
      await b.stop();
    }
  });

  it('marks no task overdue when STRAND_DEADLINES is off, even with process managers opening the deadline store (as npm start defines them)', async () => {
    // Left by the tests above, which ran with STRAND_DEADLINES on: this one must not create it again.
    await (await jetstreamManager(nc)).consumers.delete('EVENTS', 'strand_deadline_rules').catch(() => undefined);
    const a = await start(nats.url, { STRAND_DEADLINES: 'false' }, true);
    try {
      expect(a.deadlines).toBeDefined();
      expect(await create(client, 'od-off-processes')).toMatchObject({ ok: true });
      await sleep(OVERDUE_MS + 1_500);
      expect(await types('od-off-processes')).toEqual(['TaskCreated']);
      const names: string[] = [];
      for await (const ci of (await jetstreamManager(nc)).consumers.list('EVENTS')) names.push(ci.name);
      expect(names).not.toContain('strand_deadline_rules');
    } finally {
      await a.stop();
    }
  });

  it('does nothing with deadlines when STRAND_DEADLINES is off', async () => {
    const a = await start(nats.url, { STRAND_DEADLINES: 'false' });
    try {
      expect(a.deadlines).toBeUndefined();
      expect(await create(client, 'od-off')).toMatchObject({ ok: true });
      await sleep(OVERDUE_MS + 1_500);
      expect(await types('od-off')).toEqual(['TaskCreated']);
    } finally {
      await a.stop();
    }
  });
});

describe('task overdue deadline on a 3-node cluster at R3', { timeout: 120_000 }, () => {
  let c: TestCluster;
  let nc: NatsConnection;
  let client: CommandClient;
  beforeAll(async () => {
    c = await startTestCluster();
    nc = await connect({ servers: c.urls.split(',') });
    client = await CommandClient.connect(c.urls);
  }, 120_000);
  afterAll(async () => {
    await client?.close();
    await nc?.close();
    await c?.cleanup();
  });

  it('marks the open task overdue once and leaves the completed one alone, with two instances', async () => {
    const a = await start(c.urls, R3);
    const b = await start(c.urls, R3);
    try {
      expect(await create(client, 'r3-open')).toMatchObject({ ok: true });
      expect(await create(client, 'r3-done')).toMatchObject({ ok: true });
      expect(await client.send('cmd.task.r3-done.CompleteTask', {}, { 'Strand-Actor': 'user:cc1' })).toMatchObject({ ok: true });
      const types = async (id: string): Promise<string[]> => (await streamEvents(nc, 'EVENTS', 'task', id)).map((e) => e.envelope.type);
      await eventually(async () => (await types('r3-open')).includes('TaskOverdue'), 'TaskOverdue on R3', 20_000);
      await sleep(2_000);
      expect(await types('r3-open')).toEqual(['TaskCreated', 'TaskOverdue']);
      expect(await types('r3-done')).toEqual(['TaskCreated', 'TaskCompleted']);
      expect((await (await jetstreamManager(nc)).streams.info('EVENTS_DEADLINES')).config.num_replicas).toBe(3);
    } finally {
      await a.stop();
      await b.stop();
    }
  });
});
