import type { FastifyPluginAsync } from 'fastify';
import { ErrorCode, HttpStatus } from '../errors.js';
import { CommandHeader } from '../../subjects/index.js';
import { COMMAND_BODY_CAP } from './commands.js';
import {
  AGGREGATE_NAME_PATTERN,
  CommandAcceptedSchema,
  CommandFailedSchema,
  CommandOutcomeSchema,
  EXPECTED_VERSION_PATTERN,
  EventEnvelopeSchema,
  ID_PATTERN,
  ISSUER_PATTERN,
  MESSAGE_NAME_PATTERN,
  TRACE_ID_PATTERN,
  jsonSchema,
  releaseVersion,
} from './contract.js';
import { OPEN_ROUTES } from './auth.js';
import { reasonPhrase } from './errors.js';
import { DeadLetterParams, DeadLettersQuery, EventsQuery, RowQuery, StateQuery, ViewQuery, type ParamsSchema } from './schemas.js';
import type { ApiDeps } from './server.js';

type Obj = Record<string, unknown>;

const ref = (name: string): Obj => ({ $ref: `#/components/schemas/${name}` });
const json = (schema: Obj): Obj => ({ 'application/json': { schema } });

/** One operation of the document, before it is laid out as OpenAPI. */
interface RouteDoc {
  readonly method: 'get' | 'post' | 'delete';
  /** OpenAPI form: `{param}`. */
  readonly path: string;
  readonly operationId: string;
  readonly tag: string;
  readonly summary: string;
  readonly description?: string;
  readonly parameters?: readonly Obj[];
  readonly requestBody?: Obj;
  /** Status → description and content (undefined: no body). */
  readonly responses: Readonly<Record<number, { readonly description: string; readonly content?: Obj }>>;
  /** The error codes the route can answer with, in the `{statusCode, code, error, message}` shape. */
  readonly errors?: readonly ErrorCode[];
  /** `POST /commands`: its errors come in the NATS reply shape instead. */
  readonly natsErrors?: readonly ErrorCode[];
}

/** Query parameters from the same JSON Schema fastify checks them with. */
function queryParameters(s: ParamsSchema): Obj[] {
  const out: Obj[] = [];
  for (const [name, prop] of Object.entries(s.properties)) {
    const { description, ...schema } = prop;
    out.push({ name, in: 'query', required: s.required?.includes(name) ?? false, description, schema });
  }
  return out;
}

function pathParameter(name: string, description: string, schema: Obj): Obj {
  return { name, in: 'path', required: true, description, schema };
}

function errorResponses(codes: readonly ErrorCode[], schemaFor: (codes: ErrorCode[]) => Obj): Record<number, { description: string; content: Obj }> {
  const byStatus = new Map<number, ErrorCode[]>();
  for (const code of codes) {
    const status = HttpStatus[code];
    byStatus.set(status, [...(byStatus.get(status) ?? []), code]);
  }
  const out: Record<number, { description: string; content: Obj }> = {};
  for (const [status, list] of byStatus) {
    out[status] = { description: `${reasonPhrase(status)}: ${list.join(', ')}`, content: json(schemaFor(list)) };
  }
  return out;
}

/** The document's schemas: the error shape, the NATS reply, and every response body. */
function schemas(): Obj {
  const envelope = jsonSchema(EventEnvelopeSchema);
  return {
    Error: {
      type: 'object',
      description: 'Every error response except POST /commands (which mirrors the NATS reply)',
      required: ['statusCode', 'code', 'error', 'message'],
      properties: {
        statusCode: { type: 'integer', description: 'The HTTP status' },
        code: { type: 'string', enum: Object.values(ErrorCode), description: 'Stable error code (docs/errors.md)' },
        error: { type: 'string', description: 'The HTTP reason phrase, e.g. Bad Request' },
        message: { type: 'string', description: 'For people; wording may change' },
        checkpoint: { type: 'integer', description: "With NOT_CAUGHT_UP and ROW_NOT_FOUND: the projection's checkpoint" },
        details: { description: 'Structured detail, e.g. the failed parameter checks of a BAD_REQUEST' },
      },
    },
    CommandAccepted: jsonSchema(CommandAcceptedSchema),
    CommandFailed: jsonSchema(CommandFailedSchema),
    CommandOutcome: jsonSchema(CommandOutcomeSchema),
    EventEnvelope: envelope,
    StoredEvent: {
      description: 'An envelope with its stream sequence',
      allOf: [ref('EventEnvelope'), { type: 'object', required: ['seq'], properties: { seq: { type: 'integer', minimum: 1, description: 'Stream sequence' } } }],
    },
    AggregateState: {
      type: 'object',
      required: ['aggregate', 'id', 'version', 'seq', 'state'],
      properties: {
        aggregate: { type: 'string' },
        id: { type: 'string' },
        version: { type: 'integer', minimum: 1, description: 'The version the state is at' },
        seq: { type: 'integer', minimum: 1, description: 'Stream sequence of the last event folded in' },
        state: { description: "The aggregate's state, as its evolve handlers built it" },
      },
    },
    EventsPage: {
      type: 'object',
      required: ['aggregate', 'id', 'events'],
      properties: {
        aggregate: { type: 'string' },
        id: { type: 'string' },
        events: { type: 'array', items: ref('StoredEvent'), description: 'In version order' },
        next: { type: 'integer', description: 'Present when there may be more: pass as ?after= for the next page' },
      },
    },
    ViewDescription: {
      type: 'object',
      required: ['name', 'projection', 'key', 'order', 'columns', 'filters'],
      properties: {
        name: { type: 'string' },
        projection: { type: 'string', description: 'The projection that maintains it' },
        key: { type: 'string', description: 'The column that identifies a row and orders pages' },
        order: { type: 'string', enum: ['asc', 'desc'] },
        columns: { type: 'array', items: { type: 'string' } },
        filters: { type: 'array', items: { type: 'string' }, description: 'Columns ?<column>=<value> may filter on' },
      },
    },
    ViewList: { type: 'object', required: ['views'], properties: { views: { type: 'array', items: ref('ViewDescription') } } },
    ViewPage: {
      type: 'object',
      required: ['rows', 'checkpoint'],
      properties: {
        rows: { type: 'array', items: { type: 'object' } },
        checkpoint: { type: 'integer', minimum: 0, description: 'Stream sequence the rows reflect (read in the same snapshot)' },
        next: { type: 'string', description: 'Present when there may be more: pass as ?cursor= (with the same filters) for the next page' },
      },
    },
    ViewRow: {
      type: 'object',
      required: ['row', 'checkpoint'],
      properties: { row: { type: 'object' }, checkpoint: { type: 'integer', minimum: 0 } },
    },
    ProjectionStatus: {
      type: 'object',
      required: ['name', 'version', 'activeGeneration', 'buildingGeneration', 'checkpoint', 'local', 'pending', 'caughtUp', 'rebuild', 'deadLetters'],
      properties: {
        name: { type: 'string' },
        version: { type: 'integer' },
        activeGeneration: { type: ['integer', 'null'], description: 'The generation serving reads' },
        buildingGeneration: { type: ['integer', 'null'], description: 'The generation being rebuilt, if any' },
        checkpoint: { type: 'integer', description: 'Stream sequence of the last event the serving generation applied' },
        local: { type: 'boolean', description: 'Applied by this instance (false: another instance holds the lock)' },
        pending: { type: ['integer', 'null'] },
        caughtUp: { type: ['boolean', 'null'] },
        rebuild: {
          type: ['object', 'null'],
          properties: { generation: { type: 'integer' }, checkpoint: { type: 'integer' }, pending: { type: 'integer' } },
        },
        deadLetters: { type: 'integer', description: 'Parked events' },
      },
    },
    ProjectionList: { type: 'object', required: ['projections'], properties: { projections: { type: 'array', items: ref('ProjectionStatus') } } },
    DeadLetter: {
      type: 'object',
      required: ['projection', 'seq', 'subject', 'error', 'attempts', 'parkedAt', 'event'],
      properties: {
        projection: { type: 'string' },
        seq: { type: 'integer' },
        subject: { type: 'string' },
        error: { type: 'string', description: 'The last error of its handler' },
        attempts: { type: 'integer' },
        parkedAt: { type: 'string', format: 'date-time' },
        event: { type: 'object', description: 'The event as the handler saw it (envelope, data upcast, with seq)' },
      },
    },
    DeadLetters: { type: 'object', required: ['deadLetters'], properties: { deadLetters: { type: 'array', items: ref('DeadLetter') } } },
    Catalog: {
      type: 'object',
      required: ['aggregates', 'envelope', 'replies', 'headers'],
      properties: {
        aggregates: {
          type: 'array',
          items: {
            type: 'object',
            required: ['name', 'commands', 'events', 'subjects'],
            properties: {
              name: { type: 'string' },
              commands: { type: 'object', additionalProperties: { type: 'object', description: 'JSON Schema of the command body' } },
              events: {
                type: 'object',
                additionalProperties: {
                  type: 'object',
                  properties: { schemaVersion: { type: 'integer' }, schema: { type: 'object', description: 'JSON Schema of the event data' } },
                },
              },
              subjects: { type: 'object', properties: { commands: { type: 'string' }, events: { type: 'string' } } },
            },
          },
        },
        envelope: { type: 'object' },
        replies: { type: 'object', properties: { accepted: { type: 'object' }, failed: { type: 'object' } } },
        headers: { type: 'object', properties: { command: { type: 'array', items: { type: 'string' } }, event: { type: 'array', items: { type: 'string' } } } },
      },
    },
    Readiness: {
      type: 'object',
      required: ['status', 'checks'],
      properties: {
        status: { type: 'string', enum: ['ready', 'not ready'] },
        checks: { type: 'object', additionalProperties: { type: 'boolean' } },
      },
      additionalProperties: true,
    },
  };
}

function routes(api: ApiDeps): RouteDoc[] {
  const names = [...api.aggregates.keys()];
  const aggregate = pathParameter('aggregate', "The aggregate's name", { type: 'string', pattern: AGGREGATE_NAME_PATTERN, ...(names.length > 0 ? { examples: names } : {}) });
  const id = pathParameter('id', 'Aggregate instance ID', { type: 'string', pattern: ID_PATTERN });
  const viewNames = api.views?.all().map((v) => v.name) ?? [];
  const view = pathParameter('view', "The view's name (GET /views lists them)", { type: 'string', ...(viewNames.length > 0 ? { examples: viewNames } : {}) });
  const projection = pathParameter('name', "The projection's name (GET /projections lists them)", { type: 'string' });
  const readErrors: ErrorCode[] = [ErrorCode.BAD_REQUEST, ErrorCode.FORBIDDEN, ErrorCode.UNKNOWN_AGGREGATE, ErrorCode.AGGREGATE_NOT_FOUND, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL];
  const header = (name: string, pattern: string, description: string): Obj => ({ name, in: 'header', required: false, description, schema: { type: 'string', pattern } });

  return [
    {
      method: 'get', path: '/health/live', operationId: 'live', tag: 'operations',
      summary: 'Answers while the process runs',
      responses: { 200: { description: 'Alive', content: json({ type: 'object', properties: { status: { const: 'live' } } }) } },
    },
    {
      method: 'get', path: '/health/ready', operationId: 'ready', tag: 'operations',
      summary: 'Answers 200 only when commands can be taken',
      responses: {
        200: { description: 'Ready', content: json(ref('Readiness')) },
        503: { description: 'Not ready (this body, not the error shape)', content: json(ref('Readiness')) },
      },
    },
    {
      method: 'get', path: '/dashboard', operationId: 'dashboard', tag: 'operations',
      summary: "A live care-task board per coordinator (HTML); it subscribes to /live over WebSocket",
      description: 'Query `coordinator` picks whose tasks are shown; `token` is passed on as the WebSocket `access_token`. The WebSocket protocol of `GET /live` (an upgrade, not described by OpenAPI) is in docs/live.md.',
      responses: { 200: { description: 'The page', content: { 'text/html': { schema: { type: 'string' } } } } },
    },
    {
      method: 'get', path: '/metrics', operationId: 'metrics', tag: 'operations',
      summary: 'Prometheus metrics (text exposition format)',
      responses: { 200: { description: 'Metrics', content: { 'text/plain': { schema: { type: 'string' } } } } },
    },
    {
      method: 'get', path: '/aggregates/{aggregate}/{id}', operationId: 'getState', tag: 'aggregates',
      summary: "An instance's current state, or its state at a version or a time",
      description: 'Without parameters: the current state (from the latest snapshot and the events after it). With `version` or `at`: time travel, replayed from the first event. A version beyond the current one, or a time before the first event, is 404 AGGREGATE_NOT_FOUND.',
      parameters: [aggregate, id, ...queryParameters(StateQuery)],
      responses: { 200: { description: 'The state', content: json(ref('AggregateState')) } },
      errors: readErrors,
    },
    {
      method: 'get', path: '/aggregates/{aggregate}/{id}/events', operationId: 'getEvents', tag: 'aggregates',
      summary: "An instance's audit trail: its events in version order, paged",
      parameters: [aggregate, id, ...queryParameters(EventsQuery)],
      responses: { 200: { description: 'A page of events', content: json(ref('EventsPage')) } },
      errors: readErrors,
    },
    {
      method: 'post', path: '/commands/{aggregate}/{id}/{command}', operationId: 'sendCommand', tag: 'commands',
      summary: 'Sends a command: the NATS contract over HTTP',
      description: `The body is the command's data as JSON (Content-Type: application/json; an empty body means {}), checked like on NATS (STRAND_MAX_COMMAND_BYTES; nothing above ${COMMAND_BODY_CAP} bytes is read). The reply body is exactly the NATS reply, also for errors: {ok:false,error:{code,message,reason?,details?}}; the status is 200 when ok, else the status of the code.`,
      parameters: [
        aggregate,
        id,
        pathParameter('command', "The command's name (GET /catalog lists them)", { type: 'string', pattern: MESSAGE_NAME_PATTERN }),
        header(CommandHeader.CommandId, TRACE_ID_PATTERN, 'Idempotency key: a repeat is answered with duplicate: true and appends nothing'),
        header(CommandHeader.CorrelationId, TRACE_ID_PATTERN, "Copied to the events' metadata (default: the command ID)"),
        header(CommandHeader.CausationId, TRACE_ID_PATTERN, "Copied to the events' metadata"),
        header(CommandHeader.Actor, ISSUER_PATTERN, "Who issues the command: <type>:<id>. Only without a token (STRAND_AUTH=dev): with one, the issuer is the token's (user:<sub>) and a header naming anyone else is 403 FORBIDDEN"),
        header(CommandHeader.ExpectedVersion, EXPECTED_VERSION_PATTERN, 'Reject with WRONG_VERSION unless the aggregate is at this version'),
      ],
      requestBody: { required: false, content: json({ type: 'object', description: "The command's data (its JSON Schema: GET /catalog)" }) },
      responses: { 200: { description: 'Carried out (or had been: duplicate: true)', content: json(ref('CommandAccepted')) } },
      natsErrors: [
        ErrorCode.BAD_REQUEST, ErrorCode.VALIDATION_FAILED, ErrorCode.FORBIDDEN, ErrorCode.UNKNOWN_AGGREGATE, ErrorCode.UNKNOWN_COMMAND, ErrorCode.REJECTED,
        ErrorCode.WRONG_VERSION, ErrorCode.CONFLICT, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL,
      ],
    },
    {
      method: 'get', path: '/commands/{commandId}', operationId: 'getOutcome', tag: 'commands',
      summary: 'The outcome of a durable command (published to cmdq.<aggregate>.<id>.<Command>), by its command ID',
      description: 'As its partition\'s owner recorded it: accepted with version, seq and events, or the error. Readable by whoever may read the aggregate instance it was for. 404 OUTCOME_NOT_FOUND while none is recorded (not processed yet, never published, or past STRAND_OUTCOME_TTL_MS). The same answer over NATS: a request to strand.outcome.get with the ID as its body.',
      parameters: [pathParameter('commandId', 'Strand-Command-Id of the durable command, or cmdq-<seq> (the stream sequence of its PubAck) when it was published without one', { type: 'string', pattern: TRACE_ID_PATTERN })],
      responses: { 200: { description: 'The outcome', content: json(ref('CommandOutcome')) } },
      errors: [ErrorCode.BAD_REQUEST, ErrorCode.FORBIDDEN, ErrorCode.OUTCOME_NOT_FOUND, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL],
    },
    {
      method: 'get', path: '/views', operationId: 'listViews', tag: 'views',
      summary: 'The views, with their key and filterable columns',
      responses: { 200: { description: 'The views', content: json(ref('ViewList')) } },
      errors: [ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL],
    },
    {
      method: 'get', path: '/views/{view}', operationId: 'queryView', tag: 'views',
      summary: "A page of a view's rows, filtered by column values, with the checkpoint they reflect",
      parameters: [
        view,
        ...queryParameters(ViewQuery),
        {
          name: 'filters', in: 'query', required: false, style: 'form', explode: true,
          description: '`<column>=<value>` for any of the view\'s filterable columns (exact match; several are ANDed)',
          schema: { type: 'object', additionalProperties: ViewQuery.additionalProperties },
        },
      ],
      responses: { 200: { description: 'A page of rows', content: json(ref('ViewPage')) } },
      errors: [ErrorCode.BAD_REQUEST, ErrorCode.FORBIDDEN, ErrorCode.UNKNOWN_VIEW, ErrorCode.UNKNOWN_COLUMN, ErrorCode.BAD_CURSOR, ErrorCode.NOT_CAUGHT_UP, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL],
    },
    {
      method: 'get', path: '/views/{view}/{key}', operationId: 'getRow', tag: 'views',
      summary: 'One row of a view by its key',
      parameters: [view, pathParameter('key', "The row's key value", { type: 'string' }), ...queryParameters(RowQuery)],
      responses: { 200: { description: 'The row', content: json(ref('ViewRow')) } },
      errors: [ErrorCode.BAD_REQUEST, ErrorCode.FORBIDDEN, ErrorCode.UNKNOWN_VIEW, ErrorCode.ROW_NOT_FOUND, ErrorCode.NOT_CAUGHT_UP, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL],
    },
    {
      method: 'get', path: '/cluster', operationId: 'cluster', tag: 'operations',
      summary: 'The members of the cluster and the owner of each partition, as this instance sees them',
      responses: { 200: { description: 'Membership and partition owners', content: json({ type: 'object', required: ['instance', 'partitions', 'members', 'owners', 'local', 'waiting', 'ready'] }) } },
      errors: [ErrorCode.FORBIDDEN, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL],
    },
    {
      method: 'get', path: '/processes', operationId: 'listProcesses', tag: 'processes',
      summary: 'The process managers defined: what each reacts to, whether it handles replies, its deadlines',
      responses: { 200: { description: 'The processes', content: json({ type: 'object', required: ['processes'], properties: { processes: { type: 'array', items: { type: 'object' } } } }) } },
      errors: [ErrorCode.INTERNAL],
    },
    {
      method: 'get', path: '/processes/{process}/{id}/deadlines', operationId: 'processDeadlines', tag: 'processes',
      summary: "A process instance's pending deadlines, soonest first (its state and history: GET /aggregates/{process}/{id})",
      parameters: [pathParameter('process', "The process's name", { type: 'string', pattern: AGGREGATE_NAME_PATTERN }), id],
      responses: { 200: { description: 'Pending deadlines', content: json({ type: 'object', required: ['process', 'id', 'deadlines'], properties: { process: { type: 'string' }, id: { type: 'string' }, deadlines: { type: 'array', items: { type: 'object', required: ['name', 'due', 'token'], properties: { name: { type: 'string' }, due: { type: 'string', format: 'date-time' }, token: { type: 'string' }, data: {} } } } } }) } },
      errors: [ErrorCode.BAD_REQUEST, ErrorCode.FORBIDDEN, ErrorCode.UNKNOWN_AGGREGATE, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL],
    },
    {
      method: 'get', path: '/processes/{process}/parked', operationId: 'processParked', tag: 'processes',
      summary: "A process's parked inputs (poison: kept failing for STRAND_PROCESS_MAX_ATTEMPTS deliveries)",
      parameters: [pathParameter('process', "The process's name", { type: 'string', pattern: AGGREGATE_NAME_PATTERN })],
      responses: { 200: { description: 'Parked inputs', content: json({ type: 'object', required: ['process', 'parked'], properties: { process: { type: 'string' }, parked: { type: 'array', items: { type: 'object', required: ['process', 'kind', 'subject', 'reason', 'error', 'attempts', 'parkedAt'] } } } }) } },
      errors: [ErrorCode.FORBIDDEN, ErrorCode.UNKNOWN_AGGREGATE, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL],
    },
    {
      method: 'post', path: '/processes/{process}/parked/{key}/retry', operationId: 'retryProcessParked', tag: 'processes',
      summary: 'Hands a parked input to its process instance again (after its handler was fixed); it leaves the list when it succeeds',
      parameters: [pathParameter('process', "The process's name", { type: 'string', pattern: AGGREGATE_NAME_PATTERN }), pathParameter('key', "The parked input's key (from the list)", { type: 'string' })],
      responses: { 200: { description: 'Handled', content: json({ type: 'object', required: ['retried', 'recorded'], properties: { retried: { type: 'string' }, recorded: { type: 'boolean', description: 'false: the instance ignored it' } } }) } },
      errors: [ErrorCode.FORBIDDEN, ErrorCode.UNKNOWN_AGGREGATE, ErrorCode.DEAD_LETTER_NOT_FOUND, ErrorCode.RETRY_FAILED, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL],
    },
    {
      method: 'delete', path: '/processes/{process}/parked/{key}', operationId: 'discardProcessParked', tag: 'processes',
      summary: 'Forgets a parked input',
      parameters: [pathParameter('process', "The process's name", { type: 'string', pattern: AGGREGATE_NAME_PATTERN }), pathParameter('key', "The parked input's key (from the list)", { type: 'string' })],
      responses: { 200: { description: 'Discarded', content: json({ type: 'object', required: ['discarded'], properties: { discarded: { type: 'string' } } }) } },
      errors: [ErrorCode.FORBIDDEN, ErrorCode.UNKNOWN_AGGREGATE, ErrorCode.DEAD_LETTER_NOT_FOUND, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL],
    },
    {
      method: 'get', path: '/projections', operationId: 'listProjections', tag: 'projections',
      summary: 'Where every projection stands',
      responses: { 200: { description: 'Status of every projection', content: json(ref('ProjectionList')) } },
      errors: [ErrorCode.FORBIDDEN, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL],
    },
    {
      method: 'get', path: '/projections/{name}', operationId: 'getProjection', tag: 'projections',
      summary: 'Where one projection stands',
      parameters: [projection],
      responses: { 200: { description: 'Its status', content: json(ref('ProjectionStatus')) } },
      errors: [ErrorCode.FORBIDDEN, ErrorCode.UNKNOWN_PROJECTION, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL],
    },
    {
      method: 'post', path: '/projections/{name}/rebuild', operationId: 'rebuildProjection', tag: 'projections',
      summary: 'Rebuilds a projection from the start of the stream into a new generation, which serves once caught up',
      parameters: [projection],
      responses: { 202: { description: 'Rebuild started', content: json({ type: 'object', required: ['generation'], properties: { generation: { type: 'integer' } } }) } },
      errors: [ErrorCode.BAD_REQUEST, ErrorCode.FORBIDDEN, ErrorCode.UNKNOWN_PROJECTION, ErrorCode.REBUILD_IN_PROGRESS, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL],
    },
    {
      method: 'get', path: '/projections/{name}/dead-letters', operationId: 'listDeadLetters', tag: 'projections',
      summary: "A projection's parked events, oldest first",
      parameters: [projection, ...queryParameters(DeadLettersQuery)],
      responses: { 200: { description: 'Parked events', content: json(ref('DeadLetters')) } },
      errors: [ErrorCode.BAD_REQUEST, ErrorCode.FORBIDDEN, ErrorCode.UNKNOWN_PROJECTION, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL],
    },
    {
      method: 'post', path: '/projections/{name}/dead-letters/{seq}/retry', operationId: 'retryDeadLetter', tag: 'projections',
      summary: 'Applies a parked event again, through the instance that applies the projection; on success it leaves the dead-letter table and live clients get fresh snapshots',
      parameters: [projection, pathParameter('seq', (DeadLetterParams.properties['seq']!['description'] as string), { type: 'integer', minimum: 1 })],
      responses: { 200: { description: 'Applied', content: json({ type: 'object', required: ['retried'], properties: { retried: { type: 'integer' } } }) } },
      errors: [ErrorCode.BAD_REQUEST, ErrorCode.FORBIDDEN, ErrorCode.UNKNOWN_PROJECTION, ErrorCode.DEAD_LETTER_NOT_FOUND, ErrorCode.RETRY_FAILED, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL],
    },
    {
      method: 'delete', path: '/projections/{name}/dead-letters/{seq}', operationId: 'discardDeadLetter', tag: 'projections',
      summary: 'Removes a parked event for good: it will not be applied',
      parameters: [projection, pathParameter('seq', (DeadLetterParams.properties['seq']!['description'] as string), { type: 'integer', minimum: 1 })],
      responses: { 200: { description: 'Discarded', content: json({ type: 'object', required: ['discarded'], properties: { discarded: { type: 'integer' } } }) } },
      errors: [ErrorCode.BAD_REQUEST, ErrorCode.FORBIDDEN, ErrorCode.UNKNOWN_PROJECTION, ErrorCode.DEAD_LETTER_NOT_FOUND, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL],
    },
    {
      method: 'get', path: '/catalog', operationId: 'catalog', tag: 'contract',
      summary: 'Every command and event with its JSON Schema, the envelope and the replies',
      responses: { 200: { description: 'The catalog', content: json(ref('Catalog')) } },
    },
    {
      method: 'get', path: '/asyncapi.json', operationId: 'asyncapi', tag: 'contract',
      summary: 'The NATS contract as an AsyncAPI 3.0.0 document',
      responses: { 200: { description: 'AsyncAPI document', content: json({ type: 'object' }) } },
    },
    {
      method: 'get', path: '/openapi.json', operationId: 'openapi', tag: 'contract',
      summary: 'This document',
      responses: { 200: { description: 'OpenAPI document', content: json({ type: 'object' }) } },
    },
  ];
}

/**
 * The HTTP API as an OpenAPI 3.1 document, written here as code. Each operation lists the error
 * codes it can answer with (`x-error-codes`, and one response per status); the tests check that
 * every route fastify serves is in it and that every error a route was seen answering is listed.
 */
export function buildOpenApi(api: ApiDeps): Obj {
  const paths: Record<string, Obj> = {};
  for (const r of routes(api)) {
    const responses: Obj = {};
    for (const [status, resp] of Object.entries(r.responses)) responses[status] = resp;
    const open = OPEN_ROUTES.has(r.path.replace(/\{(\w+)\}/g, ':$1'));
    // Every route but the open ones authenticates first; a request without a valid token gets 401.
    const errors = [...(open ? [] : [ErrorCode.UNAUTHORIZED]), ...(r.errors ?? r.natsErrors ?? [])];
    const errorSchema = r.natsErrors
      ? (codes: ErrorCode[]) => ({ allOf: [ref('CommandFailed'), { type: 'object', properties: { error: { type: 'object', properties: { code: { enum: codes } } } } }] })
      : (codes: ErrorCode[]) => ({ allOf: [ref('Error'), { type: 'object', properties: { code: { enum: codes } } }] });
    Object.assign(responses, errorResponses(errors, errorSchema));
    const op: Obj = {
      operationId: r.operationId,
      tags: [r.tag],
      summary: r.summary,
      ...(r.description ? { description: r.description } : {}),
      ...(r.parameters ? { parameters: r.parameters } : {}),
      ...(r.requestBody ? { requestBody: r.requestBody } : {}),
      responses,
      security: open ? [] : [{ bearer: [] }],
      'x-error-codes': errors,
    };
    (paths[r.path] ??= {})[r.method] = op;
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'Strand HTTP API',
      version: releaseVersion(),
      description:
        'Queries on the read models, aggregate state and history, commands, the contract catalog, and operations. Every route but health, metrics and the dashboard page needs a bearer token (401 UNAUTHORIZED without one in STRAND_AUTH=jwt mode); the access policy may refuse with 403 FORBIDDEN. Every error response is {statusCode, code, error, message} (plus checkpoint, details) except POST /commands, which answers with the NATS reply. Any path not listed answers 404 NOT_FOUND (401 without a valid token). See docs/http.md.',
    },
    servers: [{ url: '/' }],
    tags: [
      { name: 'aggregates', description: 'State, time travel and the audit trail' },
      { name: 'commands', description: 'The NATS command contract over HTTP' },
      { name: 'views', description: 'Read models maintained by projections' },
      { name: 'projections', description: 'Operating the read side' },
      { name: 'processes', description: 'Process managers: deadlines and parked inputs (instances: the aggregate routes)' },
      { name: 'contract', description: 'Machine-readable descriptions of the contract' },
      { name: 'operations', description: 'Health and metrics' },
    ],
    paths,
    components: {
      schemas: schemas(),
      securitySchemes: {
        bearer: {
          type: 'http',
          scheme: 'bearer',
          bearerFormat: 'JWT',
          description:
            'A JWT (HS256 or RS256) in Authorization: Bearer. In STRAND_AUTH=dev mode a request without one is the dev principal (role admin). See docs/security.md.',
        },
      },
    },
  };
}

/** `GET /openapi.json` */
export const openApiRoute: FastifyPluginAsync<{ api: ApiDeps }> = async (app, { api }) => {
  // Built on first use and kept.
  let doc: Obj | undefined;
  app.get('/openapi.json', async () => (doc ??= buildOpenApi(api)));
};
