/** Events decoded or handled between two looks at the sockets. */
export const YIELD_EVERY = 100;

/**
 * Lets the event loop handle I/O before going on. A runner plans its next batch while the
 * previous one commits, and pg sends the batch queued behind it only when the event loop sees
 * the commit's reply: planning in slices keeps PostgreSQL from waiting on JavaScript.
 */
export function yieldToIo(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
