/**
 * The command load and the raw baseline shared by the command benchmarks (bench/commands.bench.ts,
 * bench/cluster.bench.ts): the plan of commands over the aggregates, the reply check, the raw
 * service (bench/raw-service.ts) with its stream, and stream deletion.
 */
import type { Msg } from '@nats-io/nats-core';
import type { JetStreamManager } from '@nats-io/jetstream';
import path from 'node:path';
import { startService, waitReady, type ServiceProcess } from './service.js';

export type Kind = 'raw' | 'strand';

/** The raw service's stream. */
export const RAW_STREAM = 'RAW';

const decoder = new TextDecoder();

/** The i-th command of a plan over `ids` aggregates: round 0 creates each, later rounds reassign. */
export function planner(kind: Kind, prefix: string, ids: number): (i: number) => { subject: string; body: string } {
  return (i) => {
    const round = Math.floor(i / ids);
    const n = i % ids;
    const id = `${prefix}${n}`;
    const command = round === 0 ? 'CreateTask' : 'AssignTask';
    const body = round === 0 ? createBody(n) : assignBody(round, n);
    return { subject: kind === 'raw' ? `rawcmd.${id}.${command}` : `cmd.task.${id}.${command}`, body };
  };
}

/** The body of the n-th aggregate's CreateTask. */
export const createBody = (n: number): string => `{"title":"Benchmark task ${n}","memberId":"member-${n % 1000}","assignedTo":"user-${n % 100}"}`;
/** The body of the n-th aggregate's AssignTask in round `round`. */
export const assignBody = (round: number, n: number): string => `{"assignedTo":"user-${round}-${n % 100}"}`;

/** Undefined for an `ok: true` reply, else what was wrong with it. */
export function checkReply(m: Msg): string | undefined {
  if (m.headers?.code === 503) return 'no responders';
  let r: { ok?: boolean; error?: { code?: string; message?: string } };
  try {
    r = JSON.parse(decoder.decode(m.data)) as typeof r;
  } catch {
    return `unreadable reply ${decoder.decode(m.data).slice(0, 200)}`;
  }
  return r.ok === true ? undefined : `${r.error?.code ?? '?'}: ${r.error?.message ?? decoder.decode(m.data).slice(0, 200)}`;
}

/** Deletes a stream; one that is not there is fine. */
export async function deleteStream(jsm: JetStreamManager, name: string): Promise<void> {
  try {
    await jsm.streams.delete(name);
  } catch (err) {
    const e = err as { name?: string; api_error?: { err_code?: number } };
    if (e.name === 'StreamNotFoundError' || e.api_error?.err_code === 10059) return;
    throw err;
  }
}

/** An empty stream for the raw service (`replicas` 3 on a cluster). */
export async function freshRawStream(jsm: JetStreamManager, replicas = 1): Promise<void> {
  await deleteStream(jsm, RAW_STREAM);
  await jsm.streams.add({
    name: RAW_STREAM,
    subjects: ['rawevt.>'],
    storage: 'file' as never,
    retention: 'limits' as never,
    num_replicas: replicas,
    duplicate_window: 120_000 * 1_000_000,
    allow_direct: true,
  });
}

/** Starts bench/raw-service.ts on `url` and waits until it has subscribed. */
export async function startRaw(url: string, profileDir?: string): Promise<ServiceProcess> {
  const nodeArgs = profileDir ? ['--cpu-prof', '--cpu-prof-dir', path.join(profileDir, `${Date.now()}-raw`)] : [];
  const svc = startService('raw-service', 'bench/raw-service.ts', { NATS_URL: url }, nodeArgs);
  let ready = false;
  svc.child.stdout!.on('data', (s: string) => {
    if (s.includes('ready')) ready = true;
  });
  await waitReady(svc, () => ready, 30_000);
  return svc;
}
