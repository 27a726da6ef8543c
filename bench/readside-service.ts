/**
 * A Strand instance for bench/projections.bench.ts, run as a child process: what src/main.ts
 * does (Strand.start with the example aggregates, the configuration from the environment,
 * HTTP listening), with two differences for the benchmark:
 *
 *  - BENCH_PROJECTIONS picks the projections (`all`, the default, or a comma-separated list of
 *    names such as `task_list_view`);
 *  - every advance of those projections' checkpoints is published on core NATS as
 *    `<BENCH_CHECKPOINT_SUBJECT>.<projection>` (default `bench.checkpoint`) with the checkpoint
 *    as the body, so the load generator can time when each event became visible in PostgreSQL.
 *
 * With BENCH_SQL_TIMING=1 every statement sent to PostgreSQL is timed (bench/pg-timing.ts);
 * a request on `bench.sql-timing` with body `reset` clears the figures, `get` answers them as
 * JSON `[[statement, count, ms], …]`.
 *
 * NATS_URL and DATABASE_URL are required (the benchmark starts both servers). Prints
 * `ready port=<port> watch=<name>:<hook|poll>,…` on stdout once it serves and applies.
 */
import type { ReadSide } from '../src/projections/host.js';
import { aggregates, projections as allProjections } from '../actors/index.js';
import { Strand } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { createLogger } from '../src/observability/logger.js';
import { watchCheckpoints } from './checkpoints.js';
import { timeStatements } from './pg-timing.js';

async function main(): Promise<void> {
  const config = loadConfig();
  if (!config.NATS_URL || !config.DATABASE_URL) throw new Error('NATS_URL and DATABASE_URL are required');
  const wanted = (process.env['BENCH_PROJECTIONS'] ?? 'all').split(',').map((s) => s.trim()).filter(Boolean);
  const projections = wanted.includes('all') ? [...allProjections] : allProjections.filter((p) => wanted.includes(p.name));
  const unknown = wanted.filter((w) => w !== 'all' && !allProjections.some((p) => p.name === w));
  if (unknown.length > 0) throw new Error(`unknown projection(s) in BENCH_PROJECTIONS: ${unknown.join(', ')}`);
  const subject = process.env['BENCH_CHECKPOINT_SUBJECT'] ?? 'bench.checkpoint';
  const log = createLogger(config.LOG_LEVEL);

  const timer = process.env['BENCH_SQL_TIMING'] === '1' ? timeStatements() : undefined;
  const app = await Strand.start({ config, aggregates, projections, natsUrl: config.NATS_URL, databaseUrl: config.DATABASE_URL, log });
  let watch: { modes: Record<string, string>; stop: () => void } | undefined;
  let stopping = false;
  const shutdown = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    watch?.stop();
    await app.stop();
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown());
  process.on('SIGINT', () => void shutdown());

  await app.http.listen({ port: config.PORT, host: config.HOST });
  const address = app.http.server.address();
  const port = typeof address === 'object' && address ? address.port : config.PORT;
  if (app.readSide && config.STRAND_ROLES.includes('projections')) {
    watch = watchCheckpoints(app.readSide as ReadSide, projections.map((p) => p.name), (name, seq) => app.nc.publish(`${subject}.${name}`, String(seq)));
  }
  if (timer) {
    app.nc.subscribe('bench.sql-timing', {
      callback: (err, m) => {
        if (err) return;
        if (m.string() === 'reset') {
          timer.reset();
          m.respond('ok');
        } else {
          m.respond(JSON.stringify([...timer.stats()].map(([k, v]) => [k, v.n, v.ms])));
        }
      },
    });
  }
  const modes = watch ? Object.entries(watch.modes).map(([n, m]) => `${n}:${m}`).join(',') : '';
  process.stdout.write(`ready port=${port} watch=${modes}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`readside-service: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
