import type { StreamConfig } from '@nats-io/jetstream';
import { ALL_EVENTS, DURABLE_COMMAND_PREFIX, durableCommandTransform } from './subjects.js';

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
