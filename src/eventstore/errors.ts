import { ErrorCode, StrandError } from '../errors.js';

/** Another writer appended to the instance since `expectedSeq`: reload and decide again. */
export class ConcurrencyConflict extends StrandError {
  constructor(message: string) {
    super(ErrorCode.CONFLICT, message);
    this.name = 'ConcurrencyConflict';
  }
}

/**
 * The store could not be reached, or an append's outcome could not be settled. When
 * `outcomeUnknown` is set the caller must not trust its in-memory state of the instance.
 */
export class StoreUnavailable extends StrandError {
  constructor(
    message: string,
    readonly outcomeUnknown = false,
  ) {
    super(ErrorCode.UNAVAILABLE, message);
    this.name = 'StoreUnavailable';
  }
}

/** The store refused an append for a reason that retrying will not fix. */
export class AppendRefused extends StrandError {
  constructor(
    message: string,
    readonly serverCode?: number,
  ) {
    super(ErrorCode.INTERNAL, message);
    this.name = 'AppendRefused';
  }
}
