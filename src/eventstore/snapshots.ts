import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/nats-core';
import { snapshotBucketName } from '../../subjects/index.js';
import { StoreUnavailable } from './errors.js';

/** A command an instance remembers for idempotency: its ID and where its events landed. */
export interface RememberedCommand {
  readonly id: string;
  /** Stream sequence of the command's first event; the others follow adjacently. */
  readonly seq: number;
  /** The aggregate version after the command's first event. */
  readonly version: number;
  /** Event types in order. */
  readonly types: readonly string[];
}

/** An instance's state at a version, so activation need not replay every event. */
export interface Snapshot<S = unknown> {
  /** The aggregate definition's fingerprint when it was taken; another means "rebuild". */
  readonly fingerprint: string;
  readonly version: number;
  /** Stream sequence of the last event folded in. */
  readonly seq: number;
  readonly state: S;
  readonly recent: readonly RememberedCommand[];
  /** ISO time it was taken. */
  readonly takenAt: string;
}

/** Where snapshots are kept. */
export interface SnapshotStore {
  load(aggregate: string, id: string): Promise<Snapshot | undefined>;
  save(aggregate: string, id: string, snapshot: Snapshot): Promise<void>;
}

/** Snapshots in a JetStream KV bucket, one key per instance (`<aggregate>.<id>`), latest only. */
export class KvSnapshotStore implements SnapshotStore {
  private constructor(private readonly kv: KV) {}

  static async open(nc: NatsConnection, streamName: string, replicas: number): Promise<KvSnapshotStore> {
    const kv = await new Kvm(nc).create(snapshotBucketName(streamName), { history: 1, replicas });
    return new KvSnapshotStore(kv);
  }

  async load(aggregate: string, id: string): Promise<Snapshot | undefined> {
    try {
      const entry = await this.kv.get(`${aggregate}.${id}`);
      if (!entry || entry.operation !== 'PUT' || entry.length === 0) return undefined;
      return entry.json<Snapshot>();
    } catch (err) {
      throw new StoreUnavailable(`reading snapshot of ${aggregate}/${id}: ${(err as Error).message}`);
    }
  }

  async save(aggregate: string, id: string, snapshot: Snapshot): Promise<void> {
    try {
      await this.kv.put(`${aggregate}.${id}`, JSON.stringify(snapshot));
    } catch (err) {
      throw new StoreUnavailable(`writing snapshot of ${aggregate}/${id}: ${(err as Error).message}`);
    }
  }
}
