/**
 * A command load as a careful client sends it: each sender works on aggregates of its own, one
 * command at a time, and resends a command that failed (a timeout, no responders, UNAVAILABLE)
 * with the same Strand-Command-Id until it is acknowledged. What was acknowledged is then checked
 * against the stream, as an outside consumer would read it.
 */
import { connect, headers, type NatsConnection } from '@nats-io/transport-node';
import { expect } from 'vitest';
import type { CommandReply } from '../../src/commands/types.js';
import { streamEvents } from './strand.js';

export interface LoadResult {
  /** Acknowledged commands by command ID. */
  readonly acknowledged: ReadonlyMap<string, { readonly aggregateId: string; readonly version: number; readonly seq: number }>;
  /** What each aggregate was sent, in order (assignees of its AssignTask commands). */
  readonly sent: ReadonlyMap<string, readonly string[]>;
  /** Failed attempts by error (resent each time). */
  readonly failures: ReadonlyMap<string, number>;
  /** The first few messages of failed attempts (error code: message), to tell why. */
  readonly reasons: readonly string[];
  /** The longest time no sender had a command acknowledged, in ms. */
  readonly maxGapMs: number;
  /** The longest a command took from its first send to its acknowledgement, resends included, in ms: the service gap its aggregate saw. */
  readonly maxCommandMs: number;
  readonly commands: number;
}

export class Load {
  private stopping = false;
  private readonly acknowledged = new Map<string, { aggregateId: string; version: number; seq: number }>();
  private readonly sent = new Map<string, string[]>();
  private readonly failures = new Map<string, number>();
  private readonly reasons: string[] = [];
  private lastAck = performance.now();
  private maxGap = 0;
  private maxCommand = 0;
  private gapTimer: NodeJS.Timeout | undefined;
  private runs: Promise<void>[] = [];
  private conns: NatsConnection[] = [];

  constructor(
    private readonly urls: string,
    private readonly prefix: string,
    private readonly senders = 8,
    /** Commands per aggregate before a sender moves to its next one. */
    private readonly perAggregate = 6,
  ) {}

  async start(): Promise<void> {
    const servers = this.urls.split(',');
    this.conns = await Promise.all(Array.from({ length: this.senders }, (_, i) => connect({ servers: [servers[i % servers.length]!, ...servers], maxReconnectAttempts: -1, reconnectTimeWait: 100 })));
    this.lastAck = performance.now();
    this.gapTimer = setInterval(() => (this.maxGap = Math.max(this.maxGap, performance.now() - this.lastAck)), 50);
    this.runs = this.conns.map((nc, s) => this.sender(nc, s));
  }

  /** Commands acknowledged so far. */
  get acknowledgedCount(): number {
    return this.acknowledged.size;
  }

  /** Runs until at least `n` commands were acknowledged (or the timeout passes). */
  async until(n: number, timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.acknowledged.size < n) {
      if (Date.now() > deadline) throw new Error(`load: ${this.acknowledged.size} of ${n} commands acknowledged after ${timeoutMs} ms; failures ${JSON.stringify([...this.failures])}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async stop(): Promise<LoadResult> {
    this.stopping = true;
    await Promise.all(this.runs);
    clearInterval(this.gapTimer);
    await Promise.all(this.conns.map((c) => c.close()));
    return { acknowledged: this.acknowledged, sent: this.sent, failures: this.failures, reasons: this.reasons, maxGapMs: Math.round(this.maxGap), maxCommandMs: Math.round(this.maxCommand), commands: this.acknowledged.size };
  }

  private async sender(nc: NatsConnection, s: number): Promise<void> {
    for (let k = 0; !this.stopping; k++) {
      const id = `${this.prefix}-${s}-${k}`;
      const assignees: string[] = [];
      this.sent.set(id, assignees);
      for (let i = 0; i < this.perAggregate && !this.stopping; i++) {
        const commandId = `${id}-c${i}`;
        const [command, body] = i === 0 ? ['CreateTask', { title: 't', memberId: 'M1', assignedTo: 'CC0' }] : ['AssignTask', { assignedTo: `CC${i}` }];
        if (i > 0) assignees.push(`CC${i}`);
        await this.send(nc, `cmd.task.${id}.${command}`, body, commandId, id);
      }
    }
  }

  /** Sends until acknowledged (a resend carries the same command ID: it is a duplicate if the first landed). */
  private async send(nc: NatsConnection, subject: string, body: unknown, commandId: string, aggregateId: string): Promise<void> {
    const h = headers();
    h.set('Strand-Command-Id', commandId);
    const payload = JSON.stringify(body);
    const first = performance.now();
    for (;;) {
      let why: string;
      try {
        const m = await nc.request(subject, payload, { headers: h, timeout: 2000 });
        const r = JSON.parse(new TextDecoder().decode(m.data)) as CommandReply;
        if (r.ok) {
          this.acknowledged.set(commandId, { aggregateId, version: r.version, seq: r.seq });
          this.lastAck = performance.now();
          this.maxCommand = Math.max(this.maxCommand, this.lastAck - first);
          return;
        }
        why = r.error.code;
        if (why !== 'UNAVAILABLE' && why !== 'CONFLICT') throw new Error(`load: ${subject} refused: ${JSON.stringify(r)}`);
        if (this.reasons.length < 10) this.reasons.push(`${why}: ${r.error.message}`);
      } catch (err) {
        if ((err as Error).message.startsWith('load:')) throw err;
        why = (err as Error).name;
      }
      this.failures.set(why, (this.failures.get(why) ?? 0) + 1);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/**
 * Checks the stream against a load: every acknowledged command's events are there exactly once,
 * every aggregate's versions run 1, 2, 3 … with no gap, no command ID appears twice, and each
 * aggregate's commands landed in the order they were sent.
 */
export async function verifyLoad(nc: NatsConnection, result: LoadResult, stream = 'EVENTS'): Promise<void> {
  const byAggregate = new Map<string, string[]>();
  for (const [commandId, a] of result.acknowledged) {
    let list = byAggregate.get(a.aggregateId);
    if (!list) byAggregate.set(a.aggregateId, (list = []));
    list.push(commandId);
  }
  for (const [aggregateId, acked] of byAggregate) {
    const events = await streamEvents(nc, stream, 'task', aggregateId);
    expect(events.map((e) => e.envelope.version), `${aggregateId}: versions`).toEqual(events.map((_, i) => i + 1));
    const ids = events.map((e) => e.envelope.metadata.commandId!);
    expect(new Set(ids).size, `${aggregateId}: a command ID twice in ${JSON.stringify(ids)}`).toBe(ids.length);
    for (const c of acked) expect(ids, `${aggregateId}: acknowledged ${c} is in the stream`).toContain(c);
    const assigned = events.filter((e) => e.envelope.type === 'TaskAssigned').map((e) => (e.envelope.data as { assignedTo: string }).assignedTo);
    const sent = result.sent.get(aggregateId) ?? [];
    expect(assigned, `${aggregateId}: order`).toEqual(sent.slice(0, assigned.length));
  }
}
