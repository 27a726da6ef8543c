/**
 * The NATS configs in deploy/ are for users' machines (docker compose); there is no Docker
 * engine here, so run the very same files with the real nats-server, overriding only what
 * must differ on one shared host (addresses, ports, store directories) with command-line
 * flags, which take precedence over the config file. The one exception is the JetStream
 * store directory: nats-server refuses `-sd` when the config also sets `store_dir`, so the
 * cluster configs (which set it) are run from a temporary copy with only that line changed.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { launchNatsServer, resolveNatsServerBinary, type RunningNatsServer } from '../src/nats/server.js';
import { makeTempDir } from './support/nats.js';

const deployDir = fileURLToPath(new URL('../deploy/nats/', import.meta.url));
const singleConf = path.join(deployDir, 'nats.conf');
const clusterConfs = [1, 2, 3].map((n) => path.join(deployDir, 'cluster', `nats-${n}.conf`));

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});

async function client(servers: string | string[]): Promise<NatsConnection> {
  const nc = await connect({ servers, reconnect: false });
  cleanups.push(() => nc.close());
  return nc;
}

async function varz(server: RunningNatsServer): Promise<{
  server_name: string;
  jetstream: { config: { sync_always?: boolean; store_dir: string } };
}> {
  return (await (await fetch(`${server.monitorUrl}/varz`)).json()) as never;
}

/** Ports free right now (for cluster routes, which must be known before the servers start). */
async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: n }, () => new Promise<net.Server>((resolve) => {
      const s = net.createServer();
      s.listen(0, '127.0.0.1', () => resolve(s));
    })),
  );
  const ports = servers.map((s) => (s.address() as net.AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

async function eventually<T>(fn: () => Promise<T>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

describe('deploy/nats configs', () => {
  it('every config passes nats-server -t', async () => {
    const binary = await resolveNatsServerBinary();
    for (const conf of [singleConf, ...clusterConfs]) {
      const r = spawnSync(binary, ['-c', conf, '-t'], { encoding: 'utf8' });
      expect(`${conf}: ${r.status} ${r.stderr}${r.stdout}`).toMatch(/: 0 .*is valid/s);
    }
  });

  it('nats.conf runs a JetStream server with sync_interval: always', async () => {
    const binary = await resolveNatsServerBinary();
    const tmp = await makeTempDir();
    cleanups.push(() => tmp.cleanup());
    const server = await launchNatsServer({
      binary,
      // As docker-compose.yml runs it: `-js -sd /data` on the command line.
      args: ['-c', singleConf, '-js', '-sd', tmp.dir, '-a', '127.0.0.1', '-p', '-1', '-m', '-1'],
      runDir: tmp.dir,
      storeDir: tmp.dir,
    });
    cleanups.push(() => server.stop());
    const v = await varz(server);
    expect(v.server_name).toBe('strand-nats');
    expect(v.jetstream.config.sync_always).toBe(true);
    expect(v.jetstream.config.store_dir).toBe(path.join(tmp.dir, 'jetstream'));
    const nc = await client(server.url);
    expect(nc.info?.jetstream).toBe(true);
    await (await jetstreamManager(nc)).getAccountInfo();
  });

  it('cluster/nats-{1,2,3}.conf form a 3-node JetStream cluster that holds an R3 stream', async () => {
    const binary = await resolveNatsServerBinary();
    const tmp = await makeTempDir();
    cleanups.push(() => tmp.cleanup());
    const routePorts = await freePorts(3);
    const routes = routePorts.map((p) => `nats-route://127.0.0.1:${p}`).join(',');
    const servers = await Promise.all(
      clusterConfs.map(async (original, i) => {
        const dir = path.join(tmp.dir, `n${i + 1}`);
        await fs.mkdir(dir);
        const text = await fs.readFile(original, 'utf8');
        expect(text.match(/^\s*store_dir: "\/data"$/gm)).toHaveLength(1);
        const conf = path.join(dir, 'nats.conf');
        await fs.writeFile(conf, text.replace(/store_dir: "\/data"/, `store_dir: ${JSON.stringify(dir)}`));
        const server = await launchNatsServer({
          binary,
          args: [
            '-c', conf, '-a', '127.0.0.1', '-p', '-1', '-m', '-1',
            '--cluster', `nats://127.0.0.1:${routePorts[i]}`, '--routes', routes,
          ],
          runDir: dir,
          storeDir: dir,
        });
        cleanups.push(() => server.stop());
        return server;
      }),
    );
    for (const [i, server] of servers.entries()) {
      const v = await varz(server);
      expect(v.server_name).toBe(`nats-${i + 1}`);
      expect(v.jetstream.config.sync_always).toBe(true);
      expect(v.jetstream.config.store_dir).toBe(path.join(server.storeDir, 'jetstream'));
    }

    const nc = await client(servers.map((s) => s.url));
    const jsm = await eventually(async () => {
      const m = await jetstreamManager(nc);
      await m.getAccountInfo(); // fails until the JetStream meta group has a leader
      return m;
    });
    const info = await eventually(() => jsm.streams.add({ name: 'R3', subjects: ['r3.>'], num_replicas: 3 }));
    expect(info.config.num_replicas).toBe(3);
    await jetstream(nc).publish('r3.x', 'x');
    const state = await eventually(async () => {
      const si = await jsm.streams.info('R3');
      const replicas = si.cluster?.replicas ?? [];
      if (!si.cluster?.leader || replicas.length !== 2 || !replicas.every((r) => r.current)) {
        throw new Error(`R3 not fully replicated yet: ${JSON.stringify(si.cluster)}`);
      }
      return si;
    });
    expect(state.cluster?.name).toBe('strand');
    const peers = [state.cluster!.leader!, ...state.cluster!.replicas!.map((r) => r.name)].sort();
    expect(peers).toEqual(['nats-1', 'nats-2', 'nats-3']);
    expect(state.state.messages).toBe(1);
  });
});
