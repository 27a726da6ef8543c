/**
 * Per-file databases on the run's single embedded PostgreSQL (started by test/global-setup.ts).
 * Each test file creates its own uniquely named database, so files running in parallel never
 * see each other's tables.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { inject } from 'vitest';

export interface TestDatabase {
  /** postgres:// URL of the new, empty database (superuser credentials). */
  url: string;
  name: string;
  /** Terminates its connections and drops it. Idempotent. */
  drop(): Promise<void>;
}

/** The admin (superuser) URL of the test server; throws when the global setup could not start it. */
export function pgAdminUrl(): string {
  const url = inject('pgAdminUrl');
  if (!url) {
    const why = inject('pgSetupError');
    throw new Error(`the test PostgreSQL is not running (test/global-setup.ts): ${why || 'no pgAdminUrl provided; is globalSetup configured?'}`);
  }
  return url;
}

async function withAdmin<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: pgAdminUrl(), application_name: 'strand-test-admin' });
  client.on('error', () => undefined);
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

export async function createTestDatabase(): Promise<TestDatabase> {
  const name = `t_${randomBytes(8).toString('hex')}`;
  await withAdmin((c) => c.query(`CREATE DATABASE ${c.escapeIdentifier(name)}`));
  const u = new URL(pgAdminUrl());
  u.pathname = `/${name}`;
  let dropped: Promise<void> | undefined;
  return {
    url: u.toString(),
    name,
    drop() {
      dropped ??= withAdmin(async (c) => {
        await c.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [name]);
        await c.query(`DROP DATABASE IF EXISTS ${c.escapeIdentifier(name)} WITH (FORCE)`);
      });
      return dropped;
    },
  };
}
