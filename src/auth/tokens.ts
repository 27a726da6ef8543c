import type { IncomingMessage } from 'node:http';
import { errors, importSPKI, jwtVerify, type CryptoKey, type JWTPayload } from 'jose';
import { ConfigError, type Config } from '../config.js';

/**
 * Authentication, shared by the HTTP API and the WebSocket endpoint (`/live`): who is on the
 * other end of a request or connection. docs/security.md describes it for users.
 *
 * Modes (`STRAND_AUTH`):
 * - `jwt`: every request needs a bearer token, a JWT signed with HS256 (`STRAND_JWT_SECRET`)
 *   and/or RS256 (`STRAND_JWT_PUBLIC_KEY`, an SPKI PEM). Only the configured algorithms are
 *   accepted (never `none`, and never HS256 when only an RS256 key is configured: no algorithm
 *   confusion). `iss`/`aud` are checked when `STRAND_JWT_ISSUER`/`STRAND_JWT_AUDIENCE` are set,
 *   `sub` is required, `exp`/`nbf` are honoured (when present) with 5 s of clock tolerance.
 *   Roles come from the `roles` claim (array of strings) and/or the `role` claim (a string).
 * - `dev` (the development default): a request without a token is the principal
 *   `{ sub: 'dev', roles: ['admin'] }`. A request that does present a token has it verified
 *   exactly as in `jwt` mode (and is refused if it does not verify, or if no key is configured),
 *   so clients can test their tokens against a development server.
 *
 * Unset `STRAND_AUTH` means `jwt` when `NODE_ENV=production`, else `dev`; `STRAND_AUTH=dev` with
 * `NODE_ENV=production` is refused at start: the development default is off in production.
 *
 * Where the token comes from is the transport's business: the HTTP API reads only
 * `Authorization: Bearer` ({@link authorizationBearer}); a WebSocket upgrade also accepts a
 * `bearer.<token>` subprotocol entry and the `access_token` query parameter ({@link upgradeToken}).
 */

/** Who is on the other end of a request or connection. */
export interface Principal {
  readonly sub: string;
  readonly roles: readonly string[];
  readonly claims: Readonly<Record<string, unknown>>;
}

export type AuthOutcome = { ok: true; principal: Principal } | { ok: false; reason: string };

export interface Authenticator {
  readonly mode: 'dev' | 'jwt';
  /** A WebSocket upgrade request, its token from any carrier ({@link upgradeToken}). Never throws. */
  authenticate(req: IncomingMessage): Promise<AuthOutcome>;
  /**
   * A token the transport has already taken out of the request (undefined: none was sent):
   * without one, the dev principal in `dev` mode and a refusal in `jwt` mode. Never throws: a
   * failure is `{ ok: false, reason }`, the reason a fixed phrase safe to send to the client.
   */
  authenticateToken(token: string | undefined): Promise<AuthOutcome>;
}

/** The subprotocol the server selects (and the client offers alongside a `bearer.<token>` entry). */
export const SUBPROTOCOL = 'strand.v1';

/** Prefix of the `Sec-WebSocket-Protocol` entry that carries a bearer token. */
export const BEARER_PROTOCOL_PREFIX = 'bearer.';

/** The accepted clock skew for `exp` and `nbf`, in seconds. */
export const CLOCK_TOLERANCE_S = 5;

/** Longest token considered (anything longer is refused as malformed before parsing). */
export const MAX_TOKEN_LENGTH = 8192;

/** The claim that names the issuer type of a token's commands (`<type>:<sub>`); `user` without it. */
export const ACTOR_TYPE_CLAIM = 'actor_type';

/** The principal of every token-less request in `dev` mode: one frozen object. */
export const DEV_PRINCIPAL: Principal = Object.freeze({ sub: 'dev', roles: Object.freeze(['admin']), claims: Object.freeze({}) });

/** The auth mode: STRAND_AUTH when set; otherwise 'jwt' when NODE_ENV=production, else 'dev'. */
export function authMode(config: Config): 'dev' | 'jwt' {
  const production = config.NODE_ENV === 'production';
  if (config.STRAND_AUTH === 'dev' && production) {
    throw new ConfigError(
      'invalid configuration:\n  STRAND_AUTH="dev": the development default is off in production (NODE_ENV=production); use STRAND_AUTH=jwt',
    );
  }
  return config.STRAND_AUTH ?? (production ? 'jwt' : 'dev');
}

/** PEM from an environment variable, where newlines are often written as `\n`. */
function pem(text: string): string {
  return text.includes('\\n') && !text.includes('\n') ? text.replace(/\\n/g, '\n') : text;
}

type Verify = (token: string) => Promise<AuthOutcome>;

/** The token verifier for the configured keys, or null when none is configured. */
async function createVerifier(config: Config): Promise<Verify | null> {
  const secret = config.STRAND_JWT_SECRET !== undefined ? new TextEncoder().encode(config.STRAND_JWT_SECRET) : undefined;
  let publicKey: CryptoKey | undefined;
  if (config.STRAND_JWT_PUBLIC_KEY !== undefined) {
    try {
      publicKey = await importSPKI(pem(config.STRAND_JWT_PUBLIC_KEY), 'RS256');
    } catch {
      throw new ConfigError(
        'invalid configuration:\n  STRAND_JWT_PUBLIC_KEY: not an RSA public key in SPKI PEM form ("-----BEGIN PUBLIC KEY-----"), as RS256 needs',
      );
    }
  }
  if (!secret && !publicKey) return null;
  const algorithms = [...(secret ? ['HS256'] : []), ...(publicKey ? ['RS256'] : [])];
  // jose checks the header's alg against `algorithms` before asking for the key.
  const key = async (header: { alg?: string }): Promise<Uint8Array | CryptoKey> => {
    if (header.alg === 'HS256' && secret) return secret;
    if (header.alg === 'RS256' && publicKey) return publicKey;
    throw new errors.JOSEAlgNotAllowed('algorithm not allowed');
  };
  return async (token) => {
    if (token.length > MAX_TOKEN_LENGTH) return { ok: false, reason: 'malformed token' };
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, key, {
        algorithms,
        clockTolerance: CLOCK_TOLERANCE_S,
        requiredClaims: ['sub'],
        ...(config.STRAND_JWT_ISSUER !== undefined ? { issuer: config.STRAND_JWT_ISSUER } : {}),
        ...(config.STRAND_JWT_AUDIENCE !== undefined ? { audience: config.STRAND_JWT_AUDIENCE } : {}),
      }));
    } catch (err) {
      return { ok: false, reason: failureReason(err) };
    }
    if (typeof payload.sub !== 'string' || payload.sub === '') return { ok: false, reason: 'token has no subject' };
    return { ok: true, principal: Object.freeze({ sub: payload.sub, roles: Object.freeze(rolesOf(payload)), claims: Object.freeze({ ...payload }) }) };
  };
}

/** Roles from the `roles` claim (its string entries) and the `role` claim (a string). */
function rolesOf(payload: JWTPayload): string[] {
  const roles = new Set<string>();
  if (Array.isArray(payload.roles)) for (const r of payload.roles) if (typeof r === 'string' && r !== '') roles.add(r);
  if (typeof payload.role === 'string' && payload.role !== '') roles.add(payload.role);
  return [...roles];
}

/** A short, fixed reason for a verification failure: never jose's own message. */
function failureReason(err: unknown): string {
  if (!(err instanceof errors.JOSEError)) return 'invalid token';
  switch (err.code) {
    case errors.JWTExpired.code:
      return 'token expired';
    case errors.JWSSignatureVerificationFailed.code:
      return 'bad signature';
    case errors.JOSEAlgNotAllowed.code:
    case errors.JOSENotSupported.code:
      return 'algorithm not allowed';
    case errors.JWSInvalid.code:
    case errors.JWTInvalid.code:
      return 'malformed token';
    case errors.JWTClaimValidationFailed.code: {
      const claim = (err as errors.JWTClaimValidationFailed).claim;
      if (claim === 'nbf') return 'token not yet valid';
      if (claim === 'iss') return 'wrong issuer';
      if (claim === 'aud') return 'wrong audience';
      if (claim === 'sub') return 'token has no subject';
      return 'invalid token claims';
    }
    default:
      return 'invalid token';
  }
}

const BEARER = /^Bearer[ \t]+(\S+)[ \t]*$/i;

/**
 * The token of an `Authorization` header value: the token of `Bearer <token>`, `null` for a
 * header of another form (`Basic …`, `Bearer` with nothing after it), undefined without one.
 */
export function authorizationBearer(header: string | string[] | undefined): string | null | undefined {
  if (header === undefined || header === '') return undefined;
  if (typeof header !== 'string') return null;
  const m = BEARER.exec(header);
  return m ? m[1]! : null;
}

/**
 * The bearer token of a WebSocket upgrade request: `Authorization: Bearer`, then a
 * `bearer.<token>` subprotocol entry, then the `access_token` query parameter. undefined when
 * there is none.
 */
export function upgradeToken(req: Pick<IncomingMessage, 'headers' | 'url'>): string | undefined {
  const fromHeader = authorizationBearer(req.headers.authorization);
  if (typeof fromHeader === 'string') return fromHeader;
  const protocols = req.headers['sec-websocket-protocol'];
  if (typeof protocols === 'string') {
    for (const entry of protocols.split(',')) {
      const p = entry.trim();
      if (p.startsWith(BEARER_PROTOCOL_PREFIX) && p.length > BEARER_PROTOCOL_PREFIX.length) return p.slice(BEARER_PROTOCOL_PREFIX.length);
    }
  }
  if (req.url !== undefined && req.url.includes('access_token=')) {
    try {
      const token = new URL(req.url, 'http://localhost').searchParams.get('access_token');
      if (token) return token;
    } catch {
      // an unparseable URL carries no token
    }
  }
  return undefined;
}

/**
 * The authenticator of the configured mode. Throws ConfigError for STRAND_AUTH=dev with
 * NODE_ENV=production ("the development default is off in production"), for jwt mode with
 * neither STRAND_JWT_SECRET nor STRAND_JWT_PUBLIC_KEY, and for a public key that is not SPKI PEM.
 */
export async function createAuthenticator(config: Config): Promise<Authenticator> {
  const mode = authMode(config);
  const verify = await createVerifier(config);
  if (mode === 'jwt' && !verify) {
    throw new ConfigError(
      'invalid configuration:\n  STRAND_AUTH=jwt (the default when NODE_ENV=production) needs STRAND_JWT_SECRET (HS256) or STRAND_JWT_PUBLIC_KEY (RS256)',
    );
  }
  const authenticateToken = async (token: string | undefined): Promise<AuthOutcome> => {
    if (token === undefined) return mode === 'dev' ? { ok: true, principal: DEV_PRINCIPAL } : { ok: false, reason: 'no bearer token' };
    if (!verify) return { ok: false, reason: 'token cannot be verified: no key configured' };
    return verify(token);
  };
  return {
    mode,
    authenticateToken,
    authenticate: (req) => authenticateToken(upgradeToken(req)),
  };
}
