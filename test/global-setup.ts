/**
 * vitest globalSetup: ONE embedded PostgreSQL for the whole run, in a fresh temporary directory
 * (removed at teardown). Test files get their own database on it through
 * createTestDatabase() (test/support/postgres.ts), which reads the admin URL provided here.
 *
 * A server that cannot start does not fail the whole run (unit tests do not need it): the
 * error is provided instead, and createTestDatabase() throws it.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { TestProject } from 'vitest/node';
import { startEmbeddedPostgres, type RunningPostgres } from '../src/postgres/embedded.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** postgres://strand:strand@127.0.0.1:<port>/postgres (superuser), '' when the server failed to start. */
    pgAdminUrl: string;
    /** Why the test server did not start ('' when it did). */
    pgSetupError: string;
  }
}

/**
 * Temporary folders of earlier runs that were interrupted (vitest exits at once on SIGINT/SIGTERM,
 * without teardown; the server itself is stopped by the exit hook of src/postgres/embedded.ts):
 * each holds a ~40 MB cluster. Removed when older than 10 minutes and no live server uses them.
 */
const LEFTOVER = /^strand-pg(test)?-/;
const LEFTOVER_AGE_MS = 10 * 60_000;

async function hasLivePostmaster(dir: string, depth: number): Promise<boolean> {
  let entries: import('node:fs').Dirent[];
  try {
    entries = await fs.readdir(dir, { withFileTypes: true });
  } catch {
    return false;
  }
  for (const e of entries) {
    if (e.isFile() && e.name === 'postmaster.pid') {
      const pid = Number((await fs.readFile(path.join(dir, e.name), 'utf8').catch(() => '')).split('\n')[0]);
      if (!Number.isInteger(pid) || pid <= 0) continue;
      try {
        process.kill(pid, 0);
        return true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EPERM') return true;
      }
    } else if (e.isDirectory() && depth > 0 && (await hasLivePostmaster(path.join(dir, e.name), depth - 1))) {
      return true;
    }
  }
  return false;
}

async function sweepLeftovers(): Promise<void> {
  const base = os.tmpdir();
  const names = (await fs.readdir(base).catch(() => [] as string[])).filter((n) => LEFTOVER.test(n));
  for (const name of names) {
    const dir = path.join(base, name);
    try {
      const st = await fs.stat(dir);
      if (!st.isDirectory() || Date.now() - st.mtimeMs < LEFTOVER_AGE_MS) continue;
      if (await hasLivePostmaster(dir, 3)) continue;
      await fs.rm(dir, { recursive: true, force: true });
    } catch {
      // someone else's, or gone meanwhile
    }
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const started = Date.now();
  await sweepLeftovers();
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'strand-pg-'));
  // mkdtemp makes it 0700; as root, PostgreSQL runs as 'postgres' and must be able to enter it.
  await fs.chmod(tmp, 0o711);
  let server: RunningPostgres | undefined;
  try {
    server = await startEmbeddedPostgres({
      dataDir: path.join(tmp, 'data'),
      database: 'postgres',
      persistent: false,
      // A throwaway cluster: durability off for speed; room for many pools at once.
      settings: { fsync: false, synchronous_commit: false, full_page_writes: false, max_connections: 300 },
    });
    project.provide('pgAdminUrl', server.url);
    project.provide('pgSetupError', '');
    if (process.env['STRAND_TEST_VERBOSE']) {
      console.log(`[global-setup] PostgreSQL on port ${server.port} in ${Date.now() - started} ms`);
    }
  } catch (err) {
    project.provide('pgAdminUrl', '');
    project.provide('pgSetupError', err instanceof Error ? err.message : String(err));
    console.error(`[global-setup] embedded PostgreSQL did not start; database tests will fail:\n${String(err)}`);
  }
  return async () => {
    await server?.stop();
    await fs.rm(tmp, { recursive: true, force: true });
  };
}
