/**
 * Micro-benchmark of the CPU-only steps on Strand's command path (no NATS), to explain where
 * the Strand service spends its per-command CPU in bench/commands.bench.ts. Each step is run
 * in a tight loop; the figures are microseconds per call on this machine, so compare them with
 * each other and with the "cpu per command" lines of the commands benchmark, not across machines.
 *
 *   node --import tsx bench/hotpath.micro.ts [--iterations 200000]
 */
import { randomUUID } from 'node:crypto';
import { headers, nuid } from '@nats-io/nats-core';
import { task } from '../actors/task/task.js';
import { CommandIntake } from '../src/commands/intake.js';
import { StrandMetrics } from '../src/observability/metrics.js';
import { fmt2, intArg, parseArgs } from './support.js';

const args = parseArgs();
const N = intArg(args, 'iterations', 200_000);
const encoder = new TextEncoder();
let sink = 0;

function measure(name: string, fn: (i: number) => unknown): number {
  for (let i = 0; i < Math.min(20_000, N); i++) sink ^= fn(i) ? 1 : 0; // warm up the JIT
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < N; i++) sink ^= fn(i) ? 1 : 0;
  const us = Number(process.hrtime.bigint() - t0) / 1e3 / N;
  console.log(`  ${fmt2(us).padStart(6)} us  ${name}`);
  return us;
}

const intake = new CommandIntake([task], { maxBodyBytes: 65_536 });
const metrics = new StrandMetrics({ defaultMetrics: false });
const createBody = (i: number): Uint8Array => encoder.encode(`{"title":"Benchmark task ${i}","memberId":"member-${i % 1000}","assignedTo":"user-${i % 100}"}`);
const assignBody = (i: number): Uint8Array => encoder.encode(`{"assignedTo":"user-1-${i % 100}"}`);
const bodies = Array.from({ length: 1000 }, (_, i) => assignBody(i));
const createBodies = Array.from({ length: 1000 }, (_, i) => createBody(i));
const eventType = task.events.get('TaskAssigned')!;

console.log(`hotpath.micro: ${N.toLocaleString('en-US')} iterations per step (us per call)`);
console.log('strand, per command:');
const steps: number[] = [];
steps.push(measure('intake.fromSubject AssignTask (subject regexes, JSON.parse, zod, randomUUID command id)', (i) => intake.fromSubject(`cmd.task.r1-${i % 10_000}.AssignTask`, bodies[i % 1000]!, {})));
measure('  (for reference) intake.fromSubject CreateTask', (i) => intake.fromSubject(`cmd.task.r1-${i % 10_000}.CreateTask`, createBodies[i % 1000]!, {}));
steps.push(measure('event schema safeParse (STRAND_VALIDATE_EVENTS=true)', (i) => eventType.schema.safeParse({ assignedTo: `user-${i % 100}`, previousAssignee: 'user-3' }).success));
steps.push(
  measure('build envelope (randomUUID, new Date, toISOString) + JSON.stringify', (i) =>
    JSON.stringify({
      id: randomUUID(),
      type: 'TaskAssigned',
      aggregate: 'task',
      aggregateId: `r1-${i % 10_000}`,
      version: 3,
      schemaVersion: 1,
      time: new Date().toISOString(),
      data: { assignedTo: `user-${i % 100}`, previousAssignee: 'user-3' },
      metadata: { commandId: '5b0f7a2e-3c52-4a8e-9d61-0f4f5d3c2b1a', correlationId: '5b0f7a2e-3c52-4a8e-9d61-0f4f5d3c2b1a' },
    }).length,
  ),
);
steps.push(
  measure('5 event headers: MsgHdrs set x5 + encode (what publish packs)', (i) => {
    const h = headers();
    h.set('Nats-Msg-Id', '5b0f7a2e-3c52-4a8e-9d61-0f4f5d3c2b1a');
    h.set('Strand-Event-Type', 'TaskAssigned');
    h.set('Strand-Version', String(i % 7));
    h.set('Nats-Expected-Last-Subject-Sequence', String(i));
    h.set('Nats-Expected-Last-Subject-Sequence-Subject', `evt.task.r1-${i % 10_000}.*`);
    return (h as unknown as { encode(): Uint8Array }).encode().length;
  }),
);
steps.push(
  measure('metrics: command() + appended() + inFlight.set x2', (i) => {
    metrics.inFlight.set(i & 255);
    metrics.appended('task', 1, 0.001);
    metrics.inFlight.set((i & 255) - 1);
    metrics.command('task', 'AssignTask', 'ok', 0.01);
    return true;
  }),
);
steps.push(
  measure('reply: JSON.stringify(accepted) + TextEncoder.encode', (i) =>
    encoder.encode(
      JSON.stringify({
        ok: true,
        aggregate: 'task',
        id: `r1-${i % 10_000}`,
        version: 3,
        seq: i,
        events: [{ type: 'TaskAssigned', version: 3, seq: i }],
        commandId: '5b0f7a2e-3c52-4a8e-9d61-0f4f5d3c2b1a',
        duplicate: false,
      }),
    ).length,
  ),
);
console.log(`  ${fmt2(steps.reduce((a, b) => a + b, 0)).padStart(6)} us  sum of the steps above (strand)`);

console.log('raw service, per command (for comparison):');
const raw: number[] = [];
raw.push(
  measure('3 headers: MsgHdrs set x3 + encode', (i) => {
    const h = headers();
    h.set('Nats-Msg-Id', nuid.next());
    h.set('Nats-Expected-Last-Subject-Sequence', String(i));
    h.set('Nats-Expected-Last-Subject-Sequence-Subject', `rawevt.r1-${i % 10_000}.*`);
    return (h as unknown as { encode(): Uint8Array }).encode().length;
  }),
);
raw.push(measure('reply: template string + TextEncoder.encode', (i) => encoder.encode(`{"ok":true,"seq":${i}}`).length));
console.log(`  ${fmt2(raw.reduce((a, b) => a + b, 0)).padStart(6)} us  sum (raw)`);
if (sink === 42) console.log('');
