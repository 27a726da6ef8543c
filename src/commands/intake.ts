import { randomUUID } from 'node:crypto';
import type { Aggregate } from '../aggregate/define.js';
import type { Issuer } from '../aggregate/types.js';
import type { CommandAccessRequest } from '../auth/access.js';
import type { Principal } from '../auth/tokens.js';
import { ErrorCode } from '../errors.js';
import { isAggregateId, parseCommandSubject } from '../../subjects/index.js';
import { failed, type CommandFailed, type CommandRequest } from './types.js';

/** The optional headers of a command, as received (any transport). */
export interface CommandHeaders {
  readonly commandId?: string;
  readonly correlationId?: string;
  readonly causationId?: string;
  readonly actor?: string;
  readonly expectedVersion?: string;
}

/** Limits intake applies before anything is decided. */
export interface IntakeOptions {
  /** Largest command body accepted, in bytes. */
  readonly maxBodyBytes: number;
  /**
   * The access policy's in-actor check for an authenticated command (`canDecide`, bound to its
   * principal and command), or undefined when the policy has none. Absent: no such check.
   */
  readonly decideCheck?: (principal: Principal, command: CommandAccessRequest) => ((state: unknown) => true | string) | undefined;
}

/** What a transport that authenticated the sender vouches for: the HTTP API, or an instance forwarding its command. */
export interface Authenticated {
  /** Who sent it: the command gets the policy's in-actor check for this principal. */
  readonly principal: Principal;
  /** The issuer the command is recorded under, whatever `Strand-Actor` says (absent: the header's). */
  readonly issuer?: Issuer;
}

const TRACE_ID = /^[\x21-\x7e]{1,128}$/;
const ISSUER = /^([A-Za-z0-9_.-]{1,64}):([\x21-\x7e]{1,128})$/;
const decoder = new TextDecoder('utf-8', { fatal: true });

/** Whether a text is a valid `Strand-Command-Id` (and correlation or causation ID): 1-128 printable ASCII characters. */
export function isCommandId(text: string): boolean {
  return TRACE_ID.test(text);
}

/** An issuer from its `Strand-Actor` form `<type>:<id>`, or undefined when the text is not one. */
export function parseIssuer(text: string): Issuer | undefined {
  const m = ISSUER.exec(text);
  return m ? { type: m[1]!, id: m[2]! } : undefined;
}

/** A key no command body may have: it would change an object's prototype if the data were ever merged into another object. */
class PoisonedKey extends Error {}

/** Only a text that spells one of the keys, or escapes a character (`\u005f`), needs the slower check. */
const MAYBE_POISONED = /__proto__|constructor|\\u/;

/**
 * JSON.parse, refusing a `__proto__` key and a `constructor` object with a `prototype` key at
 * any depth (fastify's own body parser refuses the same). zod's object schemas would drop them
 * silently, and an aggregate that copies data with Object.assign would get a polluted prototype.
 */
function parseBody(text: string): unknown {
  if (!MAYBE_POISONED.test(text)) return JSON.parse(text);
  return JSON.parse(text, (key, value: unknown) => {
    if (key === '__proto__') throw new PoisonedKey('"__proto__"');
    if (key === 'constructor' && typeof value === 'object' && value !== null && Object.hasOwn(value, 'prototype')) throw new PoisonedKey('"constructor" with a "prototype"');
    return value;
  });
}

/**
 * Turns what arrived on a transport into a {@link CommandRequest}, or the reply that says
 * precisely what is wrong with it. Order of checks: subject, aggregate, command, size, body,
 * headers, schema.
 */
export class CommandIntake {
  private readonly aggregates: ReadonlyMap<string, Aggregate>;

  constructor(
    aggregates: readonly Aggregate[],
    private readonly o: IntakeOptions,
  ) {
    const m = new Map<string, Aggregate>();
    for (const a of aggregates) {
      if (m.has(a.name)) throw new Error(`aggregate ${a.name} is defined twice`);
      m.set(a.name, a);
    }
    this.aggregates = m;
  }

  /** The defined aggregates, by name. */
  get registry(): ReadonlyMap<string, Aggregate> {
    return this.aggregates;
  }

  /** Parses a command that arrived on `cmd.<aggregate>.<id>.<Command>`. */
  fromSubject(subject: string, body: Uint8Array, headers: CommandHeaders): CommandRequest | CommandFailed {
    const s = parseCommandSubject(subject);
    if (!s.ok) return failed(ErrorCode.BAD_REQUEST, s.problem);
    return this.parseChecked(s.aggregate, s.id, s.command, body, headers);
  }

  /**
   * Parses a command addressed by its parts (the HTTP route gives them separately). With
   * `auth`, the command carries its principal and the policy's in-actor check; with an issuer
   * there, that is the command's: a `Strand-Actor` header naming anyone else is refused with
   * FORBIDDEN.
   */
  parse(aggregateName: string, id: string, command: string, body: Uint8Array, h: CommandHeaders, auth?: Authenticated): CommandRequest | CommandFailed {
    if (!this.aggregates.has(aggregateName)) return failed(ErrorCode.UNKNOWN_AGGREGATE, `no aggregate named ${JSON.stringify(aggregateName.slice(0, 140))}`);
    if (!isAggregateId(id)) {
      return failed(ErrorCode.BAD_REQUEST, `id must be 1-128 characters of [A-Za-z0-9_-], got ${JSON.stringify(id.slice(0, 140))}`);
    }
    return this.parseChecked(aggregateName, id, command, body, h, auth);
  }

  /** The rest of intake, once the ID is known to be valid (the subject parser checked it already). */
  private parseChecked(aggregateName: string, id: string, command: string, body: Uint8Array, h: CommandHeaders, auth?: Authenticated): CommandRequest | CommandFailed {
    const aggregate = this.aggregates.get(aggregateName);
    if (!aggregate) return failed(ErrorCode.UNKNOWN_AGGREGATE, `no aggregate named ${JSON.stringify(aggregateName.slice(0, 140))}`);
    const schema = aggregate.commands.get(command);
    if (!schema) return failed(ErrorCode.UNKNOWN_COMMAND, `aggregate ${aggregate.name} has no command ${JSON.stringify(command.slice(0, 140))}`);
    if (body.length > this.o.maxBodyBytes) {
      return failed(ErrorCode.BAD_REQUEST, `body is ${body.length} bytes, the limit is ${this.o.maxBodyBytes}`);
    }

    let json: unknown = {};
    if (body.length > 0) {
      try {
        json = parseBody(decoder.decode(body));
      } catch (err) {
        if (err instanceof PoisonedKey) return failed(ErrorCode.BAD_REQUEST, `body has a ${err.message} key, which no command may have`);
        return failed(ErrorCode.BAD_REQUEST, `body is not valid JSON: ${(err as Error).message}`);
      }
    }

    const commandId = h.commandId ?? randomUUID();
    if (!TRACE_ID.test(commandId)) return badHeader('Strand-Command-Id', 'must be 1-128 printable ASCII characters');
    if (h.correlationId !== undefined && !TRACE_ID.test(h.correlationId)) return badHeader('Strand-Correlation-Id', 'must be 1-128 printable ASCII characters');
    if (h.causationId !== undefined && !TRACE_ID.test(h.causationId)) return badHeader('Strand-Causation-Id', 'must be 1-128 printable ASCII characters');
    let issuer: Issuer | undefined;
    if (h.actor !== undefined) {
      issuer = parseIssuer(h.actor);
      if (!issuer) return badHeader('Strand-Actor', 'must be <type>:<id>');
    }
    if (auth?.issuer) {
      // The token says who sends it; a header that says otherwise is an attempt to act as someone else.
      const own = `${auth.issuer.type}:${auth.issuer.id}`;
      if (issuer && (issuer.type !== auth.issuer.type || issuer.id !== auth.issuer.id)) {
        return failed(ErrorCode.FORBIDDEN, `header Strand-Actor names ${JSON.stringify(h.actor!.slice(0, 200))}, but the token's issuer is ${JSON.stringify(own)}; leave the header out`);
      }
      issuer = auth.issuer;
    }
    let expectedVersion: number | undefined;
    if (h.expectedVersion !== undefined) {
      if (!/^(0|[1-9][0-9]{0,14})$/.test(h.expectedVersion)) return badHeader('Strand-Expected-Version', 'must be a non-negative integer');
      expectedVersion = Number(h.expectedVersion);
    }

    const parsed = schema.safeParse(json);
    if (!parsed.success) {
      return failed(ErrorCode.VALIDATION_FAILED, `${aggregate.name}.${command}: ${parsed.error.issues.length} validation issue(s)`, {
        details: parsed.error.issues.map((i) => ({ path: i.path.map(String), code: i.code, message: i.message })),
      });
    }

    const authorize = auth && this.o.decideCheck?.(auth.principal, { aggregate: aggregate.name, id, command, data: parsed.data, ...(issuer ? { issuer } : {}) });
    return {
      aggregate,
      id,
      command,
      data: parsed.data,
      commandId,
      ...(h.correlationId !== undefined ? { correlationId: h.correlationId } : { correlationId: commandId }),
      ...(h.causationId !== undefined ? { causationId: h.causationId } : {}),
      ...(issuer ? { issuer } : {}),
      ...(expectedVersion !== undefined ? { expectedVersion } : {}),
      ...(auth ? { principal: auth.principal } : {}),
      ...(authorize ? { authorize } : {}),
    };
  }
}

function badHeader(name: string, why: string): CommandFailed {
  return failed(ErrorCode.BAD_REQUEST, `header ${name} ${why}`);
}
