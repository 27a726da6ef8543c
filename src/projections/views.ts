import type { Pool } from 'pg';
import { ErrorCode, StrandError } from '../errors.js';
import type { Projection, Row, ViewSpec } from './types.js';
import { ident } from './sql.js';

/** A page of a view. */
export interface ViewPage {
  readonly rows: Row[];
  /** The projection's checkpoint the rows reflect (read in the same snapshot). */
  readonly checkpoint: number;
  /** Cursor of the next page, when there may be one. */
  readonly next?: string;
}

/** Where a view lives. */
export interface ViewRef {
  readonly name: string;
  readonly projection: Projection;
  readonly spec: ViewSpec;
}

/**
 * The serving generation's checkpoint ($1 = projection) beside the rows, in one statement: one
 * snapshot, so the checkpoint is exactly what the rows reflect. The rows join as `v`.
 */
const WITH_CHECKPOINT = `WITH cp AS (
        SELECT c.seq FROM strand_projections p
        JOIN strand_checkpoints c ON c.projection = p.name AND c.generation = p.active_generation
        WHERE p.name = $1)
      SELECT (SELECT seq FROM cp) AS "__checkpoint", v.* FROM (SELECT 1) one`;

/** PostgreSQL error classes that mean "the client's value does not fit the column". */
const BAD_VALUE_STATES = new Set(['22P02', '22007', '22008', '22003', '22023', '42883']);

function encodeCursor(v: unknown): string {
  return Buffer.from(JSON.stringify([v instanceof Date ? v.toISOString() : v])).toString('base64url');
}

function decodeCursor(s: string): unknown {
  try {
    const v = JSON.parse(Buffer.from(s, 'base64url').toString('utf8')) as unknown;
    if (!Array.isArray(v) || v.length !== 1 || (typeof v[0] !== 'string' && typeof v[0] !== 'number')) throw new Error('shape');
    return v[0];
  } catch {
    throw new StrandError(ErrorCode.BAD_CURSOR, 'cursor is not one this server issued');
  }
}

const columnPairs = new WeakMap<ViewSpec, readonly (readonly [string, string])[]>();

/** A row of a view as clients see it: API column names, declared columns only. */
export function toApi(spec: ViewSpec, r: Row): Row {
  let pairs = columnPairs.get(spec);
  if (!pairs) columnPairs.set(spec, (pairs = Object.entries(spec.columns)));
  const out: Row = {};
  for (const [api, col] of pairs) {
    const v = r[col];
    out[api] = typeof v === 'bigint' ? Number(v) : v;
  }
  return out;
}

/**
 * Reads the public views projections publish. Every page comes with the checkpoint it
 * reflects, read in the same statement (one snapshot), so a client can tell how fresh it is.
 */
export class ViewReader {
  private readonly views = new Map<string, ViewRef>();

  constructor(
    private readonly pool: Pool,
    projections: readonly Projection[],
  ) {
    for (const p of projections) for (const [name, spec] of Object.entries(p.views)) this.views.set(name, { name, projection: p, spec });
  }

  view(name: string): ViewRef {
    const v = this.views.get(name);
    if (!v) throw new StrandError(ErrorCode.UNKNOWN_VIEW, `no view named ${JSON.stringify(name.slice(0, 100))}`);
    return v;
  }

  all(): ViewRef[] {
    return [...this.views.values()];
  }

  async page(name: string, filters: Readonly<Record<string, string>>, limit: number, cursor?: string): Promise<ViewPage> {
    const v = this.view(name);
    const { spec } = v;
    const params: unknown[] = [v.projection.name];
    const where: string[] = [];
    for (const [api, value] of Object.entries(filters)) {
      if (!spec.filters.includes(api)) {
        throw new StrandError(ErrorCode.UNKNOWN_COLUMN, `view ${name} cannot be filtered on ${JSON.stringify(api.slice(0, 100))}; filterable: ${spec.filters.join(', ')}`);
      }
      params.push(value);
      where.push(`${ident(spec.columns[api]!)} = $${params.length}`);
    }
    const keyCol = ident(spec.columns[spec.key]!);
    const desc = spec.order === 'desc';
    if (cursor !== undefined) {
      params.push(decodeCursor(cursor));
      where.push(`${keyCol} ${desc ? '<' : '>'} $${params.length}`);
    }
    params.push(limit + 1);
    const sql = `
      ${WITH_CHECKPOINT}
      LEFT JOIN LATERAL (
        SELECT * FROM public.${ident(name)}
        ${where.length > 0 ? `WHERE ${where.join(' AND ')}` : ''}
        ORDER BY ${keyCol} ${desc ? 'DESC' : 'ASC'} LIMIT $${params.length}) v ON true`;
    const rows = await this.query(sql, params);
    const checkpoint = Number(rows[0]?.['__checkpoint'] ?? 0);
    const data = rows.filter((r) => r[spec.columns[spec.key]!] !== null && r[spec.columns[spec.key]!] !== undefined);
    const more = data.length > limit;
    const page = data.slice(0, limit).map((r) => toApi(spec, r));
    const lastRaw = data[limit - 1];
    return { rows: page, checkpoint, ...(more && lastRaw ? { next: encodeCursor(lastRaw[spec.columns[spec.key]!]) } : {}) };
  }

  async row(name: string, key: string): Promise<{ row: Row | undefined; checkpoint: number }> {
    const v = this.view(name);
    const keyCol = ident(v.spec.columns[v.spec.key]!);
    const sql = `
      ${WITH_CHECKPOINT}
      LEFT JOIN LATERAL (SELECT * FROM public.${ident(name)} WHERE ${keyCol} = $2 LIMIT 1) v ON true`;
    const rows = await this.query(sql, [v.projection.name, key]);
    const r = rows[0];
    const found = r && r[v.spec.columns[v.spec.key]!] !== null && r[v.spec.columns[v.spec.key]!] !== undefined;
    return { row: found ? toApi(v.spec, r) : undefined, checkpoint: Number(r?.['__checkpoint'] ?? 0) };
  }

  private async query(sql: string, params: unknown[]): Promise<Row[]> {
    try {
      return (await this.pool.query(sql, params)).rows as Row[];
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code && BAD_VALUE_STATES.has(code)) throw new StrandError(ErrorCode.BAD_REQUEST, `a filter or key value does not fit its column: ${(err as Error).message}`);
      if (code === '42P01') throw new StrandError(ErrorCode.UNAVAILABLE, 'the view is not published yet');
      throw new StrandError(ErrorCode.UNAVAILABLE, `read model unavailable: ${(err as Error).message}`);
    }
  }
}
