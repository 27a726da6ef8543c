import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import { checkOperate, checkSubscribe } from '../auth/access.js';
import { ErrorCode, StrandError } from '../errors.js';
import type { Process } from '../processes/define.js';
import { isAggregateId } from '../../subjects/index.js';
import { principalOf } from './auth.js';
import type { ApiDeps } from './server.js';

function processOf(api: ApiDeps, name: string): Process {
  const p = api.processes?.get(name);
  if (!p) throw new StrandError(ErrorCode.UNKNOWN_AGGREGATE, `no process named ${JSON.stringify(name.slice(0, 140))}`);
  return p;
}

function readable(api: ApiDeps, req: FastifyRequest, process: string, id: string): void {
  if (!isAggregateId(id)) throw new StrandError(ErrorCode.BAD_REQUEST, `id must be 1-128 characters of [A-Za-z0-9_-], got ${JSON.stringify(id.slice(0, 140))}`);
  const allowed = checkSubscribe(api.access, principalOf(req), { kind: 'aggregate', aggregate: process, id });
  if (allowed !== true) throw new StrandError(ErrorCode.FORBIDDEN, allowed);
}

/**
 * Process managers: what is defined, an instance's pending deadlines, and the parked inputs. An
 * instance's state and history are served by `GET /aggregates/<process>/<id>` (and `/events`).
 */
export const processRoutes: FastifyPluginAsync<{ api: ApiDeps }> = async (app, { api }) => {
  app.get('/processes', async () => ({
    processes: [...(api.processes?.values() ?? [])].map((p) => ({
      name: p.name,
      reactsTo: [...p.reactsTo].map(([aggregate, events]) => ({ aggregate, events: [...events] })),
      handlesReplies: p.handlesReplies,
      deadlines: [...p.deadlineNames],
    })),
  }));

  app.get<{ Params: { process: string; id: string } }>('/processes/:process/:id/deadlines', async (req) => {
    const p = processOf(api, req.params.process);
    readable(api, req, p.name, req.params.id);
    if (!api.deadlines) throw new StrandError(ErrorCode.UNAVAILABLE, 'no deadline store on this instance');
    const pending = await api.deadlines.pending(p.name, req.params.id);
    return {
      process: p.name,
      id: req.params.id,
      deadlines: pending.map((d) => ({ name: d.name, due: d.due.toISOString(), token: d.token, data: d.data ?? null })).sort((a, b) => a.due.localeCompare(b.due)),
    };
  });

  app.get<{ Params: { process: string } }>('/processes/:process/parked', async (req) => {
    const p = processOf(api, req.params.process);
    const allowed = checkOperate(api.access, principalOf(req), { action: 'processes.parked', process: p.name });
    if (allowed !== true) throw new StrandError(ErrorCode.FORBIDDEN, allowed);
    if (!api.parked) throw new StrandError(ErrorCode.UNAVAILABLE, 'no parked inputs store on this instance');
    return { process: p.name, parked: await api.parked.list(p.name) };
  });

  app.post<{ Params: { process: string; key: string } }>('/processes/:process/parked/:key/retry', async (req) => {
    const p = processOf(api, req.params.process);
    const { key } = req.params;
    const allowed = checkOperate(api.access, principalOf(req), { action: 'processes.parked.retry', process: p.name, key });
    if (allowed !== true) throw new StrandError(ErrorCode.FORBIDDEN, allowed);
    if (!api.retryParked) throw new StrandError(ErrorCode.UNAVAILABLE, 'this instance does not run process managers (STRAND_ROLES)');
    const r = await api.retryParked(p.name, key);
    if (!r.found) throw new StrandError(ErrorCode.DEAD_LETTER_NOT_FOUND, `process ${p.name} has no parked input ${JSON.stringify(key.slice(0, 200))}`);
    if (!r.ok) throw new StrandError(ErrorCode.RETRY_FAILED, `parked input ${key} failed again: ${r.error ?? 'unknown error'}`);
    return { retried: key, recorded: r.recorded ?? false };
  });

  app.delete<{ Params: { process: string; key: string } }>('/processes/:process/parked/:key', async (req) => {
    const p = processOf(api, req.params.process);
    const { key } = req.params;
    const allowed = checkOperate(api.access, principalOf(req), { action: 'processes.parked.discard', process: p.name, key });
    if (allowed !== true) throw new StrandError(ErrorCode.FORBIDDEN, allowed);
    if (!api.parked) throw new StrandError(ErrorCode.UNAVAILABLE, 'no parked inputs store on this instance');
    if (!(await api.parked.remove(p.name, key))) throw new StrandError(ErrorCode.DEAD_LETTER_NOT_FOUND, `process ${p.name} has no parked input ${JSON.stringify(key.slice(0, 200))}`);
    return { discarded: key };
  });
};
