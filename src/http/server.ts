import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { healthRoutes, type ReadinessCheck } from './health.js';
import { metricsRoute } from './metrics.js';

/** What the HTTP server is assembled from. */
export interface HttpDeps {
  readonly log: Logger;
  readonly registry: Registry;
  readonly checks: readonly ReadinessCheck[];
}

/** Builds the fastify server from its plugins; listening is the caller's choice (tests use inject). */
export function buildHttpServer(deps: HttpDeps): FastifyInstance {
  const app = Fastify({ loggerInstance: deps.log.child({ component: 'http' }) as unknown as FastifyBaseLogger, logController: new LogController({ disableRequestLogging: true }) });
  void app.register(healthRoutes, { checks: deps.checks });
  void app.register(metricsRoute, { registry: deps.registry });
  return app;
}
