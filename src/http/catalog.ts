import type { FastifyPluginAsync } from 'fastify';
import type { Aggregate } from '../aggregate/define.js';
import { CommandHeader, EventHeader, JetStreamHeader, commandSubject, eventSubject } from '../../subjects/index.js';
import { CommandAcceptedSchema, CommandFailedSchema, EventEnvelopeSchema, jsonSchema } from './contract.js';
import type { ApiDeps } from './server.js';

type JsonSchema = Record<string, unknown>;

/** One aggregate's part of the catalog. */
export interface AggregateCatalog {
  readonly name: string;
  /** Command name → JSON Schema of its body (what a sender writes). */
  readonly commands: Record<string, JsonSchema>;
  /** Event type → its current schema version and the JSON Schema of its `data`. */
  readonly events: Record<string, { readonly schemaVersion: number; readonly schema: JsonSchema }>;
  /** Subject templates: `{id}` is the instance ID, `{Command}`/`{EventType}` a name above. */
  readonly subjects: { readonly commands: string; readonly events: string };
}

/** `GET /catalog`: every command and event with its JSON Schema, and the shapes around them. */
export interface Catalog {
  readonly aggregates: AggregateCatalog[];
  /** The envelope every event travels in (`data` is the event's own schema). */
  readonly envelope: JsonSchema;
  readonly replies: { readonly accepted: JsonSchema; readonly failed: JsonSchema };
  readonly headers: { readonly command: string[]; readonly event: string[] };
}

export function aggregateCatalog(a: Aggregate): AggregateCatalog {
  const commands: Record<string, JsonSchema> = {};
  for (const [name, schema] of a.commands) commands[name] = jsonSchema(schema, { io: 'input', standalone: true });
  const events: Record<string, { schemaVersion: number; schema: JsonSchema }> = {};
  for (const [name, ev] of a.events) events[name] = { schemaVersion: ev.version, schema: jsonSchema(ev.schema, { standalone: true }) };
  return {
    name: a.name,
    commands,
    events,
    subjects: { commands: commandSubject(a.name, '{id}', '{Command}'), events: eventSubject(a.name, '{id}', '{EventType}') },
  };
}

/** Built once: the aggregates do not change while the server runs. */
export function buildCatalog(aggregates: ReadonlyMap<string, Aggregate>): Catalog {
  return {
    aggregates: [...aggregates.values()].map(aggregateCatalog),
    envelope: jsonSchema(EventEnvelopeSchema, { standalone: true }),
    replies: { accepted: jsonSchema(CommandAcceptedSchema, { standalone: true }), failed: jsonSchema(CommandFailedSchema, { standalone: true }) },
    headers: {
      command: Object.values(CommandHeader),
      event: [JetStreamHeader.MsgId, ...Object.values(EventHeader)],
    },
  };
}

/** `GET /catalog` */
export const catalogRoute: FastifyPluginAsync<{ api: ApiDeps }> = async (app, { api }) => {
  // Built on first use (converting every schema takes a while) and kept: aggregates do not change.
  let catalog: Catalog | undefined;
  app.get('/catalog', async () => (catalog ??= buildCatalog(api.aggregates)));
};
