import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { plan } from './assignment.js';
import { fnv1a32, partitionOf } from './partition.js';

describe('partitions', () => {
  it('hash as nats-server partition() does: FNV-1a 32 over the tokens, concatenated, modulo n', () => {
    // Reference values of FNV-1a 32 (the published test vectors).
    expect(fnv1a32('')).toBe(0x811c9dc5);
    expect(fnv1a32('a')).toBe(0xe40c292c);
    expect(fnv1a32('foobar')).toBe(0xbf9cf968);
    expect(fnv1a32('foo', 'bar')).toBe(fnv1a32('foobar'));
    expect(partitionOf('task', 'task-789', 64)).toBe(fnv1a32('tasktask-789') % 64);
    for (let i = 0; i < 1000; i++) {
      const p = partitionOf('order', `o-${i}`, 64);
      expect(p).toBeGreaterThanOrEqual(0);
      expect(p).toBeLessThan(64);
    }
  });
});

describe('assignment', () => {
  const P = 64;
  const items = Array.from({ length: P }, (_, i) => i);
  const none = new Map<number, string | undefined>();
  const members = (n: number): string[] => Array.from({ length: n }, () => randomUUID() as string);
  const counts = (a: Map<number, string | undefined>, m: readonly string[]) => m.map((x) => [...a.values()].filter((y) => y === x).length);
  const moved = (a: Map<number, string | undefined>, b: Map<number, string | undefined>) => items.filter((p) => a.get(p) !== b.get(p));

  it('gives every item to exactly one live member, each ⌊P/N⌋ or ⌈P/N⌉, the same in any member order', () => {
    for (let n = 1; n <= 7; n++) {
      const m = members(n);
      const a = plan(m, items, none);
      expect([...a.values()].every((x) => x !== undefined && m.includes(x))).toBe(true);
      const c = counts(a, m);
      expect(Math.max(...c) - Math.min(...c)).toBeLessThanOrEqual(1);
      expect(c.reduce((x, y) => x + y, 0)).toBe(P);
      expect(plan([...m].reverse(), items, none)).toEqual(a);
    }
    expect([...plan([], items, none).values()].every((x) => x === undefined)).toBe(true);
  });

  it('is stable: once carried out, it moves nothing', () => {
    for (let n = 1; n <= 7; n++) {
      const m = members(n);
      const a = plan(m, items, none);
      expect(plan(m, items, a)).toEqual(a);
    }
  });

  it('a member joining takes exactly its share, and nothing else moves', () => {
    for (let n = 1; n <= 7; n++) {
      const m = members(n);
      const before = plan(m, items, none);
      const joiner: string = randomUUID();
      const after = plan([...m, joiner], items, before);
      const changed = moved(before, after);
      expect(changed.every((p) => after.get(p) === joiner)).toBe(true);
      expect(changed.length).toBe(Math.floor(P / (n + 1)));
      const c = counts(after, [...m, joiner]);
      expect(Math.max(...c) - Math.min(...c)).toBeLessThanOrEqual(1);
    }
  });

  it('a member leaving (or dying: its items count as held by nobody) gives away exactly its own items', () => {
    for (let n = 2; n <= 7; n++) {
      const m = members(n);
      const before = plan(m, items, none);
      const leaver = m[Math.floor(n / 2)]!;
      const rest = m.filter((x) => x !== leaver);
      const after = plan(rest, items, before);
      for (const p of items) if (before.get(p) !== leaver) expect(after.get(p)).toBe(before.get(p));
      expect(moved(before, after).length).toBe([...before.values()].filter((x) => x === leaver).length);
      const c = counts(after, rest);
      expect(Math.max(...c) - Math.min(...c)).toBeLessThanOrEqual(1);
    }
  });

  it('works for named items (projections) as for numbered ones', () => {
    const names = ['task_list_view', 'member_task_history', 'task_analytics', 'order_list', 'eligibility_metrics'];
    const m = members(3);
    const a = plan(m, names, new Map());
    expect(counts(a as unknown as Map<number, string | undefined>, m).sort()).toEqual([1, 2, 2]);
  });
});
