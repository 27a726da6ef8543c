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
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** An error with a stable code, safe to put in a reply. */
export class StrandError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly extra: { readonly reason?: string; readonly details?: unknown } = {},
  ) {
    super(message);
    this.name = 'StrandError';
  }
}
