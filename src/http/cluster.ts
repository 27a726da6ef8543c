import type { FastifyPluginAsync } from 'fastify';
import { checkOperate } from '../auth/access.js';
import { ErrorCode, StrandError } from '../errors.js';
import type { RegionStatus } from '../cluster/region.js';
import { principalOf } from './auth.js';
import type { ApiDeps } from './server.js';

/** `GET /cluster`: who is a member, and who owns each partition, as this instance sees it (an operation: `admin` by default). */
export const clusterRoute: FastifyPluginAsync<{ api: ApiDeps }> = async (app, { api }) => {
  app.get('/cluster', async (req): Promise<RegionStatus> => {
    const allowed = checkOperate(api.access, principalOf(req), { action: 'cluster.status' });
    if (allowed !== true) throw new StrandError(ErrorCode.FORBIDDEN, allowed);
    if (!api.cluster) throw new StrandError(ErrorCode.UNAVAILABLE, 'this instance does not take commands (STRAND_ROLES): it routes no partition');
    return api.cluster.status();
  });
};
