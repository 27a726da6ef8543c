/**
 * Durable consumers with one priority group under the `pinned_client` policy (nats-server 2.11+,
 * ADR-42): however many Strand instances pull from one, the server delivers to one of them at a
 * time (the pinned one, whose pulls carry the pin ID it was given) and pins another only when the
 * pinned one has not pulled for the consumer's `priority_timeout`, or is unpinned. The process
 * runtime reads its inputs, and the processes' fired deadlines, through such consumers, so the
 * inputs of one process instance are handled by one Strand instance, in stream order.
 */
import { DeliverPolicy, type ConsumerConfig, type ConsumerInfo, type JetStreamManager } from '@nats-io/jetstream';
import type { Logger } from 'pino';
import { PINNED_GROUP } from '../../subjects/index.js';

/** JetStream's "consumer already exists" (with another configuration). */
const CONSUMER_EXISTS = 10148;

export function apiErrorCode(err: unknown): number | undefined {
  return (err as { api_error?: { err_code?: number } }).api_error?.err_code ?? (err as { code?: number }).code;
}

/** True when the consumer has Strand's pinned priority group. */
export function isPinned(info: Pick<ConsumerInfo, 'config'>): boolean {
  return info.config.priority_policy === 'pinned_client' && (info.config.priority_groups ?? []).includes(PINNED_GROUP);
}

/**
 * Creates the durable consumer `config` (which names the pinned group), or brings an existing one
 * to it: updated in place, keeping its position. A consumer that a server refuses to update (one
 * created before the group, on a server that cannot add a group to an existing consumer) is
 * deleted and created again from its ack floor: nothing unacknowledged is skipped, and what was
 * acknowledged past the floor comes again, as a redelivery would (inputs are idempotent by step).
 * `updatable` is the part of `config` an update may carry (not the deliver policy, say).
 */
export async function ensurePinnedConsumer(
  jsm: JetStreamManager,
  stream: string,
  config: Partial<ConsumerConfig> & { durable_name: string },
  updatable: Partial<ConsumerConfig>,
  log: Logger,
): Promise<void> {
  try {
    await jsm.consumers.add(stream, config);
    return;
  } catch (err) {
    if (apiErrorCode(err) !== CONSUMER_EXISTS) throw err;
  }
  const name = config.durable_name;
  try {
    await jsm.consumers.update(stream, name, updatable);
    return;
  } catch (err) {
    const old = await jsm.consumers.info(stream, name).catch(() => undefined);
    // Refused for another reason than the missing group (the filter, say): not ours to cure by re-creating.
    if (!old || isPinned(old)) throw err;
    const from = old.ack_floor.stream_seq + 1;
    log.warn({ err, stream, consumer: name, from }, 'consumer without the pinned priority group could not be updated; creating it again from its ack floor');
    await jsm.consumers.delete(stream, name);
    const { deliver_policy: _p, opt_start_seq: _s, opt_start_time: _t, ...rest } = config;
    try {
      await jsm.consumers.add(stream, { ...rest, deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: from });
    } catch (e) {
      // Another instance re-created it meanwhile, from the same floor.
      if (apiErrorCode(e) !== CONSUMER_EXISTS) throw e;
    }
  }
}

/** The pin ID the server gave this side's pulls, as `consume`'s status notifications tell it. */
export class PinWatch {
  id = '';

  /** Follows the notifications of one `consume` (its `status()` iterator). */
  follow(status: AsyncIterable<{ type: string; id?: string }>): void {
    void (async () => {
      try {
        for await (const s of status) {
          if (s.type === 'consumer_pinned') this.id = s.id ?? '';
          else if (s.type === 'consumer_unpinned') this.id = '';
        }
      } catch {
        // the consume ended
      }
    })();
  }

  /**
   * Unpins the consumer if this side holds the pin (a graceful stop), so another instance is
   * pinned at its next pull rather than after the pin timeout. Best effort.
   */
  async release(jsm: JetStreamManager, stream: string, name: string): Promise<void> {
    if (this.id === '') return;
    try {
      const info = await jsm.consumers.info(stream, name);
      const groups = (info as { priority_groups?: { group: string; pinned_client_id?: string }[] }).priority_groups ?? [];
      const g = groups.find((x) => x.group === PINNED_GROUP);
      if (g?.pinned_client_id === this.id) await jsm.consumers.unpin(stream, name, PINNED_GROUP);
    } catch {
      // the pin then times out
    }
    this.id = '';
  }
}
