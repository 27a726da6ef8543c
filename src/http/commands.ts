import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { checkCommand, issuerOf } from '../auth/access.js';
import type { Authenticated, CommandHeaders } from '../commands/intake.js';
import { failed, type CommandReply } from '../commands/types.js';
import { ErrorCode, HttpStatus } from '../errors.js';
import { CommandHeader } from '../../subjects/index.js';
import { principalOf } from './auth.js';
import { RETRY_AFTER_SECONDS, classify, logFailure } from './errors.js';
import type { ApiDeps } from './server.js';

/**
 * Largest body fastify reads for a command. Intake applies the configured limit
 * (STRAND_MAX_COMMAND_BYTES) with the same reply as on NATS; this cap only keeps a huge body
 * from being buffered at all. It is above NATS's default max_payload (1 MB), so within any
 * limit NATS itself would carry, HTTP and NATS answer alike.
 */
export const COMMAND_BODY_CAP = 4 * 1024 * 1024;

function header(req: FastifyRequest, name: string): string | undefined {
  const v = req.headers[name.toLowerCase()];
  const s = Array.isArray(v) ? v.join(', ') : v;
  // As on NATS, an empty header counts as absent.
  return s ? s : undefined;
}

function commandHeaders(req: FastifyRequest): CommandHeaders {
  const out: { -readonly [K in keyof CommandHeaders]: CommandHeaders[K] } = {};
  const commandId = header(req, CommandHeader.CommandId);
  const correlationId = header(req, CommandHeader.CorrelationId);
  const causationId = header(req, CommandHeader.CausationId);
  const actor = header(req, CommandHeader.Actor);
  const expectedVersion = header(req, CommandHeader.ExpectedVersion);
  if (commandId !== undefined) out.commandId = commandId;
  if (correlationId !== undefined) out.correlationId = correlationId;
  if (causationId !== undefined) out.causationId = causationId;
  if (actor !== undefined) out.actor = actor;
  if (expectedVersion !== undefined) out.expectedVersion = expectedVersion;
  return out;
}

const EMPTY = new Uint8Array(0);

function send(reply: FastifyReply, result: CommandReply): FastifyReply {
  const status = result.ok ? 200 : HttpStatus[result.error.code];
  if (status === 503) void reply.header('retry-after', String(RETRY_AFTER_SECONDS));
  return reply.code(status).type('application/json; charset=utf-8').send(result);
}

/**
 * `POST /commands/:aggregate/:id/:command`: the NATS command contract over HTTP. The body's raw
 * bytes and the `Strand-*` headers go through the same intake, and the reply body is exactly
 * the NATS reply; the status is 200 when `ok`, else the status of the error's code.
 *
 * Authentication (the root hook) comes first. With a token, the issuer is the token's subject
 * (a `Strand-Actor` header naming someone else is FORBIDDEN); without one (`dev` mode) the
 * header is trusted as on NATS. Then the access policy: `canCommand` once intake has checked the
 * command, `canDecide` in the actor on the state the command is decided on.
 */
export const commandRoutes: FastifyPluginAsync<{ api: ApiDeps }> = async (app, { api }) => {
  // Raw bytes, so size and JSON errors are intake's, word for word as on NATS.
  app.removeAllContentTypeParsers();
  // Read a little past the configured limit so intake, not fastify, words the refusal (as on NATS).
  const cap = Math.max(COMMAND_BODY_CAP, api.maxCommandBytes + 1024);
  app.addContentTypeParser('application/json', { parseAs: 'buffer', bodyLimit: cap }, (_req, body, done) => done(null, body));

  const count = (aggregate: string, command: string, result: string, seconds: number): void => {
    // Unknown names are not labels: a hostile client must not grow the metric without bound.
    const known = api.aggregates.get(aggregate)?.commands.has(command) === true;
    api.metrics.command(known ? aggregate : '_invalid', known ? command : '_invalid', result, seconds);
  };

  // This route answers in the NATS reply shape even when fastify refuses the request itself.
  app.setErrorHandler((err, req, reply) => {
    const c = classify(err, req);
    logFailure(req, err, c);
    const p = req.params as Partial<Record<'aggregate' | 'command', string>> | undefined;
    count(p?.aggregate ?? '', p?.command ?? '', c.code, reply.elapsedTime / 1000);
    return send(reply, failed(c.code, c.message, c.details !== undefined ? { details: c.details } : {}));
  });

  app.post<{ Params: { aggregate: string; id: string; command: string } }>('/commands/:aggregate/:id/:command', async (req, reply) => {
    const { aggregate, id, command } = req.params;
    const refusal = api.acceptingCommands();
    if (refusal !== true) {
      count(aggregate, command, 'UNAVAILABLE', reply.elapsedTime / 1000);
      return send(reply, failed('UNAVAILABLE', refusal));
    }
    const body = Buffer.isBuffer(req.body) ? new Uint8Array(req.body.buffer, req.body.byteOffset, req.body.byteLength) : EMPTY;
    const result = await authorizedExecute(api, req, aggregate, id, command, body);
    count(aggregate, command, result.ok ? (result.duplicate ? 'duplicate' : 'ok') : result.error.code, reply.elapsedTime / 1000);
    return send(reply, result);
  });
};

/**
 * Intake, the access policy, then the actor (through the region, which forwards it to the owner
 * of its partition when that is another instance): the reply to an authenticated HTTP command.
 * Intake attaches the policy's in-actor check (`canDecide`) and the principal it is rebuilt from
 * on the owner.
 */
async function authorizedExecute(api: ApiDeps, req: FastifyRequest, aggregate: string, id: string, command: string, body: Uint8Array): Promise<CommandReply> {
  const principal = principalOf(req);
  let auth: Authenticated = { principal };
  if (req.tokenAuthenticated) {
    const issuer = issuerOf(principal);
    if (typeof issuer === 'string') return failed(ErrorCode.FORBIDDEN, issuer);
    auth = { principal, issuer };
  }
  const parsed = api.intake.parse(aggregate, id, command, body, commandHeaders(req), auth);
  if ('ok' in parsed) return parsed;
  const allowed = checkCommand(api.access, principal, { aggregate: parsed.aggregate.name, id: parsed.id, command: parsed.command, data: parsed.data, ...(parsed.issuer ? { issuer: parsed.issuer } : {}) });
  if (allowed !== true) return failed(ErrorCode.FORBIDDEN, allowed);
  return api.submit ? api.submit(parsed, body) : api.actors.execute(parsed);
}
