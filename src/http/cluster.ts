import type { FastifyPluginAsync } from 'fastify';
import { ErrorCode, StrandError } from '../errors.js';
import type { RegionStatus } from '../cluster/region.js';
import type { ApiDeps } from './server.js';

/** `GET /cluster`: who is a member, and who owns each partition, as this instance sees it. */
export const clusterRoute: FastifyPluginAsync<{ api: ApiDeps }> = async (app, { api }) => {
  app.get('/cluster', async (): Promise<RegionStatus> => {
    if (!api.cluster) throw new StrandError(ErrorCode.UNAVAILABLE, 'this instance does not take commands (STRAND_ROLES): it routes no partition');
    return api.cluster.status();
  });
};
