import type { FastifyPluginAsync } from 'fastify';

/** What readiness is judged on: each check names itself and says whether it passes. */
export interface ReadinessCheck {
  readonly name: string;
  ready(): boolean;
}

/** `GET /health/live` answers while the process runs; `GET /health/ready` only when commands can be taken. */
export const healthRoutes: FastifyPluginAsync<{ checks: readonly ReadinessCheck[]; reports: readonly { readonly name: string; value(): unknown }[] }> = async (app, { checks, reports }) => {
  app.get('/health/live', async () => ({ status: 'live' }));
  app.get('/health/ready', async (_req, reply) => {
    const results = Object.fromEntries(checks.map((c) => [c.name, c.ready()]));
    const ready = Object.values(results).every(Boolean);
    const facts = Object.fromEntries(reports.map((r) => [r.name, r.value()]));
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not ready', checks: results, ...facts });
  });
};
