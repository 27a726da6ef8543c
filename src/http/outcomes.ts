import type { FastifyPluginAsync } from 'fastify';
import { checkSubscribe } from '../auth/access.js';
import type { CommandOutcome } from '../cluster/outcomes.js';
import type { CommandFailed } from '../commands/types.js';
import { ErrorCode, StrandError } from '../errors.js';
import { principalOf } from './auth.js';
import type { ApiDeps } from './server.js';

/**
 * `GET /commands/:commandId`: the outcome of a durable command (published to `cmdq.>`), as its
 * owner recorded it. Readable by whoever may read the aggregate instance it was for (the
 * policy's `canSubscribe`, as `GET /aggregates/...`); 404 `OUTCOME_NOT_FOUND` while there is none.
 */
export const outcomeRoute: FastifyPluginAsync<{ api: ApiDeps }> = async (app, { api }) => {
  app.get<{ Params: { commandId: string } }>('/commands/:commandId', async (req): Promise<CommandOutcome> => {
    if (!api.outcomes) throw new StrandError(ErrorCode.UNAVAILABLE, 'durable command intake is off here (set STRAND_DURABLE_INTAKE=true)');
    const found: CommandOutcome | CommandFailed = await api.outcomes.answer(req.params.commandId);
    if (!('commandId' in found)) throw new StrandError(found.error.code, found.error.message);
    const allowed = checkSubscribe(api.access, principalOf(req), { kind: 'aggregate', aggregate: found.aggregate, id: found.id });
    if (allowed !== true) throw new StrandError(ErrorCode.FORBIDDEN, allowed);
    return found;
  });
};
