import type { ClientBase } from 'pg';
import type { ProjectionStore, Row, TableSpec } from './types.js';

/** PostgreSQL allows 65,535 parameters per statement. */
const MAX_PARAMS = 60_000;
/** Entry of a column-type map listing the NOT NULL columns without a default (comma-separated). */
const REQUIRED = '\0required';

/** Double-quotes an SQL identifier. Names come from projection code, never from clients. */
export function ident(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

interface Pending {
  readonly table: string;
  readonly key: Row;
  /** The row is deleted before anything else in `set`/`incr` is written. */
  deleteFirst: boolean;
  set: Row | null;
  incr: Record<string, number> | null;
}

function sqlValue(v: unknown): unknown {
  if (v === undefined) return null;
  if (v !== null && typeof v === 'object' && !(v instanceof Date) && !Buffer.isBuffer(v)) return JSON.stringify(v);
  return v;
}

/**
 * One batch's writes. Operations on the same row merge in order (a later upsert overrides a
 * column, an increment adds to what the batch set, a delete clears what came before), so a
 * batch of 500 events touching 500 rows becomes a handful of multi-row statements.
 */
export class UnitOfWork implements ProjectionStore {
  private pending = new Map<string, Pending>();
  private fetched = new Map<string, Row | undefined>();
  /** Key rows written (or deleted) per table across every flush: what the live feed re-reads. */
  readonly touched = new Map<string, Map<string, Row>>();

  constructor(
    private readonly client: ClientBase,
    private readonly tables: Readonly<Record<string, TableSpec>>,
    /** Column types per table, kept across batches by whoever owns the schema (a runner). */
    private readonly types: Map<string, ReadonlyMap<string, string>> = new Map(),
  ) {}

  upsert(table: string, row: Row): void {
    const p = this.entry(table, row);
    p.set = p.set ? Object.assign(p.set, row) : { ...row };
    if (p.incr) for (const c of Object.keys(row)) delete p.incr[c];
  }

  increment(table: string, key: Row, deltas: Record<string, number>): void {
    const p = this.entry(table, key);
    for (const [c, d] of Object.entries(deltas)) {
      if (!Number.isFinite(d)) throw new Error(`increment of ${table}.${c} by ${d}`);
      if (p.set && c in p.set) p.set[c] = Number(p.set[c] ?? 0) + d;
      else (p.incr ??= {})[c] = (p.incr[c] ?? 0) + d;
    }
  }

  remove(table: string, key: Row): void {
    const p = this.entry(table, key);
    p.deleteFirst = true;
    p.set = null;
    p.incr = null;
  }

  async get(table: string, key: Row): Promise<Row | undefined> {
    const spec = this.spec(table);
    const k = this.keyOf(table, spec, key);
    const p = this.pending.get(k);
    let row: Row | undefined;
    if (!p?.deleteFirst) {
      if (!this.fetched.has(k)) {
        const where = spec.key.map((c, i) => `${ident(c)} = $${i + 1}`).join(' AND ');
        const r = await this.client.query(`SELECT * FROM ${ident(table)} WHERE ${where}`, spec.key.map((c) => sqlValue(key[c])));
        this.fetched.set(k, r.rows[0] as Row | undefined);
      }
      const base = this.fetched.get(k);
      row = base ? { ...base } : undefined;
    }
    if (!p) return row;
    if (p.set) row = { ...(row ?? {}), ...p.set };
    if (p.incr) {
      row ??= { ...p.key };
      for (const [c, d] of Object.entries(p.incr)) row[c] = Number(row[c] ?? 0) + d;
    }
    return row;
  }

  async sql(text: string, params: readonly unknown[] = []): Promise<Row[]> {
    await this.flush();
    const r = await this.client.query(text, params.map(sqlValue));
    return r.rows as Row[];
  }

  /**
   * Writes everything pending: deletes first, then, per table, one query to learn which keys
   * exist, a multi-row INSERT for the new rows and a multi-row UPDATE for the existing ones.
   * (INSERT … ON CONFLICT cannot stand in for the update: PostgreSQL checks NOT NULL on the
   * proposed row before it sees the conflict, so setting some columns of a row would fail.)
   */
  async flush(): Promise<void> {
    if (this.pending.size === 0) return;
    const entries = [...this.pending.values()];
    for (const [k, p] of this.pending) {
      let t = this.touched.get(p.table);
      if (!t) this.touched.set(p.table, (t = new Map()));
      t.set(k, p.key);
    }
    this.pending = new Map();
    this.fetched = new Map();

    for (const p of entries) {
      if (!p.deleteFirst) continue;
      const spec = this.spec(p.table);
      const where = spec.key.map((c, i) => `${ident(c)} = $${i + 1}`).join(' AND ');
      await this.client.query(`DELETE FROM ${ident(p.table)} WHERE ${where}`, spec.key.map((c) => sqlValue(p.key[c])));
    }

    const byTable = new Map<string, Pending[]>();
    for (const p of entries) {
      if (!p.set && !(p.incr && Object.keys(p.incr).length > 0)) continue;
      let list = byTable.get(p.table);
      if (!list) byTable.set(p.table, (list = []));
      list.push(p);
    }
    for (const [table, list] of byTable) {
      const spec = this.spec(table);
      const types = await this.columnTypes(table);
      const required = (types.get(REQUIRED) ?? '').split(',').filter(Boolean);
      // A write naming every required column cannot trip NOT NULL on the proposed row, so
      // INSERT … ON CONFLICT can stand in for "insert or update" with no look first.
      const complete = (p: Pending) => required.every((c) => c in p.key || (p.set !== null && c in p.set) || (p.incr !== null && c in p.incr));
      const upserts = new Map<string, { set: string[]; incr: string[]; rows: Row[] }>();
      const unsure: Pending[] = [];
      for (const p of list) {
        if (p.deleteFirst || !complete(p)) {
          unsure.push(p);
          continue;
        }
        const set = Object.keys(p.set ?? {}).filter((c) => !spec.key.includes(c)).sort();
        const incr = Object.keys(p.incr ?? {}).sort();
        const g = `${set.join(',')}|${incr.join(',')}`;
        let group = upserts.get(g);
        if (!group) upserts.set(g, (group = { set, incr, rows: [] }));
        group.rows.push({ ...p.key, ...p.incr, ...p.set });
      }
      for (const g of upserts.values()) await this.upsertMany(table, spec, g.set, g.incr, g.rows);
      const existing = await this.existingKeys(table, spec, types, unsure.filter((p) => !p.deleteFirst));
      const inserts = new Map<string, { cols: string[]; rows: Row[] }>();
      const updates = new Map<string, { set: string[]; incr: string[]; rows: Row[] }>();
      for (const p of unsure) {
        if (!p.deleteFirst && existing.has(JSON.stringify(spec.key.map((c) => String(p.key[c]))))) {
          const set = Object.keys(p.set ?? {}).filter((c) => !spec.key.includes(c)).sort();
          const incr = Object.keys(p.incr ?? {}).sort();
          if (set.length + incr.length === 0) continue;
          const g = `${set.join(',')}|${incr.join(',')}`;
          let group = updates.get(g);
          if (!group) updates.set(g, (group = { set, incr, rows: [] }));
          group.rows.push({ ...p.key, ...p.set, ...p.incr });
        } else {
          const row = { ...p.incr, ...p.key, ...p.set };
          const cols = Object.keys(row).sort();
          const g = cols.join(',');
          let group = inserts.get(g);
          if (!group) inserts.set(g, (group = { cols, rows: [] }));
          group.rows.push(row);
        }
      }
      for (const g of inserts.values()) await this.insertMany(table, g.cols, g.rows);
      for (const g of updates.values()) await this.updateMany(table, spec, types, g.set, g.incr, g.rows);
    }
  }

  private async columnTypes(table: string): Promise<ReadonlyMap<string, string>> {
    const cached = this.types.get(table);
    if (cached) return cached;
    const r = await this.client.query(
      `SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AND NOT a.atthasdef AS required
       FROM pg_attribute a WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped`,
      [ident(table)],
    );
    const rows = r.rows as { name: string; type: string; required: boolean }[];
    const m = new Map(rows.map((x) => [x.name, x.type]));
    // Columns an INSERT must name: a row naming all of them can be upserted without a look first.
    m.set(REQUIRED, rows.filter((x) => x.required).map((x) => x.name).join(','));
    this.types.set(table, m);
    return m;
  }

  private typeOf(types: ReadonlyMap<string, string>, table: string, col: string): string {
    const t = types.get(col);
    if (!t) throw new Error(`table ${table} has no column ${col}`);
    return t;
  }

  /** Which of these rows' keys exist, as JSON arrays of the key values in text form. */
  private async existingKeys(table: string, spec: TableSpec, types: ReadonlyMap<string, string>, list: readonly Pending[]): Promise<Set<string>> {
    const found = new Set<string>();
    if (list.length === 0) return found;
    const cols = spec.key.map((c) => ident(c)).join(', ');
    const arrays = spec.key.map((c, i) => `$${i + 1}::${this.typeOf(types, table, c)}[]`).join(', ');
    for (let start = 0; start < list.length; start += 10_000) {
      const chunk = list.slice(start, start + 10_000);
      const params = spec.key.map((c) => chunk.map((p) => sqlValue(p.key[c])));
      const r = await this.client.query(
        `SELECT ${spec.key.map((c) => `${ident(c)}::text AS ${ident(c)}`).join(', ')} FROM ${ident(table)} WHERE (${cols}) IN (SELECT * FROM unnest(${arrays}))`,
        params,
      );
      for (const row of r.rows as Row[]) found.add(JSON.stringify(spec.key.map((c) => String(row[c]))));
    }
    return found;
  }

  /** INSERT … ON CONFLICT for rows that name every required column: set columns replace, increments add. */
  private async upsertMany(table: string, spec: TableSpec, set: string[], incr: string[], rows: Row[]): Promise<void> {
    const cols = [...spec.key, ...set, ...incr];
    const assignments = [
      ...set.map((c) => `${ident(c)} = EXCLUDED.${ident(c)}`),
      ...incr.map((c) => `${ident(c)} = COALESCE(cur.${ident(c)}, 0) + EXCLUDED.${ident(c)}`),
    ];
    const conflict = `ON CONFLICT (${spec.key.map(ident).join(', ')}) ${assignments.length ? `DO UPDATE SET ${assignments.join(', ')}` : 'DO NOTHING'}`;
    await this.insertMany(table, cols, rows, conflict);
  }

  /** Reads the rows with these keys in one query, so the batch's `get`s need no round trip each. */
  async prefetch(table: string, keys: readonly Row[]): Promise<void> {
    const spec = this.spec(table);
    const wanted = new Map<string, Row>();
    for (const key of keys) {
      const k = this.keyOf(table, spec, key);
      if (!this.fetched.has(k) && !this.pending.has(k)) wanted.set(k, key);
    }
    if (wanted.size === 0) return;
    const types = await this.columnTypes(table);
    const cols = spec.key.map(ident).join(', ');
    const arrays = spec.key.map((c, i) => `$${i + 1}::${this.typeOf(types, table, c)}[]`).join(', ');
    const list = [...wanted.values()];
    const r = await this.client.query(
      `SELECT * FROM ${ident(table)} WHERE (${cols}) IN (SELECT * FROM unnest(${arrays}))`,
      spec.key.map((c) => list.map((key) => sqlValue(key[c]))),
    );
    for (const k of wanted.keys()) this.fetched.set(k, undefined);
    for (const row of r.rows as Row[]) this.fetched.set(this.keyOf(table, spec, row), row);
  }

  private async insertMany(table: string, cols: string[], rows: Row[], conflict = ''): Promise<void> {
    const perStatement = Math.max(1, Math.floor(MAX_PARAMS / cols.length));
    const colList = cols.map(ident).join(', ');
    for (let start = 0; start < rows.length; start += perStatement) {
      const chunk = rows.slice(start, start + perStatement);
      const params: unknown[] = [];
      const tuples = chunk.map((row) => `(${cols.map((c) => (params.push(sqlValue(row[c])), `$${params.length}`)).join(', ')})`);
      await this.client.query(`INSERT INTO ${ident(table)} AS cur (${colList}) VALUES ${tuples.join(', ')} ${conflict}`, params);
    }
  }

  private async updateMany(table: string, spec: TableSpec, types: ReadonlyMap<string, string>, set: string[], incr: string[], rows: Row[]): Promise<void> {
    const cols = [...spec.key, ...set, ...incr];
    const perStatement = Math.max(1, Math.floor(MAX_PARAMS / cols.length));
    const assignments = [
      ...set.map((c) => `${ident(c)} = v.${ident(c)}`),
      ...incr.map((c) => `${ident(c)} = COALESCE(cur.${ident(c)}, 0) + v.${ident(c)}`),
    ].join(', ');
    const match = spec.key.map((c) => `cur.${ident(c)} = v.${ident(c)}`).join(' AND ');
    for (let start = 0; start < rows.length; start += perStatement) {
      const chunk = rows.slice(start, start + perStatement);
      const params: unknown[] = [];
      const tuples = chunk.map(
        (row) => `(${cols.map((c) => (params.push(sqlValue(row[c])), `$${params.length}::${this.typeOf(types, table, c)}`)).join(', ')})`,
      );
      await this.client.query(
        `UPDATE ${ident(table)} AS cur SET ${assignments} FROM (VALUES ${tuples.join(', ')}) AS v (${cols.map(ident).join(', ')}) WHERE ${match}`,
        params,
      );
    }
  }

  private spec(table: string): TableSpec {
    const spec = this.tables[table];
    if (!spec) throw new Error(`table ${table} is not declared by this projection`);
    return spec;
  }

  private keyOf(table: string, spec: TableSpec, row: Row): string {
    const values = spec.key.map((c) => {
      const v = row[c];
      if (v === undefined || v === null) throw new Error(`${table}: key column ${c} is missing`);
      return v;
    });
    return `${table}\0${JSON.stringify(values)}`;
  }

  private entry(table: string, row: Row): Pending {
    const spec = this.spec(table);
    const k = this.keyOf(table, spec, row);
    let p = this.pending.get(k);
    if (!p) {
      const key: Row = {};
      for (const c of spec.key) key[c] = row[c];
      p = { table, key, deleteFirst: false, set: null, incr: null };
      this.pending.set(k, p);
    }
    return p;
  }
}
