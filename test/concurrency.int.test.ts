import { jetstream } from '@nats-io/jetstream';
import { headers } from '@nats-io/transport-node';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { task } from '../actors/index.js';
import type { Strand } from '../src/app.js';
import type { CommandAccepted, CommandRequest } from '../src/commands/types.js';
import type { EventEnvelope } from '../src/eventstore/types.js';
import { startTestNats, type TestNats } from './support/nats.js';
import { CommandClient, eventually, startStrand, streamEvents } from './support/strand.js';

let nats: TestNats;
let strand: Strand;
let client: CommandClient;

beforeAll(async () => {
  nats = await startTestNats();
  strand = await startStrand(nats.url, { STRAND_STORE_TIMEOUT_MS: '300', STRAND_CONFLICT_RETRIES: '20' });
  client = await CommandClient.connect(nats.url);
});

afterAll(async () => {
  await client?.close();
  await strand?.stop();
  await nats?.cleanup();
});

const newTask = { title: 'Visit', memberId: 'M7', assignedTo: 'CC1' };

/** Appends an event as another writer would: straight to JetStream, under the expected sequence. */
async function appendAsAnotherWriter(id: string, expectedSeq: number, env: Partial<EventEnvelope> & { type: string; version: number; data: unknown }): Promise<number> {
  const envelope: EventEnvelope = { id: randomUUID(), aggregate: 'task', aggregateId: id, schemaVersion: 1, time: new Date().toISOString(), metadata: {}, ...env };
  const h = headers();
  h.set('Nats-Msg-Id', envelope.id);
  h.set('Nats-Expected-Last-Subject-Sequence', String(expectedSeq));
  h.set('Nats-Expected-Last-Subject-Sequence-Subject', `evt.task.${id}.*`);
  const r = await client.nc.request(`evt.task.${id}.${env.type}`, JSON.stringify(envelope), { timeout: 5000, headers: h });
  const ack = JSON.parse(new TextDecoder().decode(r.data)) as { seq?: number; error?: unknown };
  expect(ack.error).toBeUndefined();
  return ack.seq!;
}

function conflictCount(): Promise<number> {
  return strand.metrics.conflicts.get().then((m) => m.values.reduce((n, v) => n + v.value, 0));
}

describe('concurrency', () => {
  it('detects an event appended by another writer, reloads and decides again on the fresh state', async () => {
    const created = (await client.send('cmd.task.other-1.CreateTask', newTask)) as CommandAccepted;
    expect(created.ok).toBe(true);
    const before = await conflictCount();
    // Another writer completes the task behind the live actor's back.
    await appendAsAnotherWriter('other-1', created.seq, { type: 'TaskCompleted', version: 2, data: { notes: null, completedAt: new Date().toISOString() } });
    // The actor still believes the task is pending; its append conflicts, it reloads, and now says no.
    const r = await client.send('cmd.task.other-1.CancelTask', { reason: 'duplicate' });
    expect(r).toMatchObject({ ok: false, error: { code: 'REJECTED', reason: 'TASK_CLOSED' } });
    expect(await conflictCount()).toBe(before + 1);
    const events = await streamEvents(client.nc, 'EVENTS', 'task', 'other-1');
    expect(events.map((e) => e.envelope.type)).toEqual(['TaskCreated', 'TaskCompleted']);
  });

  it('decides a first command on the empty state only as a guess the append confirms; a wrong guess loads and decides again', async () => {
    const activations = async (source: string) =>
      (await strand.metrics.activations.get()).values.filter((v) => v.labels.source === source).reduce((n, v) => n + v.value, 0);
    const created0 = await activations('created');
    // A new instance: created with no read first.
    expect(await client.send('cmd.task.guess-new.CreateTask', newTask)).toMatchObject({ ok: true, version: 1 });
    expect(await activations('created')).toBe(created0 + 1);

    // Instances with history this process has never loaded (written by another writer).
    const seq = await appendAsAnotherWriter('guess-old', 0, { type: 'TaskCreated', version: 1, data: { ...newTask, description: null }, metadata: { commandId: 'made-elsewhere' } });
    const conflicts = await conflictCount();
    // Accepted on the guessed empty state: the append is refused, the task is loaded, and says no.
    expect(await client.send('cmd.task.guess-old.CreateTask', newTask)).toMatchObject({ ok: false, error: { code: 'REJECTED', reason: 'TASK_ALREADY_EXISTS' } });
    expect(await conflictCount()).toBe(conflicts); // not a conflict between writers

    await appendAsAnotherWriter('guess-old-2', 0, { type: 'TaskCreated', version: 1, data: { ...newTask, description: null } });
    // Rejected on the guess (no such task): loaded, decided again, accepted.
    expect(await client.send('cmd.task.guess-old-2.AssignTask', { assignedTo: 'CC9' })).toMatchObject({ ok: true, version: 2 });

    await appendAsAnotherWriter('guess-old-3', 0, { type: 'TaskCreated', version: 1, data: { ...newTask, description: null }, metadata: { commandId: 'create-3' } });
    // A repeat of the command that created it: a duplicate, however it is first decided.
    expect(await client.send('cmd.task.guess-old-3.CreateTask', newTask, { 'Strand-Command-Id': 'create-3' })).toMatchObject({ ok: true, duplicate: true, version: 1 });
    // An expected version other than 0 is never guessed.
    expect(await client.send('cmd.task.guess-old-4.AssignTask', { assignedTo: 'CC9' }, { 'Strand-Expected-Version': '1' })).toMatchObject({ ok: false, error: { code: 'WRONG_VERSION' } });

    for (const [id, types] of [
      ['guess-old', ['TaskCreated']],
      ['guess-old-2', ['TaskCreated', 'TaskAssigned']],
      ['guess-old-3', ['TaskCreated']],
    ] as const) {
      expect((await streamEvents(client.nc, 'EVENTS', 'task', id)).map((e) => e.envelope.type)).toEqual(types);
    }
    expect(seq).toBeGreaterThan(0);
  });

  it('keeps versions gapless when two instances write to the same aggregate', async () => {
    // The cluster routes an aggregate's commands to one instance; here both actor systems are
    // driven directly, as two writers with no ownership (a paused owner and its successor, or
    // another program) would be: only the log's expected sequence keeps them apart.
    const second = await startStrand(nats.url, { STRAND_CONFLICT_RETRIES: '50' });
    try {
      expect((await client.send('cmd.task.shared-1.CreateTask', newTask)).ok).toBe(true);
      const enc = new TextEncoder();
      const replies = await Promise.all(
        Array.from({ length: 100 }, (_, i) => {
          const writer = i % 2 === 0 ? strand : second;
          const req = writer.intake.parse('task', 'shared-1', 'AssignTask', enc.encode(JSON.stringify({ assignedTo: `CC${i}` })), {}) as CommandRequest;
          return writer.actors.execute(req);
        }),
      );
      expect(replies.filter((r) => !r.ok)).toEqual([]);
      const events = await streamEvents(client.nc, 'EVENTS', 'task', 'shared-1');
      expect(events.map((e) => e.envelope.version)).toEqual(Array.from({ length: 101 }, (_, i) => i + 1));
      // They did fight: the log refused appends made on a state another writer had moved past.
      const conflicts = async (s: Strand) => (await s.metrics.conflicts.get()).values.reduce((n, v) => n + v.value, 0);
      expect((await conflicts(strand)) + (await conflicts(second))).toBeGreaterThan(0);
    } finally {
      await second.stop();
    }
  });

  it('settles an append whose ack timed out without losing or duplicating it', async () => {
    expect((await client.send('cmd.task.pause-1.CreateTask', newTask)).ok).toBe(true);
    const req = strand.intake.parse('task', 'pause-1', 'AssignTask', new TextEncoder().encode('{"assignedTo":"CC2"}'), { commandId: 'assign-while-paused' }) as CommandRequest;
    expect('ok' in req).toBe(false);
    process.kill(nats.pid, 'SIGSTOP');
    // The signal lands asynchronously: go on only once the kernel reports the server stopped.
    await eventually(() => /State:\s+T/.test(readFileSync(`/proc/${nats.pid}/status`, 'utf8')), 'nats-server to stop');
    let resumed = false;
    const resume = setTimeout(() => {
      process.kill(nats.pid, 'SIGCONT');
      resumed = true;
    }, 700);
    try {
      // The publish sits in the socket while the server is stopped; the ack cannot come in time.
      const reply = await strand.actors.execute(req);
      expect(resumed).toBe(true);
      expect(reply).toMatchObject({ ok: true, version: 2, duplicate: false });
    } finally {
      clearTimeout(resume);
      if (!resumed) process.kill(nats.pid, 'SIGCONT');
    }
    const events = await streamEvents(client.nc, 'EVENTS', 'task', 'pause-1');
    expect(events.filter((e) => e.envelope.metadata.commandId === 'assign-while-paused')).toHaveLength(1);
    const again = await client.send('cmd.task.pause-1.AssignTask', { assignedTo: 'CC2' }, { 'Strand-Command-Id': 'assign-while-paused' });
    expect(again).toMatchObject({ ok: true, version: 2, duplicate: true });
  });

  it('skips a message on an instance\'s subject that is not an event, and goes on appending after it', async () => {
    expect((await client.send('cmd.task.junk-1.CreateTask', newTask)).ok).toBe(true);
    // Anyone allowed to publish on evt.> can put this there; it still holds a place in the sequence.
    const js = jetstream(client.nc);
    await js.publish('evt.task.junk-1.TaskAssigned', '\u0000 not JSON');
    await js.publish('evt.task.junk-1.TaskAssigned', JSON.stringify({ hello: 'world' }));
    // A fresh actor (loaded from the stream) and the live one (caught up on the conflict) both go on.
    expect(await client.send('cmd.task.junk-1.AssignTask', { assignedTo: 'CC2' })).toMatchObject({ ok: true, version: 2 });
    expect(strand.actors.passivate('task', 'junk-1')).toBe(true);
    expect(await client.send('cmd.task.junk-1.AssignTask', { assignedTo: 'CC3' })).toMatchObject({ ok: true, version: 3 });
    const loaded = await strand.actors.rehydrate(task, 'junk-1', { useSnapshot: false });
    expect(loaded).toMatchObject({ version: 3, state: { assignedTo: 'CC3' } });
    // The audit trail lists the events only.
    const r = await strand.http.inject({ method: 'GET', url: '/aggregates/task/junk-1/events' });
    expect(r.statusCode).toBe(200);
    expect(r.json().events.map((e: { version: number }) => e.version)).toEqual([1, 2, 3]);
  });

  it('upcasts an event written with an older schema version when it is read', async () => {
    // TaskCreated v1 named the member `member` and had no description.
    await appendAsAnotherWriter('legacy-1', 0, { type: 'TaskCreated', version: 1, schemaVersion: 1, data: { title: 'Old', member: 'M-OLD', assignedTo: 'CC9' } });
    const r = (await client.send('cmd.task.legacy-1.AssignTask', { assignedTo: 'CC10' })) as CommandAccepted;
    expect(r).toMatchObject({ ok: true, version: 2 });
    const loaded = await strand.actors.rehydrate(task, 'legacy-1', { useSnapshot: false });
    expect(loaded.state).toMatchObject({ memberId: 'M-OLD', assignedTo: 'CC10', title: 'Old' });
    const events = await streamEvents(client.nc, 'EVENTS', 'task', 'legacy-1');
    expect(events[1]!.envelope.data).toEqual({ assignedTo: 'CC10', previousAssignee: 'CC9' });
  });
});
