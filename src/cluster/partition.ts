/**
 * Partitions: every aggregate instance belongs to one of a fixed number of partitions, by the
 * same hash nats-server's `{{partition(n, …)}}` subject mapping computes (FNV-1a 32 over the
 * chosen tokens, concatenated with no separator, modulo n: server/subject_transform.go). So a
 * server-side mapping of `cmd.<aggregate>.<id>.<Command>` on tokens 1 and 2 (the wildcards for
 * aggregate and id) and Strand agree on every instance's partition. Changing the count
 * reshuffles nearly every instance: it is fixed per deployment.
 */

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

/** FNV-1a 32 of a string's UTF-8 bytes (aggregate names and IDs are ASCII: one byte a character). */
export function fnv1a32(...parts: string[]): number {
  let h = FNV_OFFSET;
  for (const s of parts) {
    for (let i = 0; i < s.length; i++) {
      let c = s.charCodeAt(i);
      if (c < 0x80) {
        h = Math.imul(h ^ c, FNV_PRIME);
        continue;
      }
      // Beyond ASCII (not in Strand's own subjects, but the hash is general): UTF-8 bytes.
      const bytes = Buffer.from(String.fromCodePoint(s.codePointAt(i)!), 'utf8');
      if (c >= 0xd800 && c <= 0xdbff) i++;
      for (c of bytes) h = Math.imul(h ^ c, FNV_PRIME);
    }
  }
  return h >>> 0;
}

/** The partition of an aggregate instance: what `{{partition(n,1,2)}}` gives for `cmd.<aggregate>.<id>.<Command>`. */
export function partitionOf(aggregate: string, id: string, partitions: number): number {
  return fnv1a32(aggregate, id) % partitions;
}
