/**
 * The project's own errors. Every code is part of the public contract, listed in
 * docs/errors.md (a test fails when one is missing there). No NATS or pg error type crosses a
 * module boundary: adapters translate theirs into these.
 */
export const ErrorCode = {
  /** Unparseable body, bad subject or ID, body too large, bad header. */
  BAD_REQUEST: 'BAD_REQUEST',
  /** No aggregate of that name is defined. */
  UNKNOWN_AGGREGATE: 'UNKNOWN_AGGREGATE',
  /** The aggregate has no command of that name. */
  UNKNOWN_COMMAND: 'UNKNOWN_COMMAND',
  /** The body does not match the command's schema; zod issues in `details`. */
  VALIDATION_FAILED: 'VALIDATION_FAILED',
  /** A business rule said no; `reason` is the aggregate's own code. */
  REJECTED: 'REJECTED',
  /** `Strand-Expected-Version` did not match the aggregate's version. */
  WRONG_VERSION: 'WRONG_VERSION',
  /** Concurrent writers kept winning, still failing after bounded retries. */
  CONFLICT: 'CONFLICT',
  /** Store unreachable, overloaded, or this instance is shutting down. */
  UNAVAILABLE: 'UNAVAILABLE',
  /** A bug or an unexpected failure; logged with the command ID. */
  INTERNAL: 'INTERNAL',
  /** HTTP: no bearer token where one is required, or one that does not verify. */
  UNAUTHORIZED: 'UNAUTHORIZED',
  /** The access policy refused: the principal may not send this command, read this, or operate this. */
  FORBIDDEN: 'FORBIDDEN',
  /** HTTP: no route for this method and path. */
  NOT_FOUND: 'NOT_FOUND',
  /** HTTP: the aggregate instance has no events (or none at the version or time asked for). */
  AGGREGATE_NOT_FOUND: 'AGGREGATE_NOT_FOUND',
  /** HTTP: no view of that name. */
  UNKNOWN_VIEW: 'UNKNOWN_VIEW',
  /** HTTP: a filter names a column the view does not declare as filterable. */
  UNKNOWN_COLUMN: 'UNKNOWN_COLUMN',
  /** HTTP: the cursor was not issued by this server. */
  BAD_CURSOR: 'BAD_CURSOR',
  /** HTTP: no row with that key in the view. */
  ROW_NOT_FOUND: 'ROW_NOT_FOUND',
  /** HTTP: `minSeq` was not reached by the projection within the wait; the body carries the checkpoint. */
  NOT_CAUGHT_UP: 'NOT_CAUGHT_UP',
  /** HTTP: no projection of that name. */
  UNKNOWN_PROJECTION: 'UNKNOWN_PROJECTION',
  /** HTTP: no parked event with that sequence for the projection. */
  DEAD_LETTER_NOT_FOUND: 'DEAD_LETTER_NOT_FOUND',
  /** HTTP: a rebuild of the projection is already in progress. */
  REBUILD_IN_PROGRESS: 'REBUILD_IN_PROGRESS',
  /** HTTP: retrying a parked event failed again; the message is its error. */
  RETRY_FAILED: 'RETRY_FAILED',
  /** No outcome recorded for that command ID: not processed yet, never published, or past its TTL. */
  OUTCOME_NOT_FOUND: 'OUTCOME_NOT_FOUND',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** The HTTP status of every code: one registry, used by every route. */
export const HttpStatus: Readonly<Record<ErrorCode, number>> = {
  BAD_REQUEST: 400,
  VALIDATION_FAILED: 400,
  UNKNOWN_COLUMN: 400,
  BAD_CURSOR: 400,
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  UNKNOWN_AGGREGATE: 404,
  UNKNOWN_COMMAND: 404,
  AGGREGATE_NOT_FOUND: 404,
  UNKNOWN_VIEW: 404,
  ROW_NOT_FOUND: 404,
  UNKNOWN_PROJECTION: 404,
  DEAD_LETTER_NOT_FOUND: 404,
  OUTCOME_NOT_FOUND: 404,
  WRONG_VERSION: 409,
  CONFLICT: 409,
  REBUILD_IN_PROGRESS: 409,
  REJECTED: 422,
  RETRY_FAILED: 422,
  INTERNAL: 500,
  UNAVAILABLE: 503,
  NOT_CAUGHT_UP: 503,
};

/** An error with a stable code, safe to put in a reply. */
export class StrandError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly extra: { readonly reason?: string; readonly details?: unknown; readonly checkpoint?: number } = {},
  ) {
    super(message);
    this.name = 'StrandError';
  }
}
