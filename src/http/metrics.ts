import type { FastifyPluginAsync } from 'fastify';
import type { Registry } from 'prom-client';

/** What `/metrics` reads: a registry, or this thread's joined with the read side worker's. */
export type MetricsSource = Pick<Registry, 'metrics' | 'contentType'>;

/** `GET /metrics` in Prometheus text format. */
export const metricsRoute: FastifyPluginAsync<{ registry: MetricsSource }> = async (app, { registry }) => {
  app.get('/metrics', async (_req, reply) => {
    const body = await registry.metrics();
    return reply.type(registry.contentType).send(body);
  });
};
