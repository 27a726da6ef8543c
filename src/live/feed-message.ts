import type { LiveChange, LiveFeedMessage } from '../projections/runner.js';

/**
 * The live feed's messages on NATS (`strand.live.changes.<projection>`), as runners publish them
 * and gateways read them. A batch's changes can outgrow the server's `max_payload` (1 MiB by
 * default: 500 events of 2 KB rows do), and NATS refuses to publish such a message at all; the
 * other instances' gateways then saw a gap and sent every subscriber a fresh snapshot (capped
 * at its `limit`). So a message too large is sent as several, `part` 1..`parts`, each with the
 * batch's `checkpoint` and `prev` and some of its changes; a gateway applies the batch once it
 * has every part, in order. A part lost leaves the batch unapplied, and the next message's
 * `prev` shows the gap, as for any lost message. A gateway that does not know parts sees the
 * second part's `prev` as a gap: a fresh snapshot, correct if not cheap.
 */

/** A feed message as it travels: the whole batch, or one part of it. */
export type FeedPart = LiveFeedMessage & { readonly part?: number; readonly parts?: number };

/**
 * The texts to publish for `message`: itself when it fits in `maxBytes`, else its parts. A
 * single row change larger than `maxBytes` cannot be sent at all: the batch then goes as one
 * message marked `partial` (its rows left out), which gateways treat as a gap.
 */
export function feedTexts(message: LiveFeedMessage, maxBytes: number): string[] {
  const whole = JSON.stringify(message);
  if (Buffer.byteLength(whole) <= maxBytes) return [whole];
  const { views, ...head } = message;
  const frame = Buffer.byteLength(JSON.stringify({ ...head, part: Number.MAX_SAFE_INTEGER, parts: Number.MAX_SAFE_INTEGER, views: {} }));
  const room = maxBytes - frame;
  const parts: Map<string, string[]>[] = [];
  let current = new Map<string, string[]>();
  let size = 0;
  for (const [view, changes] of Object.entries(views)) {
    const opening = Buffer.byteLength(JSON.stringify(view)) + 4; // "view":[ ... ],
    for (const c of changes) {
      const text = JSON.stringify(c);
      const cost = Buffer.byteLength(text) + 1;
      if (cost + opening > room) return [JSON.stringify({ ...head, partial: true, views: {} })];
      const extra = cost + (current.has(view) ? 0 : opening);
      if (size + extra > room && size > 0) {
        parts.push(current);
        current = new Map();
        size = 0;
      }
      let list = current.get(view);
      if (!list) {
        current.set(view, (list = []));
        size += opening;
      }
      list.push(text);
      size += cost;
    }
  }
  if (size > 0) parts.push(current);
  return parts.map((p, i) => {
    const prefix = JSON.stringify({ ...head, part: i + 1, parts: parts.length }).slice(0, -1);
    const body = [...p].map(([view, texts]) => `${JSON.stringify(view)}:[${texts.join(',')}]`).join(',');
    return `${prefix},"views":{${body}}}`;
  });
}

/** Puts parts back together, per projection; a whole message passes through. */
export class FeedAssembler {
  private readonly open = new Map<string, FeedPart[]>();

  /** The batch once complete; undefined while parts are missing, or for a part out of order (the assembly is dropped). */
  add(m: FeedPart): LiveFeedMessage | undefined {
    if (m.parts === undefined || m.parts <= 1) {
      this.open.delete(m.projection); // an unfinished batch before it lost a part
      return m;
    }
    if (m.part === 1) this.open.set(m.projection, []);
    const got = this.open.get(m.projection);
    const first = got?.[0];
    if (!got || m.part !== got.length + 1 || (first && (first.checkpoint !== m.checkpoint || first.prev !== m.prev || first.parts !== m.parts))) {
      this.open.delete(m.projection);
      return undefined;
    }
    got.push(m);
    if (got.length < m.parts) return undefined;
    this.open.delete(m.projection);
    // Names come off the network: no prototype a "__proto__" could reach.
    const views = Object.create(null) as Record<string, LiveChange[]>;
    for (const part of got) for (const [view, changes] of Object.entries(part.views)) (views[view] ??= []).push(...changes);
    const { part: _part, parts: _parts, views: _views, ...head } = m;
    return { ...head, views };
  }
}
