import type { Issuer } from '../aggregate/types.js';
import { parseIssuer } from '../commands/intake.js';
import { ACTOR_TYPE_CLAIM, type Principal } from './tokens.js';

/**
 * Authorization: what an authenticated principal may read, send and operate. One
 * {@link AccessPolicy} serves the WebSocket endpoint, the HTTP read routes, commands over HTTP
 * and the operator routes; docs/security.md describes it for users.
 *
 * Every check fails closed: a hook that throws refuses (or hides a row).
 */

/** What a subscription (or an HTTP read of the same thing) asks for, as the authorization hook sees it. */
export type SubscriptionRequest =
  | { readonly kind: 'view'; readonly view: string; readonly key?: string | number; readonly filter?: Readonly<Record<string, string>> }
  | { readonly kind: 'aggregate'; readonly aggregate: string; readonly id: string };

/** A command as the authorization hooks see it: intake has checked its names, headers and data. */
export interface CommandAccessRequest {
  readonly aggregate: string;
  readonly id: string;
  readonly command: string;
  /** The command's data as its schema parsed it. */
  readonly data: unknown;
  /** Who the command's events will name as their issuer (`actor`). */
  readonly issuer?: Issuer;
}

/** An operator action (the `/projections` routes). */
export type Operation =
  /** `GET /projections`, `GET /projections/:name` (projection absent: all of them). */
  | { readonly action: 'projections.status'; readonly projection?: string }
  /** `POST /projections/:name/rebuild` */
  | { readonly action: 'projections.rebuild'; readonly projection: string }
  /** `GET /processes/:process/parked` (the inputs' errors name instances and data) */
  | { readonly action: 'processes.parked'; readonly process: string }
  /** `POST /processes/:process/parked/:key/retry`, `DELETE /processes/:process/parked/:key` */
  | { readonly action: 'processes.parked.retry' | 'processes.parked.discard'; readonly process: string; readonly key: string }
  /** `GET /projections/:name/dead-letters` (their events are in it) */
  | { readonly action: 'dead-letters.list'; readonly projection: string }
  /** `POST /projections/:name/dead-letters/:seq/retry` */
  | { readonly action: 'dead-letters.retry'; readonly projection: string; readonly seq: number }
  /** `DELETE /projections/:name/dead-letters/:seq` */
  | { readonly action: 'dead-letters.discard'; readonly projection: string; readonly seq: number }
  /** `GET /cluster` (the members, their hosts and pids, and who owns each partition) */
  | { readonly action: 'cluster.status' };

/** The role operator routes need when the policy has no `canOperate`. */
export const ADMIN_ROLE = 'admin';

/** The authorization hook. Each method answers true, or the reason it refuses (sent to the client as FORBIDDEN). */
export interface AccessPolicy {
  /**
   * May the principal watch this view (by key or filter) or aggregate instance? Asked per live
   * subscription, and per HTTP read of the same thing (`GET /views/:view`, `/views/:view/:key`,
   * `/aggregates/:aggregate/:id`, `.../events`).
   */
  canSubscribe(principal: Principal, request: SubscriptionRequest): true | string;
  /** Whether one row of a view may be shown (live snapshots and changes, HTTP pages and rows); default: all rows. */
  canSee?(principal: Principal, view: string, row: Readonly<Record<string, unknown>>): boolean;
  /**
   * May the principal send this command? Asked before the command reaches its actor, without the
   * aggregate's state (cheap: a refusal loads nothing). Default: every command.
   */
  canCommand?(principal: Principal, command: CommandAccessRequest): true | string;
  /**
   * May the principal send this command to the aggregate in this state? Asked by the actor with
   * the state the command is about to be decided on, right before `decide` (and again on the fresh
   * state after a concurrency conflict), so a rule such as "only the assignee's coordinator" sees
   * what the decision sees. `state` is the aggregate's state type. Default: every command.
   */
  canDecide?(principal: Principal, command: CommandAccessRequest, state: unknown): true | string;
  /** May the principal perform this operator action? Default: only principals with the `admin` role. */
  canOperate?(principal: Principal, operation: Operation): true | string;
}

/** Every principal may read and send everything; operator routes still need the `admin` role. */
export const allowAll: AccessPolicy = Object.freeze({ canSubscribe: () => true as const });

/** A hook's answer as a verdict: true, or a non-empty reason. */
function verdict(run: () => true | string): true | string {
  try {
    const r = run();
    return r === true ? true : typeof r === 'string' && r !== '' ? r : 'not allowed';
  } catch {
    return 'authorization check failed';
  }
}

/** `policy.canSubscribe`, failing closed: a policy that throws refuses the subscription. */
export function checkSubscribe(policy: AccessPolicy, principal: Principal, request: SubscriptionRequest): true | string {
  return verdict(() => policy.canSubscribe(principal, request));
}

/** `policy.canSee` (all rows when absent), failing closed: a policy that throws hides the row. */
export function rowVisible(policy: AccessPolicy, principal: Principal, view: string, row: Readonly<Record<string, unknown>>): boolean {
  if (!policy.canSee) return true;
  try {
    return policy.canSee(principal, view, row) === true;
  } catch {
    return false;
  }
}

/** `policy.canCommand` (all commands when absent), failing closed. */
export function checkCommand(policy: AccessPolicy, principal: Principal, command: CommandAccessRequest): true | string {
  const hook = policy.canCommand;
  return hook ? verdict(() => hook.call(policy, principal, command)) : true;
}

/**
 * The check the actor runs on the state before `decide`, or undefined when the policy has no
 * `canDecide` (then the actor has nothing to call). Never throws: a hook that throws refuses.
 */
export function decideCheck(policy: AccessPolicy, principal: Principal, command: CommandAccessRequest): ((state: unknown) => true | string) | undefined {
  const hook = policy.canDecide;
  if (!hook) return undefined;
  return (state) => verdict(() => hook.call(policy, principal, command, state));
}

/** `policy.canOperate`, else the `admin` role; failing closed. */
export function checkOperate(policy: AccessPolicy, principal: Principal, operation: Operation): true | string {
  const hook = policy.canOperate;
  if (hook) return verdict(() => hook.call(policy, principal, operation));
  return principal.roles.includes(ADMIN_ROLE) ? true : `${operation.action} needs the ${ADMIN_ROLE} role`;
}

/**
 * The issuer a token's commands are recorded under: `<type>:<sub>`, the type from the
 * `actor_type` claim, else `user`. A string when the token cannot name an issuer (a `sub` or
 * `actor_type` outside the `Strand-Actor` format: type `[A-Za-z0-9_.-]{1,64}`, id 1-128
 * printable ASCII characters).
 */
export function issuerOf(principal: Principal): Issuer | string {
  const claimed = principal.claims[ACTOR_TYPE_CLAIM];
  const type = claimed === undefined ? 'user' : typeof claimed === 'string' ? claimed : '';
  const issuer = parseIssuer(`${type}:${principal.sub}`);
  if (issuer && issuer.type === type) return issuer;
  return `the token cannot name a command's issuer: its ${claimed !== undefined ? `${ACTOR_TYPE_CLAIM} must be 1-64 characters of [A-Za-z0-9_.-] and its ` : ''}sub must be 1-128 printable ASCII characters`;
}
