/**
 * An answer that no append checks (a rejection, a no-op, a wrong expected version) must be given
 * on the aggregate's latest state, not on what an actor cached before another writer appended.
 * Checked with one instance and an outside writer (deterministic), then with two instances
 * racing through the queue group, on one server and on a 3-node cluster.
 */
import { headers } from '@nats-io/transport-node';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { aggregates as examples } from '../actors/index.js';
import { defineAggregate } from '../src/aggregate/index.js';
import type { Strand } from '../src/app.js';
import type { CommandAccepted, CommandReply, CommandRequest } from '../src/commands/types.js';
import type { EventEnvelope } from '../src/eventstore/types.js';
import { R3, startTestCluster, type TestCluster } from './support/cluster.js';
import { startTestNats, type TestNats } from './support/nats.js';
import { CommandClient, startStrand, streamEvents } from './support/strand.js';

/** A tiny aggregate with a command that may decide nothing: Set is a no-op when the value is already there. */
const dial = defineAggregate<{ value: number | null }>()({
  name: 'dial',
  commands: { Set: z.object({ value: z.number().int() }) },
  events: { DialSet: z.object({ value: z.number().int() }) },
  initialState: () => ({ value: null }),
  decide: { Set: (c, s) => (s.value === c.value ? [] : [{ type: 'DialSet', data: { value: c.value } }]) },
  evolve: { DialSet: (_s, e) => ({ value: e.value }) },
});

let nats: TestNats;
let client: CommandClient;

beforeAll(async () => {
  nats = await startTestNats();
  client = await CommandClient.connect(nats.url);
});

afterAll(async () => {
  await client?.close();
  await nats?.cleanup();
});

/** Appends an event as another writer would: straight to JetStream, under the expected sequence. */
async function appendElsewhere(aggregate: string, id: string, expectedSeq: number, env: { type: string; version: number; data: unknown }): Promise<number> {
  const envelope: EventEnvelope = { id: randomUUID(), aggregate, aggregateId: id, schemaVersion: 1, time: new Date().toISOString(), metadata: {}, ...env };
  const h = headers();
  h.set('Nats-Msg-Id', envelope.id);
  h.set('Nats-Expected-Last-Subject-Sequence', String(expectedSeq));
  h.set('Nats-Expected-Last-Subject-Sequence-Subject', `evt.${aggregate}.${id}.*`);
  const r = await client.nc.request(`evt.${aggregate}.${id}.${env.type}`, JSON.stringify(envelope), { timeout: 5000, headers: h });
  const ack = JSON.parse(new TextDecoder().decode(r.data)) as { seq?: number; error?: unknown };
  expect(ack.error).toBeUndefined();
  return ack.seq!;
}

async function staleCount(s: Strand): Promise<number> {
  return (await s.metrics.staleDecisions.get()).values.reduce((n, v) => n + v.value, 0);
}

describe('answers no append checks are given on the latest state', () => {
  let strand: Strand;
  beforeAll(async () => {
    strand = await startStrand(nats.url, {}, [...examples, dial]);
  });
  afterAll(async () => {
    await strand?.stop();
  });

  it('a rejection decided on a cached state is decided again after another writer appended', async () => {
    const created = (await client.send('cmd.task.st-1.CreateTask', { title: 'Visit', memberId: 'M1', assignedTo: 'CC1' })) as CommandAccepted;
    expect(created.ok).toBe(true);
    // Another writer reassigns the task; the actor in memory still says CC1.
    await appendElsewhere('task', 'st-1', created.seq, { type: 'TaskAssigned', version: 2, data: { assignedTo: 'CC2', previousAssignee: 'CC1' } });
    const before = await staleCount(strand);
    const r = await client.send('cmd.task.st-1.CompleteTask', { notes: 'done' }, { 'Strand-Actor': 'user:CC2' });
    expect(r).toMatchObject({ ok: true, version: 3 });
    expect(await staleCount(strand)).toBe(before + 1);
    // And a rejection on the latest state still leaves: CC1 is no longer the assignee of a completed task.
    expect(await client.send('cmd.task.st-1.CompleteTask', {}, { 'Strand-Actor': 'user:CC2' })).toMatchObject({ ok: false, error: { code: 'REJECTED', reason: 'TASK_ALREADY_COMPLETED' } });
  });

  it('a wrong expected version is checked against the stream before it is answered', async () => {
    const created = (await client.send('cmd.task.st-2.CreateTask', { title: 'Visit', memberId: 'M1', assignedTo: 'CC1' })) as CommandAccepted;
    await appendElsewhere('task', 'st-2', created.seq, { type: 'TaskAssigned', version: 2, data: { assignedTo: 'CC3', previousAssignee: 'CC1' } });
    // The client read version 2 elsewhere; the actor still holds version 1.
    expect(await client.send('cmd.task.st-2.AssignTask', { assignedTo: 'CC4' }, { 'Strand-Expected-Version': '2' })).toMatchObject({ ok: true, version: 3 });
    // A version that really is wrong is still refused, with the actual version.
    expect(await client.send('cmd.task.st-2.AssignTask', { assignedTo: 'CC5' }, { 'Strand-Expected-Version': '2' })).toMatchObject({
      ok: false,
      error: { code: 'WRONG_VERSION', details: { expected: 2, actual: 3 } },
    });
  });

  it('a no-op decided on a cached state is decided again', async () => {
    const first = (await client.send('cmd.dial.d-1.Set', { value: 1 })) as CommandAccepted;
    expect(first).toMatchObject({ ok: true, version: 1 });
    await appendElsewhere('dial', 'd-1', first.seq, { type: 'DialSet', version: 2, data: { value: 2 } });
    // The actor believes the value is 1 already, so it would decide nothing; the stream says 2.
    const r = await client.send('cmd.dial.d-1.Set', { value: 1 });
    expect(r).toMatchObject({ ok: true, version: 3, events: [{ type: 'DialSet', version: 3 }] });
    expect((await streamEvents(client.nc, 'EVENTS', 'dial', 'd-1')).map((e) => (e.envelope.data as { value: number }).value)).toEqual([1, 2, 1]);
  });
});

/**
 * Senders loop CreateTask -> AssignTask -> CompleteTask, completing as the assignee the
 * acknowledged AssignTask set, with two instances. Through NATS the cluster routes each
 * aggregate's commands to one owner, so nothing is stale and nothing conflicts; driven straight
 * into the two actor systems (create and complete on one, assign on the other, as two writers
 * with no ownership would), the first holds a stale state at every CompleteTask. Either way
 * every command must be accepted. Before the fix about a quarter of the CompleteTask sent through
 * NATS to two instances (without ownership), and every direct one here, were refused NOT_ASSIGNEE.
 */
async function loop(urls: string, prefix: string, senders: number, rounds: number, instances: readonly [Strand, Strand], how: 'nats' | 'direct'): Promise<void> {
  const clients = await Promise.all(Array.from({ length: senders }, (_, i) => CommandClient.connect(urls.split(',')[i % urls.split(',').length]!)));
  const refused: CommandReply[] = [];
  const sum = async (f: (s: Strand) => Promise<number>) => (await Promise.all(instances.map(f))).reduce((a, b) => a + b, 0);
  const conflicts = (s: Strand) => s.metrics.conflicts.get().then((m) => m.values.reduce((n, v) => n + v.value, 0));
  const staleBefore = await sum(staleCount);
  const conflictsBefore = await sum(conflicts);
  const enc = new TextEncoder();
  try {
    await Promise.all(
      clients.map(async (c, w) => {
        for (let i = 0; i < rounds; i++) {
          const id = `${prefix}-${w}-${i}`;
          const assignee = `CC${w}x${i}`;
          const steps = [
            ['CreateTask', { title: 't', memberId: 'M1', assignedTo: 'CC0' }, {}, 0],
            ['AssignTask', { assignedTo: assignee }, {}, 1],
            ['CompleteTask', { notes: 'n' }, { 'Strand-Actor': `user:${assignee}` }, 0],
          ] as const;
          for (const [cmd, body, h, on] of steps) {
            let r: CommandReply;
            if (how === 'nats') r = await c.send(`cmd.task.${id}.${cmd}`, body, h);
            else {
              const s = instances[on];
              const req = s.intake.parse('task', id, cmd, enc.encode(JSON.stringify(body)), 'Strand-Actor' in h ? { actor: h['Strand-Actor'] } : {}) as CommandRequest;
              r = await s.actors.execute(req);
            }
            if (!r.ok) refused.push(r);
          }
        }
      }),
    );
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
  expect(refused).toEqual([]);
  if (how === 'direct') {
    // The race really happened: answers were decided again after a refresh.
    expect(await sum(staleCount)).toBeGreaterThan(staleBefore);
  } else {
    // Owned partitions: no two instances wrote to one aggregate.
    expect(await sum(conflicts)).toBe(conflictsBefore);
  }
}

describe('two instances', { timeout: 120_000 }, () => {
  for (const how of ['nats', 'direct'] as const) {
    it(`on one server, ${how === 'nats' ? 'through NATS' : 'driven directly'}: no valid command is refused on stale state`, async () => {
      const a = await startStrand(nats.url);
      const b = await startStrand(nats.url);
      try {
        await loop(nats.url, `two-${how}`, 8, 40, [a, b], how);
      } finally {
        await Promise.all([a.stop(), b.stop()]);
      }
    });
  }

  describe('on a 3-node cluster (R3)', () => {
    let cluster: TestCluster;
    beforeAll(async () => {
      cluster = await startTestCluster();
    });
    afterAll(async () => {
      await cluster?.cleanup();
    });

    for (const how of ['nats', 'direct'] as const) {
      it(`${how === 'nats' ? 'through NATS' : 'driven directly'}: no valid command is refused on stale state, nor TASK_NOT_FOUND after an acknowledged create`, async () => {
        const a = await startStrand(cluster.urls, R3);
        const b = await startStrand(cluster.urls, R3);
        try {
          await loop(cluster.urls, `cl-${how}`, 8, 25, [a, b], how);
        } finally {
          await Promise.all([a.stop(), b.stop()]);
        }
      });
    }
  });
});
