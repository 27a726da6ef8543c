import type { EventMetadata } from '../aggregate/types.js';

/** One event as it is stored: the JSON body of a message on `evt.<aggregate>.<id>.<EventType>`. */
export interface EventEnvelope {
  /** Unique event ID; also the message's `Nats-Msg-Id`. */
  readonly id: string;
  readonly type: string;
  readonly aggregate: string;
  readonly aggregateId: string;
  /** The aggregate's version after this event: 1, 2, 3, … with no gaps. */
  readonly version: number;
  /** The version of the event type's schema the data was written with. */
  readonly schemaVersion: number;
  /** ISO-8601 time the command was decided at. */
  readonly time: string;
  /** Who issued the command, as given in `Strand-Actor`: `<type>:<id>`. */
  readonly actor?: string;
  readonly data: unknown;
  readonly metadata: EventMetadata;
}

/** An event read back from the stream, with its stream sequence. */
export interface StoredEvent {
  readonly seq: number;
  readonly envelope: EventEnvelope;
  /**
   * Set when the message on the instance's subject is not an event envelope (anyone allowed to
   * publish on `evt.>` can put one there): it holds a place in the sequence, which the next
   * append must name, and nothing else. `envelope` is then empty. Says what is wrong with it.
   */
  readonly junk?: string;
}

/** Where an append landed: events of one commit are adjacent, so the first sequence is enough. */
export interface AppendResult {
  readonly firstSeq: number;
  readonly lastSeq: number;
}

/** The event store's contract: append under an expected sequence, and load an instance's history. */
export interface EventStore {
  /**
   * Appends all events of one commit, or none. `expectedSeq` is the stream sequence of the
   * instance's last event (0 for none). Throws {@link ConcurrencyConflict} when another
   * writer got there first, {@link StoreUnavailable} when the outcome could not be settled.
   */
  append(aggregate: string, id: string, expectedSeq: number, events: readonly EventEnvelope[]): Promise<AppendResult>;
  /** Events of one instance with sequence greater than `afterSeq`, in order, at most `limit`. */
  load(aggregate: string, id: string, afterSeq: number, limit?: number): Promise<{ events: StoredEvent[]; more: boolean }>;
  /** The instance's last event, if any (read from any replica: it may lag the leader on a cluster). */
  last(aggregate: string, id: string): Promise<StoredEvent | undefined>;
  /**
   * The stream sequence of the instance's last event (0: none) as the stream's leader has it:
   * every append acknowledged before the call is counted. Reads above may be answered by a
   * replica that lags; this one may not. For confirming that a decision not checked by an
   * append (a rejection, a no-op, a wrong expected version) was made on the latest state.
   */
  headSeq(aggregate: string, id: string): Promise<number>;
  /**
   * Events of one instance after `afterSeq`, complete at least through `throughSeq` (a sequence
   * {@link headSeq} returned): where the replica that answers a read lags, the rest comes from
   * the leader.
   */
  loadThrough(aggregate: string, id: string, afterSeq: number, throughSeq: number): Promise<StoredEvent[]>;
}
