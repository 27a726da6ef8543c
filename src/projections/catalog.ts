import type { ClientBase, Pool, PoolClient } from 'pg';
import type { Projection } from './types.js';
import { ident } from './sql.js';

/**
 * Strand's own bookkeeping in PostgreSQL: which generation of each projection serves reads
 * and which is being built, checkpoints per generation, and parked (dead-letter) events.
 * A generation is a schema of its own (`proj_<name>_g<n>`); public views named after the
 * projection's views point at the serving one, so switching is one transaction.
 */
const BOOKKEEPING = `
CREATE TABLE IF NOT EXISTS public.strand_projections (
  name                text PRIMARY KEY,
  active_generation   integer NOT NULL,
  active_version      integer NOT NULL,
  building_generation integer,
  building_version    integer,
  views               text[] NOT NULL DEFAULT '{}',
  updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS public.strand_meta (
  key   text PRIMARY KEY,
  value text NOT NULL
);
CREATE TABLE IF NOT EXISTS public.strand_checkpoints (
  projection  text    NOT NULL,
  generation  integer NOT NULL,
  seq         bigint  NOT NULL DEFAULT 0,
  event_time  timestamptz,
  updated_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (projection, generation)
);
CREATE TABLE IF NOT EXISTS public.strand_dead_letters (
  projection  text        NOT NULL,
  seq         bigint      NOT NULL,
  generation  integer     NOT NULL,
  subject     text        NOT NULL,
  event       jsonb       NOT NULL,
  error       text        NOT NULL,
  attempts    integer     NOT NULL,
  parked_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (projection, seq)
);
-- Set by a retry request (any instance); the runner that holds the generation's lock applies it.
ALTER TABLE public.strand_dead_letters ADD COLUMN IF NOT EXISTS retry_requested_at timestamptz;
-- Every batch moves its generation's checkpoint through this, in the batch's own transaction:
-- from the sequence the batch was planned after (so a batch whose predecessor did not commit
-- can never commit), and only while the generation is served or built.
CREATE OR REPLACE FUNCTION public.strand_advance(p_projection text, p_generation integer, p_from bigint, p_to bigint, p_time timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  UPDATE public.strand_checkpoints SET seq = p_to, event_time = COALESCE(p_time, event_time), updated_at = now()
   WHERE projection = p_projection AND generation = p_generation AND seq = p_from;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'checkpoint of % generation % is not at %', p_projection, p_generation, p_from USING ERRCODE = 'SR001';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM public.strand_projections
                  WHERE name = p_projection AND (active_generation = p_generation OR building_generation = p_generation)) THEN
    RAISE EXCEPTION 'generation % of % is retired', p_generation, p_projection USING ERRCODE = 'SR002';
  END IF;
END $$;`;

/** Serialises bookkeeping changes across instances (one fixed advisory lock key). */
const BOOKKEEPING_LOCK = 0x5354_524e; // "STRN"

/** Where a projection stands. */
export interface ProjectionRow {
  readonly name: string;
  readonly activeGeneration: number;
  readonly activeVersion: number;
  readonly buildingGeneration: number | null;
  readonly buildingVersion: number | null;
  readonly views: readonly string[];
}

/** A generation a runner should apply events to. */
export interface Target {
  readonly generation: number;
  readonly role: 'active' | 'building';
}

export function schemaOf(projection: string, generation: number): string {
  return `proj_${projection}_g${generation}`;
}

/** The advisory lock key of one generation: whoever holds it applies its events. */
export function lockKey(projection: string, generation: number): string {
  return `strand:projection:${projection}:g${generation}`;
}

function toRow(r: Record<string, unknown>): ProjectionRow {
  return {
    name: r['name'] as string,
    activeGeneration: r['active_generation'] as number,
    activeVersion: r['active_version'] as number,
    buildingGeneration: (r['building_generation'] as number | null) ?? null,
    buildingVersion: (r['building_version'] as number | null) ?? null,
    views: (r['views'] as string[]) ?? [],
  };
}

export async function inTransaction<T>(pool: Pool, fn: (c: PoolClient) => Promise<T>): Promise<T> {
  const c = await pool.connect();
  try {
    await c.query('BEGIN');
    const out = await fn(c);
    await c.query('COMMIT');
    return out;
  } catch (err) {
    await c.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    c.release();
  }
}

/** Creates the bookkeeping tables (idempotent, safe with several instances starting at once). */
/**
 * Creates the bookkeeping tables when missing, and returns the database's identity: a random
 * ID kept in it, the same for every instance that uses this database (instances of one
 * deployment share the projections only with those on the same database).
 */
export async function ensureBookkeeping(pool: Pool): Promise<string> {
  return inTransaction(pool, async (c) => {
    await c.query('SELECT pg_advisory_xact_lock($1)', [BOOKKEEPING_LOCK]);
    await c.query(BOOKKEEPING);
    await c.query("INSERT INTO public.strand_meta (key, value) VALUES ('database_id', gen_random_uuid()::text) ON CONFLICT (key) DO NOTHING");
    const r = await c.query("SELECT value FROM public.strand_meta WHERE key = 'database_id'");
    return (r.rows[0] as { value: string }).value;
  });
}

export async function readProjection(db: ClientBase | Pool, name: string): Promise<ProjectionRow | undefined> {
  const r = await db.query('SELECT * FROM strand_projections WHERE name = $1', [name]);
  return r.rows[0] ? toRow(r.rows[0] as Record<string, unknown>) : undefined;
}

export async function listProjectionRows(db: Pool): Promise<ProjectionRow[]> {
  const r = await db.query('SELECT * FROM strand_projections ORDER BY name');
  return r.rows.map((x) => toRow(x as Record<string, unknown>));
}

/** Creates a generation's schema, runs the projection's migrations in it and starts its checkpoint at 0. */
async function createGeneration(c: ClientBase, p: Projection, generation: number): Promise<void> {
  const schema = schemaOf(p.name, generation);
  await c.query(`DROP SCHEMA IF EXISTS ${ident(schema)} CASCADE`);
  await c.query(`CREATE SCHEMA ${ident(schema)}`);
  await c.query(`SET LOCAL search_path TO ${ident(schema)}`);
  for (const m of p.migrations) await c.query(m);
  await c.query('SET LOCAL search_path TO public');
  await c.query(
    `INSERT INTO strand_checkpoints (projection, generation, seq) VALUES ($1, $2, 0)
     ON CONFLICT (projection, generation) DO UPDATE SET seq = 0, event_time = NULL, updated_at = now()`,
    [p.name, generation],
  );
}

/** Points the public views at a generation, replacing the previous set. */
async function publishViews(c: ClientBase, p: Projection, generation: number, previous: readonly string[]): Promise<void> {
  for (const v of previous) await c.query(`DROP VIEW IF EXISTS public.${ident(v)}`);
  const schema = schemaOf(p.name, generation);
  for (const [name, v] of Object.entries(p.views)) {
    await c.query(`DROP VIEW IF EXISTS public.${ident(name)}`);
    await c.query(`CREATE VIEW public.${ident(name)} AS SELECT * FROM ${ident(schema)}.${ident(v.relation)}`);
  }
}

/**
 * Decides what this code's definition of a projection needs: the serving generation (same
 * version), a rebuild in progress, or a new build when the version changed. A projection seen
 * for the first time serves its first generation at once (there is nothing older to serve).
 */
export async function plan(pool: Pool, p: Projection): Promise<Target[]> {
  return inTransaction(pool, async (c) => {
    await c.query('SELECT pg_advisory_xact_lock($1)', [BOOKKEEPING_LOCK]);
    const row = await readProjection(c, p.name);
    if (!row) {
      await createGeneration(c, p, 1);
      await publishViews(c, p, 1, []);
      await c.query('INSERT INTO strand_projections (name, active_generation, active_version, views) VALUES ($1, 1, $2, $3)', [p.name, p.version, Object.keys(p.views)]);
      return [{ generation: 1, role: 'active' }];
    }
    if (row.activeVersion === p.version) {
      const targets: Target[] = [{ generation: row.activeGeneration, role: 'active' }];
      if (row.buildingGeneration !== null && row.buildingVersion === p.version) targets.push({ generation: row.buildingGeneration, role: 'building' });
      return targets;
    }
    if (row.buildingGeneration !== null && row.buildingVersion === p.version) return [{ generation: row.buildingGeneration, role: 'building' }];
    // Older code during a rolling deploy: a newer version serves already, and this one must not
    // rebuild its own and switch the views back. It stands by.
    if (p.version < row.activeVersion || (row.buildingVersion !== null && p.version < row.buildingVersion)) return [];
    const next = Math.max(row.activeGeneration, row.buildingGeneration ?? 0) + 1;
    await createGeneration(c, p, next);
    await c.query('UPDATE strand_projections SET building_generation = $2, building_version = $3, updated_at = now() WHERE name = $1', [p.name, next, p.version]);
    return [{ generation: next, role: 'building' }];
  });
}

/** Starts a rebuild of the current version into a new generation (the rebuild command). */
export async function requestRebuild(pool: Pool, p: Projection): Promise<number | undefined> {
  return inTransaction(pool, async (c) => {
    await c.query('SELECT pg_advisory_xact_lock($1)', [BOOKKEEPING_LOCK]);
    const row = await readProjection(c, p.name);
    if (!row || row.buildingGeneration !== null) return undefined;
    const next = row.activeGeneration + 1;
    await createGeneration(c, p, next);
    await c.query('UPDATE strand_projections SET building_generation = $2, building_version = $3, updated_at = now() WHERE name = $1', [p.name, next, p.version]);
    return next;
  });
}

/** Makes a caught-up build the serving generation, atomically with the public views. */
export async function switchOver(pool: Pool, p: Projection, generation: number): Promise<boolean> {
  return inTransaction(pool, async (c) => {
    await c.query('SELECT pg_advisory_xact_lock($1)', [BOOKKEEPING_LOCK]);
    const row = await readProjection(c, p.name);
    if (!row || row.buildingGeneration !== generation) return false;
    await publishViews(c, p, generation, row.views);
    await c.query(
      `UPDATE strand_projections SET active_generation = $2, active_version = building_version, building_generation = NULL,
         building_version = NULL, views = $3, updated_at = now() WHERE name = $1`,
      [p.name, generation, Object.keys(p.views)],
    );
    // Events parked by a retired generation were parked against tables that are gone.
    await c.query('DELETE FROM strand_dead_letters WHERE projection = $1 AND generation <> $2', [p.name, generation]);
    return true;
  });
}

/**
 * Drops generations nobody serves, builds or holds the lock of (an older instance may still be
 * applying to one during a rolling deploy: its lock keeps the schema alive).
 */
export async function dropRetiredGenerations(pool: Pool, name: string): Promise<number[]> {
  const row = await readProjection(pool, name);
  if (!row) return [];
  const r = await pool.query('SELECT generation FROM strand_checkpoints WHERE projection = $1', [name]);
  const keep = new Set([row.activeGeneration, row.buildingGeneration]);
  const dropped: number[] = [];
  for (const { generation } of r.rows as { generation: number }[]) {
    if (keep.has(generation)) continue;
    const c = await pool.connect();
    try {
      const got = await c.query('SELECT pg_try_advisory_lock(hashtext($1)) AS ok', [lockKey(name, generation)]);
      if (!(got.rows[0] as { ok: boolean }).ok) continue;
      try {
        await c.query(`DROP SCHEMA IF EXISTS ${ident(schemaOf(name, generation))} CASCADE`);
        await c.query('DELETE FROM strand_checkpoints WHERE projection = $1 AND generation = $2', [name, generation]);
        dropped.push(generation);
      } finally {
        await c.query('SELECT pg_advisory_unlock(hashtext($1))', [lockKey(name, generation)]);
      }
    } finally {
      c.release();
    }
  }
  return dropped;
}
