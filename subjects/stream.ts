import type { ConsumerConfig, StreamConfig } from '@nats-io/jetstream';
import { ALL_EVENTS, DEADLINE_SUBJECTS, DURABLE_COMMAND_PREFIX, durableCommandTransform, ownerFiredDeadlines } from './subjects.js';

/** The event stream's settings that a deployment chooses. */
export interface EventStreamOptions {
  /** Stream name (default `EVENTS`). */
  readonly name: string;
  /** 1 on a single server, 3 on a cluster. */
  readonly replicas: number;
  /** How long JetStream remembers `Nats-Msg-Id`s, in milliseconds (default 2 minutes). */
  readonly duplicateWindowMs: number;
}

const NANOS_PER_MS = 1_000_000;

/**
 * The stream's configuration. History is never deleted: no limits, no per-subject cap,
 * deletes and purges denied, so the stream stays the audit trail.
 */
export function streamConfig(o: EventStreamOptions): Partial<StreamConfig> & { name: string } {
  return {
    name: o.name,
    description: 'Strand events: evt.<aggregate>.<id>.<EventType>',
    subjects: [ALL_EVENTS],
    retention: 'limits' as StreamConfig['retention'],
    storage: 'file' as StreamConfig['storage'],
    num_replicas: o.replicas,
    max_msgs: -1,
    max_bytes: -1,
    max_age: 0,
    max_msgs_per_subject: -1,
    discard: 'old' as StreamConfig['discard'],
    duplicate_window: o.duplicateWindowMs * NANOS_PER_MS,
    allow_direct: true,
    allow_atomic: true,
    deny_delete: true,
    deny_purge: true,
  };
}

/**
 * What in an existing stream's configuration differs from what Strand needs, one line each;
 * empty when it is compatible. Only settings that would break the contract count.
 */
export function compareStreamConfig(existing: Partial<StreamConfig>, wanted: Partial<StreamConfig>): string[] {
  const diffs: string[] = [];
  const subjects = existing.subjects ?? [];
  if (!subjects.includes(ALL_EVENTS)) diffs.push(`subjects are ${JSON.stringify(subjects)}, need ${JSON.stringify([ALL_EVENTS])}`);
  if (existing.storage !== wanted.storage) diffs.push(`storage is ${existing.storage}, need ${wanted.storage}`);
  if (existing.retention !== wanted.retention) diffs.push(`retention is ${existing.retention}, need ${wanted.retention}`);
  if (!existing.allow_atomic) diffs.push('allow_atomic is off, need on (atomic multi-event commits)');
  if (!existing.allow_direct) diffs.push('allow_direct is off, need on (loading aggregates)');
  const perSubject = existing.max_msgs_per_subject ?? -1;
  if (perSubject > 0) diffs.push(`max_msgs_per_subject is ${perSubject}, need unlimited (history is never deleted)`);
  if ((existing.max_age ?? 0) > 0) diffs.push(`max_age is ${existing.max_age}ns, need 0 (history is never deleted)`);
  if ((existing.max_msgs ?? -1) > 0) diffs.push(`max_msgs is ${existing.max_msgs}, need unlimited`);
  if ((existing.max_bytes ?? -1) > 0) diffs.push(`max_bytes is ${existing.max_bytes}, need unlimited`);
  if (!existing.deny_delete) diffs.push('deny_delete is off, need on (history is never deleted)');
  if (!existing.deny_purge) diffs.push('deny_purge is off, need on (history is never deleted)');
  if (existing.num_replicas !== wanted.num_replicas) diffs.push(`num_replicas is ${existing.num_replicas}, configured ${wanted.num_replicas}`);
  if ((existing.duplicate_window ?? 0) < (wanted.duplicate_window ?? 0)) {
    diffs.push(`duplicate_window is ${existing.duplicate_window}ns, need at least ${wanted.duplicate_window}ns`);
  }
  return diffs;
}

/** The KV bucket of a process manager's parked (poison) inputs: `<STREAM>_processes_parked`. */
export function processParkedBucketName(streamName: string): string {
  return `${streamName}_processes_parked`.replace(/[^A-Za-z0-9_-]/g, '_');
}

/** The durable consumer on the event stream that feeds a process manager its input events: `process_<name>`. */
export function processConsumerName(process: string): string {
  return `process_${process}`.replace(/[^A-Za-z0-9_-]/g, '_');
}

/** The JetStream KV bucket that holds snapshots for a stream. */
export function snapshotBucketName(streamName: string): string {
  return `${streamName}_snapshots`.replace(/[^A-Za-z0-9_-]/g, '_');
}

/** The JetStream KV bucket that holds a deployment's membership and partition claims. */
export function clusterBucketName(streamName: string): string {
  return `${streamName}_cluster`.replace(/[^A-Za-z0-9_-]/g, '_');
}

/** The stream of durable commands for an event stream: `<STREAM>_COMMANDS`. */
export function commandStreamName(streamName: string): string {
  return `${streamName}_COMMANDS`;
}

/** The JetStream KV bucket that holds durable commands' outcomes, by command ID. */
export function outcomeBucketName(streamName: string): string {
  return `${streamName}_outcomes`.replace(/[^A-Za-z0-9_-]/g, '_');
}

/**
 * The durable command stream's configuration. A work queue: a command is removed once its
 * partition's owner has recorded its outcome and acknowledged it, so the stream holds exactly
 * the commands not yet processed. `discard: new` refuses a publish when an operator's limit is
 * reached, rather than dropping a command nobody has processed.
 */
export function commandStreamConfig(o: EventStreamOptions & { readonly partitions: number }): Partial<StreamConfig> & { name: string } {
  return {
    name: commandStreamName(o.name),
    description: `Strand durable commands: ${DURABLE_COMMAND_PREFIX}.<aggregate>.<id>.<Command>, stored as ${DURABLE_COMMAND_PREFIX}.<partition>.<aggregate>.<id>.<Command>`,
    subjects: [`${DURABLE_COMMAND_PREFIX}.*.*.*`],
    subject_transform: durableCommandTransform(o.partitions),
    retention: 'workqueue' as StreamConfig['retention'],
    storage: 'file' as StreamConfig['storage'],
    num_replicas: o.replicas,
    discard: 'new' as StreamConfig['discard'],
    duplicate_window: o.duplicateWindowMs * NANOS_PER_MS,
  };
}

/** The stream of deadlines for an event stream: `<STREAM>_DEADLINES`. */
export function deadlineStreamName(streamName: string): string {
  return `${streamName}_DEADLINES`;
}

/**
 * The deadline stream's configuration. Schedules (`dl.at.…`) wait in it until nats-server fires
 * them onto `dl.fire.…`; fired deadlines wait until a consumer of their owner has handled and
 * acknowledged them (a work queue: no consumer ever reads `dl.at.…`, so schedules are removed only
 * by firing, `cancel` or a newer `set`). No limits: with `discard: old` (which message schedules
 * require) a limit would silently drop the oldest deadlines, and `max_age` would remove a schedule
 * before it fires. Rollups and purges are on, as schedules need them.
 */
export function deadlineStreamConfig(o: { readonly name: string; readonly replicas: number }): Partial<StreamConfig> & { name: string } {
  return {
    name: deadlineStreamName(o.name),
    description: 'Strand deadlines: schedules on dl.at.<owner>.<id>.<name>.<generation>, fired onto dl.fire.<owner>.<id>.<name>',
    subjects: [...DEADLINE_SUBJECTS],
    retention: 'workqueue' as StreamConfig['retention'],
    storage: 'file' as StreamConfig['storage'],
    num_replicas: o.replicas,
    max_msgs: -1,
    max_bytes: -1,
    max_age: 0,
    max_msgs_per_subject: -1,
    discard: 'old' as StreamConfig['discard'],
    allow_msg_schedules: true,
    allow_rollup_hdrs: true,
    deny_purge: false,
    deny_delete: false,
    allow_direct: true,
  };
}

/** What in an existing deadline stream differs from what Strand needs, one line each; empty when compatible. */
export function compareDeadlineStreamConfig(existing: Partial<StreamConfig>, wanted: Partial<StreamConfig>): string[] {
  const diffs: string[] = [];
  if (JSON.stringify(existing.subjects ?? []) !== JSON.stringify(wanted.subjects)) diffs.push(`subjects are ${JSON.stringify(existing.subjects ?? [])}, need ${JSON.stringify(wanted.subjects)}`);
  if (existing.retention !== wanted.retention) diffs.push(`retention is ${existing.retention}, need ${wanted.retention} (fired deadlines are removed once handled)`);
  if (!existing.allow_msg_schedules) diffs.push('allow_msg_schedules is off, need on (deadlines are message schedules)');
  if (!existing.allow_direct) diffs.push('allow_direct is off, need on (listing pending deadlines)');
  if ((existing.max_age ?? 0) > 0) diffs.push(`max_age is ${existing.max_age}ns, need 0 (an age limit removes deadlines before they fire)`);
  if ((existing.max_msgs ?? -1) > 0) diffs.push(`max_msgs is ${existing.max_msgs}, need unlimited (a limit drops the oldest deadlines)`);
  if ((existing.max_bytes ?? -1) > 0) diffs.push(`max_bytes is ${existing.max_bytes}, need unlimited (a limit drops the oldest deadlines)`);
  if ((existing.max_msgs_per_subject ?? -1) > 0) diffs.push(`max_msgs_per_subject is ${existing.max_msgs_per_subject}, need unlimited (fired deadlines of one name can wait together)`);
  if (existing.num_replicas !== wanted.num_replicas) diffs.push(`num_replicas is ${existing.num_replicas}, configured ${wanted.num_replicas}`);
  return diffs;
}

/** A deadline consumer's settings that a caller may choose. */
export interface DeadlineConsumerOptions {
  /** Durable name. */
  readonly name: string;
  /** The owners (process or aggregate names) whose fired deadlines it reads. */
  readonly owners: readonly string[];
  /** How long a delivered deadline may go unacknowledged before it is delivered again, in milliseconds. */
  readonly ackWaitMs: number;
  /** Fired deadlines delivered and not yet acknowledged (the consumer's max_ack_pending). */
  readonly maxPending: number;
  /**
   * When set, the consumer has one priority group ({@link PINNED_GROUP}) with the `pinned_client`
   * policy: one client at a time receives, and another is pinned after this many milliseconds
   * without a pull from it.
   */
  readonly pinTtlMs?: number;
}

/** The priority group of Strand's pinned consumers (nats-server 2.11+: at most 16 characters). */
export const PINNED_GROUP = 'strand';

/** The consumer configuration of a priority group with the `pinned_client` policy. */
export function pinnedGroupConfig(pinTtlMs: number): Pick<ConsumerConfig, 'priority_groups' | 'priority_policy' | 'priority_timeout'> {
  return { priority_groups: [PINNED_GROUP], priority_policy: 'pinned_client' as ConsumerConfig['priority_policy'], priority_timeout: pinTtlMs * NANOS_PER_MS };
}

/**
 * The durable consumer of fired deadlines for a set of owners: every fired deadline from the
 * first, explicit acks, delivered again without limit (a handler that keeps failing is the
 * caller's to park).
 */
export function deadlineConsumerConfig(o: DeadlineConsumerOptions): Partial<ConsumerConfig> & { durable_name: string } {
  const filters = o.owners.map(ownerFiredDeadlines);
  return {
    durable_name: o.name,
    description: `Strand fired deadlines of ${o.owners.join(', ')}`.slice(0, 4096),
    ...(filters.length === 1 ? { filter_subject: filters[0]! } : { filter_subjects: filters }),
    deliver_policy: 'all' as ConsumerConfig['deliver_policy'],
    ack_policy: 'explicit' as ConsumerConfig['ack_policy'],
    ack_wait: o.ackWaitMs * NANOS_PER_MS,
    max_ack_pending: o.maxPending,
    max_deliver: -1,
    ...(o.pinTtlMs !== undefined ? pinnedGroupConfig(o.pinTtlMs) : {}),
  };
}
