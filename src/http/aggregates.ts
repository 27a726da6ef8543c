import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import type { Aggregate } from '../aggregate/define.js';
import { checkSubscribe } from '../auth/access.js';
import { ErrorCode, StrandError } from '../errors.js';
import type { EventEnvelope, StoredEvent } from '../eventstore/types.js';
import { isAggregateId } from '../../subjects/index.js';
import { principalOf } from './auth.js';
import { EventsQuery, StateQuery } from './schemas.js';
import type { ApiDeps } from './server.js';

/** An instance's state, as `GET /aggregates/:aggregate/:id` answers. */
export interface StateResponse {
  readonly aggregate: string;
  readonly id: string;
  /** The version the state is at (after time travel: the version asked for, or reached by `at`). */
  readonly version: number;
  /** Stream sequence of the last event folded into the state. */
  readonly seq: number;
  readonly state: unknown;
}

/** One page of an instance's audit trail. */
export interface EventsResponse {
  readonly aggregate: string;
  readonly id: string;
  /** In version order; each envelope with its stream sequence. */
  readonly events: (EventEnvelope & { readonly seq: number })[];
  /** When there may be more: pass it as `?after=` to fetch the following page. */
  readonly next?: number;
}

interface InstanceParams {
  aggregate: string;
  id: string;
}

/**
 * The aggregate named in the path, checked in the order intake checks a command: name, then ID;
 * then whether the principal may read the instance (the policy's `canSubscribe`, as for a live
 * subscription to its events): FORBIDDEN if not.
 */
export function instanceOf(api: ApiDeps, req: FastifyRequest<{ Params: InstanceParams }>): Aggregate {
  const p = req.params;
  // A process instance is read like an aggregate instance (its state, its history, time travel).
  const aggregate = api.aggregates.get(p.aggregate) ?? api.processes?.get(p.aggregate)?.aggregate;
  if (!aggregate) throw new StrandError(ErrorCode.UNKNOWN_AGGREGATE, `no aggregate or process named ${JSON.stringify(p.aggregate.slice(0, 140))}`);
  if (!isAggregateId(p.id)) throw new StrandError(ErrorCode.BAD_REQUEST, `id must be 1-128 characters of [A-Za-z0-9_-], got ${JSON.stringify(p.id.slice(0, 140))}`);
  const allowed = checkSubscribe(api.access, principalOf(req), { kind: 'aggregate', aggregate: aggregate.name, id: p.id });
  if (allowed !== true) throw new StrandError(ErrorCode.FORBIDDEN, allowed);
  return aggregate;
}

/** Events scanned per store read while skipping to `fromVersion`. */
const SCAN_PAGE = 1000;

/** Aggregate instances: current state, state at a version or time, and the audit trail. */
export const aggregateRoutes: FastifyPluginAsync<{ api: ApiDeps }> = async (app, { api }) => {
  app.get<{ Params: InstanceParams; Querystring: StateQuery }>('/aggregates/:aggregate/:id', { schema: { querystring: StateQuery } }, async (req): Promise<StateResponse> => {
    const aggregate = instanceOf(api, req);
    const { id } = req.params;
    const { version, at } = req.query;
    const name = `${aggregate.name}/${id}`;
    if (version !== undefined && at !== undefined) throw new StrandError(ErrorCode.BAD_REQUEST, 'give either version or at, not both');

    if (version === undefined && at === undefined) {
      const r = await api.actors.rehydrate(aggregate, id);
      if (r.version === 0) throw new StrandError(ErrorCode.AGGREGATE_NOT_FOUND, `${name} has no events`);
      return { aggregate: aggregate.name, id, version: r.version, seq: r.seq, state: r.state };
    }

    const r = await api.actors.stateAt(aggregate, id, version !== undefined ? { version } : { at: new Date(at!) });
    if (version !== undefined && r.version < version) {
      throw new StrandError(
        ErrorCode.AGGREGATE_NOT_FOUND,
        r.version === 0 ? `${name} has no events` : `${name} is at version ${r.version}; version ${version} does not exist yet`,
      );
    }
    if (r.version === 0) throw new StrandError(ErrorCode.AGGREGATE_NOT_FOUND, `${name} has no events at or before ${at}`);
    return { aggregate: aggregate.name, id, version: r.version, seq: r.seq, state: r.state };
  });

  app.get<{ Params: InstanceParams; Querystring: EventsQuery }>('/aggregates/:aggregate/:id/events', { schema: { querystring: EventsQuery } }, async (req): Promise<EventsResponse> => {
    const aggregate = instanceOf(api, req);
    const { id } = req.params;
    const { fromVersion = 1, limit } = req.query;
    let after = req.query.after ?? 0;

    // One more than the page, to know whether there is a next page without a second read.
    const found: StoredEvent[] = [];
    for (;;) {
      const want = fromVersion > 1 ? SCAN_PAGE : limit + 1 - found.length;
      const page = await api.store.load(aggregate.name, id, after, want);
      for (const e of page.events) {
        if (e.junk === undefined && e.envelope.version >= fromVersion) found.push(e);
        if (found.length > limit) break;
      }
      if (found.length > limit || !page.more || page.events.length === 0) break;
      after = page.events[page.events.length - 1]!.seq;
    }

    // An empty page of an instance that exists is an answer (the end of its trail); no instance is a 404.
    const fromStart = (req.query.after ?? 0) === 0 && fromVersion === 1;
    if (found.length === 0 && (fromStart || !(await api.store.last(aggregate.name, id)))) {
      throw new StrandError(ErrorCode.AGGREGATE_NOT_FOUND, `${aggregate.name}/${id} has no events`);
    }
    const events = found.slice(0, limit).map((e) => ({ ...e.envelope, seq: e.seq }));
    return {
      aggregate: aggregate.name,
      id,
      events,
      ...(found.length > limit ? { next: events[events.length - 1]!.seq } : {}),
    };
  });
};
