import type { ClientBase } from 'pg';
import { ident, literal, qualified, typed } from './sql.js';
import type { ProjectionStore, Row, TableSpec } from './types.js';

/** A table a projection writes, as its generation's schema has it. */
export interface TableMeta {
  readonly name: string;
  /** `"schema"."table"`. */
  readonly sql: string;
  readonly key: readonly string[];
  /** Column → SQL type (`format_type`), for casts where PostgreSQL cannot infer one. */
  readonly types: ReadonlyMap<string, string>;
  /** NOT NULL columns without a default or identity: a row naming them all can be upserted blind. */
  readonly required: readonly string[];
}

/** Reads the columns of a generation's declared tables (once per runner; they change only with a new generation). */
export async function loadTableMeta(db: Pick<ClientBase, 'query'>, schema: string, tables: Readonly<Record<string, TableSpec>>): Promise<Map<string, TableMeta>> {
  const r = await db.query(
    `SELECT c.relname AS "table", a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
            a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AS required
     FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = $1 AND c.relname = ANY($2) AND a.attnum > 0 AND NOT a.attisdropped
     ORDER BY c.relname, a.attnum`,
    [schema, Object.keys(tables)],
  );
  const columns = new Map<string, { name: string; type: string; required: boolean }[]>();
  for (const row of r.rows as { table: string; name: string; type: string; required: boolean }[]) {
    let list = columns.get(row.table);
    if (!list) columns.set(row.table, (list = []));
    list.push(row);
  }
  const out = new Map<string, TableMeta>();
  for (const [name, spec] of Object.entries(tables)) {
    const cols = columns.get(name);
    if (!cols) throw new Error(`table ${name} is declared by the projection but its migrations do not create it in ${schema}`);
    for (const k of spec.key) if (!cols.some((c) => c.name === k)) throw new Error(`table ${name} has no key column ${k}`);
    out.set(name, {
      name,
      sql: qualified(schema, name),
      key: spec.key,
      types: new Map(cols.map((c) => [c.name, c.type])),
      required: cols.filter((c) => c.required).map((c) => c.name),
    });
  }
  return out;
}

/** What a unit of work needs from the batch's connection. */
export interface UnitIo {
  /** Runs SELECTs (literal SQL, `count` statements separated by `;`) and returns the rows of each. */
  read(text: string, count: number): Promise<Row[][]>;
  /**
   * `ProjectionStore.sql`: opens the batch's transaction if it is not open yet, writes
   * `statements` (the batch's pending writes) in it, then runs `text` with `params`.
   */
  execute(statements: readonly string[], text: string, params: readonly unknown[]): Promise<Row[]>;
}

interface Pending {
  readonly table: TableMeta;
  readonly key: Row;
  /** The row is deleted before anything in `set`/`incr` is written. */
  deleteFirst: boolean;
  set: Row | null;
  incr: Record<string, number> | null;
}

/** A key value as a string: values PostgreSQL would store as the same key give the same string. */
export function keyText(v: unknown): string {
  if (typeof v === 'string') return v;
  if (v instanceof Date) return v.toISOString();
  return typeof v === 'object' ? JSON.stringify(v) : String(v);
}

/** A `WHERE` condition matching any of these keys. */
function keyCondition(t: TableMeta, keys: readonly Row[], alias = ''): string {
  const prefix = alias ? `${alias}.` : '';
  if (t.key.length === 1) {
    const c = t.key[0]!;
    return `${prefix}${ident(c)} IN (${keys.map((k) => literal(k[c])).join(', ')})`;
  }
  const rows = keys.map((k, i) => `(${t.key.map((c) => (i === 0 ? typed(k[c], typeOf(t, c)) : literal(k[c]))).join(', ')})`);
  return `(${t.key.map((c) => prefix + ident(c)).join(', ')}) IN (VALUES ${rows.join(', ')})`;
}

function typeOf(t: TableMeta, col: string): string {
  const type = t.types.get(col);
  if (!type) throw new Error(`table ${t.name} has no column ${col}`);
  return type;
}

/** The value a pending write gives a column. */
function valueOf(p: Pending, c: string): unknown {
  if (p.set !== null && c in p.set) return p.set[c];
  if (p.incr !== null && c in p.incr) return p.incr[c];
  return p.key[c];
}

interface Group {
  readonly set: readonly string[];
  readonly incr: readonly string[];
  readonly rows: Pending[];
}

/**
 * One batch's writes. Operations on the same row merge in order (a later upsert overrides a
 * column, an increment adds to what the batch set, a delete clears what came before), and are
 * rendered as a handful of multi-row statements when the batch commits. Nothing is read to
 * decide how to write: a row naming every required column is `INSERT … ON CONFLICT`, any other
 * one statement that updates where the key exists and inserts where it does not. Reads (`get`)
 * see the batch's own writes over what was prefetched or read.
 */
export class UnitOfWork implements ProjectionStore {
  private pending = new Map<string, Pending>();
  private fetched = new Map<string, Row | undefined>();
  /** Keys written (or deleted) per table: what the live feed reads back. */
  readonly touched = new Map<string, Map<string, Row>>();

  constructor(
    private readonly tables: ReadonlyMap<string, TableMeta>,
    private readonly io: UnitIo,
  ) {}

  upsert(table: string, row: Row): void {
    const p = this.entry(table, row);
    p.set = p.set ? Object.assign(p.set, row) : { ...row };
    if (p.incr) for (const c of Object.keys(row)) delete p.incr[c];
  }

  increment(table: string, key: Row, deltas: Record<string, number>): void {
    const p = this.entry(table, key);
    for (const c of Object.keys(deltas)) {
      const d = deltas[c]!;
      if (typeof d !== 'number' || !Number.isFinite(d)) throw new Error(`increment of ${table}.${c} by ${String(d)}`);
      if (p.set !== null && c in p.set) p.set[c] = Number(p.set[c] ?? 0) + d;
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
    const t = this.meta(table);
    const k = this.keyOf(t, key);
    const p = this.pending.get(k);
    let row: Row | undefined;
    if (!p?.deleteFirst) {
      if (!this.fetched.has(k)) {
        const [rows] = await this.io.read(`SELECT * FROM ${t.sql} WHERE ${keyCondition(t, [key])}`, 1);
        this.fetched.set(k, rows?.[0]);
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
    const statements = this.drain();
    // What the statement changes is not known here: later reads go to the database again.
    this.fetched = new Map();
    return this.io.execute(statements, text, params);
  }

  /** Reads the rows with these keys, several tables in one round trip, so the batch's `get`s need none. */
  async prefetch(wanted: ReadonlyMap<string, readonly Row[]>): Promise<void> {
    const selects: { t: TableMeta; keys: Map<string, Row> }[] = [];
    for (const [table, keys] of wanted) {
      const t = this.meta(table);
      const missing = new Map<string, Row>();
      for (const key of keys) {
        const k = this.keyOf(t, key);
        if (!this.fetched.has(k) && !this.pending.has(k)) missing.set(k, key);
      }
      if (missing.size > 0) selects.push({ t, keys: missing });
    }
    if (selects.length === 0) return;
    const results = await this.io.read(selects.map(({ t, keys }) => `SELECT * FROM ${t.sql} WHERE ${keyCondition(t, [...keys.values()])}`).join(';\n'), selects.length);
    selects.forEach(({ t, keys }, i) => {
      for (const k of keys.keys()) this.fetched.set(k, undefined);
      for (const row of results[i] ?? []) this.fetched.set(this.keyOf(t, row), row);
    });
  }

  /** True when nothing is waiting to be written. */
  get empty(): boolean {
    return this.pending.size === 0;
  }

  /**
   * Renders everything pending as statements (deletes first, then per table and column set
   * one multi-row statement) and forgets it. Running them in order, in one transaction,
   * applies the batch.
   */
  drain(): string[] {
    if (this.pending.size === 0) return [];
    const entries = this.pending;
    this.pending = new Map();
    const deletes = new Map<TableMeta, Row[]>();
    const writes = new Map<TableMeta, Pending[]>();
    for (const [k, p] of entries) {
      let touched = this.touched.get(p.table.name);
      if (!touched) this.touched.set(p.table.name, (touched = new Map()));
      touched.set(k, p.key);
      if (p.deleteFirst) {
        let list = deletes.get(p.table);
        if (!list) deletes.set(p.table, (list = []));
        list.push(p.key);
      }
      if (p.set === null && p.incr === null) continue;
      let list = writes.get(p.table);
      if (!list) writes.set(p.table, (list = []));
      list.push(p);
    }
    const out: string[] = [];
    for (const [t, keys] of deletes) out.push(`DELETE FROM ${t.sql} WHERE ${keyCondition(t, keys)}`);
    for (const [t, list] of writes) {
      // Blind upserts (every required column named, or the row was just deleted: a plain insert),
      // and update-or-insert for the rest, each grouped by the columns they write.
      const upserts = new Map<string, Group>();
      const inserts = new Map<string, Group>();
      const merges = new Map<string, Group>();
      for (const p of list) {
        // Rows a handler builds the same way list their columns in the same order: that order
        // is the group's signature (no sorting per row).
        let sig = '';
        if (p.set !== null) for (const c in p.set) if (!t.key.includes(c)) sig += `${c},`;
        sig += '|';
        if (p.incr !== null) for (const c in p.incr) sig += `${c},`;
        let complete = true;
        for (const c of t.required) {
          if (!t.key.includes(c) && !(p.set !== null && c in p.set) && !(p.incr !== null && c in p.incr)) {
            complete = false;
            break;
          }
        }
        const groups = p.deleteFirst ? inserts : complete ? upserts : merges;
        let g = groups.get(sig);
        if (!g) {
          const set = p.set === null ? [] : Object.keys(p.set).filter((c) => !t.key.includes(c));
          groups.set(sig, (g = { set, incr: p.incr === null ? [] : Object.keys(p.incr), rows: [] }));
        }
        g.rows.push(p);
      }
      for (const g of inserts.values()) out.push(this.insertStatement(t, g, false));
      for (const g of upserts.values()) out.push(this.insertStatement(t, g, true));
      for (const g of merges.values()) out.push(this.mergeStatement(t, g));
    }
    this.fetched = new Map();
    return out;
  }

  /** Multi-row INSERT; with `upsert`, set columns replace and increments add on a key conflict. */
  private insertStatement(t: TableMeta, g: Group, upsert: boolean): string {
    const cols = [...t.key, ...g.set, ...g.incr];
    let text = `INSERT INTO ${t.sql} AS cur (${cols.map(ident).join(', ')}) VALUES `;
    for (let i = 0; i < g.rows.length; i++) {
      const p = g.rows[i]!;
      text += i === 0 ? '(' : ',\n(';
      for (let j = 0; j < cols.length; j++) text += (j === 0 ? '' : ', ') + literal(valueOf(p, cols[j]!));
      text += ')';
    }
    if (upsert) {
      const assignments = [
        ...g.set.map((c) => `${ident(c)} = EXCLUDED.${ident(c)}`),
        ...g.incr.map((c) => `${ident(c)} = COALESCE(cur.${ident(c)}, 0) + EXCLUDED.${ident(c)}`),
      ];
      text += ` ON CONFLICT (${t.key.map(ident).join(', ')}) ${assignments.length > 0 ? `DO UPDATE SET ${assignments.join(', ')}` : 'DO NOTHING'}`;
    }
    return text;
  }

  /**
   * Rows that name only some columns (INSERT … ON CONFLICT cannot stand in: PostgreSQL checks
   * NOT NULL on the proposed row before it sees the conflict): one statement updates those whose
   * key exists and inserts the others, which then must name what the table requires.
   */
  private mergeStatement(t: TableMeta, g: Group): string {
    const cols = [...t.key, ...g.set, ...g.incr];
    // The first row's casts type the VALUES list; the other rows' literals follow them.
    const tuples = g.rows.map((p, i) => `(${cols.map((c) => (i === 0 ? typed(valueOf(p, c), typeOf(t, c)) : literal(valueOf(p, c)))).join(', ')})`);
    const names = cols.map(ident).join(', ');
    const match = (a: string, b: string) => t.key.map((c) => `${a}.${ident(c)} = ${b}.${ident(c)}`).join(' AND ');
    const values = `v (${names}) AS (VALUES ${tuples.join(',\n')})`;
    const insert = `INSERT INTO ${t.sql} (${names}) SELECT ${cols.map((c) => `v.${ident(c)}`).join(', ')} FROM v`;
    if (g.set.length + g.incr.length === 0) return `WITH ${values} ${insert} WHERE NOT EXISTS (SELECT 1 FROM ${t.sql} cur WHERE ${match('cur', 'v')})`;
    const assignments = [
      ...g.set.map((c) => `${ident(c)} = v.${ident(c)}`),
      ...g.incr.map((c) => `${ident(c)} = COALESCE(cur.${ident(c)}, 0) + v.${ident(c)}`),
    ].join(', ');
    return `WITH ${values}, u AS (UPDATE ${t.sql} AS cur SET ${assignments} FROM v WHERE ${match('cur', 'v')} RETURNING ${t.key.map((c) => `cur.${ident(c)}`).join(', ')})
      ${insert} WHERE NOT EXISTS (SELECT 1 FROM u WHERE ${match('u', 'v')})`;
  }

  private meta(table: string): TableMeta {
    const t = this.tables.get(table);
    if (!t) throw new Error(`table ${table} is not declared by this projection`);
    return t;
  }

  private keyOf(t: TableMeta, row: Row): string {
    let k = t.name;
    for (const c of t.key) {
      const v = row[c];
      if (v === undefined || v === null) throw new Error(`${t.name}: key column ${c} is missing`);
      k += `\u0000${keyText(v)}`;
    }
    return k;
  }

  private entry(table: string, row: Row): Pending {
    const t = this.meta(table);
    const k = this.keyOf(t, row);
    let p = this.pending.get(k);
    if (!p) {
      const key: Row = {};
      for (const c of t.key) key[c] = row[c];
      p = { table: t, key, deleteFirst: false, set: null, incr: null };
      this.pending.set(k, p);
    }
    return p;
  }
}
