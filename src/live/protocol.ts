import { z } from 'zod';

/**
 * The WebSocket protocol of `/live`: JSON text frames, one message each. Client messages are
 * validated with these schemas; server messages are built to match theirs, and docs/live.md
 * publishes both as JSON Schema (generated from here).
 */

const SubId = z.string().min(1).max(64).describe('The client-chosen ID of a subscription, unique on the connection');
const Checkpoint = z.number().int().nonnegative();

/**
 * Names that are never a filter column. `JSON.parse` keeps a `"__proto__"` key as an ordinary
 * property, but zod's record leaves it out of what it returns (copying it would replace the
 * result's prototype), so `{"__proto__": …}` would silently become "no filter": the whole view.
 * The other two would reach `Object.prototype` through a plain object lookup.
 */
const RESERVED_KEYS: ReadonlySet<string> = new Set(['__proto__', 'constructor', 'prototype']);

/** `{ column: value }`, checked on the object as the client sent it, before zod copies it. */
const Filter = z.preprocess(
  (value, ctx) => {
    if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
      for (const key of Object.keys(value)) {
        if (RESERVED_KEYS.has(key)) ctx.addIssue({ code: 'custom', message: `${key} is not a column name`, path: [key], input: value });
      }
    }
    return value;
  },
  z.record(z.string().min(1).max(64), z.string().max(256)),
);

/** Subscribe to a view: one row by key, or the rows matching a filter (declared filter columns only). */
export const SubscribeView = z
  .object({
    type: z.literal('subscribe'),
    id: SubId,
    view: z.string().min(1).max(64),
    key: z.union([z.string().min(1).max(256), z.number()]).optional(),
    filter: Filter.optional(),
    /** The last version (checkpoint) the client saw: resume from there instead of a snapshot. */
    after: Checkpoint.optional(),
    /** Wait until the projection has applied this stream sequence before the snapshot. */
    minSeq: Checkpoint.optional(),
    /** Most rows in the snapshot of a filtered subscription (default 500). */
    limit: z.number().int().min(1).max(1000).optional(),
  })
  .strict()
  .refine((s) => !(s.key !== undefined && s.filter !== undefined), { message: 'give either key or filter, not both' });

/** Subscribe to one aggregate instance's events. */
export const SubscribeAggregate = z
  .object({
    type: z.literal('subscribe'),
    id: SubId,
    aggregate: z.string().min(1).max(64),
    aggregateId: z.string().min(1).max(128),
    /** The last aggregate version the client saw: resume with the events after it. */
    afterVersion: z.number().int().nonnegative().optional(),
  })
  .strict();

export const Unsubscribe = z.object({ type: z.literal('unsubscribe'), id: SubId }).strict();
export const Ping = z.object({ type: z.literal('ping'), nonce: z.string().max(64).optional() }).strict();

/** Any message a client may send. */
export const ClientMessage = z.union([SubscribeView, SubscribeAggregate, Unsubscribe, Ping]);
export type ClientMessage = z.infer<typeof ClientMessage>;
export type SubscribeViewMessage = z.infer<typeof SubscribeView>;
export type SubscribeAggregateMessage = z.infer<typeof SubscribeAggregate>;

/** A client frame read: the message, or why it is not one (sent back as BAD_MESSAGE). */
export type ParsedClientMessage = { readonly ok: true; readonly message: ClientMessage } | { readonly ok: false; readonly error: string; readonly sub?: string };

/**
 * Reads one text frame. The schema is chosen by `type` (and, for `subscribe`, by `aggregate`
 * being present), so the problems reported are that schema's, not a union's "invalid input".
 * `sub` is the frame's `id` when it is a valid subscription ID, so the error names it.
 */
export function parseClientMessage(text: string): ParsedClientMessage {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    return { ok: false, error: `not JSON: ${(err as Error).message}` };
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) return { ok: false, error: 'a message is a JSON object' };
  const raw = json as Record<string, unknown>;
  const id = SubId.safeParse(raw['id']);
  const sub = id.success ? { sub: id.data } : {};
  const schema =
    raw['type'] === 'subscribe' ? (Object.hasOwn(raw, 'aggregate') ? SubscribeAggregate : SubscribeView) : raw['type'] === 'unsubscribe' ? Unsubscribe : raw['type'] === 'ping' ? Ping : undefined;
  if (!schema) return { ok: false, error: `type: must be one of subscribe, unsubscribe, ping`, ...sub };
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    return { ok: false, error: parsed.error.issues.map((i) => `${i.path.join('.') || '(message)'}: ${i.message}`).join('; ').slice(0, 500), ...sub };
  }
  return { ok: true, message: parsed.data as ClientMessage };
}

const Row = z.record(z.string(), z.unknown());
const Key = z.union([z.string(), z.number()]);

/** The current rows of a view subscription (`fresh`: sent because a resume was not possible). */
export const SnapshotMessage = z.object({
  type: z.literal('snapshot'),
  sub: SubId,
  view: z.string(),
  checkpoint: Checkpoint.describe('The projection checkpoint the rows reflect: the version to resume after'),
  rows: z.array(Row),
  /** False when the filter matched more rows than `limit`. */
  complete: z.boolean(),
  fresh: z.boolean().describe('True when the client asked to resume but what it missed is no longer available'),
});

/** A resume succeeded: the changes after `after` follow. */
export const ResumedMessage = z.object({
  type: z.literal('resumed'),
  sub: SubId,
  after: Checkpoint,
});

/** One row of a change: its new state, or `delete` (gone, or no longer matching the filter). */
export const RowChange = z.object({
  op: z.enum(['upsert', 'delete']),
  key: Key,
  row: Row.optional(),
});

/**
 * The rows of the subscription that one applied batch of the projection changed, atomically,
 * at `version`. Resume after the last version received: nothing is sent twice or skipped.
 * A client that reads too slowly may get several batches merged into one (latest row per key).
 */
export const ChangeMessage = z.object({
  type: z.literal('change'),
  sub: SubId,
  version: Checkpoint.describe('The projection checkpoint after the batch: the version to resume after'),
  changes: z.array(RowChange).min(1),
});

/** The current state of an aggregate subscription. */
export const StateMessage = z.object({
  type: z.literal('state'),
  sub: SubId,
  aggregate: z.string(),
  id: z.string(),
  version: z.number().int().nonnegative(),
  seq: Checkpoint,
  state: z.unknown(),
  fresh: z.boolean(),
});

/** One event of an aggregate subscription, in version order. */
export const EventMessage = z.object({
  type: z.literal('event'),
  sub: SubId,
  version: z.number().int().positive(),
  seq: Checkpoint,
  event: Row.describe('The event envelope as stored in the stream'),
});

export const UnsubscribedMessage = z.object({ type: z.literal('unsubscribed'), sub: SubId });
export const PongMessage = z.object({ type: z.literal('pong'), nonce: z.string().optional() });

/** Something the client asked for was refused; the connection stays open. */
export const ErrorMessage = z.object({
  type: z.literal('error'),
  sub: SubId.optional(),
  code: z.string(),
  message: z.string(),
});

/** Any message the server sends. */
export const ServerMessage = z.union([
  SnapshotMessage,
  ResumedMessage,
  ChangeMessage,
  StateMessage,
  EventMessage,
  UnsubscribedMessage,
  PongMessage,
  ErrorMessage,
]);
export type ServerMessage = z.infer<typeof ServerMessage>;

/** Error codes of `error` messages (the connection stays open). */
export const LiveErrorCode = {
  /** Not JSON, or not a message of the protocol (details in `message`). */
  BAD_MESSAGE: 'BAD_MESSAGE',
  /** The message is larger than the limit for client messages. */
  MESSAGE_TOO_LARGE: 'MESSAGE_TOO_LARGE',
  /** More messages per second than allowed; this one was dropped. */
  RATE_LIMITED: 'RATE_LIMITED',
  /** The connection already has the most subscriptions allowed. */
  TOO_MANY_SUBSCRIPTIONS: 'TOO_MANY_SUBSCRIPTIONS',
  /** A subscription with this ID exists on the connection. */
  DUPLICATE_SUBSCRIPTION: 'DUPLICATE_SUBSCRIPTION',
  /** No subscription with this ID. */
  UNKNOWN_SUBSCRIPTION: 'UNKNOWN_SUBSCRIPTION',
  UNKNOWN_VIEW: 'UNKNOWN_VIEW',
  UNKNOWN_COLUMN: 'UNKNOWN_COLUMN',
  UNKNOWN_AGGREGATE: 'UNKNOWN_AGGREGATE',
  /** The aggregate ID is not 1-128 characters of [A-Za-z0-9_-]. */
  BAD_REQUEST: 'BAD_REQUEST',
  /** The authorization rules do not allow this subscription. */
  FORBIDDEN: 'FORBIDDEN',
  /** `minSeq` was not reached in time. */
  NOT_CAUGHT_UP: 'NOT_CAUGHT_UP',
  /** The read model or the stream cannot be read right now; try again. */
  UNAVAILABLE: 'UNAVAILABLE',
} as const;
export type LiveErrorCode = (typeof LiveErrorCode)[keyof typeof LiveErrorCode];

/** WebSocket close codes Strand uses (4000-4999 are the application's). */
export const CloseCode = {
  /** The server is shutting down; reconnect (to another instance) and resume. */
  GOING_AWAY: 1001,
  /** No bearer token, or one that does not verify. */
  UNAUTHORIZED: 4401,
  /** The client read too slowly and fell too far behind: reconnect and resubscribe (resume). */
  TOO_SLOW: 4408,
  /** No pong to the server's pings within the heartbeat interval. */
  HEARTBEAT_TIMEOUT: 4000,
} as const;

/**
 * Close codes a client can see that Strand does not choose: the WebSocket library sends them
 * (a frame that is not UTF-8, one over the hard size cap), or nobody does (the connection broke).
 */
export const LibraryCloseCode = {
  /** A text frame that is not valid UTF-8 (the `ws` library closes). */
  INVALID_PAYLOAD: 1007,
  /** A frame over the library's hard cap (`ws`'s maxPayload). */
  MESSAGE_TOO_BIG: 1009,
  /** No close frame at all: the network, a crash. */
  ABNORMAL: 1006,
} as const;
