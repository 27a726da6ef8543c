/** Helpers to run Strand instances and send commands in integration tests. */
import { connect, headers, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import pino from 'pino';
import { aggregates as exampleAggregates, projections as exampleProjections } from '../../actors/index.js';
import type { Projection } from '../../src/projections/types.js';
import type { Aggregate } from '../../src/aggregate/define.js';
import { Strand } from '../../src/app.js';
import type { CommandReply } from '../../src/commands/types.js';
import { loadConfig, type Config } from '../../src/config.js';
import type { EventEnvelope } from '../../src/eventstore/types.js';

/** Starts a Strand instance on a test server with quiet logs; `env` overrides configuration. */
export async function startStrand(natsUrl: string, env: Record<string, string> = {}, aggregates: readonly Aggregate[] = exampleAggregates): Promise<Strand> {
  const config: Config = loadConfig({ STRAND_ACTOR_IDLE_MS: '600000', ...env });
  const log = pino({ level: process.env['TEST_LOG_LEVEL'] ?? 'silent' });
  return Strand.start({ config, aggregates, natsUrl, log, defaultMetrics: false });
}

/** Starts a Strand instance with a read side on `databaseUrl` (the example projections unless others are given). */
export async function startStrandWithDb(
  natsUrl: string,
  databaseUrl: string,
  env: Record<string, string> = {},
  projections: readonly Projection[] = exampleProjections,
  aggregates: readonly Aggregate[] = exampleAggregates,
): Promise<Strand> {
  const config: Config = loadConfig({ STRAND_ACTOR_IDLE_MS: '600000', STRAND_PROJECTION_STANDBY_MS: '500', ...env });
  const log = pino({ level: process.env['TEST_LOG_LEVEL'] ?? 'silent' });
  // STRAND_TEST_READ_SIDE_THREAD=true: instances with both roles and the example projections
  // apply them on the read side's worker thread, as `npm start` does (STRAND_READ_SIDE_THREAD).
  const threaded = process.env['STRAND_TEST_READ_SIDE_THREAD'] === 'true' && projections === exampleProjections;
  const projectionsModule = threaded ? { url: new URL('../../actors/index.js', import.meta.url).href, name: 'projections' } : undefined;
  return Strand.start({ config, aggregates, natsUrl, databaseUrl, projections, ...(projectionsModule ? { projectionsModule } : {}), log, defaultMetrics: false });
}

/** A client that sends commands the way any NATS user would. */
export class CommandClient {
  private constructor(readonly nc: NatsConnection) {}

  static async connect(url: string): Promise<CommandClient> {
    return new CommandClient(await connect({ servers: url }));
  }

  async send(subject: string, body: unknown, hdrs: Record<string, string> = {}, timeout = 10_000): Promise<CommandReply> {
    const h = headers();
    for (const [k, v] of Object.entries(hdrs)) h.set(k, v);
    const payload = body instanceof Uint8Array || typeof body === 'string' ? body : JSON.stringify(body);
    const r = await this.nc.request(subject, payload, { timeout, headers: h });
    return JSON.parse(new TextDecoder().decode(r.data)) as CommandReply;
  }

  close(): Promise<void> {
    return this.nc.close();
  }
}

/** Every event of one instance, read straight from the stream as an outside consumer would. */
export async function streamEvents(nc: NatsConnection, stream: string, aggregate: string, id: string): Promise<{ seq: number; subject: string; headers: Record<string, string>; envelope: EventEnvelope }[]> {
  const jsm = await jetstreamManager(nc);
  const out: { seq: number; subject: string; headers: Record<string, string>; envelope: EventEnvelope }[] = [];
  const iter = await jsm.direct.getBatch(stream, { seq: 1, batch: 1000, next_by_subj: `evt.${aggregate}.${id}.*` });
  try {
    for await (const m of iter) {
      const h: Record<string, string> = {};
      for (const [k, v] of m.header) h[k] = v[0]!;
      out.push({ seq: m.seq, subject: m.subject, headers: h, envelope: m.json<EventEnvelope>() });
    }
  } catch (err) {
    // nats.js ends a batch that matched nothing with an error carrying the 404 status.
    if ((err as { code?: number }).code !== 404) throw err;
  }
  return out;
}

/** Waits until `check` holds (polling), or fails with `what`. */
export async function eventually(check: () => Promise<boolean> | boolean, what: string, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}
