/** The live feed's messages on NATS (src/live/feed-message.ts): a batch too large for one message goes in parts and comes back whole. */
import { describe, expect, it } from 'vitest';
import { FeedAssembler, feedTexts, type FeedPart } from '../src/live/feed-message.js';
import type { LiveChange, LiveFeedMessage } from '../src/projections/runner.js';

function rows(view: string, n: number, size: number): LiveChange[] {
  return Array.from({ length: n }, (_, i) => ({ key: `${view}-${i}`, op: 'upsert' as const, row: { id: `${view}-${i}`, body: 'x'.repeat(size) } }));
}

const batch: LiveFeedMessage = {
  projection: 'p',
  checkpoint: 120,
  prev: 100,
  eventTime: '2026-01-01T00:00:00.000Z',
  views: { a: [...rows('a', 30, 900), { key: 'gone', op: 'delete' }], b: rows('b', 12, 2000), c: [] },
};

/** What a gateway makes of the texts, in order. */
function assemble(texts: readonly string[], assembler = new FeedAssembler()): (LiveFeedMessage | undefined)[] {
  return texts.map((t) => assembler.add(JSON.parse(t) as FeedPart));
}

describe('feed messages', () => {
  it('a batch that fits is one message, the batch as it is', () => {
    const texts = feedTexts(batch, 1_000_000);
    expect(texts).toEqual([JSON.stringify(batch)]);
    expect(assemble(texts)).toEqual([batch]);
  });

  it('a batch past the limit goes in parts no larger than it, and is whole again once the last part is in', () => {
    const texts = feedTexts(batch, 8 * 1024);
    expect(texts.length).toBeGreaterThan(5);
    for (const t of texts) expect(Buffer.byteLength(t)).toBeLessThanOrEqual(8 * 1024);
    const parts = texts.map((t) => JSON.parse(t) as FeedPart);
    expect(parts.map((p) => [p.part, p.parts, p.checkpoint, p.prev])).toEqual(parts.map((_, i) => [i + 1, texts.length, 120, 100]));
    const out = assemble(texts);
    expect(out.slice(0, -1).every((m) => m === undefined)).toBe(true);
    const { c: _empty, ...changed } = batch.views;
    expect(out.at(-1)).toEqual({ ...batch, views: changed });
  });

  it('a row change that cannot fit even alone sends the batch as partial: gateways resynchronise', () => {
    const huge: LiveFeedMessage = { projection: 'p', checkpoint: 5, prev: 4, views: { a: rows('a', 1, 20_000) } };
    expect(feedTexts(huge, 8 * 1024).map((t) => JSON.parse(t))).toEqual([{ projection: 'p', checkpoint: 5, prev: 4, partial: true, views: {} }]);
  });

  it('a part missing or out of order leaves the batch unapplied; the next batch is taken as it comes', () => {
    const texts = feedTexts(batch, 8 * 1024);
    const next: LiveFeedMessage = { projection: 'p', checkpoint: 130, prev: 120, views: { a: rows('a', 1, 10) } };
    const assembler = new FeedAssembler();
    // The second part lost: nothing comes out, not even when the others arrive.
    expect(assemble([texts[0]!, ...texts.slice(2)], assembler).every((m) => m === undefined)).toBe(true);
    expect(assembler.add(next)).toEqual(next);
    // Two batches' parts interleaved cannot happen from one runner, but must not mix either.
    const other = feedTexts({ ...batch, checkpoint: 140, prev: 130 }, 8 * 1024);
    expect(assemble([texts[0]!, other[1]!, ...texts.slice(1)], assembler).filter((m) => m !== undefined)).toEqual([]);
    // A first part starts over.
    expect(assemble(texts, assembler).at(-1)?.checkpoint).toBe(120);
  });

  it('keeps view names from the network off the prototype', () => {
    const text = (part: number) => JSON.stringify({ projection: 'p', checkpoint: 2, prev: 1, part, parts: 2, views: JSON.parse('{"__proto__":[{"key":"k","op":"delete"}]}') });
    const merged = assemble([text(1), text(2)]).at(-1)!;
    expect(Object.getPrototypeOf({})).toEqual({});
    expect(Object.keys(merged.views)).toEqual(['__proto__']);
  });
});
