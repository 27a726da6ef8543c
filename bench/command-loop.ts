/**
 * The command side of the benchmarks that run services as child processes
 * (bench/commands.bench.ts, bench/projections.bench.ts, bench/pipeline.bench.ts): the raw
 * command loop (bench/raw-service.ts) and Strand as `npm start` runs it (src/main.ts), each
 * started and waited for until it answers, and the check every command reply goes through.
 */
import path from 'node:path';
import type { Msg } from '@nats-io/nats-core';
import type { JetStreamManager } from '@nats-io/jetstream';
import { startService, waitReady, type ServiceProcess } from './service.js';
import type { LeanRequester } from './support.js';

const decoder = new TextDecoder();

export type Kind = 'raw' | 'strand';

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

/** Why a command reply is not `{"ok":true,…}`, or undefined when it is. */
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

/** The raw loop's stream, `RAW` on `rawevt.>`, empty. */
export const RAW_STREAM = 'RAW';

/** An empty `RAW` stream (`replicas` 3 on a cluster). */
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

/** `node --cpu-prof` into `<dir>/<name>` when profiling, else nothing. */
export function cpuProfArgs(dir: string | undefined, name: string): string[] {
  return dir ? ['--cpu-prof', '--cpu-prof-dir', path.join(dir, name)] : [];
}

/** bench/raw-service.ts on `url`, once it has said "ready". */
export async function startRawService(url: string, nodeArgs: string[] = []): Promise<ServiceProcess> {
  const svc = startService('raw-service', 'bench/raw-service.ts', { NATS_URL: url }, nodeArgs);
  let ready = false;
  svc.child.stdout!.on('data', (s: string) => {
    if (s.includes('ready')) ready = true;
  });
  await waitReady(svc, () => ready, 30_000);
  return svc;
}

/**
 * `node --import tsx src/main.ts` (what `npm start` runs) with `env` added (NATS_URL, roles, its
 * own STRAND_DATA_DIR, …), once a CreateTask on `cmd.task.<probePrefix><n>` is answered ok.
 */
export async function startStrandService(
  name: string,
  env: Record<string, string>,
  requester: LeanRequester,
  probePrefix: string,
  nodeArgs: string[] = [],
): Promise<ServiceProcess> {
  const svc = startService(name, 'src/main.ts', env, nodeArgs);
  let probe = 0;
  await waitReady(svc, async () => {
    try {
      const m = await requester.request(`cmd.task.${probePrefix}${probe++}.CreateTask`, '{"title":"ready?","memberId":"m","assignedTo":"u"}', 1_000);
      return checkReply(m) === undefined;
    } catch {
      return false;
    }
  });
  return svc;
}
