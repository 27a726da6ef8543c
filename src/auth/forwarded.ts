import type { MsgHdrs } from '@nats-io/nats-core';
import type { Principal } from './tokens.js';

/**
 * The principal of an HTTP command that one Strand instance forwards to the owner of its
 * partition. The access policy's in-actor check (`canDecide`) is a function, which cannot travel:
 * the owner rebuilds it from the principal, carried in this header of the forwarded message.
 *
 * Only Strand's own forward subjects (`strand.fwd.<instance>.…`) honour it, never `cmd.>`. A
 * sender that could forge it gains nothing: a NATS command is not checked by the policy at all
 * (NATS permissions decide who may send it), and a principal can only add the policy's refusals.
 */
export const FORWARDED_PRINCIPAL_HEADER = 'Strand-Forwarded-Principal';

/** Longest header value decoded (a principal is a token's claims: well under this). */
const MAX_ENCODED = 16_384;

export function encodePrincipal(p: Principal): string {
  return Buffer.from(JSON.stringify({ sub: p.sub, roles: p.roles, claims: p.claims }), 'utf8').toString('base64url');
}

/** The principal of a forwarded message, or undefined when it carries none (or one that does not decode). */
export function forwardedPrincipal(headers: MsgHdrs | undefined): Principal | undefined {
  const v = headers?.get(FORWARDED_PRINCIPAL_HEADER);
  if (!v || v.length > MAX_ENCODED) return undefined;
  try {
    const o = JSON.parse(Buffer.from(v, 'base64url').toString('utf8')) as Record<string, unknown>;
    if (typeof o['sub'] !== 'string' || !Array.isArray(o['roles']) || !o['roles'].every((r) => typeof r === 'string')) return undefined;
    const claims = o['claims'] !== null && typeof o['claims'] === 'object' ? (o['claims'] as Record<string, unknown>) : {};
    return Object.freeze({ sub: o['sub'], roles: Object.freeze([...(o['roles'] as string[])]), claims: Object.freeze({ ...claims }) });
  } catch {
    return undefined;
  }
}
