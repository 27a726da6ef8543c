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

/**
 * Durable command intake: `cmdq.<aggregate>.<id>.<Command>` is captured by the stream
 * `<STREAM>_COMMANDS`, which stores it as `cmdq.<partition>.<aggregate>.<id>.<Command>` (a subject
 * transform computes the partition with the same hash as Strand). Its own prefix, never `cmd.`:
 * a stream capturing request subjects would answer every request with its PubAck.
 */
export const DURABLE_COMMAND_PREFIX = 'cmdq';

/** `cmdq.<aggregate>.<id>.<Command>`: where a client publishes a durable command. */
export function durableCommandSubject(aggregate: string, id: string, command: string): string {
  return `${DURABLE_COMMAND_PREFIX}.${aggregate}.${id}.${command}`;
}

/** `cmdq.<partition>.>`: one partition's stored durable commands (its owner's consumer filter). */
export function durablePartitionCommands(partition: number): string {
  return `${DURABLE_COMMAND_PREFIX}.${partition}.>`;
}

/** The stream's subject transform: `cmdq.<a>.<id>.<C>` stored as `cmdq.<partition>.<a>.<id>.<C>`. */
export function durableCommandTransform(partitions: number): { readonly src: string; readonly dest: string } {
  return { src: `${DURABLE_COMMAND_PREFIX}.*.*.*`, dest: `${DURABLE_COMMAND_PREFIX}.{{partition(${partitions},1,2)}}.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}` };
}

/** A stored durable command's subject taken apart, or undefined when it is not `cmdq.<p>.<a>.<id>.<C>`. */
export function parseDurableCommandSubject(subject: string): { partition: number; aggregate: string; id: string; command: string } | undefined {
  const t = subject.split('.');
  if (t.length !== 5 || t[0] !== DURABLE_COMMAND_PREFIX) return undefined;
  const partition = Number(t[1]);
  if (!Number.isInteger(partition) || partition < 0) return undefined;
  return { partition, aggregate: t[2]!, id: t[3]!, command: t[4]! };
}

/** Request subject answering a durable command's outcome: the body is the command ID. */
export const OUTCOME_REQUEST = 'strand.outcome.get';

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

/**
 * Commands routed inside a cluster (core NATS, not stored). `strand.cmd.<partition>.<aggregate>.<id>.<Command>`
 * is what a partition's owner subscribes to: a server-side subject mapping of `cmd.*.*.*` onto it
 * delivers a client's command straight to the owner, with no hop (docs/operations.md).
 */
export const PARTITION_COMMAND_PREFIX = 'strand.cmd';
/** Forwarded commands and handoff notices for one instance: `strand.fwd.<instance>.…`. */
export const FORWARD_PREFIX = 'strand.fwd';

/** `strand.cmd.<partition>.>`: every command of one partition. */
export function partitionCommands(partition: number): string {
  return `${PARTITION_COMMAND_PREFIX}.${partition}.>`;
}

/** `strand.cmd.<partition>.<aggregate>.<id>.<Command>` */
export function partitionCommandSubject(partition: number, aggregate: string, id: string, command: string): string {
  return `${PARTITION_COMMAND_PREFIX}.${partition}.${aggregate}.${id}.${command}`;
}

/** `strand.fwd.<instance>.>`: what one instance receives from the others. */
export function forwardInbox(instance: string): string {
  return `${FORWARD_PREFIX}.${instance}.>`;
}

/**
 * `strand.fwd.<instance>.<tag>.<aggregate>.<id>.<Command>`: a command forwarded to `instance`.
 * `tag` is the hop count (`1`, `2`, …), or `h` for a command the partition's previous owner held
 * during a handoff (applied before any other of that partition).
 */
export function forwardSubject(instance: string, tag: string, aggregate: string, id: string, command: string): string {
  return `${FORWARD_PREFIX}.${instance}.${tag}.${aggregate}.${id}.${command}`;
}

/** `strand.fwd.<instance>.done.<partition>`: the previous owner has forwarded everything it held of the partition. */
export function handoffDoneSubject(instance: string, partition: number): string {
  return `${FORWARD_PREFIX}.${instance}.done.${partition}`;
}

/** A command subject of any of the three doors, taken apart; undefined when it is none of them. */
export type RoutedSubject =
  | { readonly kind: 'client'; readonly aggregate: string; readonly id: string; readonly command: string }
  | { readonly kind: 'partition'; readonly partition: number; readonly aggregate: string; readonly id: string; readonly command: string }
  | { readonly kind: 'forward'; readonly tag: string; readonly aggregate: string; readonly id: string; readonly command: string }
  | { readonly kind: 'done'; readonly partition: number };

/** Parses `strand.cmd.<p>.<a>.<id>.<C>`, `strand.fwd.<instance>.<tag>.<a>.<id>.<C>` and `strand.fwd.<instance>.done.<p>`. */
export function parseRoutedSubject(subject: string): RoutedSubject | undefined {
  const t = subject.split('.');
  if (t[0] !== 'strand') return undefined;
  if (t[1] === 'cmd' && t.length === 6) {
    const partition = Number(t[2]);
    if (!Number.isInteger(partition) || partition < 0) return undefined;
    return { kind: 'partition', partition, aggregate: t[3]!, id: t[4]!, command: t[5]! };
  }
  if (t[1] === 'fwd' && t.length === 7) return { kind: 'forward', tag: t[3]!, aggregate: t[4]!, id: t[5]!, command: t[6]! };
  if (t[1] === 'fwd' && t.length === 5 && t[3] === 'done') {
    const partition = Number(t[4]);
    if (!Number.isInteger(partition) || partition < 0) return undefined;
    return { kind: 'done', partition };
  }
  return undefined;
}

/**
 * The server-side subject mapping (nats-server `mappings`) that delivers `cmd.<aggregate>.<id>.<Command>`
 * straight to the owner of its partition: the partition computed by the server with the same
 * hash as Strand's.
 */
export function partitionMapping(partitions: number): { readonly from: string; readonly to: string } {
  return { from: `${COMMAND_PREFIX}.*.*.*`, to: `${PARTITION_COMMAND_PREFIX}.{{partition(${partitions},1,2)}}.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}` };
}

/**
 * Deadlines (NATS message schedules, in the stream `<STREAM>_DEADLINES`). A deadline is a schedule
 * message on `dl.at.<owner>.<id>.<name>.<generation>` whose target is `dl.fire.<owner>.<id>.<name>`:
 * at its time nats-server stores a copy of it on the target subject and purges the schedule, in one
 * step. `owner` is the process's (or aggregate's) name, `id` the instance. Each `set` gets a
 * generation of its own (one schedule per subject is the server's rule): the fire of a schedule
 * purges its whole subject, so a new schedule on the same subject, stored while the old one was
 * firing, would be purged with it and never fire. The earlier generations of a name are purged
 * once the new one is stored.
 */
export const DEADLINE_PREFIX = 'dl';
const DEADLINE_NAME = /^[A-Za-z][A-Za-z0-9_-]{0,63}$/;
const DEADLINE_GENERATION = /^[A-Za-z0-9]{1,32}$/;

/** Header names of a deadline's schedule message, copied by nats-server onto the message it fires. */
export const DeadlineHeader = {
  /** When it is due (RFC 3339, milliseconds, UTC): `Nats-Schedule` itself is removed from the fired copy. */
  Due: 'Strand-Deadline-Due',
  /** The setter's token, handed back when it fires (the process compares it with the one it expects). */
  Token: 'Strand-Deadline-Token',
} as const;

/** nats-server's message schedule headers (ADR-51) that Strand uses. */
export const ScheduleHeader = {
  /** `@at <RFC 3339>` on the schedule message. */
  Schedule: 'Nats-Schedule',
  /** The subject the schedule fires on (in the same stream). */
  Target: 'Nats-Schedule-Target',
  /** On a fired message: the subject of the schedule that fired it. */
  Scheduler: 'Nats-Scheduler',
} as const;

/** A deadline name: a letter, then up to 63 letters, digits, `_` or `-` (one subject token). */
export function isDeadlineName(s: string): boolean {
  return DEADLINE_NAME.test(s);
}

/** `dl.at.*.*.*.*` and `dl.fire.*.*.*`: the deadline stream's subjects. */
export const DEADLINE_SUBJECTS: readonly string[] = [`${DEADLINE_PREFIX}.at.*.*.*.*`, `${DEADLINE_PREFIX}.fire.*.*.*`];

/** `dl.at.<owner>.<id>.<name>.<generation>`: one `set` of a deadline. */
export function deadlineScheduleSubject(owner: string, id: string, name: string, generation: string): string {
  if (!DEADLINE_GENERATION.test(generation)) throw new Error(`deadline generation must be 1-32 letters or digits, got ${JSON.stringify(generation.slice(0, 40))}`);
  return `${DEADLINE_PREFIX}.at.${owner}.${id}.${name}.${generation}`;
}

/** `dl.at.<owner>.<id>.<name>.*`: every generation of one deadline (what `cancel` purges). */
export function deadlineSchedules(owner: string, id: string, name: string): string {
  return `${DEADLINE_PREFIX}.at.${owner}.${id}.${name}.*`;
}

/** `dl.at.<owner>.<id>.*.*`: every deadline of one instance not yet fired. */
export function instanceDeadlineSchedules(owner: string, id: string): string {
  return `${DEADLINE_PREFIX}.at.${owner}.${id}.*.*`;
}

/** `dl.fire.<owner>.<id>.<name>`: where a deadline's schedule fires. */
export function deadlineFireSubject(owner: string, id: string, name: string): string {
  return `${DEADLINE_PREFIX}.fire.${owner}.${id}.${name}`;
}

/** `dl.fire.<owner>.>`: every fired deadline of one owner (a deadline consumer's filter). */
export function ownerFiredDeadlines(owner: string): string {
  return `${DEADLINE_PREFIX}.fire.${owner}.>`;
}

/** A deadline subject (schedule or fired) taken apart, or undefined when it is neither. */
export function parseDeadlineSubject(subject: string): { kind: 'at' | 'fire'; owner: string; id: string; name: string; generation?: string } | undefined {
  const t = subject.split('.');
  if (t[0] !== DEADLINE_PREFIX) return undefined;
  if (t[1] === 'at' && t.length === 6) return { kind: 'at', owner: t[2]!, id: t[3]!, name: t[4]!, generation: t[5]! };
  if (t[1] === 'fire' && t.length === 5) return { kind: 'fire', owner: t[2]!, id: t[3]!, name: t[4]! };
  return undefined;
}
