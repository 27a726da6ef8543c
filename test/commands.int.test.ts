import { headers } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Strand } from '../src/app.js';
import type { CommandAccepted, CommandFailed } from '../src/commands/types.js';
import { startTestNats, type TestNats } from './support/nats.js';
import { CommandClient, eventually, startStrand, streamEvents } from './support/strand.js';

let nats: TestNats;
let strand: Strand;
let client: CommandClient;

beforeAll(async () => {
  nats = await startTestNats();
  strand = await startStrand(nats.url, { STRAND_MAX_COMMAND_BYTES: '2048' });
  client = await CommandClient.connect(nats.url);
});

afterAll(async () => {
  await client?.close();
  await strand?.stop();
  await nats?.cleanup();
});

const newTask = (assignedTo = 'CC456') => ({ title: 'Call member', memberId: 'M1', assignedTo });

function ok(r: unknown): CommandAccepted {
  expect(r).toMatchObject({ ok: true });
  return r as CommandAccepted;
}

function err(r: unknown, code: string): CommandFailed {
  expect(r).toMatchObject({ ok: false, error: { code } });
  return r as CommandFailed;
}

describe('command intake over NATS', () => {
  it('appends one event per command with the envelope, subject and headers of the contract', async () => {
    const r = ok(await client.send('cmd.task.env-1.CreateTask', newTask(), {
      'Strand-Command-Id': 'cmd-env-1',
      'Strand-Correlation-Id': 'corr-1',
      'Strand-Causation-Id': 'cause-1',
      'Strand-Actor': 'user:CC100',
    }));
    expect(r).toMatchObject({ aggregate: 'task', id: 'env-1', version: 1, commandId: 'cmd-env-1', duplicate: false });
    expect(r.events).toEqual([{ type: 'TaskCreated', version: 1, seq: r.seq }]);
    const [e] = await streamEvents(client.nc, 'EVENTS', 'task', 'env-1');
    expect(e!.subject).toBe('evt.task.env-1.TaskCreated');
    expect(e!.seq).toBe(r.seq);
    expect(e!.headers['Nats-Msg-Id']).toBe(e!.envelope.id);
    expect(e!.headers['Strand-Event-Type']).toBe('TaskCreated');
    expect(e!.headers['Strand-Version']).toBe('1');
    expect(e!.headers['Nats-Expected-Last-Subject-Sequence']).toBe('0');
    expect(e!.headers['Nats-Expected-Last-Subject-Sequence-Subject']).toBe('evt.task.env-1.*');
    expect(e!.envelope).toMatchObject({
      type: 'TaskCreated',
      aggregate: 'task',
      aggregateId: 'env-1',
      version: 1,
      schemaVersion: 2,
      actor: 'user:CC100',
      data: newTask(),
      metadata: { commandId: 'cmd-env-1', correlationId: 'corr-1', causationId: 'cause-1' },
    });
    expect(Number.isNaN(Date.parse(e!.envelope.time))).toBe(false);
  });

  it('runs 200 concurrent commands on one aggregate as versions 1..201 with no gap or repeat', async () => {
    ok(await client.send('cmd.task.hot-1.CreateTask', newTask('A0')));
    const replies = await Promise.all(
      Array.from({ length: 200 }, (_, i) => client.send('cmd.task.hot-1.AssignTask', { assignedTo: `A${i + 1}` })),
    );
    const versions = replies.map((r) => ok(r).version).sort((a, b) => a - b);
    expect(versions).toEqual(Array.from({ length: 200 }, (_, i) => i + 2));
    const events = await streamEvents(client.nc, 'EVENTS', 'task', 'hot-1');
    expect(events.map((e) => e.envelope.version)).toEqual(Array.from({ length: 201 }, (_, i) => i + 1));
    for (let i = 1; i < events.length; i++) expect(events[i]!.seq).toBeGreaterThan(events[i - 1]!.seq);
    // Each assignment saw the one before it: previousAssignee chains with no fork.
    const assigned = events.slice(1).map((e) => e.envelope.data as { assignedTo: string; previousAssignee: string });
    for (let i = 1; i < assigned.length; i++) expect(assigned[i]!.previousAssignee).toBe(assigned[i - 1]!.assignedTo);
  });

  it('produces the events of a repeated command ID once and answers the repeat as a duplicate', async () => {
    const first = ok(await client.send('cmd.order.dup-1.PlaceOrder', { customerId: 'C1', items: [{ sku: 'A', quantity: 2, priceCents: 150 }] }, { 'Strand-Command-Id': 'place-dup-1' }));
    const again = ok(await client.send('cmd.order.dup-1.PlaceOrder', { customerId: 'C1', items: [{ sku: 'A', quantity: 2, priceCents: 150 }] }, { 'Strand-Command-Id': 'place-dup-1' }));
    expect(again).toEqual({ ...first, duplicate: true });
    // Also once the actor is gone: the aggregate remembers command IDs from its own events.
    expect(strand.actors.passivate('order', 'dup-1')).toBe(true);
    const third = ok(await client.send('cmd.order.dup-1.PlaceOrder', { customerId: 'C1', items: [{ sku: 'A', quantity: 2, priceCents: 150 }] }, { 'Strand-Command-Id': 'place-dup-1' }));
    expect(third).toEqual({ ...first, duplicate: true });
    expect(await streamEvents(client.nc, 'EVENTS', 'order', 'dup-1')).toHaveLength(1);
  });

  it('commits a two-event command atomically, adjacent in the stream', async () => {
    ok(await client.send('cmd.eligibility-check.two-1.Initiate', { accountId: 'ACC1' }));
    const r = ok(await client.send('cmd.eligibility-check.two-1.RecordResponse', { requestId: 'R1', responseCode: 'AAA', latencyMs: 42, eligible: true, copayAmount: 2500, networkStatus: 'in' }));
    expect(r.events.map((e) => e.type)).toEqual(['ResponseReceived', 'EligibilityCheckCompleted']);
    expect(r.events[1]!.seq).toBe(r.events[0]!.seq + 1);
    const events = await streamEvents(client.nc, 'EVENTS', 'eligibility-check', 'two-1');
    expect(events.map((e) => [e.envelope.type, e.envelope.version, e.seq])).toEqual([
      ['EligibilityCheckInitiated', 1, events[0]!.seq],
      ['ResponseReceived', 2, r.events[0]!.seq],
      ['EligibilityCheckCompleted', 3, r.events[1]!.seq],
    ]);
    expect(events[1]!.headers['Nats-Batch-Id']).toBeTruthy();
    expect(events[2]!.headers['Nats-Batch-Commit']).toBe('1');
  });

  it('rejects with the aggregate reason, and checks Strand-Expected-Version', async () => {
    ok(await client.send('cmd.task.rules-1.CreateTask', newTask('CC456')));
    const notAssignee = err(await client.send('cmd.task.rules-1.CompleteTask', {}, { 'Strand-Actor': 'user:CC999' }), 'REJECTED');
    expect(notAssignee.error.reason).toBe('NOT_ASSIGNEE');
    const wrong = err(await client.send('cmd.task.rules-1.CompleteTask', {}, { 'Strand-Actor': 'user:CC456', 'Strand-Expected-Version': '7' }), 'WRONG_VERSION');
    expect(wrong.error.details).toEqual({ expected: 7, actual: 1 });
    ok(await client.send('cmd.task.rules-1.CompleteTask', { notes: 'done' }, { 'Strand-Actor': 'user:CC456', 'Strand-Expected-Version': '1' }));
    expect(err(await client.send('cmd.task.rules-1.CompleteTask', {}, { 'Strand-Actor': 'user:CC456' }), 'REJECTED').error.reason).toBe('TASK_ALREADY_COMPLETED');
  });

  it('answers every kind of bad input with its code and keeps serving', async () => {
    const cases: [string, unknown, Record<string, string>, string][] = [
      ['cmd.task.bad-1.CreateTask', '{"title":', {}, 'BAD_REQUEST'],
      ['cmd.task.bad-1.CreateTask', '\xff\xfe', {}, 'BAD_REQUEST'],
      ['cmd.task.bad-1.CreateTask', JSON.stringify({ title: 'x'.repeat(5000) }), {}, 'BAD_REQUEST'],
      ['cmd.nosuch.bad-1.CreateTask', newTask(), {}, 'UNKNOWN_AGGREGATE'],
      ['cmd.task.bad-1.Explode', newTask(), {}, 'UNKNOWN_COMMAND'],
      ['cmd.task.bad$1.CreateTask', newTask(), {}, 'BAD_REQUEST'],
      [`cmd.task.${'x'.repeat(129)}.CreateTask`, newTask(), {}, 'BAD_REQUEST'],
      ['cmd.Task.bad-1.CreateTask', newTask(), {}, 'BAD_REQUEST'],
      ['cmd.task.bad-1', newTask(), {}, 'BAD_REQUEST'],
      ['cmd.task.bad-1.CreateTask.extra', newTask(), {}, 'BAD_REQUEST'],
      ['cmd.task.bad-1.CreateTask', { title: 42, memberId: [], assignedTo: null }, {}, 'VALIDATION_FAILED'],
      ['cmd.task.bad-1.CreateTask', [1, 2], {}, 'VALIDATION_FAILED'],
      ['cmd.task.bad-1.CreateTask', 'null', {}, 'VALIDATION_FAILED'],
      ['cmd.task.bad-1.CreateTask', newTask(), { 'Strand-Expected-Version': '-1' }, 'BAD_REQUEST'],
      ['cmd.task.bad-1.CreateTask', newTask(), { 'Strand-Expected-Version': 'one' }, 'BAD_REQUEST'],
      ['cmd.task.bad-1.CreateTask', newTask(), { 'Strand-Actor': 'no-colon' }, 'BAD_REQUEST'],
      ['cmd.task.bad-1.CreateTask', newTask(), { 'Strand-Command-Id': 'x'.repeat(200) }, 'BAD_REQUEST'],
    ];
    for (const [subject, body, h, code] of cases) {
      const payload = typeof body === 'string' && body.startsWith('\xff') ? new Uint8Array([0xff, 0xfe, 0x7b]) : body;
      const r = err(await client.send(subject, payload, h), code);
      expect(typeof r.error.message).toBe('string');
      expect(r.error.message.length).toBeGreaterThan(0);
    }
    const v = err(await client.send('cmd.task.bad-1.CreateTask', { title: 42, memberId: 'M', assignedTo: 'A' }), 'VALIDATION_FAILED');
    expect(v.error.details).toEqual([expect.objectContaining({ path: ['title'], code: 'invalid_type' })]);
    // Nothing was written for any of them, and the processor still serves.
    expect(await streamEvents(client.nc, 'EVENTS', 'task', 'bad-1')).toHaveLength(0);
    ok(await client.send('cmd.task.bad-1.CreateTask', newTask()));
  });

  it('processes a command published without a reply subject (fire-and-forget)', async () => {
    const h = headers();
    h.set('Strand-Command-Id', 'ff-1');
    client.nc.publish('cmd.task.ff-1.CreateTask', JSON.stringify(newTask()), { headers: h });
    await eventually(async () => (await streamEvents(client.nc, 'EVENTS', 'task', 'ff-1')).length === 1, 'the fire-and-forget event');
    const again = ok(await client.send('cmd.task.ff-1.CreateTask', newTask(), { 'Strand-Command-Id': 'ff-1' }));
    expect(again.duplicate).toBe(true);
  });

  it('serves health and metrics over HTTP', async () => {
    const ready = await strand.http.inject({ method: 'GET', url: '/health/ready' });
    expect(ready.statusCode).toBe(200);
    expect((await strand.http.inject({ method: 'GET', url: '/health/live' })).statusCode).toBe(200);
    const m = await strand.http.inject({ method: 'GET', url: '/metrics' });
    expect(m.statusCode).toBe(200);
    for (const name of [
      'strand_commands_total{aggregate="task",command="CreateTask",result="ok"}',
      'strand_commands_total{aggregate="task",command="CompleteTask",result="REJECTED"}',
      'strand_command_duration_seconds_bucket',
      'strand_events_appended_total{aggregate="eligibility-check"} 3',
      'strand_append_duration_seconds_bucket',
      'strand_live_actors',
      'strand_actor_activations_total',
      'strand_rehydration_duration_seconds_bucket',
      'strand_concurrency_conflicts_total',
      'strand_actor_passivations_total{aggregate="order",reason="manual"} 1',
    ]) {
      expect(m.body).toContain(name);
    }
  });
});
