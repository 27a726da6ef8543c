import type { Aggregate } from '../aggregate/define.js';
import type { EventData, EventMetadata, EventSpec } from '../aggregate/types.js';

/** An event as a projection handler sees it: the envelope (data upcast to the current schema) and its stream sequence. */
export interface ProjectionEvent<D = unknown> {
  /** Stream sequence: the projection's checkpoint after this event. */
  readonly seq: number;
  readonly id: string;
  readonly type: string;
  readonly aggregate: string;
  readonly aggregateId: string;
  readonly version: number;
  readonly time: string;
  readonly actor?: string;
  readonly data: D;
  readonly metadata: EventMetadata;
}

/** A row: column name (as in SQL) to value. */
export type Row = Record<string, unknown>;

/**
 * The write side of one batch's transaction, handed to every handler. Row operations are
 * buffered and merged per key, then written as multi-row statements when the batch commits:
 * that is what lets a projection keep up with the stream. Reads see the batch's own writes.
 */
export interface ProjectionStore {
  /** Inserts the row, or sets the given columns of the existing row with the same key. */
  upsert(table: string, row: Row): void;
  /** Adds to numeric columns of the row with this key, creating it (other columns default) when missing. */
  increment(table: string, key: Row, deltas: Record<string, number>): void;
  /** Deletes the row with this key. */
  remove(table: string, key: Row): void;
  /** The row with this key as the batch has left it so far, or undefined. */
  get(table: string, key: Row): Promise<Row | undefined>;
  /** Runs any SQL in the batch's transaction (pending row operations are written first). */
  sql(text: string, params?: readonly unknown[]): Promise<Row[]>;
}

/** Handles one event type; runs inside the batch's transaction. */
export type EventHandler<D> = (event: ProjectionEvent<D>, store: ProjectionStore) => void | Promise<void>;

/** The handlers a projection has for one aggregate's events, keyed by event type. */
export type AggregateHandlers<E extends Record<string, EventSpec>> = {
  readonly [K in keyof E & string]?: EventHandler<EventData<E[K]>>;
};

/** One aggregate's events a projection consumes. */
export interface Subscription {
  readonly aggregate: Aggregate;
  readonly handlers: Readonly<Record<string, EventHandler<unknown> | undefined>>;
}

/** A table the projection writes through {@link ProjectionStore}: its primary key columns. */
export interface TableSpec {
  readonly key: readonly string[];
  /**
   * The key of the row an event's handler will `get` from this table, if any. Declaring it
   * lets a batch read all those rows in one query instead of one round trip per event.
   */
  readonly prefetch?: (event: ProjectionEvent) => Row | undefined;
}

/** A queryable view: what `GET /views/:view` may read and filter on. */
export interface ViewSpec {
  /** The table or SQL view (in the projection's own schema) rows come from. */
  readonly relation: string;
  /** API column → SQL column. Only these are returned and only these can be filtered. */
  readonly columns: Readonly<Record<string, string>>;
  /** The API column that identifies a row (`GET /views/:view/:key`) and orders pages. */
  readonly key: string;
  /** Page order on the key (default `asc`). */
  readonly order?: 'asc' | 'desc';
  /** API columns a client may filter on with `?column=value` (each should be indexed). */
  readonly filters: readonly string[];
}

/** What a user writes to declare a projection. */
export interface ProjectionSpec {
  /** Lower case, `[a-z][a-z0-9_]*`: names its schema, consumer and metrics. */
  readonly name: string;
  /** Bump to rebuild from the start of the stream into new tables. */
  readonly version: number;
  /** SQL run once, in order, in the projection's own schema: tables, indexes, views. */
  readonly migrations: readonly string[];
  readonly tables: Readonly<Record<string, TableSpec>>;
  readonly views: Readonly<Record<string, ViewSpec>>;
  readonly handlers: readonly Subscription[];
}

/** A defined projection, as the runner uses it. */
export interface Projection extends ProjectionSpec {
  /** `evt.<aggregate>.*.<EventType>` for every handled event type. */
  readonly filterSubjects: readonly string[];
  /** Finds the handler of an event, if any. */
  handlerFor(aggregate: string, type: string): EventHandler<unknown> | undefined;
  aggregateFor(name: string): Aggregate | undefined;
}
