/**
 * Outcomes of durable commands, by command ID, in a NATS KV bucket (`<STREAM>_outcomes`, the
 * stream's replicas, entries kept for STRAND_OUTCOME_TTL_MS). The first outcome recorded for an
 * ID stays: a redelivered or republished command cannot overwrite it. Read over HTTP
 * (`GET /commands/:commandId`) and NATS (`strand.outcome.get`, the ID as the body).
 */
import { JetStreamApiError, jetstreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection, Subscription } from '@nats-io/nats-core';
import type { Logger } from 'pino';
import { OUTCOME_REQUEST, outcomeBucketName } from '../../subjects/index.js';
import { isCommandId } from '../commands/intake.js';
import { failed, type CommandFailed, type CommandReply } from '../commands/types.js';
import { ErrorCode } from '../errors.js';

/** What became of a durable command: the reply request-reply would have given, and what it was. */
export type CommandOutcome = CommandReply & {
  readonly commandId: string;
  /** As the subject named them (for a command refused as malformed, possibly not valid names). */
  readonly aggregate: string;
  readonly id: string;
  readonly command: string;
  /** ISO time the outcome was recorded. */
  readonly recordedAt: string;
};

/** Settings of the outcome bucket. */
export interface OutcomeStoreOptions {
  /** The event stream's name: the bucket is `<stream>_outcomes`. */
  readonly stream: string;
  readonly replicas: number;
  /** How long an outcome is kept. */
  readonly ttlMs: number;
}

const NANOS_PER_MS = 1_000_000;
/** A KV key must be `[-/_=.A-Za-z0-9]+`; IDs of this shape are used as they are, others encoded. */
const PLAIN_ID = /^[A-Za-z0-9_-]{1,128}$/;
/** JetStream's "wrong last sequence": the key exists already. */
const WRONG_LAST_SEQUENCE = 10071;
const decoder = new TextDecoder();

/** The key of a command ID: `c.<id>` for IDs of letters, digits, `_` and `-`, else `x.<base64url of the ID>`. */
export function outcomeKey(commandId: string): string {
  return PLAIN_ID.test(commandId) ? `c.${commandId}` : `x.${Buffer.from(commandId, 'utf8').toString('base64url')}`;
}

export class OutcomeStore {
  private responder: Subscription | undefined;

  private constructor(
    private readonly kv: KV,
    private readonly log: Logger,
  ) {}

  /** Opens (creates) the bucket; an existing bucket's TTL is set to the configured one. */
  static async open(nc: NatsConnection, o: OutcomeStoreOptions, log: Logger): Promise<OutcomeStore> {
    const bucket = outcomeBucketName(o.stream);
    const kv = await new Kvm(nc).create(bucket, { history: 1, replicas: o.replicas, ttl: o.ttlMs });
    const status = await kv.status();
    if (status.ttl !== o.ttlMs) {
      const jsm = await jetstreamManager(nc);
      const name = `KV_${bucket}`;
      const info = await jsm.streams.info(name);
      await jsm.streams.update(name, { ...info.config, max_age: o.ttlMs * NANOS_PER_MS });
      log.info({ bucket, ttlMs: o.ttlMs, wasMs: status.ttl }, 'outcome bucket TTL changed');
    }
    return new OutcomeStore(kv, log);
  }

  /** Records an outcome unless one is recorded for its command ID already; true when this one was recorded. */
  async record(outcome: CommandOutcome): Promise<boolean> {
    try {
      await this.kv.create(outcomeKey(outcome.commandId), JSON.stringify(outcome));
      return true;
    } catch (err) {
      if (err instanceof JetStreamApiError && err.code === WRONG_LAST_SEQUENCE) return false;
      throw err;
    }
  }

  /** The outcome recorded for a command ID, or undefined. */
  async get(commandId: string): Promise<CommandOutcome | undefined> {
    const e = await this.kv.get(outcomeKey(commandId));
    if (!e || e.operation !== 'PUT' || e.length === 0) return undefined;
    return e.json<CommandOutcome>();
  }

  /** Answers `strand.outcome.get` (queue group `group`): the outcome, or OUTCOME_NOT_FOUND, or the error of a bad request. */
  serve(nc: NatsConnection, group: string): void {
    this.responder = nc.subscribe(OUTCOME_REQUEST, {
      queue: group,
      callback: (err, msg) => {
        if (err) return this.log.error({ err }, 'outcome subscription failed');
        const id = decoder.decode(msg.data).trim();
        void this.answer(id).then((body) => {
          try {
            msg.respond(JSON.stringify(body));
          } catch (e) {
            this.log.warn({ err: e }, 'reply not sent');
          }
        });
      },
    });
  }

  /** What `strand.outcome.get` and `GET /commands/:commandId` answer for an ID. */
  async answer(commandId: string): Promise<CommandOutcome | CommandFailed> {
    if (!isCommandId(commandId)) return failed(ErrorCode.BAD_REQUEST, 'a command ID is 1-128 printable ASCII characters');
    try {
      return (await this.get(commandId)) ?? failed(ErrorCode.OUTCOME_NOT_FOUND, `no outcome recorded for command ${JSON.stringify(commandId)}: not processed yet, never published to cmdq, or past its TTL`);
    } catch (err) {
      return failed(ErrorCode.UNAVAILABLE, `the outcome bucket did not answer: ${(err as Error).message}`);
    }
  }

  stop(): void {
    this.responder?.unsubscribe();
    this.responder = undefined;
  }
}
