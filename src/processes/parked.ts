import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/nats-core';
import { processParkedBucketName } from '../../subjects/index.js';

/** An input a process could not handle after its deliveries: kept for an operator, the rest goes on. */
export interface ParkedInput {
  readonly process: string;
  /** The instance it belongs to, when correlation got that far. */
  readonly instanceId?: string;
  readonly kind: 'event' | 'deadline';
  /** The event's EVENTS stream sequence (event inputs). */
  readonly seq?: number;
  /** The event's subject, or the deadline's `<id>.<name>`. */
  readonly subject: string;
  /** PROCESS_HANDLER_FAILED, PROCESS_DECISION_INVALID, PROCESS_INPUT_INVALID, or the error code. */
  readonly reason: string;
  readonly error: string;
  readonly attempts: number;
  readonly parkedAt: string;
  /** Its key in the bucket (without the process): what retry and discard name. */
  readonly key?: string;
  /** A fired deadline's details, so that a retry can hand it over again. */
  readonly deadline?: { readonly name: string; readonly token: string; readonly due: string; readonly data: unknown };
}

/** Parked inputs of every process, in the KV bucket `<STREAM>_processes_parked`, keyed `<process>.<key>`. */
export class ParkedInputs {
  private constructor(private readonly kv: KV) {}

  static async open(nc: NatsConnection, stream: string, replicas: number): Promise<ParkedInputs> {
    return new ParkedInputs(await new Kvm(nc).create(processParkedBucketName(stream), { history: 1, replicas }));
  }

  async park(p: ParkedInput): Promise<void> {
    const key = keyOf(p);
    await this.kv.put(`${p.process}.${key}`, JSON.stringify({ ...p, key }));
  }

  /** One parked input, or undefined. */
  async get(process: string, key: string): Promise<ParkedInput | undefined> {
    if (!/^[A-Za-z0-9_-]{1,200}$/.test(key)) return undefined;
    const e = await this.kv.get(`${process}.${key}`);
    return e && e.operation === 'PUT' ? e.json<ParkedInput>() : undefined;
  }

  /** Forgets a parked input; false when there was none. */
  async remove(process: string, key: string): Promise<boolean> {
    if (!(await this.get(process, key))) return false;
    await this.kv.purge(`${process}.${key}`);
    return true;
  }

  /** The parked inputs of one process, oldest key first (at most `limit`). */
  async list(process: string, limit = 1000): Promise<ParkedInput[]> {
    const keys: string[] = [];
    for await (const k of await this.kv.keys(`${process}.>`)) {
      keys.push(k);
      if (keys.length >= limit) break;
    }
    keys.sort();
    const out: ParkedInput[] = [];
    for (const k of keys) {
      const e = await this.kv.get(k);
      if (e && e.operation === 'PUT') out.push(e.json<ParkedInput>());
    }
    return out;
  }
}

function keyOf(p: ParkedInput): string {
  if (p.kind === 'event' && p.seq !== undefined) return `event-${String(p.seq).padStart(16, '0')}`;
  return `deadline-${p.subject.replace(/[^A-Za-z0-9_-]/g, '_')}-${Date.parse(p.parkedAt)}`;
}
