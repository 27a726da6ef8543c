import net from 'node:net';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import {
  parseNatsServerVersion,
  resolveNatsServerBinary,
  startNatsServer,
  type RunningNatsServer,
} from '../src/nats/server.js';
import { MIN_NATS_SERVER_VERSION, compareVersions } from '../src/nats/version.js';
import { makeTempDir, oldNatsServerBinary, startTestNats } from './support/nats.js';

/** Cleanups registered by each test, run (in reverse) after it even when it fails. */
const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});

async function client(server: { url: string }): Promise<NatsConnection> {
  const nc = await connect({ servers: server.url, reconnect: false });
  cleanups.push(() => nc.close());
  return nc;
}

function refusesConnections(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', () => resolve(true));
  });
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('version helpers', () => {
  it('parses and compares nats-server versions', () => {
    expect(parseNatsServerVersion('nats-server: v2.15.1')).toBe('2.15.1');
    expect(parseNatsServerVersion('2.12.0-RC.1')).toBe('2.12.0');
    expect(compareVersions('2.9.10', MIN_NATS_SERVER_VERSION)).toBe(-1);
    expect(compareVersions('2.12.0', MIN_NATS_SERVER_VERSION)).toBe(0);
    expect(compareVersions('2.15.1', '2.12.0')).toBe(1);
    expect(compareVersions('3.0.0', '2.99.99')).toBe(1);
  });

  it('recognises an old nats-server when the machine has one', () => {
    const old = oldNatsServerBinary();
    if (old) expect(old).toMatch(/nats-server$/);
  });
});

describe('embedded nats-server', () => {
  it('starts on a free port with JetStream, a client connects to a >= 2.12 server', async () => {
    const server = await startTestNats({ sync: 'always', monitor: true });
    cleanups.push(() => server.cleanup());
    expect(server.port).toBeGreaterThan(0);
    expect(server.port).not.toBe(4222);
    expect(server.url).toBe(`nats://127.0.0.1:${server.port}`);

    const nc = await client(server);
    const version = nc.info?.version ?? '0.0.0';
    expect(compareVersions(version, MIN_NATS_SERVER_VERSION)).toBeGreaterThanOrEqual(0);
    expect(nc.info?.jetstream).toBe(true);
    const account = await (await jetstreamManager(nc)).getAccountInfo();
    expect(account.streams).toBe(0);

    // sync: 'always' really reaches the server's JetStream config.
    const varz = (await (await fetch(`${server.monitorUrl}/varz`)).json()) as {
      jetstream: { config: { sync_always?: boolean; store_dir: string } };
    };
    expect(varz.jetstream.config.sync_always).toBe(true);
    expect(varz.jetstream.config.store_dir.startsWith(server.storeDir)).toBe(true);
  });

  it("sync: 'default' leaves nats-server's default flush interval", async () => {
    const server = await startTestNats({ sync: 'default', monitor: true });
    cleanups.push(() => server.cleanup());
    const varz = (await (await fetch(`${server.monitorUrl}/varz`)).json()) as {
      jetstream: { config: { sync_always?: boolean; sync_interval: number } };
    };
    expect(varz.jetstream.config.sync_always ?? false).toBe(false);
    expect(varz.jetstream.config.sync_interval).toBe(120_000_000_000); // 2 min in ns
  });

  it('stop() ends the process and the port refuses connections', async () => {
    const server = await startTestNats();
    cleanups.push(() => server.cleanup());
    expect(await refusesConnections(server.port)).toBe(false);
    await server.stop();
    expect(pidAlive(server.pid)).toBe(false);
    expect(await refusesConnections(server.port)).toBe(true);
    await server.stop(); // idempotent
  });

  it('restarting on the same store dir and port keeps the streams and messages', async () => {
    const tmp = await makeTempDir();
    cleanups.push(() => tmp.cleanup());
    let server: RunningNatsServer = await startNatsServer({ storeDir: tmp.dir, sync: 'always' });
    cleanups.push(() => server.stop());
    const port = server.port;

    let nc = await client(server);
    let jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: 'T', subjects: ['t.>'] });
    const ack = await jetstream(nc).publish('t.one', 'hello');
    expect(ack.seq).toBe(1);
    await nc.close();

    await server.stop();
    expect(await refusesConnections(port)).toBe(true);
    server = await startNatsServer({ storeDir: tmp.dir, sync: 'always', port });
    expect(server.port).toBe(port);

    nc = await client(server);
    jsm = await jetstreamManager(nc);
    expect((await jsm.streams.info('T')).state.messages).toBe(1);
  });

  it('kill9() crashes the server; a restart recovers the acknowledged messages', async () => {
    const tmp = await makeTempDir();
    cleanups.push(() => tmp.cleanup());
    let server = await startNatsServer({ storeDir: tmp.dir, sync: 'always' });
    cleanups.push(() => server.stop());
    const nc = await client(server);
    await (await jetstreamManager(nc)).streams.add({ name: 'T', subjects: ['t.>'] });
    const js = jetstream(nc);
    for (let i = 0; i < 10; i++) await js.publish(`t.${i}`, String(i));
    await nc.close();

    await server.kill9();
    expect(pidAlive(server.pid)).toBe(false);
    server = await startNatsServer({ storeDir: tmp.dir, sync: 'always', port: server.port });
    const nc2 = await client(server);
    expect((await (await jetstreamManager(nc2)).streams.info('T')).state.messages).toBe(10);
  });

  it('rejects with the server output when the port is already taken', async () => {
    const first = await startTestNats();
    cleanups.push(() => first.cleanup());
    const tmp = await makeTempDir();
    cleanups.push(() => tmp.cleanup());
    await expect(startNatsServer({ storeDir: tmp.dir, sync: 'default', port: first.port })).rejects.toThrow(
      /exited with code \d+ before it was ready[\s\S]*address already in use/,
    );
  });

  it('rejects with the server output on a bad configuration', async () => {
    const tmp = await makeTempDir();
    cleanups.push(() => tmp.cleanup());
    await expect(
      startNatsServer({ storeDir: tmp.dir, sync: 'default', serverName: 'has space' }),
    ).rejects.toThrow(/exited with code 1 before it was ready[\s\S]*last output[\s\S]*server name cannot contain spaces/);
  });

  it('writes the log to logFile when asked', async () => {
    const tmp = await makeTempDir();
    cleanups.push(() => tmp.cleanup());
    const logFile = path.join(tmp.dir, 'nats.log');
    const server = await startNatsServer({ storeDir: path.join(tmp.dir, 'store'), sync: 'default', logFile, serverName: 'strand-test' });
    cleanups.push(() => server.stop());
    expect(await fs.readFile(logFile, 'utf8')).toMatch(/Server is ready/);
  });

  it('resolves a nats-server binary', async () => {
    expect(await resolveNatsServerBinary()).toMatch(/nats-server$/);
  });
});
