import { join } from 'node:path';
import { taskAccess } from '../actors/access.js';
import { aggregates, projections } from '../actors/index.js';
import { Strand } from './app.js';
import { ConfigError, loadConfig } from './config.js';
import { createAuthenticator, type Authenticator } from './live/auth.js';
import { StartAborted } from './nats/connect.js';
import { startNatsServer, type RunningNatsServer } from './nats/server.js';
import { createLogger } from './observability/logger.js';
import { redact } from './postgres/connect.js';
import { startEmbeddedPostgres, type RunningPostgres } from './postgres/embedded.js';

/** `npm start`: the whole processor, on its embedded defaults when nothing is configured. */
async function main(): Promise<void> {
  // Signals are ours from the first moment: one arriving while servers are still starting
  // must stop them too, not leave them orphaned.
  let signalled: string | undefined;
  // Ends the waits of a start that cannot reach NATS or PostgreSQL yet.
  const starting = new AbortController();
  let onSignal: (signal: string) => void = (signal) => {
    signalled ??= signal;
    starting.abort();
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));

  let config;
  let auth: Authenticator;
  try {
    config = loadConfig();
    // Auth settings are configuration too: a bad one stops the program before anything starts.
    auth = await createAuthenticator(config);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`strand: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const log = createLogger(config.LOG_LEVEL);

  let embedded: RunningNatsServer | undefined;
  let embeddedPg: RunningPostgres | undefined;
  let app: Strand | undefined;
  const stopAll = async (): Promise<boolean> => {
    const clean = app ? await app.stop() : true;
    await embeddedPg?.stop();
    await embedded?.stop();
    return clean;
  };
  const stopIfSignalled = async (): Promise<void> => {
    if (!signalled) return;
    log.info({ signal: signalled }, 'stopping before start completed');
    await stopAll();
    process.exit(0);
  };
  const fail = async (err: unknown, what: string): Promise<never> => {
    log.fatal({ err }, `${what}${(err as Error).message}`);
    await stopAll().catch(() => undefined);
    process.exit(1);
  };

  let natsUrl = config.NATS_URL;
  if (!natsUrl) {
    const storeDir = join(config.STRAND_DATA_DIR, 'nats');
    try {
      embedded = await startNatsServer({ storeDir, sync: config.NATS_SYNC, ...(config.NATS_PORT ? { port: config.NATS_PORT } : {}), logFile: join(storeDir, 'nats-server.log') });
    } catch (err) {
      await fail(err, 'embedded nats-server did not start: ');
    }
    natsUrl = embedded!.url;
    log.info({ url: natsUrl, storeDir, sync: config.NATS_SYNC }, `embedded nats-server listening on ${natsUrl}`);
  }
  await stopIfSignalled();

  let databaseUrl = config.DATABASE_URL;
  if (!databaseUrl) {
    const dataDir = join(config.STRAND_DATA_DIR, 'postgres');
    try {
      embeddedPg = await startEmbeddedPostgres({ dataDir, ...(config.PG_PORT ? { port: config.PG_PORT } : {}) });
    } catch (err) {
      await fail(err, 'embedded PostgreSQL did not start: ');
    }
    databaseUrl = embeddedPg!.url;
    log.info({ url: redact(databaseUrl), dataDir }, `embedded PostgreSQL listening on 127.0.0.1:${embeddedPg!.port}`);
  }
  await stopIfSignalled();

  try {
    app = await Strand.start({ config, aggregates, projections, access: taskAccess, auth, natsUrl, databaseUrl, log, signal: starting.signal });
    await app.http.listen({ port: config.PORT, host: config.HOST });
  } catch (err) {
    if (err instanceof StartAborted) await stopIfSignalled();
    await fail(err, '');
  }
  const address = app!.http.server.address();
  const port = typeof address === 'object' && address ? address.port : config.PORT;
  log.info({ port, host: config.HOST }, `HTTP on http://${config.HOST}:${port} (/health/ready, /views, /openapi.json)`);

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'draining');
    const clean = await stopAll();
    log.info({ clean }, 'stopped');
    process.exit(0);
  };
  onSignal = (signal) => void shutdown(signal);
  if (signalled) void shutdown(signalled);
}

void main();
