import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.js';
import { launchNatsServer } from '../src/nats/server.js';
import { makeTempDir, oldNatsServerBinary, startTestNats, type TestNats } from './support/nats.js';
import { alive } from './support/process.js';
import { CommandClient, eventually, startStrand } from './support/strand.js';

const root = fileURLToPath(new URL('..', import.meta.url));
// As `npm start` runs it: node itself (the tsx CLI would sit between the signal and Strand).
const entry = ['--import', 'tsx', 'src/main.ts'];

/**
 * Runs `npm start`'s entry point as its own process, collecting its output. `detached`: as the
 * leader of its own process group, like a program started from a terminal's shell.
 */
function runMain(env: Record<string, string>, opts: { detached?: boolean } = {}): { child: ChildProcess; output: () => string; exit: Promise<number | null> } {
  let out = '';
  const child = spawn(process.execPath, entry, {
    cwd: root,
    env: { ...process.env, LOG_LEVEL: 'info', PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: opts.detached ?? false,
  });
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

/** A field of the first JSON log line whose msg starts with `msg`. */
function logField(output: string, msg: string, field: string): unknown {
  for (const line of output.split('\n')) {
    if (!line.startsWith('{')) continue;
    const entry = JSON.parse(line) as Record<string, unknown>;
    if (typeof entry['msg'] === 'string' && entry['msg'].startsWith(msg)) return entry[field];
  }
  return undefined;
}

const embeddedEnv = (dir: string): Record<string, string> => ({ NATS_URL: '', DATABASE_URL: '', STRAND_DATA_DIR: dir });
const ready = (run: { output: () => string }): Promise<void> => eventually(() => run.output().includes('Strand ready'), 'Strand to be ready', 60_000);
const order = (customerId: string) => ({ customerId, items: [{ sku: 'S', quantity: 1, priceCents: 1 }] });

describe('npm start on its embedded servers', { timeout: 180_000 }, () => {
  it('says where it runs in one ready line, and /asyncapi.json names the NATS server it uses', async () => {
    const data = await makeTempDir();
    const run = runMain(embeddedEnv(data.dir));
    try {
      await ready(run);
      const line = /Strand ready: dashboard (http:\/\/127\.0\.0\.1:(\d+)\/dashboard) \| HTTP (http:\/\/127\.0\.0\.1:\d+) \| NATS (nats:\/\/127\.0\.0\.1:(\d+))/.exec(run.output());
      expect(line, run.output()).not.toBeNull();
      const [, dashboard, , http, nats, natsPort] = line!;
      expect(nats).toBe(logField(run.output(), 'embedded nats-server listening', 'url'));
      expect((await fetch(dashboard!)).status).toBe(200);
      const doc = (await (await fetch(`${http}/asyncapi.json`)).json()) as { servers: Record<string, { host: string }> };
      expect(doc.servers).toEqual({ nats: expect.objectContaining({ host: `127.0.0.1:${natsPort}` }) });
      run.child.kill('SIGTERM');
      expect(await run.exit).toBe(0);
    } finally {
      run.child.kill('SIGKILL');
      await data.cleanup();
    }
  });

  it('holds its data folder: a second start exits 1 naming the folder and the holder, the first runs on; after a kill -9 a new start succeeds', async () => {
    const data = await makeTempDir();
    const first = runMain(embeddedEnv(data.dir));
    let third: ReturnType<typeof runMain> | undefined;
    try {
      await ready(first);
      const natsPid = logField(first.output(), 'embedded nats-server listening', 'serverPid') as number;
      const pgPid = logField(first.output(), 'embedded PostgreSQL listening', 'serverPid') as number;
      const client = await CommandClient.connect(logField(first.output(), 'embedded nats-server listening', 'url') as string);
      expect(await client.send('cmd.order.lock-1.PlaceOrder', order('C1'), { 'Strand-Command-Id': 'lock-1' })).toMatchObject({ ok: true });

      const second = runMain(embeddedEnv(data.dir));
      expect(await second.exit).toBe(1);
      expect(second.output()).toContain(`the data folder ${data.dir} is in use by another Strand (pid ${first.child.pid})`);
      expect(second.output()).not.toMatch(/embedded (nats-server|PostgreSQL) listening/);
      // The first instance and its servers did not notice.
      expect([alive(natsPid), alive(pgPid)]).toEqual([true, true]);
      expect(await client.send('cmd.order.lock-2.PlaceOrder', order('C2'))).toMatchObject({ ok: true });
      await client.close();

      // kill -9: nothing of Strand's runs, the kernel takes the lock and the servers down with it.
      first.child.kill('SIGKILL');
      await first.exit;
      await eventually(() => !alive(natsPid) && !alive(pgPid), 'the embedded servers to die with Strand', 20_000);
      third = runMain(embeddedEnv(data.dir));
      await ready(third);
      const again = await CommandClient.connect(logField(third.output(), 'embedded nats-server listening', 'url') as string);
      // The same store: the first command is known.
      expect(await again.send('cmd.order.lock-1.PlaceOrder', order('C1'), { 'Strand-Command-Id': 'lock-1' })).toMatchObject({ ok: true, duplicate: true });
      await again.close();
      third.child.kill('SIGTERM');
      expect(await third.exit).toBe(0);
    } finally {
      first.child.kill('SIGKILL');
      third?.child.kill('SIGKILL');
      await data.cleanup();
    }
  });

  it('Ctrl-C (SIGINT to its whole process group) drains before its servers stop: every command in flight is answered, and the log says clean', async () => {
    const data = await makeTempDir();
    const run = runMain(embeddedEnv(data.dir), { detached: true });
    try {
      await ready(run);
      const client = await CommandClient.connect(logField(run.output(), 'embedded nats-server listening', 'url') as string);
      const sends = Array.from({ length: 300 }, (_, i) =>
        client.send(`cmd.task.int-${i}.CreateTask`, { title: 't', memberId: 'M', assignedTo: 'A' }, {}, 30_000).catch((e: Error) => e),
      );
      await sends[0];
      await client.nc.flush(); // every request is at the server, so at Strand or on its way
      process.kill(-run.child.pid!, 'SIGINT'); // what a terminal does on Ctrl-C
      const replies = await Promise.all(sends);
      expect(replies.filter((r) => r instanceof Error).map(String)).toEqual([]);
      const answered = replies as Exclude<(typeof replies)[number], Error>[];
      expect(answered.filter((r) => r.ok).length).toBeGreaterThan(0);
      // The rest reached Strand once it was draining, and were told so.
      for (const r of answered) if (!r.ok) expect(r.error).toMatchObject({ code: 'UNAVAILABLE', message: 'this instance is shutting down' });
      expect(await run.exit).toBe(0);
      expect(run.output()).toMatch(/"clean":true,"signal":"SIGINT","msg":"stopped cleanly"/);
      await client.close();
    } finally {
      run.child.kill('SIGKILL');
      await data.cleanup();
    }
  });

  it('says the stop was not clean, and why, when its nats-server went away first', async () => {
    const data = await makeTempDir();
    const run = runMain(embeddedEnv(data.dir));
    try {
      await ready(run);
      process.kill(logField(run.output(), 'embedded nats-server listening', 'serverPid') as number, 'SIGKILL');
      await eventually(() => run.output().includes('NATS disconnected'), 'Strand to notice', 10_000);
      run.child.kill('SIGTERM');
      expect(await run.exit).toBe(0);
      expect(run.output()).toMatch(/"clean":false.*"msg":"stopped, not cleanly: the embedded nats-server was killed by SIGKILL before Strand had drained"/);
      expect(run.output()).not.toContain('"clean":true');
    } finally {
      run.child.kill('SIGKILL');
      await data.cleanup();
    }
  });

  it('a taken port stops it before anything starts, naming the port and PORT; on a terminal the line is for people', async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as net.AddressInfo).port;
    const data = await makeTempDir();
    try {
      const run = runMain({ ...embeddedEnv(data.dir), PORT: String(port) });
      expect(await run.exit).toBe(1);
      expect(logField(run.output(), 'port', 'msg')).toBe(`port ${port} on 127.0.0.1 is already in use (PORT=${port}): stop what listens there, or set PORT to a free port`);
      expect(existsSync(join(data.dir, 'nats'))).toBe(false);
      expect(existsSync(join(data.dir, 'postgres'))).toBe(false);

      // util-linux's script(1) gives it a terminal for stdout.
      const tty = spawnSync('script', ['-qec', `${process.execPath} ${entry.join(' ')}`, '/dev/null'], {
        cwd: root,
        env: { ...process.env, ...embeddedEnv(data.dir), PORT: String(port), NO_COLOR: '1' },
        encoding: 'utf8',
        timeout: 60_000,
      });
      expect(tty.status).toBe(1);
      expect(tty.stdout).toMatch(/FATAL.*port \d+ on 127\.0\.0\.1 is already in use/);
      expect(tty.stdout).not.toContain('{"level"');
    } finally {
      blocker.close();
      await data.cleanup();
    }
  });
});
