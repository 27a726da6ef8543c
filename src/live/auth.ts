import type { SubscribeAggregateMessage, SubscribeViewMessage } from './protocol.js';
import { SUBPROTOCOL, upgradeToken } from '../auth/tokens.js';
import type { SubscriptionRequest } from '../auth/access.js';

/**
 * Authentication and authorization of the WebSocket endpoint (`/live`). Both live in
 * `src/auth/` (shared with the HTTP API); this module keeps what is the WebSocket's own and
 * re-exports the rest under the names the gateway has always imported.
 *
 * Authentication happens once, on connect (the HTTP upgrade request): the gateway calls
 * `authenticator.authenticate(req)`; on `{ ok: false }` it accepts the upgrade and closes the
 * connection at once with `CloseCode.UNAUTHORIZED` (4401) and `reason` as the close reason
 * (reasons are short, fixed phrases that are safe to show to the client).
 *
 * Where the token is read from, first found wins:
 * 1. the `Authorization: Bearer <token>` header (non-browser clients);
 * 2. an entry `bearer.<token>` of the `Sec-WebSocket-Protocol` header: browsers cannot set
 *    headers on a WebSocket, but can offer subprotocols: `new WebSocket(url, ['strand.v1',
 *    'bearer.' + token])`. The server must then answer with one of the offered protocols or the
 *    browser fails the connection; it answers `strand.v1` (see `selectSubprotocol`), never the
 *    token entry, so the client must offer `strand.v1` alongside;
 * 3. the `access_token` query parameter (`/live?access_token=<token>`): the last resort, since
 *    URLs end up in proxies' access logs.
 */

export {
  BEARER_PROTOCOL_PREFIX,
  CLOCK_TOLERANCE_S,
  SUBPROTOCOL,
  createAuthenticator,
  type AuthOutcome,
  type Authenticator,
  type Principal,
} from '../auth/tokens.js';
export { allowAll, checkSubscribe, rowVisible, type AccessPolicy, type SubscriptionRequest } from '../auth/access.js';

/** The bearer token of an upgrade request (header, then subprotocol entry, then query); undefined when there is none. */
export const bearerToken = upgradeToken;

/**
 * For ws's `handleProtocols` option: `strand.v1` when the client offered it, else no subprotocol.
 * The `bearer.<token>` entry is never echoed (it would put the token in the response).
 */
export function selectSubprotocol(offered: ReadonlySet<string>): string | false {
  return offered.has(SUBPROTOCOL) ? SUBPROTOCOL : false;
}

/** The SubscriptionRequest of a protocol `subscribe` message. */
export function subscriptionRequest(msg: SubscribeViewMessage | SubscribeAggregateMessage): SubscriptionRequest {
  if ('aggregate' in msg) return { kind: 'aggregate', aggregate: msg.aggregate, id: msg.aggregateId };
  return {
    kind: 'view',
    view: msg.view,
    ...(msg.key !== undefined ? { key: msg.key } : {}),
    ...(msg.filter !== undefined ? { filter: msg.filter } : {}),
  };
}
