import net from 'node:net';
import { join, resolve } from 'node:path';
import { taskAccess } from '../actors/access.js';
import { aggregates, processes, projections, taskOverdue } from '../actors/index.js';
import { Strand } from './app.js';
import { ConfigError, loadConfig, type Config } from './config.js';
import { DataDirBusy, lockDataDir, type DataDirLock } from './data-lock.js';
import { createAuthenticator, type Authenticator } from './live/auth.js';
import { StartAborted } from './nats/connect.js';
import { startNatsServer, type RunningNatsServer } from './nats/server.js';
import { createLogger } from './observability/logger.js';
import { redact } from './postgres/connect.js';
import { startEmbeddedPostgres, type RunningPostgres } from './postgres/embedded.js';

/** A second signal this long after the first stops at once; npm forwards a terminal's Ctrl-C, so one press arrives twice. */
const FORCE_AFTER_MS = 1_000;

/** A URL to print: credentials out, a wildcard listen address replaced by one a browser can open. */
function httpUrl(host: string, port: number): string {
  const shown = host === '0.0.0.0' || host === '' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return `http://${shown.includes(':') ? `[${shown}]` : shown}:${port}`;
}

function showNatsUrl(urls: string): string {
  return urls
    .split(',')
    .map((u) => {
      const url = u.trim();
      try {
        const parsed = new URL(url);
        if (!parsed.username && !parsed.password) return url;
        parsed.username = '';
        parsed.password = '';
        return parsed.toString().replace(/\/$/, '');
      } catch {
        return url;
      }
    })
    .join(',');
}

/**
 * Why `host:port` cannot be listened on (in use, not allowed, not an address of this machine),
 * naming the variable that set it; undefined when it can. Checked before anything starts, so a
 * taken port does not first cost a nats-server and a PostgreSQL started and stopped again.
 */
function portProblem(host: string, port: number, variable: string): Promise<string | undefined> {
  return new Promise((done) => {
    const probe = net.createServer();
    probe.once('error', (err: NodeJS.ErrnoException) => {
      const where = `${host}:${port}`;
      const set = `${variable}=${port}`;
      done(
        err.code === 'EADDRINUSE'
          ? `port ${port} on ${host} is already in use (${set}): stop what listens there, or set ${variable} to a free port`
          : err.code === 'EACCES'
            ? `not allowed to listen on ${where} (${set}): ports below 1024 need privileges; set ${variable} to a port above 1024`
            : err.code === 'EADDRNOTAVAIL' || err.code === 'ENOTFOUND'
              ? `cannot listen on ${where}: HOST=${host} is not an address of this machine`
              : `cannot listen on ${where} (${set}): ${err.message}`,
      );
    });
    probe.listen({ host, port, exclusive: true }, () => probe.close(() => done(undefined)));
  });
}

async function firstPortProblem(config: Config): Promise<string | undefined> {
  const checks: [string, number, string][] = [];
  if (config.PORT !== 0) checks.push([config.HOST, config.PORT, 'PORT']);
  if (!config.NATS_URL && config.NATS_PORT !== 0) checks.push(['127.0.0.1', config.NATS_PORT, 'NATS_PORT']);
  if (!config.DATABASE_URL && config.PG_PORT !== 0) checks.push(['127.0.0.1', config.PG_PORT, 'PG_PORT']);
  for (const [host, port, variable] of checks) {
    const problem = await portProblem(host, port, variable);
    if (problem) return problem;
  }
  return undefined;
}

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

  let config: Config;
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

  // Nothing is started before these two checks: one Strand per data folder, and every port free.
  let lock: DataDirLock | undefined;
  if (!config.NATS_URL || !config.DATABASE_URL) {
    try {
      lock = await lockDataDir(config.STRAND_DATA_DIR);
    } catch (err) {
      log.fatal(err instanceof DataDirBusy ? { dataDir: err.dir, holderPid: err.pid } : { err }, (err as Error).message);
      process.exit(1);
    }
  }
  const busy = await firstPortProblem(config);
  if (busy) {
    log.fatal(busy);
    process.exit(1);
  }

  let embedded: RunningNatsServer | undefined;
  let embeddedPg: RunningPostgres | undefined;
  let app: Strand | undefined;
  /** Drains and stops everything; returns why the stop was not clean (empty: it was). */
  const stopAll = async (): Promise<string[]> => {
    const reasons: string[] = [];
    if (app) {
      try {
        if (!(await app.stop())) reasons.push(`the drain timed out with commands in progress (STRAND_DRAIN_TIMEOUT_MS=${config.STRAND_DRAIN_TIMEOUT_MS})`);
      } catch (err) {
        reasons.push(`the drain failed: ${(err as Error).message}`);
      }
    }
    // A server that is gone before we stop it took in-flight work with it.
    const natsGone = embedded?.exitStatus;
    const pgGone = embeddedPg?.exitStatus;
    if (natsGone) reasons.push(`the embedded nats-server ${natsGone} before Strand had drained`);
    if (pgGone) reasons.push(`the embedded PostgreSQL ${pgGone} before Strand had drained`);
    await embeddedPg?.stop();
    if (!pgGone && embeddedPg?.exitStatus && embeddedPg.exitStatus !== 'exited with code 0') {
      reasons.push(`the embedded PostgreSQL ${embeddedPg.exitStatus} when stopped`);
    }
    await embedded?.stop();
    if (!natsGone && embedded?.exitStatus && embedded.exitStatus !== 'exited with code 0') {
      reasons.push(`the embedded nats-server ${embedded.exitStatus} when stopped`);
    }
    // Last: the folder is free only once no server of ours is using it.
    await lock?.release();
    return reasons;
  };
  const stopIfSignalled = async (): Promise<void> => {
    if (!signalled) return;
    log.info({ signal: signalled }, 'stopping before start completed');
    await stopAll();
    process.exit(0);
  };
  const fail = async (err: unknown, what: string): Promise<never> => {
    // A Ctrl-C during start also reaches what runs in our process group (the nats-server fetch):
    // its failure is the signal's doing, not a fault.
    if (signalled) await stopIfSignalled();
    log.fatal({ err }, `${what}${(err as Error).message}`);
    await stopAll().catch(() => undefined);
    process.exit(1);
  };

  let natsUrl = config.NATS_URL;
  if (!natsUrl) {
    const storeDir = join(config.STRAND_DATA_DIR, 'nats');
    try {
      embedded = await startNatsServer({
        storeDir,
        sync: config.NATS_SYNC,
        ...(config.NATS_PORT ? { port: config.NATS_PORT } : {}),
        logFile: join(storeDir, 'nats-server.log'),
        onProgress: (line) => log.info(line),
      });
    } catch (err) {
      await fail(err, 'embedded nats-server did not start: ');
    }
    natsUrl = embedded!.url;
    log.info({ url: natsUrl, storeDir, sync: config.NATS_SYNC, serverPid: embedded!.pid }, `embedded nats-server listening on ${natsUrl}`);
  }
  await stopIfSignalled();

  let databaseUrl = config.DATABASE_URL;
  if (!databaseUrl) {
    const dataDir = join(config.STRAND_DATA_DIR, 'postgres');
    try {
      embeddedPg = await startEmbeddedPostgres({ dataDir, dieWithOwner: true, ...(config.PG_PORT ? { port: config.PG_PORT } : {}) });
    } catch (err) {
      await fail(err, 'embedded PostgreSQL did not start: ');
    }
    databaseUrl = embeddedPg!.url;
    log.info({ url: redact(databaseUrl), dataDir, serverPid: embeddedPg!.pid }, `embedded PostgreSQL listening on 127.0.0.1:${embeddedPg!.port}`);
  }
  await stopIfSignalled();

  try {
    app = await Strand.start({ config, aggregates, processes, projections, projectionsModule: { url: new URL('../actors/index.js', import.meta.url).href, name: 'projections' }, access: taskAccess, auth, natsUrl, databaseUrl, log, signal: starting.signal, deadlineRules: [taskOverdue(config.STRAND_TASK_OVERDUE_MS)] });
    await app.http.listen({ port: config.PORT, host: config.HOST });
  } catch (err) {
    if (err instanceof StartAborted) await stopIfSignalled();
    await fail(err, '');
  }
  const address = app!.http.server.address();
  const port = typeof address === 'object' && address ? address.port : config.PORT;
  const http = httpUrl(config.HOST, port);
  const nats = showNatsUrl(natsUrl);
  const dashboard = `${http}/dashboard`;
  log.info(
    { http, nats, dashboard, dataDir: lock ? resolve(config.STRAND_DATA_DIR) : undefined },
    `Strand ready: dashboard ${dashboard} | HTTP ${http} | NATS ${nats}`,
  );

  let stopping = false;
  let firstSignalAt = 0;
  const shutdown = async (signal: string) => {
    if (stopping) {
      if (Date.now() - firstSignalAt < FORCE_AFTER_MS) return;
      log.warn({ signal }, 'second signal: stopping without waiting for the drain');
      await Promise.allSettled([embeddedPg?.stop(), embedded?.stop()]);
      const reason = `stopped by a second ${signal} during the drain`;
      log.info({ clean: false, signal, reason }, `stopped, not cleanly: ${reason}`);
      process.exit(1);
    }
    stopping = true;
    firstSignalAt = Date.now();
    log.info({ signal }, 'draining');
    const reasons = await stopAll();
    if (reasons.length === 0) log.info({ clean: true, signal }, 'stopped cleanly');
    else log.warn({ clean: false, signal, reason: reasons.join('; ') }, `stopped, not cleanly: ${reasons.join('; ')}`);
    process.exit(0);
  };
  onSignal = (signal) => void shutdown(signal);
  if (signalled) void shutdown(signalled);
}

void main();
