import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import { checkOperate, type Operation } from '../auth/access.js';
import { ErrorCode, StrandError } from '../errors.js';
import type { DeadLetter, ProjectionStatus, ReadSideApi } from '../projections/host.js';
import { principalOf } from './auth.js';
import { DeadLetterParams, DeadLettersQuery } from './schemas.js';
import type { ApiDeps } from './server.js';
import { readModel } from './views.js';

/** How long a dead-letter retry waits for the runner that holds the projection's lock to carry it out. */
export const RETRY_WAIT_MS = 10_000;

/** Largest body the admin routes read (they take none; a body is read and ignored). */
const ADMIN_BODY_CAP = 1024;

function known(readSide: ReadSideApi, name: string): void {
  if (!readSide.projection(name)) throw new StrandError(ErrorCode.UNKNOWN_PROJECTION, `no projection named ${JSON.stringify(name.slice(0, 100))}`);
}

/** The policy's `canOperate` (by default: the `admin` role), else FORBIDDEN. */
function mayOperate(api: ApiDeps, req: FastifyRequest, operation: Operation): void {
  const allowed = checkOperate(api.access, principalOf(req), operation);
  if (allowed !== true) throw new StrandError(ErrorCode.FORBIDDEN, allowed);
}

/**
 * Operating the read side: status, rebuild, and the dead-letter table. These change what
 * every reader sees (and dead letters hold events' data): each is an operation the access
 * policy's `canOperate` must allow, by default only to the `admin` role.
 */
export const projectionRoutes: FastifyPluginAsync<{ api: ApiDeps }> = async (app, { api }) => {
  // The POSTs take no body; whatever a client sends (up to a small cap) is ignored, whatever its type.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: ADMIN_BODY_CAP }, (_req, _body, done) => done(null, undefined));

  app.get('/projections', async (req): Promise<{ projections: ProjectionStatus[] }> => {
    mayOperate(api, req, { action: 'projections.status' });
    return { projections: await readModel(api).readSide.status() };
  });

  app.get<{ Params: { name: string } }>('/projections/:name', async (req): Promise<ProjectionStatus> => {
    mayOperate(api, req, { action: 'projections.status', projection: req.params.name });
    const { readSide } = readModel(api);
    known(readSide, req.params.name);
    const status = (await readSide.status()).find((s) => s.name === req.params.name);
    if (!status) throw new StrandError(ErrorCode.UNKNOWN_PROJECTION, `no projection named ${JSON.stringify(req.params.name)}`);
    return status;
  });

  app.post<{ Params: { name: string } }>('/projections/:name/rebuild', async (req, reply) => {
    mayOperate(api, req, { action: 'projections.rebuild', projection: req.params.name });
    const { readSide } = readModel(api);
    known(readSide, req.params.name);
    const generation = await readSide.rebuild(req.params.name);
    if (generation === undefined) throw new StrandError(ErrorCode.REBUILD_IN_PROGRESS, `projection ${req.params.name} is already being rebuilt; see GET /projections/${req.params.name}`);
    return reply.code(202).send({ generation });
  });

  app.get<{ Params: { name: string }; Querystring: DeadLettersQuery }>(
    '/projections/:name/dead-letters',
    { schema: { querystring: DeadLettersQuery } },
    async (req): Promise<{ deadLetters: DeadLetter[] }> => {
      mayOperate(api, req, { action: 'dead-letters.list', projection: req.params.name });
      const { readSide } = readModel(api);
      known(readSide, req.params.name);
      return { deadLetters: await readSide.deadLetters(req.params.name, req.query.limit) };
    },
  );

  app.post<{ Params: DeadLetterParams }>('/projections/:name/dead-letters/:seq/retry', { schema: { params: DeadLetterParams } }, async (req) => {
    const { name, seq } = req.params;
    mayOperate(api, req, { action: 'dead-letters.retry', projection: name, seq });
    const { readSide } = readModel(api);
    known(readSide, name);
    const r = await readSide.retryDeadLetter(name, seq, RETRY_WAIT_MS);
    if (!r.found) throw new StrandError(ErrorCode.DEAD_LETTER_NOT_FOUND, `projection ${name} has no parked event with sequence ${seq}`);
    if (!r.ok) throw new StrandError(ErrorCode.RETRY_FAILED, `event ${seq} failed again: ${r.error ?? 'unknown error'}`);
    return { retried: seq };
  });

  app.delete<{ Params: DeadLetterParams }>('/projections/:name/dead-letters/:seq', { schema: { params: DeadLetterParams } }, async (req) => {
    const { name, seq } = req.params;
    mayOperate(api, req, { action: 'dead-letters.discard', projection: name, seq });
    const { readSide } = readModel(api);
    known(readSide, name);
    if (!(await readSide.discardDeadLetter(name, seq))) throw new StrandError(ErrorCode.DEAD_LETTER_NOT_FOUND, `projection ${name} has no parked event with sequence ${seq}`);
    return { discarded: seq };
  });
};
