/**
 * Every NATS subject and header name of Strand's public contract is built here, and nowhere
 * else: `cmd.<aggregate>.<id>.<Command>` in, `evt.<aggregate>.<id>.<EventType>` out.
 */

const AGGREGATE_NAME = /^[a-z][a-z0-9-]*$/;
const AGGREGATE_ID = /^[A-Za-z0-9_-]{1,128}$/;
const MESSAGE_NAME = /^[A-Za-z][A-Za-z0-9]*$/;

/** Command subjects start with this token. */
export const COMMAND_PREFIX = 'cmd';
/** Event subjects start with this token. */
export const EVENT_PREFIX = 'evt';
/** The subscription that takes every command. */
export const ALL_COMMANDS = `${COMMAND_PREFIX}.>`;
/** The stream's subject space. */
export const ALL_EVENTS = `${EVENT_PREFIX}.>`;

/** Header names of the command side of the contract. */
export const CommandHeader = {
  CommandId: 'Strand-Command-Id',
  CorrelationId: 'Strand-Correlation-Id',
  CausationId: 'Strand-Causation-Id',
  Actor: 'Strand-Actor',
  ExpectedVersion: 'Strand-Expected-Version',
} as const;

/** Header names on every event message. */
export const EventHeader = {
  EventType: 'Strand-Event-Type',
  Version: 'Strand-Version',
} as const;

/** JetStream's own headers that Strand sets. */
export const JetStreamHeader = {
  MsgId: 'Nats-Msg-Id',
  ExpectedLastSubjectSequence: 'Nats-Expected-Last-Subject-Sequence',
  ExpectedLastSubjectSequenceSubject: 'Nats-Expected-Last-Subject-Sequence-Subject',
  BatchId: 'Nats-Batch-Id',
  BatchSequence: 'Nats-Batch-Sequence',
  BatchCommit: 'Nats-Batch-Commit',
} as const;

export function isAggregateName(s: string): boolean {
  return AGGREGATE_NAME.test(s);
}

export function isAggregateId(s: string): boolean {
  return AGGREGATE_ID.test(s);
}

export function isMessageName(s: string): boolean {
  return MESSAGE_NAME.test(s);
}

/** `cmd.<aggregate>.<id>.<Command>` */
export function commandSubject(aggregate: string, id: string, command: string): string {
  return `${COMMAND_PREFIX}.${aggregate}.${id}.${command}`;
}

/** `evt.<aggregate>.<id>.<EventType>` */
export function eventSubject(aggregate: string, id: string, eventType: string): string {
  return `${EVENT_PREFIX}.${aggregate}.${id}.${eventType}`;
}

/** `evt.<aggregate>.<id>.*`: every event of one instance, the subject of its expected sequence. */
export function instanceEvents(aggregate: string, id: string): string {
  return `${EVENT_PREFIX}.${aggregate}.${id}.*`;
}

/** `evt.<aggregate>.>`: every event of one aggregate type. */
export function aggregateEvents(aggregate: string): string {
  return `${EVENT_PREFIX}.${aggregate}.>`;
}

/** A command subject taken apart; `problem` says why one is not a valid command subject. */
export type ParsedCommandSubject =
  | { readonly ok: true; readonly aggregate: string; readonly id: string; readonly command: string }
  | { readonly ok: false; readonly problem: string };

export function parseCommandSubject(subject: string): ParsedCommandSubject {
  const parts = subject.split('.');
  if (parts.length !== 4 || parts[0] !== COMMAND_PREFIX) {
    return { ok: false, problem: `subject must be ${COMMAND_PREFIX}.<aggregate>.<id>.<Command>, got ${subject.slice(0, 300)}` };
  }
  const [, aggregate, id, command] = parts as [string, string, string, string];
  if (!AGGREGATE_NAME.test(aggregate)) {
    return { ok: false, problem: `aggregate name must match [a-z][a-z0-9-]*, got ${JSON.stringify(aggregate.slice(0, 140))}` };
  }
  if (!AGGREGATE_ID.test(id)) {
    return { ok: false, problem: `id must be 1-128 characters of [A-Za-z0-9_-], got ${JSON.stringify(id.slice(0, 140))}` };
  }
  if (!MESSAGE_NAME.test(command)) {
    return { ok: false, problem: `command name must match [A-Za-z][A-Za-z0-9]*, got ${JSON.stringify(command.slice(0, 140))}` };
  }
  return { ok: true, aggregate, id, command };
}

/** An event subject taken apart, or undefined when it is not one. */
export function parseEventSubject(subject: string): { aggregate: string; id: string; type: string } | undefined {
  const parts = subject.split('.');
  if (parts.length !== 4 || parts[0] !== EVENT_PREFIX) return undefined;
  return { aggregate: parts[1]!, id: parts[2]!, type: parts[3]! };
}

/** Prefix of the live change feed (core NATS, not stored): projections publish, gateways listen. */
export const LIVE_PREFIX = 'strand.live';
/** Every projection's change feed. */
export const ALL_LIVE_CHANGES = `${LIVE_PREFIX}.changes.>`;
/** Gateways with subscribers say which projections they watch; runners re-read rows only for those. */
export const LIVE_INTEREST = `${LIVE_PREFIX}.interest`;

/** Headers of the live feed's messages. */
export const LiveHeader = {
  /** The instance that applied the batch: its own gateway has had the message in-process already. */
  Instance: 'Strand-Instance',
} as const;

/** `strand.live.changes.<projection>`: one message per applied batch (or checkpoint move) of a projection. */
export function liveChanges(projection: string): string {
  return `${LIVE_PREFIX}.changes.${projection}`;
}
