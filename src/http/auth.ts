import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { authorizationBearer, type Authenticator, type Principal } from '../auth/tokens.js';
import { ErrorCode, StrandError } from '../errors.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** Who sent the request: set by the authentication hook on every route but the open ones. */
    principal: Principal | null;
    /** Whether the principal comes from a verified token (false: the `dev` principal of a token-less request). */
    tokenAuthenticated: boolean;
  }
}

/**
 * Routes any client may call without a token: health (load balancers and orchestrators probe
 * it), metrics (Prometheus scrapes it) and the dashboard page, which is static HTML whose data
 * all comes over `/live`, where its token is checked.
 */
export const OPEN_ROUTES: ReadonlySet<string> = new Set(['/health/live', '/health/ready', '/metrics', '/dashboard']);

/** The `realm` of `WWW-Authenticate` challenges. */
const REALM = 'strand';

/**
 * Authentication of every HTTP route but {@link OPEN_ROUTES}, before anything else is read
 * (the body included). A request without a valid token (in `jwt` mode), with a token that does
 * not verify, or with an `Authorization` header that is not `Bearer <token>` fails with
 * `UNAUTHORIZED` (401) and a `WWW-Authenticate: Bearer` challenge (RFC 6750). Registered on the
 * root, before any route plugin, so it covers unknown routes too: without a token a client
 * cannot tell which routes exist.
 */
export const authentication: FastifyPluginAsync<{ auth: Authenticator }> = async (app, { auth }) => {
  app.decorateRequest('principal', null);
  app.decorateRequest('tokenAuthenticated', false);
  app.addHook('onRequest', async (req, reply) => {
    const route = req.routeOptions.url;
    if (route !== undefined && OPEN_ROUTES.has(route)) return;
    const token = authorizationBearer(req.headers.authorization);
    if (token === null) refuse(reply, 'the Authorization header is not Bearer <token>', 'invalid_request');
    const outcome = await auth.authenticateToken(token).catch(() => ({ ok: false as const, reason: 'authentication failed' }));
    if (!outcome.ok) refuse(reply, outcome.reason, token === undefined ? undefined : 'invalid_token');
    req.principal = outcome.principal;
    req.tokenAuthenticated = token !== undefined;
  });
};
(authentication as unknown as Record<symbol, boolean>)[Symbol.for('skip-override')] = true;

/** Fails the request with 401; `error` is RFC 6750's, absent when no credentials were sent at all. */
function refuse(reply: FastifyReply, reason: string, error?: 'invalid_request' | 'invalid_token'): never {
  // Reasons are fixed phrases without quotes or backslashes: safe inside a quoted-string.
  void reply.header('www-authenticate', error ? `Bearer realm="${REALM}", error="${error}", error_description="${reason}"` : `Bearer realm="${REALM}"`);
  throw new StrandError(ErrorCode.UNAUTHORIZED, reason);
}

/** The principal of an authenticated route (the hook has run: never null there). */
export function principalOf(req: FastifyRequest): Principal {
  if (!req.principal) throw new StrandError(ErrorCode.INTERNAL, 'no principal on an authenticated route');
  return req.principal;
}
