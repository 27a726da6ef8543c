import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import type { Aggregate } from '../aggregate/define.js';
import type { CommandAccepted, CommandFailed } from '../commands/types.js';
import { ErrorCode } from '../errors.js';
import type { EventEnvelope } from '../eventstore/types.js';

/**
 * The NATS contract's message shapes as zod schemas, the single source of the JSON Schemas that
 * `/catalog`, `/asyncapi.json` and `/openapi.json` publish. The type checks at the bottom keep
 * them in step with the TypeScript types the code uses.
 */

/** 1–128 characters of `[A-Za-z0-9_-]`: an aggregate instance ID (one subject token). */
export const ID_PATTERN = '^[A-Za-z0-9_-]{1,128}$';
/** An aggregate's name. */
export const AGGREGATE_NAME_PATTERN = '^[a-z][a-z0-9-]*$';
/** A command's or event type's name. */
export const MESSAGE_NAME_PATTERN = '^[A-Za-z][A-Za-z0-9]*$';
/** `Strand-Command-Id`, `Strand-Correlation-Id`, `Strand-Causation-Id`: printable ASCII. */
export const TRACE_ID_PATTERN = '^[\\x21-\\x7e]{1,128}$';
/** `Strand-Actor`: `<type>:<id>`. */
export const ISSUER_PATTERN = '^[A-Za-z0-9_.-]{1,64}:[\\x21-\\x7e]{1,128}$';
/** `Strand-Expected-Version`: a non-negative integer, no sign, no leading zeros. */
export const EXPECTED_VERSION_PATTERN = '^(0|[1-9][0-9]{0,14})$';

export const EventMetadataSchema = z
  .object({
    commandId: z.string().optional().describe('The command that produced the event'),
    correlationId: z.string().optional().describe('Strand-Correlation-Id of the command (its command ID when none was given)'),
    causationId: z.string().optional().describe('Strand-Causation-Id of the command'),
  })
  .describe('Tracing metadata copied from the command');

/** The envelope with `data` of any shape; {@link envelopeOf} narrows it to one event type. */
export const EventEnvelopeSchema = z
  .object({
    id: z.string().describe("Unique event ID; also the message's Nats-Msg-Id"),
    type: z.string().regex(new RegExp(MESSAGE_NAME_PATTERN)).describe('Event type'),
    aggregate: z.string().regex(new RegExp(AGGREGATE_NAME_PATTERN)).describe("Aggregate's name"),
    aggregateId: z.string().regex(new RegExp(ID_PATTERN)).describe('Aggregate instance ID'),
    version: z.number().int().min(1).describe("The aggregate's version after this event: 1, 2, 3, ... with no gaps"),
    schemaVersion: z.number().int().min(1).describe("Version of the event type's schema the data was written with"),
    time: z.string().describe('ISO-8601 time the command was decided at'),
    actor: z.string().optional().describe('Who issued the command (Strand-Actor): <type>:<id>'),
    data: z.unknown().describe("The event's data"),
    metadata: EventMetadataSchema,
  })
  .describe('One event: the JSON body of a message on evt.<aggregate>.<id>.<EventType>');

export const ReplyEventSchema = z.object({
  type: z.string(),
  version: z.number().int().min(1),
  seq: z.number().int().min(1).describe('Stream sequence of the event'),
});

export const CommandAcceptedSchema = z
  .object({
    ok: z.literal(true),
    aggregate: z.string(),
    id: z.string(),
    version: z.number().int().min(0).describe("The aggregate's version after the command"),
    seq: z.number().int().min(0).describe("Stream sequence of the aggregate's last event after the command (0 when it has none)"),
    events: z.array(ReplyEventSchema),
    commandId: z.string().describe('Strand-Command-Id, or the one Strand generated'),
    duplicate: z.boolean().describe('true when the command had already been carried out: its events were not appended again'),
  })
  .describe('The reply to a command that was carried out');

export const CommandFailedSchema = z
  .object({
    ok: z.literal(false),
    error: z.object({
      code: z.enum(Object.values(ErrorCode) as [ErrorCode, ...ErrorCode[]]).describe('Stable error code (docs/errors.md)'),
      message: z.string(),
      reason: z.string().optional().describe("With REJECTED: the aggregate's own code"),
      details: z.unknown().optional().describe('Structured detail, e.g. the zod issues of VALIDATION_FAILED'),
    }),
  })
  .describe('The reply to a command that was not carried out');

export const CommandReplySchema = z.union([CommandAcceptedSchema, CommandFailedSchema]).describe('The reply to every command');

/** What a durable command's outcome adds to its reply. */
const OutcomeFields = {
  commandId: z.string().describe('Strand-Command-Id, or cmdq-<stream sequence> when the message had none (or a bad one)'),
  aggregate: z.string().describe("As the subject named it (a malformed command's name may not be a valid one)"),
  id: z.string(),
  command: z.string(),
  recordedAt: z.string().describe('ISO time the outcome was recorded'),
};

export const CommandOutcomeSchema = z
  .union([CommandAcceptedSchema.extend(OutcomeFields), CommandFailedSchema.extend(OutcomeFields)])
  .describe('The outcome of a durable command (cmdq.<aggregate>.<id>.<Command>): the reply request-reply would have given, and what it was for');

/** JSON Schema flavours: OpenAPI 3.1 and the catalog use 2020-12, AsyncAPI 3.0 draft-07. */
export type SchemaTarget = 'draft-2020-12' | 'draft-7';

/**
 * A zod schema as JSON Schema. Never throws: what JSON Schema cannot express becomes `{}` (any),
 * and a schema zod cannot convert at all is described instead. By default it describes what the
 * schema accepts (`io: 'input'`): objects stay open to unknown keys (zod strips them), so a
 * consumer validating events with it keeps working when a later release adds an optional field.
 */
export function jsonSchema(schema: z.ZodType, o: { io?: 'input' | 'output'; target?: SchemaTarget; standalone?: boolean } = {}): Record<string, unknown> {
  try {
    const out = z.toJSONSchema(schema, { unrepresentable: 'any', io: o.io ?? 'input', target: o.target ?? 'draft-2020-12' }) as Record<string, unknown>;
    if (!o.standalone) delete out['$schema'];
    return out;
  } catch (err) {
    return { description: `not expressible as JSON Schema: ${(err as Error).message}` };
  }
}

/** The envelope of one event type: `type` and `schemaVersion` fixed, `data` its schema. */
export function envelopeOf(aggregate: Aggregate, type: string, target: SchemaTarget = 'draft-2020-12'): Record<string, unknown> {
  const ev = aggregate.events.get(type);
  const base = jsonSchema(EventEnvelopeSchema, { target });
  const properties = { ...(base['properties'] as Record<string, unknown>) };
  properties['type'] = { type: 'string', const: type };
  properties['aggregate'] = { type: 'string', const: aggregate.name };
  properties['schemaVersion'] = {
    type: 'integer',
    minimum: 1,
    maximum: ev?.version ?? 1,
    description: `Schema version the data was written with (current: ${ev?.version ?? 1}; older data is upcast by readers)`,
  };
  properties['data'] = ev ? jsonSchema(ev.schema, { target }) : {};
  const required = [...((base['required'] as string[] | undefined) ?? [])];
  if (!required.includes('data')) required.push('data');
  return { ...base, description: `${aggregate.name} ${type}: the JSON body of a message on evt.${aggregate.name}.<id>.${type}`, properties, required };
}

// Compile-time checks: the schemas above describe what the code really sends.
type Assignable<T extends U, U> = T;
type _EnvelopeMatches = Assignable<EventEnvelope, z.input<typeof EventEnvelopeSchema>>;
type _AcceptedMatches = Assignable<Omit<CommandAccepted, 'events'> & { events: CommandAccepted['events'][number][] }, z.input<typeof CommandAcceptedSchema>>;
type _FailedMatches = Assignable<CommandFailed, z.input<typeof CommandFailedSchema>>;

let version: string | undefined;
/** This release's version (package.json), shown in the published documents. */
export function releaseVersion(): string {
  if (version !== undefined) return version;
  version = '0.0.0';
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'strand' && pkg.version) return (version = pkg.version);
    } catch {
      // not here: look one folder up
    }
    dir = dirname(dir);
  }
  return version;
}
