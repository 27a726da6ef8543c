/**
 * Embedded PostgreSQL (src/postgres/embedded.ts), the connection helpers (src/postgres/connect.ts)
 * and the per-file test databases (test/support/postgres.ts, on the server of test/global-setup.ts).
 * Every server here gets its own temporary directory and a free port.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createPool, waitForPostgres } from '../src/postgres/connect.js';
import { freePort, startEmbeddedPostgres, type RunningPostgres } from '../src/postgres/embedded.js';
import { alive } from './support/process.js';
import { createTestDatabase, type TestDatabase } from './support/postgres.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const isRoot = process.getuid?.() === 0;

let tmp: string;
beforeAll(async () => {
  // 0700, like any mkdtemp() folder: as root, startEmbeddedPostgres() must open it (o+x) itself.
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'strand-pgtest-'));
});
const servers: RunningPostgres[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.stop()));
});
afterAll(async () => {
  if (tmp) await fs.rm(tmp, { recursive: true, force: true });
});

async function start(dataDir: string, extra: Partial<Parameters<typeof startEmbeddedPostgres>[0]> = {}): Promise<RunningPostgres> {
  const s = await startEmbeddedPostgres({ dataDir, ...extra });
  servers.push(s);
  return s;
}

async function query<T extends pg.QueryResultRow = pg.QueryResultRow>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client(url);
  await c.connect();
  try {
    return (await c.query<T>(sql, params)).rows;
  } finally {
    await c.end();
  }
}

async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Runs a script (ESM, TypeScript via tsx) in its own node process, cwd = repository root. */
function runNode(code: string): { pid: number; firstLine: Promise<string>; exit: Promise<number | null>; output: () => string } {
  let out = '';
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const firstLine = new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(out.slice(0, nl));
    });
    child.once('exit', () => reject(new Error(`child exited before printing a line:\n${out}`)));
  });
  firstLine.catch(() => undefined);
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { pid: child.pid!, firstLine, exit, output: () => out };
}

describe('startEmbeddedPostgres', () => {
  it('keeps the data across a restart, survives a kill -9 of the postmaster and a reused pid in postmaster.pid', async () => {
    const dataDir = path.join(tmp, 'persist', 'data');

    // First start: initdb; the URL works and the server listens on 127.0.0.1 only.
    const a = await start(dataDir, { database: 'app' });
    expect(a.initialised).toBe(true);
    expect(a.url).toBe(`postgres://strand:strand@127.0.0.1:${a.port}/app`);
    expect(existsSync(path.join(dataDir, 'PG_VERSION'))).toBe(true);
    const [settings] = await query(a.url, "SELECT current_database() AS db, current_user AS usr, current_setting('listen_addresses') AS la, current_setting('server_encoding') AS enc");
    expect(settings).toEqual({ db: 'app', usr: 'strand', la: '127.0.0.1', enc: 'UTF8' });
    if (isRoot) {
      const st = await fs.stat(dataDir);
      expect(st.uid).toBe(Number(spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).stdout.trim()));
    }
    await query(a.url, 'CREATE TABLE kept (id int PRIMARY KEY, note text)');
    await query(a.url, "INSERT INTO kept VALUES (1, 'hello')");
    await a.stop();
    await a.stop(); // idempotent
    expect(alive(a.pid)).toBe(false);
    expect(existsSync(path.join(dataDir, 'postmaster.pid'))).toBe(false);

    // Restart: the cluster is reused, the table is still there.
    const b = await start(dataDir, { database: 'app' });
    expect(b.initialised).toBe(false);
    expect(await query(b.url, 'SELECT * FROM kept')).toEqual([{ id: 1, note: 'hello' }]);

    // kill -9 of the postmaster: postmaster.pid stays behind with a dead pid.
    await query(b.url, "INSERT INTO kept VALUES (2, 'committed before the crash')");
    process.kill(b.pid, 'SIGKILL');
    await until(() => !alive(b.pid));
    expect(existsSync(path.join(dataDir, 'postmaster.pid'))).toBe(true);
    await b.stop(); // the server is gone already: resolves at once

    const c = await start(dataDir, { database: 'app' });
    expect(c.initialised).toBe(false);
    expect(await query(c.url, 'SELECT id FROM kept ORDER BY id')).toEqual([{ id: 1 }, { id: 2 }]);

    // Another kill -9, and then the pid in postmaster.pid belongs to an unrelated live process
    // of the same OS user (pid reuse, e.g. after a container restart): PostgreSQL alone would
    // refuse to start ("lock file already exists").
    process.kill(c.pid, 'SIGKILL');
    await until(() => !alive(c.pid));
    await c.stop();
    const pgIds = isRoot
      ? {
          uid: Number(spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).stdout.trim()),
          gid: Number(spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).stdout.trim()),
        }
      : {};
    const impostor = spawn('sleep', ['60'], { stdio: 'ignore', ...pgIds });
    try {
      const lockFile = path.join(dataDir, 'postmaster.pid');
      const lines = (await fs.readFile(lockFile, 'utf8')).split('\n');
      lines[0] = String(impostor.pid);
      await fs.writeFile(lockFile, lines.join('\n'));
      const d = await start(dataDir, { database: 'app' });
      expect(await query(d.url, 'SELECT count(*)::int AS n FROM kept')).toEqual([{ n: 2 }]);
      expect(alive(impostor.pid!)).toBe(true); // untouched
    } finally {
      impostor.kill('SIGKILL');
    }
  });

  it('stops its server when the owning process exits, keeps its exit code, and reclaims a server orphaned by kill -9', async () => {
    const dataDir = path.join(tmp, 'owner', 'data');
    const script = (tail: string): string => `
      const { startEmbeddedPostgres } = await import('./src/postgres/embedded.ts');
      const s = await startEmbeddedPostgres({ dataDir: ${JSON.stringify(dataDir)} });
      console.log(JSON.stringify({ pid: s.pid, url: s.url }));
      ${tail}`;

    // Normal exit without stop(): the 'exit' hook stops the server; the exit code is the script's
    // (the package's own exit hooks would turn it into 0).
    const first = runNode(script('process.exitCode = 3;'));
    const { pid: pid1 } = JSON.parse(await first.firstLine) as { pid: number };
    expect(await first.exit, first.output()).toBe(3);
    await until(() => !alive(pid1));

    // The owner is killed -9 (its hooks cannot run): the postmaster lives on, orphaned.
    const second = runNode(script('setInterval(() => {}, 1000);'));
    const { pid: pid2, url: url2 } = JSON.parse(await second.firstLine) as { pid: number; url: string };
    process.kill(second.pid, 'SIGKILL');
    await second.exit;
    expect(alive(pid2)).toBe(true);
    expect(await query(url2, 'SELECT 1 AS one')).toEqual([{ one: 1 }]);

    // Starting again shuts the orphan down first.
    const logs: string[] = [];
    const s = await start(dataDir, { onLog: (m) => logs.push(m) });
    expect(alive(pid2)).toBe(false);
    expect(logs.join('')).toMatch(/shutting down orphaned PostgreSQL/);
    expect(await query(s.url, 'SELECT 1 AS one')).toEqual([{ one: 1 }]);

    // A server that still has its owner is not touched: a clear error instead.
    await expect(start(dataDir)).rejects.toThrow(/already running on .* \(pid \d+, started by pid \d+\)/);
  });

  it('persistent: false deletes the data directory at stop', async () => {
    const dataDir = path.join(tmp, 'throwaway', 'data');
    const s = await start(dataDir, { persistent: false, settings: { fsync: false } });
    expect(s.initialised).toBe(true);
    expect(await query(s.url, "SELECT current_setting('fsync') AS f")).toEqual([{ f: 'off' }]);
    await s.stop();
    expect(existsSync(dataDir)).toBe(false);
  });

  it('fails with a clear error that includes the log tail', async () => {
    const dataDir = path.join(tmp, 'bad', 'data');
    await expect(start(dataDir, { settings: { shared_buffers: 'lots' } })).rejects.toThrow(
      /did not start[\s\S]*--- last log lines ---[\s\S]*shared_buffers/,
    );
  });

  it.runIf(isRoot)('as root: opens a 0700 temp folder (o+x) for the postgres user, but refuses one elsewhere', async () => {
    // The suite's tmp folder came from mkdtemp (0700); the first start above gave it o+x.
    expect((await fs.stat(tmp)).mode & 0o777).toBe(0o701);
    const inTmp = await fs.mkdtemp(path.join(tmp, 'closed-'));
    const logs: string[] = [];
    const s = await start(path.join(inTmp, 'data'), { onLog: (m) => logs.push(m) });
    expect((await fs.stat(inTmp)).mode & 0o777).toBe(0o701);
    expect(logs.join('')).toContain(`chmod o+x ${inTmp}`);
    await s.stop();

    // Outside the temp dir and the working directory nothing is loosened: a clear error.
    if (!existsSync('/var/tmp')) return;
    const elsewhere = await fs.mkdtemp('/var/tmp/strand-pgtest-');
    try {
      await expect(start(path.join(elsewhere, 'data'))).rejects.toThrow(/cannot enter .*strand-pgtest-\w+ \(mode 700, owner uid 0\)/);
      expect((await fs.stat(elsewhere)).mode & 0o777).toBe(0o700);
    } finally {
      await fs.rm(elsewhere, { recursive: true, force: true });
    }
  });
});

describe('connect', () => {
  it('waitForPostgres waits for a server that is still starting; a pool works', async () => {
    const port = await freePort();
    const url = `postgres://strand:strand@127.0.0.1:${port}/strand`;
    const waiting = waitForPostgres(url, 30_000);
    await new Promise((r) => setTimeout(r, 600)); // nothing listens yet
    const s = await start(path.join(tmp, 'wait', 'data'), { port });
    await waiting;

    const pool = createPool(s.url, { max: 3, applicationName: 'strand-test' });
    try {
      const rows = await Promise.all([1, 2, 3, 4, 5].map((i) => pool.query<{ n: number; app: string }>('SELECT $1::int AS n, current_setting($2) AS app', [i, 'application_name'])));
      expect(rows.map((r) => r.rows[0]!.n)).toEqual([1, 2, 3, 4, 5]);
      expect(rows[0]!.rows[0]!.app).toBe('strand-test');
      expect((await pool.query("SELECT current_setting('statement_timeout') AS t")).rows[0].t).toBe('1min');
    } finally {
      await pool.end();
    }

    // Wrong password: no point in retrying.
    const t0 = Date.now();
    await expect(waitForPostgres(`postgres://strand:wrong@127.0.0.1:${port}/strand`, 20_000)).rejects.toThrow(/refused the connection.*password/);
    expect(Date.now() - t0).toBeLessThan(5_000);
    // Nothing there at all: gives up after the timeout, with the URL (password hidden).
    await expect(waitForPostgres(`postgres://strand:secret@127.0.0.1:${await freePort()}/strand`, 700)).rejects.toThrow(
      /postgres:\/\/strand:\*\*\*@127\.0\.0\.1:\d+\/strand not reachable within 700 ms/,
    );
  });
});

describe('createTestDatabase', () => {
  const dbs: TestDatabase[] = [];
  afterAll(async () => {
    await Promise.all(dbs.map((d) => d.drop()));
  });

  it('gives each caller its own database', async () => {
    const [one, two] = await Promise.all([createTestDatabase(), createTestDatabase()]);
    dbs.push(one, two);
    expect(one.name).toMatch(/^t_[0-9a-f]{16}$/);
    expect(one.name).not.toBe(two.name);
    expect(new URL(one.url).pathname).toBe(`/${one.name}`);

    await query(one.url, 'CREATE TABLE only_here (x int)');
    await query(one.url, 'INSERT INTO only_here VALUES (42)');
    expect(await query(one.url, 'SELECT x FROM only_here')).toEqual([{ x: 42 }]);
    expect(await query(two.url, "SELECT to_regclass('only_here') AS t")).toEqual([{ t: null }]);
    await expect(query(two.url, 'SELECT * FROM only_here')).rejects.toThrow(/does not exist/);
  });

  it('drop() removes the database even while connections are open', async () => {
    const db = await createTestDatabase();
    const pool = createPool(db.url, { max: 2 });
    await pool.query('SELECT 1');
    await db.drop();
    await db.drop(); // idempotent
    await pool.end().catch(() => undefined);
    await expect(query(db.url, 'SELECT 1')).rejects.toThrow(/does not exist/);
  });
});
