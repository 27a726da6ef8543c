/**
 * Connections to PostgreSQL (read models): a pool with Strand's defaults, and a wait for a
 * server that is still starting (DATABASE_URL pointing at a container that is coming up).
 */
import pg from 'pg';

export interface PoolOptions {
  /** Most connections at once. Default 10. */
  max?: number;
  /** Shown in pg_stat_activity.application_name. Default 'strand'. */
  applicationName?: string;
}

/**
 * A pg.Pool for `url`. Idle connections close after 30 s; getting a connection gives up after
 * 10 s; a statement running longer than 60 s is cancelled by the server (statement_timeout), so
 * a stuck query cannot hold a connection forever. Errors of idle connections (server restart,
 * terminated backend) are swallowed here: the pool drops such a connection and the next
 * query fails or reconnects on its own; without a listener they would crash the process.
 */
export function createPool(url: string, opts: PoolOptions = {}): pg.Pool {
  const pool = new pg.Pool({
    connectionString: url,
    max: opts.max ?? 10,
    application_name: opts.applicationName ?? 'strand',
    idleTimeoutMillis: 30_000,
    connectionTimeoutMillis: 10_000,
    statement_timeout: 60_000,
    // bigint (sequences, cents) as numbers while they are exact; beyond 2^53 they stay strings.
    types: {
      getTypeParser: ((oid: number, format?: string) =>
        oid === pg.types.builtins.INT8
          ? (v: string) => {
              const n = Number(v);
              return Number.isSafeInteger(n) ? n : v;
            }
          : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
    },
  });
  pool.on('error', () => undefined);
  // A checked-out client whose connection dies between two queries emits 'error' too, and an
  // unheard 'error' ends the process: its next query fails instead, and the caller handles that.
  pool.on('connect', (client) => client.on('error', () => undefined));
  return pool;
}

/**
 * Connects to `url` again and again (every 250 ms, each attempt limited to the time left) until
 * a connection succeeds and `SELECT 1` answers, or `timeoutMs` has passed: then it rejects with
 * the last error. Errors that waiting cannot fix (wrong password, unknown role, no pg_hba entry)
 * reject at once; a missing database is waited for (whoever starts the server may create it
 * right after it accepts connections).
 */
export async function waitForPostgres(url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (let attempt = 1; ; attempt++) {
    const left = deadline - Date.now();
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: Math.max(250, Math.min(left, 5_000)) });
    client.on('error', () => undefined);
    try {
      await client.connect();
      await client.query('SELECT 1');
      return;
    } catch (err) {
      last = err;
      if (isPermanent(err)) throw describe(url, `refused the connection`, err);
    } finally {
      await client.end().catch(() => undefined);
    }
    if (Date.now() + 250 > deadline) {
      throw describe(url, `not reachable within ${timeoutMs} ms (${attempt} attempts)`, last);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** SQLSTATEs that will not go away by waiting: bad password, bad role / no pg_hba entry. */
const PERMANENT = new Set(['28P01', '28000']);

function isPermanent(err: unknown): boolean {
  return PERMANENT.has(String((err as { code?: unknown }).code));
}

function describe(url: string, what: string, err: unknown): Error {
  const msg = err instanceof Error ? err.message || (err as NodeJS.ErrnoException).code || err.name : String(err);
  return new Error(`PostgreSQL at ${redact(url)} ${what}: ${msg}`, { cause: err });
}

/** The URL without its password. */
export function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(unparsable DATABASE_URL)';
  }
}
