/**
 * The read side on a worker thread (STRAND_READ_SIDE_THREAD, the default when an instance has
 * both roles and knows the module its projections come from): commands on this thread, runners
 * on the other, and what crosses between them — `minSeq` reads, the live feed, status, rebuilds,
 * metrics — and the advisory-lock ownership another instance sees.
 */
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { aggregates, projections } from '../actors/index.js';
import { Strand } from '../src/app.js';
import type { CommandAccepted } from '../src/commands/types.js';
import { loadConfig } from '../src/config.js';
import { ReadSide } from '../src/projections/host.js';
import { RemoteReadSide } from '../src/projections/remote.js';
import { LiveClient } from './support/live.js';
import { startTestNats, type TestNats } from './support/nats.js';
import { createTestDatabase, type TestDatabase } from './support/postgres.js';
import { CommandClient, eventually, startStrandWithDb } from './support/strand.js';

const projectionsModule = { url: new URL('../actors/index.js', import.meta.url).href, name: 'projections' };

let nats: TestNats;
let db: TestDatabase;
let client: CommandClient;

function start(env: Record<string, string> = {}): Promise<Strand> {
  const config = loadConfig({ STRAND_ACTOR_IDLE_MS: '600000', STRAND_PROJECTION_STANDBY_MS: '500', ...env });
  return Strand.start({ config, aggregates, projections, projectionsModule, natsUrl: nats.url, databaseUrl: db.url, log: pino({ level: process.env['TEST_LOG_LEVEL'] ?? 'silent' }), defaultMetrics: false });
}

beforeAll(async () => {
  nats = await startTestNats();
  db = await createTestDatabase();
  client = await CommandClient.connect(nats.url);
});

afterAll(async () => {
  await client?.close();
  await db?.drop();
  await nats?.cleanup();
});

async function createTask(id: string, assignedTo: string): Promise<CommandAccepted> {
  const r = await client.send(`cmd.task.${id}.CreateTask`, { title: `Task ${id}`, memberId: 'M1', assignedTo });
  expect(r.ok).toBe(true);
  return r as CommandAccepted;
}

describe('the read side on a worker thread', { timeout: 120_000 }, () => {
  it('applies on the worker and serves minSeq reads, the live feed, status, rebuilds and metrics on the main thread', async () => {
    const s = await start();
    try {
      expect(s.readSide).toBeInstanceOf(RemoteReadSide);
      const url = await s.http.listen({ port: 0, host: '127.0.0.1' });
      // Read your write over HTTP: the request waits for the worker's checkpoint.
      const r = await createTask('th-1', 'CC1');
      const got = await fetch(`${url}/views/task_list_view/th-1?minSeq=${r.seq}`);
      expect(got.status).toBe(200);
      expect(((await got.json()) as { row: Record<string, unknown> }).row).toMatchObject({ taskId: 'th-1', assignedTo: 'CC1' });
      expect(await s.readSide!.waitFor('task_list_view', r.seq, 5000)).toMatchObject({ reached: true });
      // The live feed: changes reach a WebSocket client through the main thread's gateway.
      const w = await LiveClient.connect(`${url.replace('http', 'ws')}/live`);
      try {
        w.send({ type: 'subscribe', id: 'board', view: 'task_list_view', filter: { assignedTo: 'CC1' } });
        await w.until((c) => c.of('snapshot').length === 1, 'the snapshot');
        await createTask('th-2', 'CC1');
        await w.until((c) => c.copies.get('board')?.has('th-2') === true, 'the change', 10_000);
      } finally {
        await w.close();
      }
      // Status comes from the worker's runners; caught up is reported across the boundary.
      const status = await s.readSide!.status();
      expect(status.find((x) => x.name === 'task_list_view')).toMatchObject({ local: true, activeGeneration: 1 });
      await eventually(() => s.readSide!.caughtUp(), 'caught up reported');
      expect(s.readSide!.streamReaders).toBe(1);
      // Unknown names and errors cross as the API's own.
      expect(await s.readSide!.rebuild('no_such_projection')).toBeUndefined();
      // /metrics joins the worker's projection metrics to this thread's command metrics.
      const metrics = await (await fetch(`${url}/metrics`)).text();
      expect(metrics).toMatch(/strand_projection_events_applied_total\{projection="task_list_view"\} [1-9]/);
      expect(metrics).toMatch(/strand_commands_total\{[^}]*\} [1-9]/);
      // A rebuild on command runs on the worker and switches over.
      expect(await s.readSide!.rebuild('order_list')).toBe(2);
      await eventually(async () => (await s.readSide!.status()).find((x) => x.name === 'order_list')!.activeGeneration === 2, 'order_list switched', 20_000);

      // Another instance on the same database stands by: the worker holds the advisory locks.
      const other = await startStrandWithDb(nats.url, db.url, { STRAND_ROLES: 'projections' });
      try {
        expect(other.readSide).toBeInstanceOf(ReadSide);
        const theirs = await other.readSide!.status();
        expect(theirs.every((x) => !x.local)).toBe(true);
      } finally {
        await other.stop();
      }
    } finally {
      expect(await s.stop()).toBe(true);
    }
    // Stopped: its locks are released, and an instance started now takes every projection.
    const next = await startStrandWithDb(nats.url, db.url, { STRAND_ROLES: 'projections' });
    try {
      await eventually(async () => (await next.readSide!.status()).every((x) => x.local), 'every projection taken over', 10_000);
    } finally {
      await next.stop();
    }
  });

  it('stays on the main thread when turned off (STRAND_READ_SIDE_THREAD=false), or with one role', async () => {
    const off = await start({ STRAND_READ_SIDE_THREAD: 'false' });
    try {
      expect(off.readSide).toBeInstanceOf(ReadSide);
      const r = await createTask('th-off', 'CC2');
      expect(await off.readSide!.waitFor('task_list_view', r.seq, 5000)).toMatchObject({ reached: true });
    } finally {
      await off.stop();
    }
    const one = await start({ STRAND_ROLES: 'projections' });
    try {
      expect(one.readSide).toBeInstanceOf(ReadSide);
    } finally {
      await one.stop();
    }
  });
});
