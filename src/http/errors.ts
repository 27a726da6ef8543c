import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyError, FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { failed } from '../commands/types.js';
import { ErrorCode, HttpStatus, StrandError } from '../errors.js';
import type { ParamsSchema } from './schemas.js';

/**
 * The body of every HTTP error response, except `POST /commands/...`, which answers with the
 * NATS reply (`{ok:false,error:{...}}`) because it mirrors the NATS contract.
 */
export interface ErrorBody {
  /** The HTTP status, repeated for clients that only keep the body. */
  readonly statusCode: number;
  /** Stable: program against it (`src/errors.ts`). */
  readonly code: ErrorCode;
  /** The HTTP reason phrase of the status, e.g. `Bad Request`. */
  readonly error: string;
  /** For people; its wording may change. */
  readonly message: string;
  /** With `NOT_CAUGHT_UP` (and `ROW_NOT_FOUND`): the projection's checkpoint when the answer was given. */
  readonly checkpoint?: number;
  /** Structured detail where there is some, e.g. the failed query parameter checks. */
  readonly details?: unknown;
}

/** An error taken apart into what a reply may say about it. */
export interface ClassifiedError {
  readonly code: ErrorCode;
  readonly message: string;
  readonly checkpoint?: number;
  readonly details?: unknown;
  /** Not one of ours and not a client mistake: a bug or an unexpected failure; log it, say nothing of it. */
  readonly unexpected: boolean;
}

/** Seconds a client is told to wait (`Retry-After`) after a 503. */
export const RETRY_AFTER_SECONDS = 1;

/** What an unexpected failure is reported as; the error itself only goes to the log. */
export const INTERNAL_MESSAGE = 'internal error; see the server log';

/** The reason phrase of a status code (`400` → `Bad Request`). */
export function reasonPhrase(status: number): string {
  return STATUS_CODES[status] ?? 'Error';
}

export function errorBody(code: ErrorCode, message: string, extra: { checkpoint?: number | undefined; details?: unknown } = {}): ErrorBody {
  const statusCode = HttpStatus[code];
  return {
    statusCode,
    code,
    error: reasonPhrase(statusCode),
    message,
    ...(extra.checkpoint !== undefined ? { checkpoint: extra.checkpoint } : {}),
    ...(extra.details !== undefined ? { details: extra.details } : {}),
  };
}

function isFastifyError(err: unknown): err is FastifyError {
  return err instanceof Error && typeof (err as { statusCode?: unknown }).statusCode === 'number';
}

/**
 * Maps anything thrown in a route to one of the project's codes. Fastify's own request errors
 * (query or params failing their schema, a body too large, an unsupported content type,
 * unparseable JSON) are the client's: `BAD_REQUEST`. Everything unknown is `INTERNAL`.
 */
export function classify(err: unknown, req: FastifyRequest): ClassifiedError {
  if (err instanceof StrandError) {
    return {
      code: err.code,
      message: err.message,
      ...(err.extra.checkpoint !== undefined ? { checkpoint: err.extra.checkpoint } : {}),
      ...(err.extra.details !== undefined ? { details: err.extra.details } : {}),
      unexpected: err.code === ErrorCode.INTERNAL,
    };
  }
  if (isFastifyError(err)) {
    if (err.validation) {
      return {
        code: ErrorCode.BAD_REQUEST,
        message: err.message,
        details: err.validation.map((v) => ({
          in: err.validationContext,
          path: v.instancePath || '/',
          message: v.message,
          ...(v.params && Object.keys(v.params).length > 0 ? { params: v.params } : {}),
        })),
        unexpected: false,
      };
    }
    const status = err.statusCode!;
    if (status === 413) return { code: ErrorCode.BAD_REQUEST, message: 'request body is too large', unexpected: false };
    if (status === 415) {
      const type = String(req.headers['content-type'] ?? '(none)').slice(0, 100);
      return { code: ErrorCode.BAD_REQUEST, message: `unsupported Content-Type ${type}; send application/json`, unexpected: false };
    }
    if (status === 404) return { code: ErrorCode.NOT_FOUND, message: err.message, unexpected: false };
    if (status >= 400 && status < 500) return { code: ErrorCode.BAD_REQUEST, message: err.message, unexpected: false };
  }
  return { code: ErrorCode.INTERNAL, message: INTERNAL_MESSAGE, unexpected: true };
}

/** Logs what deserves it: unexpected failures as errors, the store or database being away as warnings. */
export function logFailure(req: FastifyRequest, err: unknown, c: ClassifiedError): void {
  if (c.unexpected) req.log.error({ err, method: req.method, url: req.url.slice(0, 300) }, 'request failed unexpectedly');
  else if (c.code === ErrorCode.UNAVAILABLE) req.log.warn({ err, method: req.method, url: req.url.slice(0, 300) }, 'request failed: unavailable');
}

/** Sends a `{statusCode, code, error, message}` response with the status the registry gives the code. */
export function sendError(reply: FastifyReply, code: ErrorCode, message: string, extra: { checkpoint?: number | undefined; details?: unknown } = {}): FastifyReply {
  const status = HttpStatus[code];
  if (status === 503) void reply.header('retry-after', String(RETRY_AFTER_SECONDS));
  return reply.code(status).type('application/json; charset=utf-8').send(errorBody(code, message, extra));
}

/**
 * An integer query or path parameter as a client must write it: decimal digits, a minus sign at
 * most, no more than 16 digits. ajv's coercion alone takes `Infinity`, `1e309` (both Infinity,
 * which then passes `maximum`), `0x10`, `1e2` and ` 5` for numbers.
 */
const DECIMAL_INTEGER = /^(0|-?[1-9][0-9]{0,15})$/;
const DECIMAL_INTEGER_RULE = 'must be an integer written in decimal digits (at most 16)';

/** Refuses integer parameters not written as {@link DECIMAL_INTEGER}, before ajv coerces them. */
function checkIntegers(values: unknown, schema: unknown, where: 'querystring' | 'params'): void {
  const props = (schema as ParamsSchema | undefined)?.properties;
  if (!props || typeof values !== 'object' || values === null) return;
  const details: { in: string; path: string; message: string }[] = [];
  for (const [name, prop] of Object.entries(props)) {
    if (prop['type'] !== 'integer' || !Object.hasOwn(values, name)) continue;
    const v = (values as Record<string, unknown>)[name];
    if (typeof v === 'string' && !DECIMAL_INTEGER.test(v)) details.push({ in: where, path: `/${name}`, message: DECIMAL_INTEGER_RULE });
  }
  if (details.length > 0) throw new StrandError(ErrorCode.BAD_REQUEST, `${where}${details[0]!.path} ${DECIMAL_INTEGER_RULE}`, { details });
}

/**
 * The error and not-found handlers of the whole server, so that every error response has the
 * same shape, and the strict check of integer parameters. Registered on the root (it skips
 * fastify's encapsulation, as fastify-plugin would), before any route plugin.
 */
export const errorHandling: FastifyPluginAsync = async (app) => {
  app.setErrorHandler((err, req, reply) => {
    const c = classify(err, req);
    logFailure(req, err, c);
    return sendError(reply, c.code, c.message, c);
  });
  app.setNotFoundHandler((req, reply) => sendError(reply, ErrorCode.NOT_FOUND, `no route for ${req.method} ${req.url.split('?')[0]!.slice(0, 300)}`));
  app.addHook('preValidation', async (req) => {
    const schema = req.routeOptions.schema;
    if (!schema) return;
    checkIntegers(req.params, schema.params, 'params');
    checkIntegers(req.query, schema.querystring, 'querystring');
  });
};
(errorHandling as unknown as Record<symbol, boolean>)[Symbol.for('skip-override')] = true;

/** What fastify's router refuses before any route (or hook) runs, as the documented error shape. */
export function frameworkErrors(maxParamLength: number) {
  return (err: FastifyError, req: FastifyRequest, reply: FastifyReply): void => {
    const message =
      err.code === 'FST_ERR_MAX_PARAM_LENGTH'
        ? `a path segment is longer than ${maxParamLength} characters`
        : err.code === 'FST_ERR_BAD_URL'
          ? 'the URL path is not valid percent-encoding'
          : 'the request cannot be routed';
    req.log.debug({ code: err.code, url: req.url.slice(0, 300) }, 'request refused before routing');
    // The command route answers in the NATS reply shape, also when refused before it is reached.
    if (req.method === 'POST' && req.url.startsWith('/commands/')) {
      void reply.code(HttpStatus.BAD_REQUEST).type('application/json; charset=utf-8').send(failed(ErrorCode.BAD_REQUEST, message));
      return;
    }
    void sendError(reply, ErrorCode.BAD_REQUEST, message);
  };
}

/** How long a refused connection may keep sending before it is cut. */
const CLIENT_ERROR_LINGER_MS = 2000;

/**
 * Node's `clientError`: a request so malformed that no request object exists (raw bytes above
 * 0x7f in the URL, a broken request line or header, headers over the size limit, a request not
 * received in time). Answers 400 `BAD_REQUEST` in the documented shape with `Connection: close`,
 * then closes the connection gracefully (FIN after the answer, so the client can read it) instead
 * of resetting it.
 */
export function clientErrorHandler(this: FastifyInstance, err: Error & { code?: string }, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const message =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? 'the request headers are too large'
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? 'the request was not received in time'
        : `malformed HTTP request${err.code && /^HPE_[A-Z_]{1,40}$/.test(err.code) ? ` (${err.code})` : ''}`;
  this.log.debug({ code: err.code }, 'malformed request refused');
  // As Node does: never write into a response already under way on this connection.
  const inFlight = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage;
  if (socket.writable && !inFlight?.headersSent) {
    const body = JSON.stringify(errorBody(ErrorCode.BAD_REQUEST, message));
    socket.end(
      `HTTP/1.1 400 Bad Request\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
    // Whatever the client still sends is read and dropped, so closing sends no reset.
    socket.resume();
    setTimeout(() => socket.destroy(), CLIENT_ERROR_LINGER_MS).unref();
  } else socket.destroy();
}
