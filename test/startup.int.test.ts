/**
 * A restarting instance waits for NATS instead of giving up: when the one server in NATS_URL is
 * down, when NATS_URL lists several servers and only some are up, and while a restarted cluster
 * elects its JetStream leaders. It says so in its log, and stops at once when asked to.
 */
import { spawn } from 'node:child_process';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { aggregates } from '../actors/index.js';
import { Strand } from '../src/app.js';
import { ConfigError, loadConfig } from '../src/config.js';
import { freePorts } from '../src/nats/cluster.js';
import { natsServers } from '../src/nats/connect.js';
import { startNatsServer } from '../src/nats/server.js';
import { R3, startTestCluster, type TestCluster } from './support/cluster.js';
import { makeTempDir } from './support/nats.js';
import { CommandClient } from './support/strand.js';

const root = fileURLToPath(new URL('..', import.meta.url));

/** A logger whose lines the test can read. */
function capturedLog(): { log: pino.Logger; lines: () => Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  return { log: pino({ level: 'info' }, sink), lines: () => lines };
}

function start(natsUrl: string, env: Record<string, string>, log: pino.Logger, signal?: AbortSignal): Promise<Strand> {
  return Strand.start({ config: loadConfig(env), aggregates, natsUrl, log, defaultMetrics: false, ...(signal ? { signal } : {}) });
}

describe('NATS_URL', () => {
  it('takes a comma-separated list of servers and refuses entries that are not server addresses', () => {
    expect(natsServers('nats://a:4222, nats://b:4222,,c:4222 ')).toEqual(['nats://a:4222', 'nats://b:4222', 'c:4222']);
    expect(loadConfig({ NATS_URL: 'nats://a:4222,nats://b:4222' }).NATS_URL).toBe('nats://a:4222,nats://b:4222');
    expect(() => loadConfig({ NATS_URL: 'nats://a:4222,http://b:80' })).toThrow(ConfigError);
    expect(() => loadConfig({ NATS_URL: 'nats://a:4222,http://b:80' })).toThrow(/NATS_URL=.*scheme must be nats:\/\//);
    expect(() => loadConfig({ NATS_URL: ' , ' })).toThrow(/NATS_URL=.*names no server/);
  });

  it('connects through any listed server that is up, whichever comes first in the list', async () => {
    const tmp = await makeTempDir();
    const server = await startNatsServer({ storeDir: tmp.dir, sync: 'default' });
    const [dead1, dead2] = await freePorts(2);
    const { log } = capturedLog();
    const s = await start(`nats://127.0.0.1:${dead1},nats://127.0.0.1:${dead2},${server.url}`, {}, log);
    const client = await CommandClient.connect(server.url);
    try {
      expect(await client.send('cmd.task.list-1.CreateTask', { title: 't', memberId: 'M1', assignedTo: 'CC1' })).toMatchObject({ ok: true });
    } finally {
      await client.close();
      await s.stop();
      await server.stop();
      await tmp.cleanup();
    }
  });
});

describe('start', { timeout: 60_000 }, () => {
  it('waits for a server that is down, saying so, and takes commands once it is up', async () => {
    const tmp = await makeTempDir();
    const [port] = await freePorts(1);
    const { log, lines } = capturedLog();
    const starting = start(`nats://127.0.0.1:${port}`, {}, log);
    await new Promise((r) => setTimeout(r, 1500));
    const waits = lines().filter((l) => String(l['msg']).includes('not ready') && String(l['msg']).includes('retrying'));
    expect(waits.length).toBeGreaterThan(0);
    const server = await startNatsServer({ storeDir: tmp.dir, sync: 'default', port: port! });
    let s: Strand | undefined;
    try {
      s = await starting;
      const client = await CommandClient.connect(server.url);
      try {
        expect(await client.send('cmd.task.late-1.CreateTask', { title: 't', memberId: 'M1', assignedTo: 'CC1' })).toMatchObject({ ok: true });
      } finally {
        await client.close();
      }
    } finally {
      await s?.stop();
      await server.stop();
      await tmp.cleanup();
    }
  });

  it('stops waiting at once when its start is abandoned', async () => {
    const [port] = await freePorts(1);
    const { log } = capturedLog();
    const ac = new AbortController();
    const starting = start(`nats://127.0.0.1:${port}`, {}, log, ac.signal);
    await new Promise((r) => setTimeout(r, 600));
    const t0 = Date.now();
    ac.abort();
    await expect(starting).rejects.toThrow(/stopped while waiting for NATS/);
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  it('npm start exits 0 on SIGTERM while it still waits for NATS', async () => {
    const [port] = await freePorts(1);
    let out = '';
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
      cwd: root,
      env: { ...process.env, NATS_URL: `nats://127.0.0.1:${port}`, DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none', PORT: '0', LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const deadline = Date.now() + 20_000;
    while (!out.includes('retrying') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(out).toContain('retrying');
    child.kill('SIGTERM');
    expect(await exit, out).toBe(0);
  });

  describe('on a 3-node cluster', () => {
    let cluster: TestCluster;
    beforeAll(async () => {
      cluster = await startTestCluster();
    });
    afterAll(async () => {
      await cluster?.cleanup();
    });

    it('starts while the whole cluster restarts and elects its leaders, then takes commands', async () => {
      const { log, lines } = capturedLog();
      // The stream exists (R3) before the restart, as in a planned restart of everything.
      const first = await start(cluster.urls, R3, log);
      await first.stop();
      await Promise.all(cluster.nodes.map((n) => n.kill9()));
      const starting = start(cluster.urls, R3, log);
      await new Promise((r) => setTimeout(r, 800));
      await Promise.all(cluster.nodes.map((n) => n.start()));
      const s = await starting;
      const client = await CommandClient.connect(cluster.urls.split(',')[1]!);
      try {
        // The stream's leader may still be settling: a command is answered, at worst UNAVAILABLE, then accepted.
        let reply = await client.send('cmd.task.restart-1.CreateTask', { title: 't', memberId: 'M1', assignedTo: 'CC1' });
        for (let i = 0; !reply.ok && i < 40; i++) {
          expect(reply).toMatchObject({ ok: false, error: { code: 'UNAVAILABLE' } });
          await new Promise((r) => setTimeout(r, 250));
          reply = await client.send('cmd.task.restart-1.CreateTask', { title: 't', memberId: 'M1', assignedTo: 'CC1' });
        }
        expect(reply).toMatchObject({ ok: true });
        expect(lines().some((l) => String(l['msg']).includes('retrying'))).toBe(true);
      } finally {
        await client.close();
        await s.stop();
      }
    });
  });
});
