import type { Msg, NatsConnection, Subscription } from '@nats-io/nats-core';
import type { Logger } from 'pino';
import { ALL_COMMANDS, CommandHeader, parseCommandSubject } from '../../subjects/index.js';
import type { ActorSystem } from '../actor/system.js';
import { ErrorCode } from '../errors.js';
import type { StrandMetrics } from '../observability/metrics.js';
import type { CommandIntake } from './intake.js';
import { failed, type CommandReply } from './types.js';

/** How the NATS command subscription behaves. */
export interface NatsCommandOptions {
  /** Queue group shared by every Strand instance, so each command is taken once. */
  readonly queueGroup: string;
  /** Most commands in progress at once; past it the reply is `UNAVAILABLE`. */
  readonly maxInFlight: number;
}


/**
 * Takes commands from `cmd.>` (request-reply or fire-and-forget) and replies with JSON.
 * Every message gets exactly one reply when it has a reply subject, whatever it contains.
 */
export class NatsCommandTransport {
  private sub: Subscription | undefined;
  private inFlight = 0;
  private idle: (() => void) | undefined;
  private draining = false;

  constructor(
    private readonly nc: NatsConnection,
    private readonly intake: CommandIntake,
    private readonly actors: ActorSystem,
    private readonly o: NatsCommandOptions,
    private readonly metrics: StrandMetrics,
    private readonly log: Logger,
  ) {}

  /** Subscribes; resolves once the server has registered the subscription. */
  async start(): Promise<void> {
    this.sub = this.nc.subscribe(ALL_COMMANDS, {
      queue: this.o.queueGroup,
      callback: (err, msg) => {
        if (err) {
          this.log.error({ err }, 'command subscription failed');
          return;
        }
        this.take(msg);
      },
    });
    await this.nc.flush();
  }

  /** Commands in progress. */
  get pending(): number {
    return this.inFlight;
  }

  /** Stops taking commands (others in the queue group take them) and waits for those in progress. */
  async drain(timeoutMs: number): Promise<boolean> {
    this.draining = true;
    if (this.sub && !this.sub.isClosed()) await this.sub.drain().catch(() => undefined);
    if (this.inFlight === 0) return true;
    return new Promise<boolean>((resolve) => {
      const t = setTimeout(() => resolve(false), timeoutMs);
      this.idle = () => {
        clearTimeout(t);
        resolve(true);
      };
    });
  }

  private take(msg: Msg): void {
    const t0 = performance.now();
    if (this.draining) {
      this.reply(msg, failed(ErrorCode.UNAVAILABLE, 'this instance is shutting down'));
      return;
    }
    if (this.inFlight >= this.o.maxInFlight) {
      this.reply(msg, failed(ErrorCode.UNAVAILABLE, `overloaded: ${this.inFlight} commands in progress`));
      this.count(msg.subject, 'UNAVAILABLE', t0);
      return;
    }
    const h = msg.headers;
    const req = this.intake.fromSubject(msg.subject, msg.data, {
      commandId: h?.get(CommandHeader.CommandId) || undefined,
      correlationId: h?.get(CommandHeader.CorrelationId) || undefined,
      causationId: h?.get(CommandHeader.CausationId) || undefined,
      actor: h?.get(CommandHeader.Actor) || undefined,
      expectedVersion: h?.get(CommandHeader.ExpectedVersion) || undefined,
    });
    if ('ok' in req) {
      this.reply(msg, req);
      this.count(msg.subject, req.error.code, t0);
      if (this.log.isLevelEnabled('debug')) this.log.debug({ subject: msg.subject.slice(0, 300), error: req.error }, 'command refused at intake');
      return;
    }
    this.metrics.commandsInFlight = ++this.inFlight;
    this.actors.execute(req).then((reply) => {
      this.metrics.commandsInFlight = --this.inFlight;
      this.reply(msg, reply);
      this.metrics.command(req.aggregate.name, req.command, reply.ok ? (reply.duplicate ? 'duplicate' : 'ok') : reply.error.code, (performance.now() - t0) / 1000);
      if (this.log.isLevelEnabled('debug')) {
        this.log.debug({ aggregate: req.aggregate.name, id: req.id, command: req.command, commandId: req.commandId, correlationId: req.correlationId, ok: reply.ok }, 'command handled');
      }
      if (this.inFlight === 0 && this.idle) this.idle();
    });
  }

  private count(subject: string, result: string, t0: number): void {
    const s = parseCommandSubject(subject);
    const known = s.ok && this.intake.registry.get(s.aggregate)?.commands.has(s.command);
    // Unknown names are not labels: a hostile sender must not grow the metric without bound.
    this.metrics.command(known ? s.aggregate : '_invalid', known ? s.command : '_invalid', result, (performance.now() - t0) / 1000);
  }

  private reply(msg: Msg, reply: CommandReply): void {
    if (!msg.reply) return; // fire-and-forget
    try {
      msg.respond(JSON.stringify(reply)); // nats-core encodes a string payload itself
    } catch (err) {
      this.log.warn({ err }, 'reply not sent');
    }
  }
}
