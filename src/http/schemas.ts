/**
 * JSON Schemas of the query strings and path parameters fastify checks before a handler runs
 * (a failure is a `BAD_REQUEST` listing every problem in `details`). `/openapi.json` publishes
 * the same objects, so the document and the checks cannot drift apart. Unknown query
 * parameters are refused, not ignored: a misspelt `?verison=3` must not silently answer with
 * the current state.
 */

const MAX_SAFE = Number.MAX_SAFE_INTEGER;

/** A JSON Schema of an object whose properties are query or path parameters. */
export interface ParamsSchema {
  readonly type: 'object';
  readonly properties: Readonly<Record<string, Readonly<Record<string, unknown>>>>;
  readonly required?: readonly string[];
  readonly additionalProperties: boolean | Readonly<Record<string, unknown>>;
}

/** Defaults and bounds of paging, in one place. */
export const Paging = {
  eventsDefault: 100,
  eventsMax: 1000,
  viewDefault: 50,
  viewMax: 500,
  deadLettersDefault: 100,
  deadLettersMax: 1000,
} as const;

const minSeq = {
  type: 'integer',
  minimum: 0,
  maximum: MAX_SAFE,
  description:
    "Wait (up to STRAND_MIN_SEQ_WAIT_MS) until the view's projection has applied this stream sequence (e.g. a command reply's `seq`) before reading; 503 NOT_CAUGHT_UP if it does not get there in time",
} as const;

/** `GET /aggregates/:aggregate/:id` */
export const StateQuery: ParamsSchema = {
  type: 'object',
  properties: {
    version: { type: 'integer', minimum: 1, maximum: MAX_SAFE, description: 'Time travel: the state right after this version (not with `at`)' },
    at: {
      type: 'string',
      format: 'date-time',
      description: 'Time travel: the state after the last event decided at or before this RFC 3339 time, with a time zone (not with `version`); encode `+` as %2B',
    },
  },
  additionalProperties: false,
};
export interface StateQuery {
  version?: number;
  at?: string;
}

/** `GET /aggregates/:aggregate/:id/events` */
export const EventsQuery: ParamsSchema = {
  type: 'object',
  properties: {
    fromVersion: { type: 'integer', minimum: 1, maximum: MAX_SAFE, description: 'Only events with this version or later' },
    after: { type: 'integer', minimum: 0, maximum: MAX_SAFE, description: "Only events after this stream sequence: a page's `next`" },
    limit: { type: 'integer', minimum: 1, maximum: Paging.eventsMax, default: Paging.eventsDefault, description: 'Most events in the page' },
  },
  additionalProperties: false,
};
export interface EventsQuery {
  fromVersion?: number;
  after?: number;
  limit: number;
}

/** `GET /views/:view`: besides these, any `<column>=<value>` of the view's filterable columns. */
export const ViewQuery: ParamsSchema = {
  type: 'object',
  properties: {
    limit: { type: 'integer', minimum: 1, maximum: Paging.viewMax, default: Paging.viewDefault, description: 'Most rows in the page' },
    cursor: { type: 'string', minLength: 1, maxLength: 1024, description: "A page's `next`: fetches the rows after it" },
    minSeq,
  },
  additionalProperties: { type: 'string', maxLength: 1024 },
};
export interface ViewQuery {
  limit: number;
  cursor?: string;
  minSeq?: number;
  [filter: string]: string | number | undefined;
}
/** Query parameters of `GET /views/:view` that are not column filters. */
export const VIEW_QUERY_RESERVED: ReadonlySet<string> = new Set(Object.keys(ViewQuery.properties));

/** `GET /views/:view/:key` */
export const RowQuery: ParamsSchema = { type: 'object', properties: { minSeq }, additionalProperties: false };
export interface RowQuery {
  minSeq?: number;
}

/** `GET /projections/:name/dead-letters` */
export const DeadLettersQuery: ParamsSchema = {
  type: 'object',
  properties: {
    limit: { type: 'integer', minimum: 1, maximum: Paging.deadLettersMax, default: Paging.deadLettersDefault, description: 'Most parked events listed (oldest first)' },
  },
  additionalProperties: false,
};
export interface DeadLettersQuery {
  limit: number;
}

/** `POST /projections/:name/dead-letters/:seq/retry` */
export const DeadLetterParams: ParamsSchema = {
  type: 'object',
  properties: {
    name: { type: 'string', description: "The projection's name" },
    seq: { type: 'integer', minimum: 1, maximum: MAX_SAFE, description: 'Stream sequence of the parked event' },
  },
  required: ['name', 'seq'],
  additionalProperties: false,
};
export interface DeadLetterParams {
  name: string;
  seq: number;
}

