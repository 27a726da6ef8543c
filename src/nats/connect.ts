/**
 * Connecting to NATS at start, and waiting out what a restart meets on a cluster: the one
 * configured server down, JetStream still electing its leaders, a stream without a leader for a
 * few seconds. An instance keeps trying with backoff and says so in its log; it gives up only
 * when asked to stop, or on what no wait can fix (a server too old, a stream configured wrongly).
 */
import { JetStreamApiError } from '@nats-io/jetstream';
import { AuthorizationError, NoRespondersError, TimeoutError, UserAuthenticationExpiredError, type NatsConnection } from '@nats-io/nats-core';
import { connect } from '@nats-io/transport-node';
import type { Logger } from 'pino';

/** First and longest pause between attempts. */
const FIRST_WAIT_MS = 250;
const MAX_WAIT_MS = 5_000;

/**
 * The servers of `NATS_URL`: one URL, or several separated by commas (any of them will do; the
 * client learns the rest of the cluster from the first it reaches). Empty entries are ignored.
 */
export function natsServers(url: string): string[] {
  return url
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

/** Why an entry of `NATS_URL` is not a server address, or undefined when it is one. */
export function badNatsServer(entry: string): string | undefined {
  if (/\s/.test(entry)) return `${JSON.stringify(entry)} contains whitespace`;
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(entry) ? entry : `nats://${entry}`;
  let u: URL;
  try {
    u = new URL(withScheme);
  } catch {
    return `${JSON.stringify(entry)} is not a URL`;
  }
  if (!['nats:', 'tls:', 'ws:', 'wss:'].includes(u.protocol)) return `${JSON.stringify(entry)}: the scheme must be nats://, tls://, ws:// or wss://`;
  if (!u.hostname) return `${JSON.stringify(entry)} names no host`;
  return undefined;
}

/** Something the broker should soon be able to do is not done yet (e.g. a new bucket's first write while its stream elects a leader): waits retry it. */
export class NotReadyYet extends Error {
  constructor(message: string, cause?: unknown) {
    super(message, { cause });
    this.name = 'NotReadyYet';
  }
}

/** Start was abandoned because the process was asked to stop. */
export class StartAborted extends Error {
  constructor(what: string) {
    super(`stopped while waiting for ${what}`);
    this.name = 'StartAborted';
  }
}

/** Options of the waits at start. */
export interface WaitOptions {
  readonly log: Logger;
  /** Aborted when the process is asked to stop: the wait ends with {@link StartAborted}. */
  readonly signal?: AbortSignal | undefined;
}

/**
 * Runs `attempt` until it succeeds, waiting with exponential backoff (250 ms doubling to 5 s)
 * after each failure that `transient` accepts, and logging each wait. Anything else is thrown.
 */
export async function untilReady<T>(what: string, attempt: () => Promise<T>, transient: (err: unknown) => boolean, o: WaitOptions): Promise<T> {
  const started = Date.now();
  for (let n = 1; ; n++) {
    if (o.signal?.aborted) throw new StartAborted(what);
    try {
      const r = await attempt();
      if (n > 1) o.log.info({ what, attempts: n, waitedMs: Date.now() - started }, `${what}: ready after ${n} attempts`);
      return r;
    } catch (err) {
      if (!transient(err)) throw err;
      const wait = Math.min(MAX_WAIT_MS, FIRST_WAIT_MS * 2 ** Math.min(n - 1, 5));
      o.log.warn({ what, attempt: n, retryInMs: wait, err: { name: (err as Error)?.name, message: (err as Error)?.message } }, `${what} not ready (${(err as Error)?.message ?? String(err)}); retrying in ${wait} ms`);
      await sleep(wait, o.signal);
    }
  }
}

/** Whether a JetStream API failure is one a wait can fix: a timeout, no responders, or a 503 (no leader yet, still starting). */
export function isTransientJetStream(err: unknown): boolean {
  if (err instanceof TimeoutError || err instanceof NoRespondersError || err instanceof NotReadyYet) return true;
  if (err instanceof JetStreamApiError) return err.status === 503 || err.code === 10009; // 10009: not the leader (an election is under way)
  const name = (err as { name?: unknown } | null)?.name;
  // nats.js names some of its errors without exporting a class for every one.
  return name === 'TimeoutError' || name === 'NoRespondersError' || name === 'RequestError' || name === 'ConnectionError' || name === 'ClosedConnectionError';
}

/**
 * Connects to any of `servers`, trying again with backoff while none answers, then keeps
 * reconnecting for the life of the connection (to whichever server of the cluster is up).
 */
export function connectNats(servers: readonly string[], name: string, o: WaitOptions, credentials?: { readonly user: string; readonly pass: string }): Promise<NatsConnection> {
  return untilReady(
    `NATS at ${servers.join(',')}`,
    () =>
      connect({
        servers: [...servers],
        ...(credentials ?? {}),
        name,
        noAsyncTraces: true,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 250,
        timeout: 5_000,
      }),
    // A refused or timed-out connection may succeed later; credentials the server refuses will not.
    (err) => !(err instanceof AuthorizationError || err instanceof UserAuthenticationExpiredError),
    o,
  );
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
  });
}
