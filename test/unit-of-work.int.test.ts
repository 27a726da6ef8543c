import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readerOn, resultsOf, executeOn } from '../src/projections/batch.js';
import { ensureBookkeeping } from '../src/projections/catalog.js';
import { literal } from '../src/projections/sql.js';
import type { Row, TableSpec } from '../src/projections/types.js';
import { UnitOfWork, loadTableMeta, type TableMeta } from '../src/projections/unit-of-work.js';
import { createTestDatabase, type TestDatabase } from './support/postgres.js';

/**
 * The unit of work against a real PostgreSQL: what handlers write is rendered as literal SQL
 * and sent as one message, so every value must survive quoting and every merge rule must hold.
 */
let db: TestDatabase;
let c: pg.Client;
let tables: Map<string, TableMeta>;

const SPECS: Record<string, TableSpec> = {
  items: { key: ['id'] },
  counters: { key: ['day'] },
  pairs: { key: ['a', 'b'] },
  notes: { key: ['id'] },
};

beforeAll(async () => {
  db = await createTestDatabase();
  c = new pg.Client({ connectionString: db.url });
  await c.connect();
  await c.query('CREATE SCHEMA uow');
  await c.query(`CREATE TABLE uow.items (id text PRIMARY KEY, name text, qty integer NOT NULL DEFAULT 0, price numeric(10,2), tags jsonb, done boolean, at timestamptz, version integer NOT NULL)`);
  await c.query(`CREATE TABLE uow.counters (day text PRIMARY KEY, n integer NOT NULL DEFAULT 0, total bigint NOT NULL DEFAULT 0)`);
  await c.query(`CREATE TABLE uow.pairs (a bigint, b text, v text NOT NULL, PRIMARY KEY (a, b))`);
  await c.query(`CREATE TABLE uow.notes (id integer PRIMARY KEY, body text NOT NULL, seq bigint GENERATED ALWAYS AS IDENTITY)`);
  tables = await loadTableMeta(c, 'uow', SPECS);
});

afterAll(async () => {
  await c?.end();
  await db?.drop();
});

function unit(): UnitOfWork {
  return new UnitOfWork(tables, { read: readerOn(c), execute: (s, text, params) => executeOn(c, s, text, params) });
}

/** Commits a unit's writes the way the runner does: one simple-protocol message. */
async function commit(u: UnitOfWork): Promise<void> {
  const statements = u.drain();
  if (statements.length > 0) await c.query(statements.join(';\n'));
}

async function rows(table: string, order: string): Promise<Row[]> {
  return (await c.query(`SELECT * FROM uow.${table} ORDER BY ${order}`)).rows as Row[];
}

describe('UnitOfWork', () => {
  it('reads the table columns: required ones are NOT NULL without a default or identity', () => {
    expect(tables.get('items')!.required).toEqual(['id', 'version']);
    expect(tables.get('counters')!.required).toEqual(['day']);
    expect(tables.get('notes')!.required).toEqual(['id', 'body']);
    expect(tables.get('pairs')!.types.get('a')).toBe('bigint');
  });

  it('writes every kind of value exactly as given, whatever its characters', async () => {
    const nasty = ["it's", 'back\\slash', "both \\' and '", 'line\nbreak\ttab', '😀 ünïcödé', "'); DROP TABLE uow.items; --", '$$dollar$$', 'E\'x\''];
    const u = unit();
    nasty.forEach((name, i) =>
      u.upsert('items', { id: `v${i}`, name, qty: i, price: 12.5, tags: { list: [name, i], nested: { ok: true } }, done: i % 2 === 0, at: new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 6)), version: 1 }),
    );
    await commit(u);
    const got = await rows('items', 'id');
    expect(got.map((r) => r['name'])).toEqual(nasty);
    expect(got[1]).toMatchObject({ id: 'v1', qty: 1, price: '12.50', tags: { list: [nasty[1], 1], nested: { ok: true } }, done: false, version: 1 });
    expect((got[0]!['at'] as Date).toISOString()).toBe('2026-01-02T03:04:05.006Z');
    // The table is still there: nothing in a value ran as SQL.
    expect((await c.query('SELECT count(*)::int AS n FROM uow.items')).rows[0]).toEqual({ n: nasty.length });
  });

  it('refuses a NUL character instead of sending a truncated statement', () => {
    expect(() => literal('a\u0000b')).toThrow(/NUL/);
    const u = unit();
    u.upsert('items', { id: 'nul', name: 'x\u0000y', version: 1 });
    expect(() => u.drain()).toThrow(/NUL/);
  });

  it('merges operations on one row in order: upsert, increment, upsert, delete, recreate', async () => {
    const u = unit();
    u.upsert('counters', { day: 'd1', n: 5 });
    u.increment('counters', { day: 'd1' }, { n: 2, total: 10 }); // n was set: 7; total: +10
    u.upsert('counters', { day: 'd1', total: 100 }); // replaces the increment of total
    u.increment('counters', { day: 'd2' }, { n: 1 });
    u.increment('counters', { day: 'd2' }, { n: 1 });
    u.upsert('counters', { day: 'gone', n: 1 });
    expect(await u.get('counters', { day: 'd1' })).toEqual({ day: 'd1', n: 7, total: 100 });
    await commit(u);
    expect(await rows('counters', 'day')).toEqual([
      { day: 'd1', n: 7, total: '100' },
      { day: 'd2', n: 2, total: '0' },
      { day: 'gone', n: 1, total: '0' },
    ]);

    const v = unit();
    v.increment('counters', { day: 'd1' }, { n: 3 }); // adds to what is stored
    v.remove('counters', { day: 'gone' });
    v.remove('counters', { day: 'd2' });
    v.upsert('counters', { day: 'd2', n: 40 }); // deleted, then created afresh
    expect(await v.get('counters', { day: 'd1' })).toEqual({ day: 'd1', n: 10, total: '100' });
    expect(await v.get('counters', { day: 'gone' })).toBeUndefined();
    await commit(v);
    expect(await rows('counters', 'day')).toEqual([
      { day: 'd1', n: 10, total: '100' },
      { day: 'd2', n: 40, total: '0' },
    ]);
  });

  it('updates some columns of existing rows without naming the required ones, and inserts complete new ones', async () => {
    const u = unit();
    u.upsert('items', { id: 'p1', name: 'first', qty: 1, version: 1 });
    await commit(u);
    const v = unit();
    v.upsert('items', { id: 'p1', name: 'renamed' }); // version is required, but the row exists
    v.increment('items', { id: 'p1' }, { qty: 4 });
    await commit(v);
    expect((await c.query("SELECT name, qty, version FROM uow.items WHERE id = 'p1'")).rows[0]).toEqual({ name: 'renamed', qty: 5, version: 1 });

    // A partial row whose key does not exist must name what the table requires: a NOT NULL error.
    const w = unit();
    w.upsert('items', { id: 'p-missing', name: 'no version' });
    await expect(commit(w)).rejects.toMatchObject({ code: '23502' });
  });

  it('handles composite keys of several types, and identity columns', async () => {
    const u = unit();
    u.upsert('pairs', { a: 1, b: 'x', v: 'one' });
    u.upsert('pairs', { a: '1', b: 'y', v: 'two' }); // '1' and 1 are the same bigint
    u.upsert('pairs', { a: 2, b: 'x', v: 'three' });
    u.upsert('notes', { id: 1, body: 'a' });
    u.upsert('notes', { id: 2, body: 'b' });
    await commit(u);
    const v = unit();
    v.upsert('pairs', { a: 1, b: 'y', v: 'TWO' });
    v.remove('pairs', { a: 2, b: 'x' });
    expect(await v.get('pairs', { a: 1, b: 'x' })).toEqual({ a: '1', b: 'x', v: 'one' });
    await commit(v);
    expect(await rows('pairs', 'a, b')).toEqual([
      { a: '1', b: 'x', v: 'one' },
      { a: '1', b: 'y', v: 'TWO' },
    ]);
    expect((await rows('notes', 'id')).map((r) => [r['id'], r['body']])).toEqual([
      [1, 'a'],
      [2, 'b'],
    ]);
  });

  it('prefetches several tables in one round trip; gets then need none', async () => {
    const u = unit();
    let reads = 0;
    const counted = new UnitOfWork(tables, {
      read: async (text, count) => {
        reads++;
        return readerOn(c)(text, count);
      },
      execute: (s, text, params) => executeOn(c, s, text, params),
    });
    await counted.prefetch(
      new Map([
        ['counters', [{ day: 'd1' }, { day: 'nope' }]],
        ['pairs', [{ a: 1, b: 'y' }]],
      ]),
    );
    expect(reads).toBe(1);
    expect(await counted.get('counters', { day: 'd1' })).toMatchObject({ n: 10 });
    expect(await counted.get('counters', { day: 'nope' })).toBeUndefined();
    expect(await counted.get('pairs', { a: 1, b: 'y' })).toMatchObject({ v: 'TWO' });
    expect(reads).toBe(1);
    expect(await counted.get('counters', { day: 'd2' })).toMatchObject({ n: 40 });
    expect(reads).toBe(2);
    expect(u.empty).toBe(true);
  });

  it('sql() writes what is pending first and sees it; later reads go to the database', async () => {
    await c.query('BEGIN');
    try {
      const u = unit();
      u.upsert('counters', { day: 'sql', n: 1 });
      const seen = await u.sql('SELECT n FROM uow.counters WHERE day = $1', ['sql']);
      expect(seen).toEqual([{ n: 1 }]);
      await u.sql('UPDATE uow.counters SET n = n + 10 WHERE day = $1', ['sql']);
      expect(await u.get('counters', { day: 'sql' })).toMatchObject({ n: 11 });
      await commit(u);
      await c.query('COMMIT');
    } catch (err) {
      await c.query('ROLLBACK');
      throw err;
    }
    expect((await c.query("SELECT n FROM uow.counters WHERE day = 'sql'")).rows).toEqual([{ n: 11 }]);
  });

  it('a failing statement leaves nothing of its message behind', async () => {
    const before = await rows('counters', 'day');
    const u = unit();
    u.upsert('counters', { day: 'half', n: 1 });
    u.upsert('items', { id: 'bad', version: 'not a number' });
    await expect(commit(u)).rejects.toMatchObject({ code: '22P02' });
    expect(await rows('counters', 'day')).toEqual(before);
  });
});

describe('strand_advance', () => {
  it('moves a checkpoint only from where the batch expects it, and only for a live generation', async () => {
    const pool = new pg.Pool({ connectionString: db.url, max: 2 });
    try {
      await ensureBookkeeping(pool);
      await c.query("INSERT INTO strand_projections (name, active_generation, active_version) VALUES ('adv', 1, 1)");
      await c.query("INSERT INTO strand_checkpoints (projection, generation, seq) VALUES ('adv', 1, 0), ('adv', 2, 0)");
      const advance = (g: number, from: number, to: number) => c.query(`SELECT public.strand_advance('adv', ${g}, ${from}, ${to}, NULL)`);
      await advance(1, 0, 10);
      await expect(advance(1, 0, 20)).rejects.toMatchObject({ code: 'SR001' });
      await expect(advance(2, 0, 20)).rejects.toMatchObject({ code: 'SR002' });
      // A batch whose checkpoint expectation fails takes its writes with it.
      await expect(c.query(`INSERT INTO uow.counters (day) VALUES ('cas'); SELECT public.strand_advance('adv', 1, 5, 30, NULL)`)).rejects.toMatchObject({ code: 'SR001' });
      expect((await c.query("SELECT 1 FROM uow.counters WHERE day = 'cas'")).rowCount).toBe(0);
      const r = resultsOf(await c.query(`SELECT seq FROM strand_checkpoints WHERE projection = 'adv' ORDER BY generation`));
      expect(r[0]!.rows).toEqual([{ seq: '10' }, { seq: '0' }]);
    } finally {
      await pool.end();
    }
  });
});
