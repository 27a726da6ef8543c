import type { Aggregate } from '../aggregate/define.js';
import type { Issuer } from '../aggregate/types.js';
import type { Principal } from '../auth/tokens.js';
import type { ErrorCode } from '../errors.js';

/** A command that passed intake: subject, headers and body checked, data validated. */
export interface CommandRequest {
  readonly aggregate: Aggregate;
  readonly id: string;
  readonly command: string;
  /** The command's data as its zod schema parsed it. */
  readonly data: unknown;
  /** `Strand-Command-Id`, or one Strand generated. */
  readonly commandId: string;
  readonly correlationId?: string;
  readonly causationId?: string;
  readonly issuer?: Issuer;
  /** `Strand-Expected-Version`, when given. */
  readonly expectedVersion?: number;
  /**
   * An authorization check on the state the command is about to be decided on: the actor calls
   * it right before `decide` (after the duplicate check), and again on the fresh state after a
   * conflict. true lets the command through; a string refuses it with `FORBIDDEN`. Must not throw.
   */
  readonly authorize?: (state: unknown) => true | string;
  /**
   * Who sent it, when a transport authenticated them (HTTP). Travels with the command when it is
   * forwarded to the owner of its partition, where `authorize` is rebuilt from it.
   */
  readonly principal?: Principal;
}

/** One event of a successful reply. */
export interface ReplyEvent {
  readonly type: string;
  readonly version: number;
  readonly seq: number;
}

/** The reply to a command that was carried out (or had been: `duplicate`). */
export interface CommandAccepted {
  readonly ok: true;
  readonly aggregate: string;
  readonly id: string;
  /** The aggregate's version after the command. */
  readonly version: number;
  /** Stream sequence of the aggregate's last event after the command (0 when it has none). */
  readonly seq: number;
  readonly events: readonly ReplyEvent[];
  readonly commandId: string;
  readonly duplicate: boolean;
}

/** The body of a failed reply. */
export interface CommandErrorBody {
  readonly code: ErrorCode;
  readonly message: string;
  readonly reason?: string;
  readonly details?: unknown;
}

/** The reply to a command that was not carried out. */
export interface CommandFailed {
  readonly ok: false;
  readonly error: CommandErrorBody;
}

/** Every command gets exactly one of these (unless it was fire-and-forget). */
export type CommandReply = CommandAccepted | CommandFailed;

export function failed(code: ErrorCode, message: string, extra: { reason?: string; details?: unknown } = {}): CommandFailed {
  const error: CommandErrorBody = { code, message };
  if (extra.reason !== undefined) (error as { reason?: string }).reason = extra.reason;
  if (extra.details !== undefined) (error as { details?: unknown }).details = extra.details;
  return { ok: false, error };
}
