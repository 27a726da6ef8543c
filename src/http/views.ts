import type { FastifyPluginAsync } from 'fastify';
import { checkSubscribe, rowVisible, type SubscriptionRequest } from '../auth/access.js';
import type { Principal } from '../auth/tokens.js';
import { ErrorCode, StrandError } from '../errors.js';
import type { ReadSideApi } from '../projections/host.js';
import type { Row } from '../projections/types.js';
import type { ViewPage, ViewReader, ViewRef } from '../projections/views.js';
import { principalOf } from './auth.js';
import { RowQuery, VIEW_QUERY_RESERVED, ViewQuery } from './schemas.js';
import type { ApiDeps } from './server.js';

/** A view as `GET /views` lists it. */
export interface ViewDescription {
  readonly name: string;
  /** The projection that maintains it (whose checkpoint `minSeq` waits for). */
  readonly projection: string;
  /** The column that identifies a row (`GET /views/:view/:key`) and orders pages. */
  readonly key: string;
  readonly order: 'asc' | 'desc';
  /** Every column a row has. */
  readonly columns: readonly string[];
  /** The columns `?<column>=<value>` may filter on. */
  readonly filters: readonly string[];
}

export function describeView(v: ViewRef): ViewDescription {
  return {
    name: v.name,
    projection: v.projection.name,
    key: v.spec.key,
    order: v.spec.order ?? 'asc',
    columns: Object.keys(v.spec.columns),
    filters: [...v.spec.filters],
  };
}

/** The read side, or 503 when this Strand runs without a database. */
export function readModel(api: ApiDeps): { views: ViewReader; readSide: ReadSideApi } {
  if (!api.views || !api.readSide) throw new StrandError(ErrorCode.UNAVAILABLE, 'no database is configured (DATABASE_URL): views and projections are not served');
  return { views: api.views, readSide: api.readSide };
}

/** Read-your-writes: waits until the view's projection has applied `minSeq`, or fails with its checkpoint. */
async function awaitCheckpoint(api: ApiDeps, readSide: ReadSideApi, ref: ViewRef, minSeq: number | undefined): Promise<void> {
  if (minSeq === undefined || minSeq === 0) return;
  const r = await readSide.waitFor(ref.projection.name, minSeq, api.minSeqWaitMs);
  if (!r.reached) {
    throw new StrandError(
      ErrorCode.NOT_CAUGHT_UP,
      `projection ${ref.projection.name} is at ${r.checkpoint}, not yet at ${minSeq} after waiting ${api.minSeqWaitMs} ms; retry later`,
      { checkpoint: r.checkpoint },
    );
  }
}

/** The policy's `canSubscribe` for a read of a view, as for a live subscription to the same rows. */
function mayRead(api: ApiDeps, principal: Principal, request: SubscriptionRequest): void {
  const allowed = checkSubscribe(api.access, principal, request);
  if (allowed !== true) throw new StrandError(ErrorCode.FORBIDDEN, allowed);
}

/**
 * The projections' public views: list, filtered pages and single rows, each with its checkpoint.
 * A read is authorized like a live subscription: `canSubscribe` for the view with its filter or
 * key, `canSee` for each row (a page leaves out the rows it hides, a hidden row is not found).
 */
export const viewRoutes: FastifyPluginAsync<{ api: ApiDeps }> = async (app, { api }) => {
  app.get('/views', async () => ({ views: readModel(api).views.all().map(describeView) }));

  app.get<{ Params: { view: string }; Querystring: ViewQuery }>('/views/:view', { schema: { querystring: ViewQuery } }, async (req): Promise<ViewPage> => {
    const { views, readSide } = readModel(api);
    const ref = views.view(req.params.view);
    // Null prototype: a column name can never reach Object.prototype.
    const filters = Object.create(null) as Record<string, string>;
    for (const [name, value] of Object.entries(req.query)) {
      if (VIEW_QUERY_RESERVED.has(name) || value === undefined) continue;
      // Checked before any waiting: a wrong column fails at once, however stale the view.
      if (!ref.spec.filters.includes(name)) {
        throw new StrandError(ErrorCode.UNKNOWN_COLUMN, `view ${ref.name} cannot be filtered on ${JSON.stringify(name.slice(0, 100))}; filterable: ${ref.spec.filters.join(', ') || '(none)'}`);
      }
      filters[name] = String(value);
    }
    const principal = principalOf(req);
    mayRead(api, principal, { kind: 'view', view: ref.name, ...(Object.keys(filters).length > 0 ? { filter: { ...filters } } : {}) });
    await awaitCheckpoint(api, readSide, ref, req.query.minSeq);
    const page = await views.page(ref.name, filters, req.query.limit, req.query.cursor);
    if (!api.access.canSee) return page;
    return { ...page, rows: page.rows.filter((row) => rowVisible(api.access, principal, ref.name, row)) };
  });

  app.get<{ Params: { view: string; key: string }; Querystring: RowQuery }>('/views/:view/:key', { schema: { querystring: RowQuery } }, async (req): Promise<{ row: Row; checkpoint: number }> => {
    const { views, readSide } = readModel(api);
    const ref = views.view(req.params.view);
    const principal = principalOf(req);
    mayRead(api, principal, { kind: 'view', view: ref.name, key: req.params.key });
    await awaitCheckpoint(api, readSide, ref, req.query.minSeq);
    const r = await views.row(ref.name, req.params.key);
    // A row the policy hides is answered as absent: its existence is not disclosed either.
    if (!r.row || !rowVisible(api.access, principal, ref.name, r.row)) {
      throw new StrandError(ErrorCode.ROW_NOT_FOUND, `view ${ref.name} has no row with ${ref.spec.key} ${JSON.stringify(req.params.key.slice(0, 200))}`, { checkpoint: r.checkpoint });
    }
    return { row: r.row, checkpoint: r.checkpoint };
  });
};
