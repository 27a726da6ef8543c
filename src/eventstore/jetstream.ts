import { jetstreamManager, type JetStreamManager, type StreamConfig } from '@nats-io/jetstream';
import { nuid, type Msg, type MsgHdrs, type NatsConnection } from '@nats-io/nats-core';
import type { Logger } from 'pino';
import {
  EventHeader,
  JetStreamHeader,
  compareStreamConfig,
  eventSubject,
  instanceEvents,
  streamConfig,
  type EventStreamOptions,
} from '../../subjects/index.js';
import { AppendRefused, ConcurrencyConflict, StoreUnavailable } from './errors.js';
import type { AppendResult, EventEnvelope, EventStore, StoredEvent } from './types.js';
import { JetStreamWire, WireClosed, WireNoResponders, WireTimeout } from './wire.js';

/** JetStream error codes that mean "another writer got there first". */
const CONFLICT_CODES = new Set([10071, 10164]);
/** JetStream error codes that mean "the cluster cannot take it right now". */
const UNAVAILABLE_CODES = new Set([10008, 10009, 10023, 10029, 10076, 10077]);

const DIRECT_GET_PAGE = 1000;
/** JetStream's "no message found" (a message get that matched nothing). */
const NO_MESSAGE_FOUND = 10037;
/** Sends of one commit whose ack did not come before giving up with an unknown outcome. */
const PUBLISH_ATTEMPTS = 3;

/** Options of the JetStream event store. */
export interface JetStreamEventStoreOptions extends EventStreamOptions {
  /** How long to wait for an ack or a read before settling the outcome another way. */
  readonly timeoutMs: number;
}

/** The stream exists with settings that would break Strand's guarantees. */
export class IncompatibleStream extends Error {
  constructor(
    readonly stream: string,
    readonly differences: string[],
  ) {
    super(`stream ${stream} exists with an incompatible configuration:\n  - ${differences.join('\n  - ')}`);
    this.name = 'IncompatibleStream';
  }
}

interface PubAck {
  stream?: string;
  seq?: number;
  duplicate?: boolean;
  count?: number;
  error?: { code: number; err_code?: number; description?: string };
}

/**
 * Creates the event stream when missing, and refuses one whose configuration would break the
 * contract (a per-subject cap, an age limit, atomic publish off…), naming each difference.
 */
export async function ensureEventStream(nc: NatsConnection, o: EventStreamOptions, log?: Logger): Promise<StreamConfig> {
  const jsm = await jetstreamManager(nc);
  const wanted = streamConfig(o);
  const existing = await streamInfo(jsm, o.name);
  if (!existing) {
    const info = await jsm.streams.add(wanted);
    log?.info({ stream: o.name, replicas: o.replicas }, 'created event stream');
    return info.config;
  }
  const diffs = compareStreamConfig(existing, wanted);
  if (diffs.length > 0) throw new IncompatibleStream(o.name, diffs);
  return existing;
}

export async function streamInfo(jsm: JetStreamManager, name: string): Promise<StreamConfig | undefined> {
  try {
    return (await jsm.streams.info(name)).config;
  } catch (err) {
    if ((err as { name?: string }).name === 'StreamNotFoundError') return undefined;
    if ((err as { code?: number; api_error?: { err_code?: number } }).api_error?.err_code === 10059) return undefined;
    throw err;
  }
}

/**
 * The event store on one JetStream stream. Appends carry the instance's last stream sequence
 * as `Nats-Expected-Last-Subject-Sequence` over `evt.<aggregate>.<id>.*`; several events go
 * as one atomic batch with the expectation on the first message. Reads use batch direct get.
 */
export class JetStreamEventStore implements EventStore {
  private readonly wire: JetStreamWire;
  private readonly directGet: string;
  private readonly msgGet: string;

  constructor(
    nc: NatsConnection,
    private readonly o: JetStreamEventStoreOptions,
  ) {
    this.wire = new JetStreamWire(nc, o.timeoutMs);
    this.directGet = `$JS.API.DIRECT.GET.${o.name}`;
    // Answered by the stream leader only (direct get is answered by any replica that is roughly current).
    this.msgGet = `$JS.API.STREAM.MSG.GET.${o.name}`;
  }

  close(): void {
    this.wire.close();
  }

  async append(aggregate: string, id: string, expectedSeq: number, events: readonly EventEnvelope[]): Promise<AppendResult> {
    if (events.length === 0) throw new Error('append needs at least one event');
    // An unacknowledged publish is settled by reading the stream; when it is not there, the very
    // same messages (same IDs, same expectation) are sent again, so at most one copy can land.
    for (let attempt = 1; ; attempt++) {
      let ack: PubAck;
      try {
        ack = events.length === 1 ? await this.publishOne(aggregate, id, expectedSeq, events[0]!) : await this.publishBatch(aggregate, id, expectedSeq, events);
      } catch (err) {
        if (err instanceof WireTimeout || err instanceof WireClosed) {
          const settled = await this.settle(aggregate, id, expectedSeq, events, err);
          if (settled !== 'absent') return settled;
          if (attempt < PUBLISH_ATTEMPTS) continue;
          throw new StoreUnavailable(`append to ${aggregate}/${id} not acknowledged after ${attempt} attempts (${err.message}); its outcome is unknown`, true);
        }
        if (err instanceof WireNoResponders) throw new StoreUnavailable(`event stream ${this.o.name} is not reachable (no responders)`);
        throw err;
      }
      if (ack.error) {
        const code = ack.error.err_code ?? 0;
        const text = `${ack.error.description ?? 'append failed'} (${code})`;
        if (CONFLICT_CODES.has(code) && attempt > 1) {
          // A conflict on a resend: the first copy may have landed after all.
          const settled = await this.settle(aggregate, id, expectedSeq, events, new Error(text));
          if (settled !== 'absent') return settled;
        }
        if (CONFLICT_CODES.has(code)) throw new ConcurrencyConflict(text);
        if (code === 10201) {
          // The batch's message IDs are already stored: an earlier try of this very commit landed.
          const settled = await this.settle(aggregate, id, expectedSeq, events, new Error(text));
          if (settled !== 'absent') return settled;
        }
        if (UNAVAILABLE_CODES.has(code) || ack.error.code === 503) throw new StoreUnavailable(text);
        throw new AppendRefused(text, code);
      }
      const lastSeq = ack.seq ?? 0;
      if (events.length > 1 && ack.count !== events.length) {
        throw new AppendRefused(`atomic batch stored ${ack.count} of ${events.length} messages`);
      }
      return { firstSeq: lastSeq - events.length + 1, lastSeq };
    }
  }

  async load(aggregate: string, id: string, afterSeq: number, limit = Number.MAX_SAFE_INTEGER): Promise<{ events: StoredEvent[]; more: boolean }> {
    const filter = instanceEvents(aggregate, id);
    const events: StoredEvent[] = [];
    let from = afterSeq + 1;
    for (;;) {
      const want = Math.min(DIRECT_GET_PAGE, limit - events.length);
      let pending = 0;
      let got = 0;
      await this.read(JSON.stringify({ seq: from, batch: want, next_by_subj: filter }), (m) => {
        const code = m.headers?.code ?? 0;
        if (code === 404) return true;
        if (code === 204) {
          pending = Number(m.headers?.get('Nats-Num-Pending') || 0);
          return true;
        }
        if (code !== 0) throw new StoreUnavailable(`direct get failed: ${code} ${m.headers?.description ?? ''}`);
        events.push(toStored(m));
        got++;
        return false;
      });
      if (pending === 0 || got === 0) return { events, more: false };
      if (events.length >= limit) return { events, more: true };
      from = events[events.length - 1]!.seq + 1;
    }
  }

  async last(aggregate: string, id: string): Promise<StoredEvent | undefined> {
    let found: StoredEvent | undefined;
    await this.read(JSON.stringify({ last_by_subj: instanceEvents(aggregate, id) }), (m) => {
      const code = m.headers?.code ?? 0;
      if (code === 404) return true;
      if (code !== 0) throw new StoreUnavailable(`direct get failed: ${code} ${m.headers?.description ?? ''}`);
      found = toStored(m);
      return true;
    });
    return found;
  }

  async headSeq(aggregate: string, id: string): Promise<number> {
    const m = await this.leaderGet({ last_by_subj: instanceEvents(aggregate, id) }, `the last sequence of ${aggregate}/${id}`);
    return m?.seq ?? 0;
  }

  async loadThrough(aggregate: string, id: string, afterSeq: number, throughSeq: number): Promise<StoredEvent[]> {
    const { events } = await this.load(aggregate, id, afterSeq);
    let last = events.length > 0 ? events[events.length - 1]!.seq : afterSeq;
    // The replica that answered lags the leader: the few events it has not applied yet, one by one from the leader.
    while (last < throughSeq) {
      const m = await this.leaderGet({ seq: last + 1, next_by_subj: instanceEvents(aggregate, id) }, `events of ${aggregate}/${id}`);
      if (!m?.seq || !m.data) break;
      let json: unknown;
      try {
        json = JSON.parse(Buffer.from(m.data, 'base64').toString('utf8'));
      } catch {
        json = undefined;
      }
      events.push(isEnvelope(json) ? { seq: m.seq, envelope: json } : { seq: m.seq, envelope: NO_ENVELOPE, junk: 'not an event envelope' });
      last = m.seq;
    }
    if (last < throughSeq) throw new StoreUnavailable(`events of ${aggregate}/${id} through ${throughSeq} could not be read (got through ${last})`);
    return events;
  }

  /** A message get answered by the stream leader; undefined when nothing matches. */
  private async leaderGet(request: Record<string, unknown>, what: string): Promise<{ seq?: number; data?: string } | undefined> {
    let reply: Msg;
    try {
      reply = await this.wire.request(this.msgGet, JSON.stringify(request));
    } catch (err) {
      if (err instanceof WireTimeout || err instanceof WireClosed) throw new StoreUnavailable(`reading ${what}: ${err.message}`);
      if (err instanceof WireNoResponders) throw new StoreUnavailable(`event stream ${this.o.name} is not reachable (no responders)`);
      throw err;
    }
    let r: { message?: { seq?: number; data?: string }; error?: { code?: number; err_code?: number; description?: string } };
    try {
      r = JSON.parse(decoder.decode(reply.data)) as typeof r;
    } catch {
      throw new StoreUnavailable(`reading ${what}: unreadable reply`);
    }
    if (r.error) {
      if (r.error.err_code === NO_MESSAGE_FOUND) return undefined;
      throw new StoreUnavailable(`reading ${what}: ${r.error.description ?? 'error'} (${r.error.err_code ?? r.error.code ?? '?'})`);
    }
    return r.message;
  }

  private async read(request: string, onReply: (m: Msg) => boolean): Promise<void> {
    try {
      await this.wire.requestMany(this.directGet, request, onReply);
    } catch (err) {
      if (err instanceof WireTimeout || err instanceof WireClosed) throw new StoreUnavailable(`reading events: ${err.message}`);
      if (err instanceof WireNoResponders) throw new StoreUnavailable(`event stream ${this.o.name} is not reachable (no responders)`);
      throw err;
    }
  }

  private async publishOne(aggregate: string, id: string, expectedSeq: number, e: EventEnvelope): Promise<PubAck> {
    const h = eventHeaders(e);
    h.set(JetStreamHeader.ExpectedLastSubjectSequence, String(expectedSeq));
    h.set(JetStreamHeader.ExpectedLastSubjectSequenceSubject, instanceEvents(aggregate, id));
    const reply = await this.wire.request(eventSubject(aggregate, id, e.type), JSON.stringify(e), h);
    return parseAck(reply);
  }

  private async publishBatch(aggregate: string, id: string, expectedSeq: number, events: readonly EventEnvelope[]): Promise<PubAck> {
    const batchId = nuid.next();
    const last = events.length - 1;
    for (let i = 0; i < last; i++) {
      const e = events[i]!;
      const h = eventHeaders(e);
      h.set(JetStreamHeader.BatchId, batchId);
      h.set(JetStreamHeader.BatchSequence, String(i + 1));
      if (i === 0) {
        h.set(JetStreamHeader.ExpectedLastSubjectSequence, String(expectedSeq));
        h.set(JetStreamHeader.ExpectedLastSubjectSequenceSubject, instanceEvents(aggregate, id));
      }
      this.wire.publish(eventSubject(aggregate, id, e.type), JSON.stringify(e), h);
    }
    const e = events[last]!;
    const h = eventHeaders(e);
    h.set(JetStreamHeader.BatchId, batchId);
    h.set(JetStreamHeader.BatchSequence, String(last + 1));
    h.set(JetStreamHeader.BatchCommit, '1');
    const reply = await this.wire.request(eventSubject(aggregate, id, e.type), JSON.stringify(e), h);
    return parseAck(reply);
  }

  /**
   * An append whose ack never came may or may not be stored. Read the instance's events after
   * the expected sequence: ours there means it landed; nothing there means it has not (yet):
   * 'absent', and the caller sends the same messages again; someone else's means a conflict.
   */
  private async settle(
    aggregate: string,
    id: string,
    expectedSeq: number,
    events: readonly EventEnvelope[],
    cause: Error,
  ): Promise<AppendResult | 'absent'> {
    const firstId = events[0]!.id;
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const after = await this.load(aggregate, id, expectedSeq);
        const mine = after.events.find((s) => s.envelope.id === firstId);
        if (mine) return { firstSeq: mine.seq, lastSeq: mine.seq + events.length - 1 };
        if (after.events.length === 0) return 'absent';
        throw new ConcurrencyConflict(`another writer appended to ${aggregate}/${id} while our append was unacknowledged`);
      } catch (err) {
        if (err instanceof ConcurrencyConflict) throw err;
        await new Promise((r) => setTimeout(r, 100 * (attempt + 1)));
      }
    }
    throw new StoreUnavailable(`append to ${aggregate}/${id}: ${cause.message}, and its outcome could not be read back`, true);
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * An event message's headers, composed once as the NATS header block. nats-core's publish only
 * calls `encode()` on what it is given; building its general-purpose MsgHdrs (a map, key
 * canonicalisation and value checks on every set) cost a measurable share of each command.
 * Every value here is an ID, a type name, a number or a subject that the contract already
 * restricts to characters without CR or LF, so no escaping is needed.
 */
class EventHeaders {
  private block: string;
  constructor(e: EventEnvelope) {
    this.block = `NATS/1.0\r\n${JetStreamHeader.MsgId}: ${e.id}\r\n${EventHeader.EventType}: ${e.type}\r\n${EventHeader.Version}: ${e.version}\r\n`;
  }
  set(key: string, value: string): void {
    this.block += `${key}: ${value}\r\n`;
  }
  encode(): Uint8Array {
    return encoder.encode(`${this.block}\r\n`);
  }
}

function eventHeaders(e: EventEnvelope): EventHeaders & MsgHdrs {
  return new EventHeaders(e) as EventHeaders & MsgHdrs;
}

function parseAck(m: Msg): PubAck {
  if (m.headers?.code === 503) return { error: { code: 503, description: 'no responders' } };
  try {
    return JSON.parse(decoder.decode(m.data)) as PubAck;
  } catch {
    return { error: { code: 500, description: 'unreadable publish ack' } };
  }
}

const NO_ENVELOPE: EventEnvelope = Object.freeze({ id: '', type: '', aggregate: '', aggregateId: '', version: 0, schemaVersion: 0, time: '', data: null, metadata: {} });

function toStored(m: Msg): StoredEvent {
  const seq = Number(m.headers?.get('Nats-Sequence'));
  let json: unknown;
  try {
    json = JSON.parse(decoder.decode(m.data));
  } catch {
    return { seq, envelope: NO_ENVELOPE, junk: 'not JSON' };
  }
  return isEnvelope(json) ? { seq, envelope: json } : { seq, envelope: NO_ENVELOPE, junk: 'not an event envelope' };
}

/** Whether a decoded message has the envelope's shape (what its readers rely on; the data is the aggregate's to check). */
function isEnvelope(v: unknown): v is EventEnvelope {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const e = v as Record<string, unknown>;
  return (
    typeof e['id'] === 'string' &&
    typeof e['type'] === 'string' &&
    typeof e['aggregate'] === 'string' &&
    typeof e['aggregateId'] === 'string' &&
    Number.isSafeInteger(e['version']) &&
    (e['version'] as number) >= 1 &&
    Number.isSafeInteger(e['schemaVersion']) &&
    typeof e['time'] === 'string' &&
    'data' in e &&
    (e['metadata'] === undefined || (typeof e['metadata'] === 'object' && e['metadata'] !== null))
  );
}
