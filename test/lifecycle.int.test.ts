import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.js';
import { launchNatsServer } from '../src/nats/server.js';
import { makeTempDir, oldNatsServerBinary, startTestNats, type TestNats } from './support/nats.js';
import { CommandClient, eventually, startStrand } from './support/strand.js';

const root = fileURLToPath(new URL('..', import.meta.url));
// As `npm start` runs it: node itself (the tsx CLI would sit between the signal and Strand).
const entry = ['--import', 'tsx', 'src/main.ts'];

/** Runs `npm start`'s entry point as its own process, collecting its output. */
function runMain(env: Record<string, string>): { child: ChildProcess; output: () => string; exit: Promise<number | null> } {
  let out = '';
  const child = spawn(process.execPath, entry, { cwd: root, env: { ...process.env, LOG_LEVEL: 'info', PORT: '0', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, output: () => out, exit };
}

let nats: TestNats;
beforeAll(async () => {
  nats = await startTestNats();
});
afterAll(async () => {
  await nats?.cleanup();
});

describe('configuration', () => {
  it('names the variable of a bad value', () => {
    expect(() => loadConfig({ PORT: 'eighty' })).toThrow(ConfigError);
    expect(() => loadConfig({ PORT: 'eighty' })).toThrow(/PORT="eighty"/);
    expect(() => loadConfig({ STRAND_STREAM_REPLICAS: '2' })).toThrow(/STRAND_STREAM_REPLICAS/);
    expect(loadConfig({}).PORT).toBe(3000);
  });

  it('stops the program with that message and a non-zero exit', async () => {
    const run = runMain({ NATS_URL: nats.url, NATS_SYNC: 'sometimes' });
    expect(await run.exit).toBe(2);
    expect(run.output()).toMatch(/NATS_SYNC="sometimes"/);
  });
});

describe('start and stop', () => {
  it('refuses a stream whose configuration would break the contract, saying what differs', async () => {
    const nc = await connect({ servers: nats.url });
    try {
      const jsm = await jetstreamManager(nc);
      await jsm.streams.add({ name: 'CAPPED', subjects: ['evt.>'], max_msgs_per_subject: 5 });
      try {
        const refused = startStrand(nats.url, { STRAND_STREAM: 'CAPPED' });
        await expect(refused).rejects.toThrow(/stream CAPPED exists with an incompatible configuration/);
        await expect(refused).rejects.toThrow(/max_msgs_per_subject is 5, need unlimited/);
        await expect(refused).rejects.toThrow(/allow_atomic is off/);
      } finally {
        await jsm.streams.delete('CAPPED');
      }
    } finally {
      await nc.close();
    }
  });

  it('drains on SIGTERM and exits 0', async () => {
    const run = runMain({ NATS_URL: nats.url, STRAND_STREAM: 'EVENTS' });
    try {
      await eventually(() => run.output().includes('taking commands'), 'Strand to start', 20_000);
      const client = await CommandClient.connect(nats.url);
      const inFlight = Array.from({ length: 20 }, (_, i) => client.send(`cmd.task.term-${i}.CreateTask`, { title: 't', memberId: 'M', assignedTo: 'A' }));
      const first = await inFlight[0]!;
      expect(first.ok).toBe(true);
      run.child.kill('SIGTERM');
      // Everything already taken is finished and replied to.
      expect((await Promise.all(inFlight)).every((r) => r.ok)).toBe(true);
      expect(await run.exit).toBe(0);
      expect(run.output()).toMatch(/"clean":true/);
      await client.close();
    } finally {
      run.child.kill('SIGKILL');
    }
  });

  it('npm start runs on embedded defaults: its own nats-server, then stops it on SIGTERM', async () => {
    const data = await makeTempDir();
    const run = runMain({ NATS_URL: '', STRAND_DATA_DIR: data.dir });
    try {
      await eventually(() => run.output().includes('taking commands'), 'Strand to start', 30_000);
      const url = /embedded nats-server listening on (nats:\/\/[0-9.:]+)/.exec(run.output())?.[1];
      expect(url).toBeDefined();
      const client = await CommandClient.connect(url!);
      expect(await client.send('cmd.order.embedded-1.PlaceOrder', { customerId: 'C', items: [{ sku: 'S', quantity: 1, priceCents: 1 }] })).toMatchObject({ ok: true, version: 1 });
      await client.close();
      run.child.kill('SIGTERM');
      expect(await run.exit).toBe(0);
      expect(existsSync(join(data.dir, 'nats'))).toBe(true);
    } finally {
      run.child.kill('SIGKILL');
      await data.cleanup();
    }
  });
});

// Needs an installed nats-server older than 2.12 (Debian bookworm's 2.9.10 at /usr/sbin/nats-server on
// the project's machines, or OLD_NATS_SERVER_BIN); skipped only where none exists to test against.
describe.skipIf(!oldNatsServerBinary())('an old nats-server', () => {
  it('is refused at connect with both versions named, and the program exits non-zero', async () => {
    const dir = await makeTempDir();
    const old = await launchNatsServer({ binary: oldNatsServerBinary()!, args: ['-a', '127.0.0.1', '-p', '-1'], runDir: dir.dir, storeDir: dir.dir });
    try {
      await expect(startStrand(old.url)).rejects.toThrow(/nats-server 2\.9\.\d+ .* needs nats-server 2\.12\.0 or newer/);
      const run = runMain({ NATS_URL: old.url });
      expect(await run.exit).toBe(1);
      expect(run.output()).toMatch(/nats-server 2\.9\.\d+ .*too old.*2\.12\.0/);
    } finally {
      await old.stop();
      await dir.cleanup();
    }
  });
});
