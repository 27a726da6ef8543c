import { Kvm } from '@nats-io/kv';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { order, task } from '../actors/index.js';
import type { CommandAccepted } from '../src/commands/types.js';
import type { Snapshot } from '../src/eventstore/snapshots.js';
import { startNatsServer, type RunningNatsServer } from '../src/nats/server.js';
import { makeTempDir } from './support/nats.js';
import { CommandClient, eventually, startStrand, streamEvents } from './support/strand.js';

let dir: { dir: string; cleanup(): Promise<void> };
let nats: RunningNatsServer;

beforeAll(async () => {
  dir = await makeTempDir();
  // Acknowledged means on disk: the crash test below relies on it.
  nats = await startNatsServer({ storeDir: dir.dir, sync: 'always' });
});

afterAll(async () => {
  await nats?.stop();
  await dir?.cleanup();
});

const item = { sku: 'SKU-1', quantity: 1, priceCents: 1000 };

async function restartNats(how: 'stop' | 'kill9'): Promise<void> {
  const port = nats.port;
  if (how === 'stop') await nats.stop();
  else await nats.kill9();
  nats = await startNatsServer({ storeDir: dir.dir, sync: 'always', port });
}

describe('durability', () => {
  it('keeps state, versions and remembered command IDs across a restart of Strand and NATS', async () => {
    let strand = await startStrand(nats.url);
    let client = await CommandClient.connect(nats.url);
    try {
      expect((await client.send('cmd.order.keep-1.PlaceOrder', { customerId: 'C1', items: [item] }, { 'Strand-Command-Id': 'keep-place' })).ok).toBe(true);
      expect((await client.send('cmd.order.keep-1.AddItem', { sku: 'SKU-2', quantity: 2, priceCents: 50 })).ok).toBe(true);
    } finally {
      await client.close();
      await strand.stop();
    }
    await restartNats('stop');
    strand = await startStrand(nats.url);
    client = await CommandClient.connect(nats.url);
    try {
      const dup = (await client.send('cmd.order.keep-1.PlaceOrder', { customerId: 'C1', items: [item] }, { 'Strand-Command-Id': 'keep-place' })) as CommandAccepted;
      expect(dup).toMatchObject({ ok: true, duplicate: true, version: 1 });
      const paid = (await client.send('cmd.order.keep-1.MarkPaid', { paymentId: 'P1' })) as CommandAccepted;
      expect(paid).toMatchObject({ ok: true, version: 3 });
      const loaded = await strand.actors.rehydrate(order, 'keep-1');
      expect(loaded.state).toMatchObject({ status: 'paid', totalCents: 1100 });
    } finally {
      await client.close();
      await strand.stop();
    }
  });

  it('loses no acknowledged event when nats-server is killed with SIGKILL (sync_interval: always)', async () => {
    const strand = await startStrand(nats.url);
    const client = await CommandClient.connect(nats.url);
    let acked: CommandAccepted[];
    try {
      acked = (await Promise.all(Array.from({ length: 50 }, (_, i) => client.send(`cmd.task.crash-${i}.CreateTask`, { title: 't', memberId: 'M', assignedTo: 'A' })))) as CommandAccepted[];
      expect(acked.every((r) => r.ok)).toBe(true);
    } finally {
      await client.close();
      await strand.stop();
    }
    await restartNats('kill9');
    const reader = await CommandClient.connect(nats.url);
    try {
      for (let i = 0; i < 50; i++) {
        const events = await streamEvents(reader.nc, 'EVENTS', 'task', `crash-${i}`);
        expect(events.map((e) => e.seq)).toEqual([acked[i]!.seq]);
      }
    } finally {
      await reader.close();
    }
  });

  it('activates from snapshot plus tail to the same state as a full replay, and ignores a stale snapshot', async () => {
    const strand = await startStrand(nats.url, { STRAND_SNAPSHOT_EVERY: '10' });
    const client = await CommandClient.connect(nats.url);
    try {
      expect((await client.send('cmd.task.snap-1.CreateTask', { title: 'Snap', memberId: 'M', assignedTo: 'A0' })).ok).toBe(true);
      for (let i = 1; i <= 34; i++) expect((await client.send('cmd.task.snap-1.AssignTask', { assignedTo: `A${i}` }, { 'Strand-Command-Id': `snap-assign-${i}` })).ok).toBe(true);
      const kv = await new Kvm(client.nc).open('EVENTS_snapshots');
      await eventually(async () => (await kv.get('task.snap-1'))?.json<Snapshot>().version === 30, 'the snapshot at version 30');

      const fromSnapshot = await strand.actors.rehydrate(task, 'snap-1');
      const replayed = await strand.actors.rehydrate(task, 'snap-1', { useSnapshot: false });
      expect(fromSnapshot.source).toBe('snapshot');
      expect(replayed.source).toBe('events');
      expect(fromSnapshot).toEqual({ ...replayed, source: 'snapshot' });
      expect(replayed.version).toBe(35);

      // The snapshot carries the remembered command IDs: a repeat is still recognised after activation from it.
      strand.actors.passivate('task', 'snap-1');
      const dup = await client.send('cmd.task.snap-1.AssignTask', { assignedTo: 'A5' }, { 'Strand-Command-Id': 'snap-assign-5' });
      expect(dup).toMatchObject({ ok: true, duplicate: true, version: 6 });

      // A snapshot from another definition of the aggregate is ignored and the state rebuilt from events.
      const stale = { ...(await kv.get('task.snap-1'))!.json<Snapshot>(), fingerprint: 'an-older-definition', state: { status: 'bogus' } };
      await kv.put('task.snap-1', JSON.stringify(stale));
      const rebuilt = await strand.actors.rehydrate(task, 'snap-1');
      expect(rebuilt).toEqual({ ...replayed, source: 'events' });
    } finally {
      await client.close();
      await strand.stop();
    }
  });

  it('passivates the least recently used actor past the limit and idle ones after the timeout, and both come back correct', async () => {
    const strand = await startStrand(nats.url, { STRAND_MAX_ACTORS: '3', STRAND_ACTOR_IDLE_MS: '300' });
    const client = await CommandClient.connect(nats.url);
    try {
      for (let i = 0; i < 5; i++) expect((await client.send(`cmd.order.lru-${i}.PlaceOrder`, { customerId: 'C', items: [item] })).ok).toBe(true);
      expect(strand.actors.size).toBe(3);
      const passivated = async (reason: string) => (await strand.metrics.passivations.get()).values.filter((v) => v.labels.reason === reason).reduce((n, v) => n + v.value, 0);
      expect(await passivated('capacity')).toBe(2);
      // lru-0 was passivated first; it comes back with its history.
      expect(await client.send('cmd.order.lru-0.AddItem', { sku: 'X', quantity: 1, priceCents: 5 })).toMatchObject({ ok: true, version: 2 });
      await eventually(() => strand.actors.size === 0, 'idle passivation', 3000);
      expect(await passivated('idle')).toBeGreaterThanOrEqual(3);
      expect(await client.send('cmd.order.lru-0.MarkPaid', { paymentId: 'P' })).toMatchObject({ ok: true, version: 3 });
    } finally {
      await client.close();
      await strand.stop();
    }
  });

  it('passivates least recently used actors past the memory budget, counting their states and remembered command IDs', async () => {
    const strand = await startStrand(nats.url, { STRAND_ACTOR_MEMORY_MB: '1' });
    const client = await CommandClient.connect(nats.url);
    const budget = 1024 * 1024;
    try {
      // Each task holds about 4 KB of text, and remembers its commands' IDs of 100 characters.
      const text = 'x'.repeat(1990);
      for (let i = 0; i < 400; i += 50) {
        const replies = await Promise.all(
          Array.from({ length: 50 }, (_, j) =>
            client.send(`cmd.task.mem-${i + j}.CreateTask`, { title: 'Memory', description: text, memberId: 'M1', assignedTo: 'CC1' }, { 'Strand-Command-Id': `${'c'.repeat(90)}-${i + j}` }),
          ),
        );
        for (const r of replies) expect(r.ok).toBe(true);
      }
      const passivated = (await strand.metrics.passivations.get()).values.filter((v) => v.labels.reason === 'memory').reduce((n, v) => n + v.value, 0);
      expect(passivated).toBeGreaterThan(0);
      expect(strand.actors.size).toBeLessThan(400);
      expect(strand.actors.memoryBytes).toBeLessThanOrEqual(budget);
      expect(strand.actors.memoryBytes).toBeGreaterThan(budget / 2);
      // A passivated task comes back with its history and remembered command IDs.
      expect(await client.send('cmd.task.mem-0.CreateTask', { title: 'Memory', description: text, memberId: 'M1', assignedTo: 'CC1' }, { 'Strand-Command-Id': `${'c'.repeat(90)}-0` })).toMatchObject({
        ok: true,
        version: 1,
        duplicate: true,
      });
      expect(await client.send('cmd.task.mem-0.AssignTask', { assignedTo: 'CC2' })).toMatchObject({ ok: true, version: 2 });
    } finally {
      await client.close();
      await strand.stop();
    }
  });
});
