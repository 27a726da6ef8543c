/**
 * Several instances share the aggregates: each partition has one owner, every command reaches
 * it (forwarded with the client's reply subject, or delivered straight by a server-side subject
 * mapping), and partitions change hands without losing, repeating or reordering a command.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Strand } from '../src/app.js';
import { partitionOf } from '../src/cluster/partition.js';
import { launchNatsServer, resolveNatsServerBinary, type RunningNatsServer } from '../src/nats/server.js';
import { partitionMapping } from '../subjects/index.js';
import { Load, verifyLoad } from './support/load.js';
import { makeTempDir, startTestNats, type TestNats } from './support/nats.js';
import { CommandClient, eventually, startStrand } from './support/strand.js';

const P = 64;

async function counter(s: Strand, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = (await s.metrics.registry.getMetricsAsJSON()).find((x) => x.name === name);
  return ((m?.values ?? []) as { value: number; labels: Record<string, unknown> }[])
    .filter((v) => Object.entries(labels).every(([k, x]) => String(v.labels[k]) === x))
    .reduce((n, v) => n + v.value, 0);
}

async function allReady(instances: readonly Strand[]): Promise<void> {
  await eventually(() => instances.every((s) => s.region!.ready), 'every instance to hold its share', 20_000);
}

/** The instances' partitions: together every partition once, each within one of its share. */
function expectBalanced(instances: readonly Strand[]): void {
  const owned = instances.map((s) => s.region!.status().local.active);
  const all = owned.flat().sort((a, b) => a - b);
  expect(all).toEqual(Array.from({ length: P }, (_, i) => i));
  const counts = owned.map((o) => o.length);
  expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1);
}

describe('instances on one server', { timeout: 120_000 }, () => {
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

  it('share the partitions, each command runs on its owner, and none conflicts', async () => {
    const a = await startStrand(nats.url);
    const b = await startStrand(nats.url);
    const c = await startStrand(nats.url);
    const all = [a, b, c];
    try {
      await allReady(all);
      expectBalanced(all);
      const load = new Load(nats.url, 'share');
      await load.start();
      await load.until(1500);
      const result = await load.stop();
      expect([...result.failures], result.reasons.join('; ')).toEqual([]);
      await verifyLoad(nc, result);
      let conflicts = 0;
      let forwarded = 0;
      for (const s of all) {
        conflicts += await counter(s, 'strand_concurrency_conflicts_total');
        forwarded += await counter(s, 'strand_cluster_commands_forwarded_total');
      }
      expect(conflicts).toBe(0);
      // The queue group hands about two thirds of the commands to an instance that does not own them.
      expect(forwarded).toBeGreaterThan(result.commands / 3);
      // HTTP goes the same way: to the owner, whichever instance is asked.
      const id = 'http-routed-1';
      const owner = all.find((s) => s.region!.status().local.active.includes(partitionOf('task', id, P)))!;
      const other = all.find((s) => s !== owner)!;
      const r = await other.http.inject({ method: 'POST', url: `/commands/task/${id}/CreateTask`, payload: { title: 't', memberId: 'M1', assignedTo: 'CC1' } });
      expect(r.statusCode).toBe(200);
      expect(r.json()).toMatchObject({ ok: true, version: 1 });
      expect(await counter(owner, 'strand_commands_total', { command: 'CreateTask', result: 'ok' })).toBeGreaterThan(0);
    } finally {
      await Promise.all(all.map((s) => s.stop()));
    }
  });

  it('hand partitions over as instances join and leave, a rolling restart of all of them included, without a failed, lost, repeated or reordered command', async () => {
    const instances = [await startStrand(nats.url)];
    await allReady(instances);
    const load = new Load(nats.url, 'roll');
    const handoffs = { in: 0, out: 0 };
    const count = async (s: Strand) => {
      handoffs.in += await counter(s, 'strand_cluster_handoffs_total', { kind: 'in' });
      handoffs.out += await counter(s, 'strand_cluster_handoffs_total', { kind: 'out' });
    };
    await load.start();
    try {
      await load.until(300);
      // Two more join while commands flow: each takes its share from the others.
      instances.push(await startStrand(nats.url));
      await allReady(instances);
      instances.push(await startStrand(nats.url));
      await allReady(instances);
      expectBalanced(instances);
      await load.until(900);
      // A rolling restart: each instance in turn stops (handing over) and a new one takes its place.
      for (let i = 0; i < 3; i++) {
        const old = instances.shift()!;
        expect(await old.stop()).toBe(true);
        await count(old);
        await allReady(instances);
        instances.push(await startStrand(nats.url));
        await allReady(instances);
        await load.until(900 + (i + 1) * 300);
      }
      expectBalanced(instances);
    } finally {
      const result = await load.stop();
      for (const s of instances) await count(s);
      await Promise.all(instances.map((s) => s.stop()));
      // Not one command failed or timed out along the way.
      expect([...result.failures], result.reasons.join('; ')).toEqual([]);
      await verifyLoad(nc, result);
      // Partitions really changed hands, each handed over (not taken from a dead owner).
      expect(handoffs.out).toBeGreaterThan(P);
      expect(handoffs.in).toBe(handoffs.out);
    }
  });
});

describe('a server-side subject mapping', { timeout: 60_000 }, () => {
  let server: RunningNatsServer;
  let tmp: { dir: string; cleanup(): Promise<void> };
  beforeAll(async () => {
    tmp = await makeTempDir();
    const m = partitionMapping(P);
    const conf = path.join(tmp.dir, 'nats.conf');
    // As docs/operations.md shows it: the server computes the partition and delivers to its owner.
    await fs.writeFile(conf, `listen: "127.0.0.1:-1"\njetstream { store_dir: ${JSON.stringify(tmp.dir)} }\nmappings = {\n  "${m.from}": "${m.to}"\n}\n`);
    server = await launchNatsServer({ binary: await resolveNatsServerBinary(), args: ['-c', conf], runDir: tmp.dir, storeDir: tmp.dir });
  });
  afterAll(async () => {
    await server?.stop();
    await tmp?.cleanup();
  });

  it('delivers each command straight to its owner, with the same replies as forwarding', async () => {
    const a = await startStrand(server.url);
    const b = await startStrand(server.url);
    const nc = await connect({ servers: server.url });
    try {
      await allReady([a, b]);
      // The previous owner keeps a handed-over partition's subscription 1 s (forwarding): past that, no hop.
      await new Promise((r) => setTimeout(r, 1500));
      const load = new Load(server.url, 'mapped', 6);
      await load.start();
      await load.until(600);
      const result = await load.stop();
      expect([...result.failures], result.reasons.join('; ')).toEqual([]);
      await verifyLoad(nc, result);
      expect((await counter(a, 'strand_cluster_commands_forwarded_total')) + (await counter(b, 'strand_cluster_commands_forwarded_total'))).toBe(0);
      // Errors are the same as on the unmapped path.
      const client = await CommandClient.connect(server.url);
      try {
        expect(await client.send('cmd.task.mapped-x.CompleteTask', {})).toMatchObject({ ok: false, error: { code: 'REJECTED', reason: 'TASK_NOT_FOUND' } });
        expect(await client.send('cmd.nothing.x.Do', {})).toMatchObject({ ok: false, error: { code: 'UNKNOWN_AGGREGATE' } });
        expect(await client.send('cmd.task.mapped-x.CreateTask', { title: '' })).toMatchObject({ ok: false, error: { code: 'VALIDATION_FAILED' } });
      } finally {
        await client.close();
      }
    } finally {
      await nc.close();
      await Promise.all([a.stop(), b.stop()]);
    }
  });

  it('hands partitions over as instances join and leave, without a failed, lost, repeated or reordered command', async () => {
    const instances = [await startStrand(server.url)];
    const nc = await connect({ servers: server.url });
    await allReady(instances);
    const load = new Load(server.url, 'mapped-roll');
    await load.start();
    try {
      await load.until(200);
      instances.push(await startStrand(server.url));
      await allReady(instances);
      await load.until(500);
      instances.push(await startStrand(server.url));
      await allReady(instances);
      await load.until(800);
      for (let i = 0; i < 2; i++) {
        const old = instances.shift()!;
        expect(await old.stop()).toBe(true);
        await allReady(instances);
        instances.push(await startStrand(server.url));
        await allReady(instances);
        await load.until(800 + (i + 1) * 300);
      }
    } finally {
      const result = await load.stop();
      await Promise.all(instances.map((s) => s.stop()));
      expect([...result.failures], result.reasons.join('; ')).toEqual([]);
      await verifyLoad(nc, result);
      await nc.close();
    }
  });
});
