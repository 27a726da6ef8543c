import { join } from 'node:path';
import { aggregates } from '../actors/index.js';
import { Strand } from './app.js';
import { ConfigError, loadConfig } from './config.js';
import { startNatsServer, type RunningNatsServer } from './nats/server.js';
import { createLogger } from './observability/logger.js';

/** `npm start`: the whole processor, on its embedded defaults when nothing is configured. */
async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`strand: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const log = createLogger(config.LOG_LEVEL);

  let embedded: RunningNatsServer | undefined;
  let natsUrl = config.NATS_URL;
  if (!natsUrl) {
    const storeDir = join(config.STRAND_DATA_DIR, 'nats');
    embedded = await startNatsServer({ storeDir, sync: config.NATS_SYNC, ...(config.NATS_PORT ? { port: config.NATS_PORT } : {}), logFile: join(storeDir, 'nats-server.log') });
    natsUrl = embedded.url;
    log.info({ url: natsUrl, storeDir, sync: config.NATS_SYNC }, `embedded nats-server listening on ${natsUrl}`);
  }

  let app: Strand;
  try {
    app = await Strand.start({ config, aggregates, natsUrl, log });
    await app.http.listen({ port: config.PORT, host: config.HOST });
  } catch (err) {
    log.fatal({ err }, (err as Error).message);
    await embedded?.stop();
    process.exit(1);
  }
  log.info({ port: config.PORT, host: config.HOST }, `HTTP on http://${config.HOST}:${config.PORT} (/health/ready, /metrics)`);

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'draining');
    const clean = await app.stop();
    await embedded?.stop();
    log.info({ clean }, 'stopped');
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}

void main();
