/**
 * Which live instance should own each item (a partition, a projection): a pure function of the
 * live members and of who holds what now, so every instance computes the same plan from the
 * same view, and it is tested without NATS.
 *
 * The rule is Akka's least-shard rule made exact: every member gets ⌊P/N⌋ or ⌈P/N⌉ items (the
 * extra ones go to the members that hold the most already), a member keeps what it holds up to
 * its share, and only the excess and the items of members that are gone change hands. So a
 * member joining takes exactly its share, each item from a member above the new share; a member
 * leaving gives away exactly its own items; nothing else moves. Where there is a choice (which
 * items a member keeps, who takes a free one), rendezvous hashing decides, so the plan does not
 * depend on the order anything was seen in.
 */

import { fnv1a32 } from './partition.js';

/** The weight of a member for an item: a well-mixed hash of both (FNV alone clusters on similar names). */
export function weight(member: string, item: string | number): number {
  let h = fnv1a32(member, ':', String(item));
  // murmur3's finaliser: spreads FNV's low-entropy bits.
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Orders members by their weight for an item, highest first (ties by name). */
function byWeight<T extends string | number>(item: T): (a: string, b: string) => number {
  return (a, b) => weight(b, item) - weight(a, item) || (a < b ? -1 : a > b ? 1 : 0);
}

/**
 * The plan: for each item, the member that should own it (undefined only when no member is
 * live). `held` says who holds each item now; holders that are not live count as nobody.
 */
export function plan<T extends string | number>(members: readonly string[], items: readonly T[], held: ReadonlyMap<T, string | undefined>): Map<T, string | undefined> {
  const live = [...new Set(members)].sort();
  const out = new Map<T, string | undefined>();
  if (live.length === 0) {
    for (const item of items) out.set(item, undefined);
    return out;
  }
  const holdings = new Map<string, T[]>(live.map((m) => [m, []]));
  const free: T[] = [];
  for (const item of items) {
    const h = held.get(item);
    const mine = h === undefined ? undefined : holdings.get(h);
    if (mine) mine.push(item);
    else free.push(item);
  }
  const base = Math.floor(items.length / live.length);
  let extra = items.length % live.length;
  // The members that hold the most keep the extra places: the fewest items move.
  const quota = new Map<string, number>();
  for (const m of [...live].sort((a, b) => holdings.get(b)!.length - holdings.get(a)!.length || (a < b ? -1 : 1))) {
    quota.set(m, base + (extra > 0 ? 1 : 0));
    if (extra > 0) extra--;
  }
  const load = new Map<string, number>();
  for (const m of live) {
    const mine = holdings.get(m)!;
    const q = quota.get(m)!;
    // Above its share: keeps the items it ranks highest, gives up the rest.
    const kept = mine.length <= q ? mine : [...mine].sort((a, b) => weight(m, b) - weight(m, a) || (String(a) < String(b) ? -1 : 1)).slice(0, q);
    const keptSet = new Set(kept);
    for (const item of mine) {
      if (keptSet.has(item)) out.set(item, m);
      else free.push(item);
    }
    load.set(m, kept.length);
  }
  free.sort((a, b) => (String(a) < String(b) ? -1 : String(a) > String(b) ? 1 : 0));
  for (const item of free) {
    const taker = live.filter((m) => load.get(m)! < quota.get(m)!).sort(byWeight(item))[0]!;
    out.set(item, taker);
    load.set(taker, load.get(taker)! + 1);
  }
  // Keep the items' own order in the result.
  return new Map(items.map((item) => [item, out.get(item)]));
}
