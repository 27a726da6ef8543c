import type { ClientBase, QueryResult } from 'pg';
import type { EventEnvelope } from '../eventstore/types.js';
import { schemaOf } from './catalog.js';
import { ident, literal, qualified } from './sql.js';
import type { Projection, ProjectionEvent, Row } from './types.js';
import { YIELD_EVERY, yieldToIo } from './yield.js';
import { UnitOfWork, keyText, loadTableMeta, type TableMeta, type UnitIo } from './unit-of-work.js';

/**
 * SQLSTATEs raised by `strand_advance` (catalog.ts): the checkpoint is not where the batch
 * expected it (an earlier batch did not commit, or another writer moved it), and the generation
 * is no longer served or built (a rebuild replaced it).
 */
export const CHECKPOINT_MOVED = 'SR001';
export const GENERATION_RETIRED = 'SR002';

/** Decodes a stream message into what handlers see, upcasting old schema versions. */
export function toProjectionEvent(p: Projection, seq: number, env: EventEnvelope): ProjectionEvent {
  const agg = p.aggregateFor(env.aggregate);
  const type = agg?.events.get(env.type);
  const data = agg && type && env.schemaVersion !== type.version ? agg.upcast(env.type, env.schemaVersion, env.data) : env.data;
  return {
    seq,
    id: env.id,
    type: env.type,
    aggregate: env.aggregate,
    aggregateId: env.aggregateId,
    version: env.version,
    time: env.time,
    ...(env.actor !== undefined ? { actor: env.actor } : {}),
    data,
    metadata: env.metadata ?? {},
  };
}

/** The rows the batch's handlers will `get`, per table, as the projection declares them. */
function prefetchKeys(p: Projection, events: readonly ProjectionEvent[]): Map<string, Row[]> {
  const wanted = new Map<string, Row[]>();
  for (const [table, spec] of Object.entries(p.tables)) {
    if (!spec.prefetch) continue;
    const keys: Row[] = [];
    for (const e of events) {
      const k = spec.prefetch(e);
      if (k !== undefined) keys.push(k);
    }
    if (keys.length > 0) wanted.set(table, keys);
  }
  return wanted;
}

/** Runs the handlers of `events` in order against a unit of work (prefetching declared reads first). */
export async function runHandlers(p: Projection, uow: UnitOfWork, events: readonly ProjectionEvent[]): Promise<void> {
  const wanted = prefetchKeys(p, events);
  if (wanted.size > 0) await uow.prefetch(wanted);
  for (let i = 0; i < events.length; i++) {
    if (i % YIELD_EVERY === YIELD_EVERY - 1) await yieldToIo();
    const e = events[i]!;
    const h = p.handlerFor(e.aggregate, e.type);
    if (!h) continue;
    const pending = h(e, uow);
    if (pending !== undefined) await pending;
  }
}

/** Each statement's result of a simple-protocol query (pg gives one result for one statement, an array for several). */
export function resultsOf(r: QueryResult | QueryResult[]): QueryResult[] {
  return Array.isArray(r) ? r : [r];
}

/** A value as a parameter of `ProjectionStore.sql` (objects as JSON, like literals). */
function parameter(v: unknown): unknown {
  if (v === undefined) return null;
  if (v !== null && typeof v === 'object' && !(v instanceof Date) && !Buffer.isBuffer(v)) return JSON.stringify(v);
  return v;
}

/** Runs `ProjectionStore.sql` on a connection already in the batch's transaction. */
export async function executeOn(c: Pick<ClientBase, 'query'>, statements: readonly string[], text: string, params: readonly unknown[]): Promise<Row[]> {
  if (statements.length > 0) await c.query(statements.join(';\n'));
  return (await c.query(text, params.map(parameter))).rows as Row[];
}

/** Reads for a unit of work on one connection. */
export function readerOn(c: Pick<ClientBase, 'query'>): UnitIo['read'] {
  return async (text) => resultsOf((await c.query(text)) as QueryResult | QueryResult[]).map((r) => r.rows as Row[]);
}

/**
 * Applies events to a generation's tables on a connection that is in a transaction the caller
 * commits (retrying a parked event). The runner does the same with fewer round trips.
 */
export async function applyEvents(c: ClientBase, p: Projection, generation: number, events: readonly ProjectionEvent[]): Promise<void> {
  const schema = schemaOf(p.name, generation);
  await c.query(`SET LOCAL search_path TO ${ident(schema)}, public`);
  const uow = new UnitOfWork(await loadTableMeta(c, schema, p.tables), { read: readerOn(c), execute: (s, text, params) => executeOn(c, s, text, params) });
  await runHandlers(p, uow, events);
  const statements = uow.drain();
  if (statements.length > 0) await c.query(statements.join(';\n'));
}

/** `strand_advance(…)`: moves a generation's checkpoint from `from` to `to`, or fails the transaction. */
export function advanceStatement(projection: string, generation: number, from: number, to: number, eventTime: string | undefined): string {
  return `SELECT public.strand_advance(${literal(projection)}, ${Number(generation)}, ${Number(from)}, ${Number(to)}, ${eventTime === undefined ? 'NULL' : literal(eventTime)})`;
}

/** Parks an event (its JSON, subject and error) in the dead-letter table. */
export function parkStatement(projection: string, generation: number, subject: string, event: ProjectionEvent, error: string, attempts: number): string {
  // PostgreSQL stores no NUL, in text or in jsonb: a parked message that holds one (anyone may
  // publish on evt.>) keeps U+FFFD in its place, or parking it would fail for ever.
  const json = JSON.stringify(event).replace(/(?<!\\)((?:\\\\)*)\\u0000/g, '$1\\ufffd');
  return `INSERT INTO public.strand_dead_letters (projection, seq, generation, subject, event, error, attempts)
    VALUES (${literal(projection)}, ${Number(event.seq)}, ${Number(generation)}, ${literal(subject)}, ${literal(json)}, ${literal(error.replace(/\u0000/g, '\ufffd'))}, ${Number(attempts)})
    ON CONFLICT (projection, seq) DO UPDATE SET generation = EXCLUDED.generation, error = EXCLUDED.error, attempts = EXCLUDED.attempts, parked_at = now()`;
}

/** One view's rows to read back at the end of a batch, for the live feed. */
export interface ViewReadBack {
  readonly view: string;
  readonly keyColumn: string;
  /** Every key the batch wrote, as written (rows not found were deleted). */
  readonly keys: readonly unknown[];
  readonly text: string;
}

/**
 * The views whose rows a batch touched, and the SELECT that reads those rows back inside the
 * batch's transaction (so they are exactly what the checkpoint reflects). A table's writes
 * count for a view when the table's key includes the view's key column.
 */
export function readBacks(p: Projection, schema: string, tables: ReadonlyMap<string, TableMeta>, touched: ReadonlyMap<string, ReadonlyMap<string, Row>>): ViewReadBack[] {
  const out: ViewReadBack[] = [];
  for (const [view, spec] of Object.entries(p.views)) {
    const keyColumn = spec.columns[spec.key]!;
    const keys = new Map<string, unknown>();
    for (const [table, rows] of touched) {
      if (!tables.get(table)?.key.includes(keyColumn)) continue;
      for (const row of rows.values()) {
        const v = row[keyColumn];
        keys.set(keyText(v), v);
      }
    }
    if (keys.size === 0) continue;
    const list = [...keys.values()];
    out.push({ view, keyColumn, keys: list, text: `SELECT * FROM ${qualified(schema, spec.relation)} WHERE ${ident(keyColumn)} IN (${list.map(literal).join(', ')})` });
  }
  return out;
}
