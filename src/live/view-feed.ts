import type { LiveChange } from '../projections/runner.js';
import type { Row } from '../projections/types.js';
import type { Connection } from './connection.js';
import type { SubscribeViewMessage } from './protocol.js';

/**
 * The gateway's subscriptions and what it knows of each view's change feed: the batches kept
 * for resuming clients, and the indexes that let a change reach only the subscriptions it
 * concerns.
 */

/** One applied batch's changes to a view, as the gateway keeps them. */
export interface Batch {
  readonly version: number;
  readonly changes: readonly LiveChange[];
  /** When the batch's last event was decided (ms since the epoch), for push latency. */
  readonly eventMs?: number;
}

/** Filtered subscriptions with the same filter: a change is matched once for all of them. */
export interface FilterGroup {
  readonly id: string;
  /** [API column, value] pairs, ANDed; empty: every row. */
  readonly filter: readonly (readonly [string, string])[];
  readonly subs: Set<ViewSub>;
  /** Keys of the rows last seen matching this filter (sent, or in a snapshot): where a row that leaves is deleted. */
  readonly rows: Set<string>;
}

export const NO_GROUPS: readonly FilterGroup[] = [];

/**
 * What the gateway knows of one view's change feed, and its subscriptions indexed so that a
 * change visits only those it concerns: key subscriptions by key, filtered ones by filter group
 * (groups indexed by the value of their first filter column), and, per row key, the groups the
 * row last matched, so a row leaving a filter is deleted for those subscriptions, and only them.
 * What is kept is per group and row, not per subscription: many clients watching one board
 * cost one entry per row.
 */
export class ViewFeed {
  /** Every change with a version above this is in `buffer` (undefined: nothing known yet). */
  coveredFrom: number | undefined;
  /**
   * Every batch after this checkpoint has been heard (or its gap handled) since the feed was
   * last (re)started; unlike `coveredFrom` it does not move as the buffer is trimmed.
   */
  heardFrom: number | undefined;
  buffer: Batch[] = [];
  /** Changes kept in `buffer`, summed over its batches. */
  size = 0;
  readonly subs = new Set<ViewSub>();
  /** Subscriptions taking their snapshot: batches queue up for them. */
  readonly joining = new Set<ViewSub>();
  readonly byKey = new Map<string, Set<ViewSub>>();
  readonly groups = new Map<string, FilterGroup>();
  /** First filter column → its value → groups. */
  readonly index = new Map<string, Map<string, Set<FilterGroup>>>();
  readonly unfiltered = new Set<FilterGroup>();
  /** Row key → the groups it last matched. */
  readonly placed = new Map<string, readonly FilterGroup[]>();
  /** Resumed filtered subscriptions: what their clients hold is unknown. */
  readonly resuming = new Set<ViewSub>();
  constructor(readonly name: string) {}

  add(sub: ViewSub): void {
    this.subs.add(sub);
    if (sub.request.key !== undefined) {
      const k = keyString(sub.request.key);
      let set = this.byKey.get(k);
      if (!set) this.byKey.set(k, (set = new Set()));
      set.add(sub);
      return;
    }
    const filter = [...sub.filterColumns].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const id = JSON.stringify(filter);
    let g = this.groups.get(id);
    if (!g) {
      g = { id, filter, subs: new Set(), rows: new Set() };
      this.groups.set(id, g);
      const first = filter[0];
      if (!first) this.unfiltered.add(g);
      else {
        let byValue = this.index.get(first[0]);
        if (!byValue) this.index.set(first[0], (byValue = new Map()));
        let set = byValue.get(first[1]);
        if (!set) byValue.set(first[1], (set = new Set()));
        set.add(g);
      }
    }
    g.subs.add(sub);
    sub.group = g;
  }

  remove(sub: ViewSub): void {
    if (!this.subs.delete(sub)) return;
    this.joining.delete(sub);
    this.resuming.delete(sub);
    if (sub.request.key !== undefined) {
      const k = keyString(sub.request.key);
      const set = this.byKey.get(k);
      set?.delete(sub);
      if (set?.size === 0) this.byKey.delete(k);
      return;
    }
    const g = sub.group;
    if (!g) return;
    g.subs.delete(sub);
    if (g.subs.size > 0) return;
    this.groups.delete(g.id);
    const first = g.filter[0];
    if (!first) this.unfiltered.delete(g);
    else {
      const byValue = this.index.get(first[0]);
      const set = byValue?.get(first[1]);
      set?.delete(g);
      if (set?.size === 0) byValue!.delete(first[1]);
      if (byValue?.size === 0) this.index.delete(first[0]);
    }
    for (const k of g.rows) this.unplace(k, g);
  }

  /** The groups whose filter this row matches. */
  matching(row: Row): FilterGroup[] {
    const out: FilterGroup[] = [];
    for (const g of this.unfiltered) out.push(g);
    for (const [col, byValue] of this.index) {
      const set = byValue.get(String(row[col]));
      if (!set) continue;
      for (const g of set) if (g.filter.every(([c, v]) => String(row[c]) === v)) out.push(g);
    }
    return out;
  }

  /** Records that row `k` now matches exactly `groups`. */
  place(k: string, before: readonly FilterGroup[], groups: readonly FilterGroup[]): void {
    for (const g of before) if (!groups.includes(g)) g.rows.delete(k);
    for (const g of groups) g.rows.add(k);
    if (groups.length > 0) this.placed.set(k, groups);
    else this.placed.delete(k);
  }

  /** A snapshot gave the group's clients row `k`. */
  placeOne(k: string, g: FilterGroup): void {
    if (g.rows.has(k)) return;
    g.rows.add(k);
    this.placed.set(k, [...(this.placed.get(k) ?? NO_GROUPS), g]);
  }

  private unplace(k: string, g: FilterGroup): void {
    const groups = this.placed.get(k);
    if (!groups) return;
    const rest = groups.filter((x) => x !== g);
    if (rest.length > 0) this.placed.set(k, rest);
    else this.placed.delete(k);
  }
}

export interface Sub {
  readonly conn: Connection;
  readonly id: string;
  joining: boolean;
}

export interface ViewSub extends Sub {
  readonly kind: 'view';
  readonly feed: ViewFeed;
  readonly request: SubscribeViewMessage;
  readonly projection: string;
  readonly filterColumns: readonly [string, string][];
  /** Batches that arrived while the snapshot was being read. */
  pending: Batch[];
  /** The last version sent (snapshot checkpoint, resume point, or batch). */
  version: number;
  /** Resumed: which rows the client holds is unknown. */
  resuming: boolean;
  /** A gap was seen while it joined: resend a snapshot once live. */
  stale?: boolean;
  /** Its filter group (filtered subscriptions). */
  group?: FilterGroup;
}

/** A row key as the gateway indexes it: `5` and `"5"` are the same key (a client may send either). */
export function keyString(k: unknown): string {
  return typeof k === 'string' ? k : typeof k === 'number' ? String(k) : JSON.stringify(k);
}

