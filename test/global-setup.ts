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

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const started = Date.now();
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
