/**
 * Durable command intake: commands published to `cmdq.<aggregate>.<id>.<Command>` wait in the
 * `<STREAM>_COMMANDS` work queue until the owner of their partition processes them, exactly
 * once, and their outcomes can be read back by command ID over HTTP and NATS.
 */
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, headers, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Strand } from '../src/app.js';
import type { CommandOutcome } from '../src/cluster/outcomes.js';
import { partitionOf } from '../src/cluster/partition.js';
import { OUTCOME_REQUEST, commandStreamName, durableCommandSubject } from '../subjects/index.js';
import { startTestCluster, type TestCluster } from './support/cluster.js';
import { spawnInstance, type InstanceProcess } from './support/instance.js';
import { startTestNats, type TestNats } from './support/nats.js';
import { createTestDatabase, type TestDatabase } from './support/postgres.js';
import { eventually, startStrand, streamEvents } from './support/strand.js';

const P = 64;
const STREAM = 'EVENTS';
/** The durable intake is opt-in. */
const ON = { STRAND_DURABLE_INTAKE: 'true' };

async function counter(s: Strand, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = (await s.metrics.registry.getMetricsAsJSON()).find((x) => x.name === name);
  return ((m?.values ?? []) as { value: number; labels: Record<string, unknown> }[])
    .filter((v) => Object.entries(labels).every(([k, x]) => String(v.labels[k]) === x))
    .reduce((n, v) => n + v.value, 0);
}

/** Publishes one durable command as any NATS client would; resolves with the stream sequence of its PubAck. */
async function publish(nc: NatsConnection, aggregate: string, id: string, command: string, body: unknown, hdrs: Record<string, string> = {}): Promise<number> {
  const h = headers();
  for (const [k, v] of Object.entries(hdrs)) h.set(k, v);
  const data = typeof body === 'string' ? body : JSON.stringify(body);
  const ack = await jetstream(nc).publish(durableCommandSubject(aggregate, id, command), data, { headers: h });
  return ack.seq;
}

/** Commands still waiting in the durable stream. */
async function waiting(nc: NatsConnection): Promise<number> {
  return (await (await jetstreamManager(nc)).streams.info(commandStreamName(STREAM))).state.messages;
}

async function outcomeOverNats(nc: NatsConnection, commandId: string): Promise<Record<string, unknown>> {
  const r = await nc.request(OUTCOME_REQUEST, commandId, { timeout: 5000 });
  return r.json<Record<string, unknown>>();
}

describe('durable command intake', { timeout: 120_000 }, () => {
  let nats: TestNats;
  let nc: NatsConnection;
  beforeAll(async () => {
    nats = await startTestNats();
    nc = await connect({ servers: nats.url });
  });
  afterAll(async () => {
    await nc?.close();
    await nats?.cleanup();
  });

  it('processes commands published while every instance was down exactly once, on their owners, in order, with readable outcomes', async () => {
    // A first start creates the stream; then nothing runs while the commands are published.
    const first = await startStrand(nats.url, ON);
    expect(await first.stop()).toBe(true);

    const tasks = Array.from({ length: 24 }, (_, i) => `dur-${i}`);
    const assignees = (task: string) => Array.from({ length: 4 }, (_, n) => `${task}-who-${n}`);
    const ids: string[] = [];
    for (const task of tasks) {
      await publish(nc, 'task', task, 'CreateTask', { title: 't', memberId: 'M1', assignedTo: 'CC0' }, { 'Strand-Command-Id': `${task}-c0` });
      ids.push(`${task}-c0`);
      for (const [n, who] of assignees(task).entries()) {
        await publish(nc, 'task', task, 'AssignTask', { assignedTo: who }, { 'Strand-Command-Id': `${task}-c${n + 1}` });
        ids.push(`${task}-c${n + 1}`);
      }
    }
    // A client that retried its publish: the same command ID stored twice (no Nats-Msg-Id to stop it).
    await publish(nc, 'task', tasks[0]!, 'AssignTask', { assignedTo: 'someone-else' }, { 'Strand-Command-Id': `${tasks[0]}-c2` });
    // Bad input: each gets its error as its outcome, and none is delivered again.
    await publish(nc, 'task', 'dur-bad', 'CreateTask', '{not json', { 'Strand-Command-Id': 'bad-json' });
    await publish(nc, 'task', 'dur-bad', 'Explode', {}, { 'Strand-Command-Id': 'bad-command' });
    await publish(nc, 'task', 'dur-bad', 'CreateTask', { title: 't' }, { 'Strand-Command-Id': 'bad-data' });
    await publish(nc, 'nosuch', 'x', 'Do', {}, { 'Strand-Command-Id': 'bad-aggregate' });
    await publish(nc, 'task', tasks[1]!, 'CreateTask', { title: 't', memberId: 'M1', assignedTo: 'CC0' }, { 'Strand-Command-Id': 'rejected-create' });
    // Without a command ID: recorded under cmdq-<the PubAck's sequence>.
    const seq = await publish(nc, 'task', 'dur-noid', 'CreateTask', { title: 't', memberId: 'M1', assignedTo: 'CC0' });
    expect(await waiting(nc)).toBe(tasks.length * 5 + 7);

    const [a, b] = await Promise.all([startStrand(nats.url, ON), startStrand(nats.url, ON)]);
    const both = [a!, b!];
    try {
      await eventually(async () => (await waiting(nc)) === 0, 'every durable command to be processed', 30_000);

      // Exactly once, in publish order: versions 1..5, each command ID once, assignees as sent.
      for (const task of tasks) {
        const events = await streamEvents(nc, STREAM, 'task', task);
        expect(events.map((e) => e.envelope.version)).toEqual([1, 2, 3, 4, 5]);
        expect(events.map((e) => e.envelope.metadata.commandId)).toEqual([0, 1, 2, 3, 4].map((n) => `${task}-c${n}`));
        expect(events.slice(1).map((e) => (e.envelope.data as { assignedTo: string }).assignedTo)).toEqual(assignees(task));
      }

      // Every outcome readable over HTTP from either instance, and over NATS.
      for (const [i, id] of ids.entries()) {
        const r = await both[i % 2]!.http.inject({ method: 'GET', url: `/commands/${id}` });
        expect(r.statusCode).toBe(200);
        const o = r.json<CommandOutcome>();
        expect(o).toMatchObject({ ok: true, commandId: id, aggregate: 'task' });
        expect((o as { version: number }).version).toBe(Number(id.slice(id.lastIndexOf('c') + 1)) + 1);
      }
      const viaNats = await outcomeOverNats(nc, `${tasks[3]}-c4`);
      expect(viaNats).toMatchObject({ ok: true, commandId: `${tasks[3]}-c4`, version: 5, events: [{ type: 'TaskAssigned', version: 5 }] });
      const dup = await outcomeOverNats(nc, `${tasks[0]}-c2`);
      expect(dup).toMatchObject({ ok: true, version: 3, duplicate: false });

      const codes: Record<string, string> = { 'bad-json': 'BAD_REQUEST', 'bad-command': 'UNKNOWN_COMMAND', 'bad-data': 'VALIDATION_FAILED', 'bad-aggregate': 'UNKNOWN_AGGREGATE' };
      for (const [id, code] of Object.entries(codes)) expect(await outcomeOverNats(nc, id)).toMatchObject({ ok: false, commandId: id, error: { code } });
      expect(await outcomeOverNats(nc, 'rejected-create')).toMatchObject({ ok: false, error: { code: 'REJECTED', reason: 'TASK_ALREADY_EXISTS' } });
      expect(await outcomeOverNats(nc, `cmdq-${seq}`)).toMatchObject({ ok: true, aggregate: 'task', id: 'dur-noid', version: 1 });
      expect((await streamEvents(nc, STREAM, 'task', 'dur-bad')).length).toBe(0);

      // Unknown IDs: OUTCOME_NOT_FOUND on both doors.
      const missing = await a!.http.inject({ method: 'GET', url: '/commands/never-sent' });
      expect(missing.statusCode).toBe(404);
      expect(missing.json()).toMatchObject({ code: 'OUTCOME_NOT_FOUND' });
      expect(await outcomeOverNats(nc, 'never-sent')).toMatchObject({ ok: false, error: { code: 'OUTCOME_NOT_FOUND' } });

      // Each ran on the owner of its partition: nothing was forwarded, and every command was settled once.
      let forwarded = 0;
      let settled = 0;
      for (const s of both) {
        forwarded += await counter(s, 'strand_cluster_commands_forwarded_total');
        settled += await counter(s, 'strand_durable_commands_total');
        expect(await counter(s, 'strand_durable_commands_total')).toBeGreaterThan(0);
      }
      expect(forwarded).toBe(0);
      expect(settled).toBeGreaterThanOrEqual(tasks.length * 5 + 7);
      expect(await counter(a!, 'strand_durable_commands_total', { result: 'duplicate' }) + (await counter(b!, 'strand_durable_commands_total', { result: 'duplicate' }))).toBeGreaterThanOrEqual(1);
      expect(both.every((s) => s.region!.ready)).toBe(true);
    } finally {
      await Promise.all(both.map((s) => s.stop()));
    }
  });

  it('takes a durable command published while it runs, on the owner of its partition, whichever instance that is', async () => {
    const [a, b] = await Promise.all([startStrand(nats.url, ON), startStrand(nats.url, ON)]);
    const both = [a!, b!];
    try {
      await eventually(() => both.every((s) => s.region!.ready), 'every instance to hold its share', 20_000);
      // Nothing waits in the stream: consumers the earlier instances left are deleted once idle,
      // and no partition opens one (on R3 each would be a raft group).
      const jsm = await jetstreamManager(nc);
      const consumers = async () => (await jsm.consumers.list(commandStreamName(STREAM)).next()).length;
      await eventually(async () => (await consumers()) === 0, 'idle consumers to be deleted', 40_000);
      const ids = Array.from({ length: 40 }, (_, i) => `live-${i}`);
      for (const id of ids) await publish(nc, 'task', id, 'CreateTask', { title: 't', memberId: 'M1', assignedTo: 'CC0' }, { 'Strand-Command-Id': `${id}-create` });
      await eventually(async () => (await waiting(nc)) === 0, 'the durable commands to be processed', 20_000);
      for (const s of both) {
        const mine = ids.filter((id) => s.region!.isActive(partitionOf('task', id, P))).length;
        expect(await counter(s, 'strand_durable_commands_total', { result: 'ok' })).toBe(mine);
      }
      for (const id of ids) expect((await outcomeOverNats(nc, `${id}-create`))['ok']).toBe(true);
      // A publish opened its partition's consumer; once idle, each is deleted again.
      expect(await consumers()).toBeGreaterThan(0);
      await eventually(async () => (await consumers()) === 0, 'the idle consumers to be deleted', 40_000);
      await publish(nc, 'task', ids[0]!, 'AssignTask', { assignedTo: 'again' }, { 'Strand-Command-Id': 'after-idle' });
      await eventually(async () => (await outcomeOverNats(nc, 'after-idle'))['ok'] === true, 'a command after the consumers were closed', 10_000);
    } finally {
      await Promise.all(both.map((s) => s.stop()));
    }
  });
});

describe('durable command intake on a 3-node cluster (R3)', { timeout: 240_000 }, () => {
  let cluster: TestCluster;
  let db: TestDatabase;
  let nc: NatsConnection;
  const running: InstanceProcess[] = [];
  beforeAll(async () => {
    cluster = await startTestCluster();
    db = await createTestDatabase();
    nc = await connect({ servers: cluster.urls.split(','), maxReconnectAttempts: -1, reconnectTimeWait: 100 });
  });
  afterAll(async () => {
    await Promise.all(running.splice(0).map((i) => i.kill9()));
    await nc?.close();
    await db?.drop();
    await cluster?.cleanup();
  });

  async function instance(extra: Record<string, string> = {}): Promise<InstanceProcess> {
    const i = await spawnInstance({ NATS_URL: cluster.urls, DATABASE_URL: db.url, STRAND_ROLES: 'commands', STRAND_STREAM_REPLICAS: '3', ...ON, ...extra });
    running.push(i);
    return i;
  }

  it('an owner killed (-9) mid-stream, after a command took effect and before its outcome was recorded: every command is processed exactly once, in publish order', async () => {
    // The first instance kills itself at its 60th durable command, right after the command took effect.
    const doomed = await instance({ STRAND_FAILPOINT: 'intake.beforeRecord:60' });
    const survivor = await instance();
    await Promise.all([doomed.ready(), survivor.ready()]);
    const jsm = await jetstreamManager(nc);
    expect((await jsm.streams.info(commandStreamName(STREAM))).config.num_replicas).toBe(3);

    const tasks = Array.from({ length: 30 }, (_, i) => `k9-${i}`);
    const rounds = 10;
    for (let n = 0; n < rounds; n++) {
      for (const task of tasks) {
        if (n === 0) await publish(nc, 'task', task, 'CreateTask', { title: 't', memberId: 'M1', assignedTo: 'CC0' }, { 'Strand-Command-Id': `${task}-c0` });
        else await publish(nc, 'task', task, 'AssignTask', { assignedTo: `${task}-who-${n}` }, { 'Strand-Command-Id': `${task}-c${n}` });
      }
    }
    expect(await doomed.exited).toBeNull(); // killed by its signal
    await eventually(async () => (await waiting(nc)) === 0, 'every durable command to be processed by the survivor', 60_000);

    for (const task of tasks) {
      const events = await streamEvents(nc, STREAM, 'task', task);
      expect(events.map((e) => e.envelope.version)).toEqual(Array.from({ length: rounds }, (_, n) => n + 1));
      expect(events.map((e) => e.envelope.metadata.commandId)).toEqual(Array.from({ length: rounds }, (_, n) => `${task}-c${n}`));
      expect(events.slice(1).map((e) => (e.envelope.data as { assignedTo: string }).assignedTo)).toEqual(Array.from({ length: rounds - 1 }, (_, n) => `${task}-who-${n + 1}`));
    }
    // What the dead owner had taken and not acknowledged came to the survivor at once, not after the ack wait.
    expect(survivor.output()).toContain('durable command consumer recreated to deliver what its previous owner left unacknowledged');
    for (const task of tasks) expect(await outcomeOverNats(nc, `${task}-c${rounds - 1}`)).toMatchObject({ ok: true, version: rounds });
    expect(await survivor.stop()).toBe(0);
  });
});
