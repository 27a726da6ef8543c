import type { Aggregate } from '../aggregate/define.js';
import type { EventSpec } from '../aggregate/types.js';
import { eventSubject } from '../../subjects/index.js';
import type { AggregateHandlers, EventHandler, Projection, ProjectionSpec, Subscription } from './types.js';

const PROJECTION_NAME = /^[a-z][a-z0-9_]{0,47}$/;
const IDENT = /^[a-z_][a-z0-9_]{0,62}$/;

/** Subscribes a projection to one aggregate's events: handlers keyed by event type, data typed. */
export function on<E extends Record<string, EventSpec>>(aggregate: Aggregate<unknown, E> | Aggregate<never, E>, handlers: AggregateHandlers<E>): Subscription {
  for (const type of Object.keys(handlers)) {
    if (!(aggregate as Aggregate).events.has(type)) throw new Error(`aggregate ${(aggregate as Aggregate).name} has no event ${type}`);
  }
  return { aggregate: aggregate as Aggregate, handlers: handlers as Record<string, EventHandler<unknown> | undefined> };
}

/**
 * Declares a projection: its tables (created by its own migrations, in a schema of its own),
 * the views clients may query, and handlers for the events it consumes.
 */
export function defineProjection(spec: ProjectionSpec): Projection {
  if (!PROJECTION_NAME.test(spec.name)) throw new Error(`projection name ${JSON.stringify(spec.name)} must match ${PROJECTION_NAME}`);
  if (!Number.isInteger(spec.version) || spec.version < 1) throw new Error(`projection ${spec.name}: version must be an integer >= 1`);
  for (const [table, t] of Object.entries(spec.tables)) {
    if (!IDENT.test(table) || t.key.length === 0 || !t.key.every((c) => IDENT.test(c))) throw new Error(`projection ${spec.name}: bad table ${table}`);
  }
  for (const [name, v] of Object.entries(spec.views)) {
    if (!IDENT.test(name) || !IDENT.test(v.relation)) throw new Error(`projection ${spec.name}: bad view ${name}`);
    if (!(v.key in v.columns)) throw new Error(`view ${name}: key ${v.key} is not one of its columns`);
    for (const f of v.filters) if (!(f in v.columns)) throw new Error(`view ${name}: filter ${f} is not one of its columns`);
    for (const c of Object.values(v.columns)) if (!IDENT.test(c)) throw new Error(`view ${name}: bad column ${c}`);
  }
  const byAggregate = new Map<string, Subscription>();
  const filterSubjects: string[] = [];
  for (const s of spec.handlers) {
    if (byAggregate.has(s.aggregate.name)) throw new Error(`projection ${spec.name}: two subscriptions to ${s.aggregate.name}`);
    byAggregate.set(s.aggregate.name, s);
    for (const [type, h] of Object.entries(s.handlers)) if (h) filterSubjects.push(eventSubject(s.aggregate.name, '*', type));
  }
  if (filterSubjects.length === 0) throw new Error(`projection ${spec.name} handles no events`);
  return {
    ...spec,
    filterSubjects,
    handlerFor: (aggregate, type) => byAggregate.get(aggregate)?.handlers[type],
    aggregateFor: (name) => byAggregate.get(name)?.aggregate,
  };
}
