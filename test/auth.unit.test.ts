/** The pure parts of src/auth/: bearer headers, issuers from tokens, the policy helpers and the example policy's command rules. */
import { describe, expect, it } from 'vitest';
import { taskAccess } from '../actors/access.js';
import { task, type TaskState } from '../actors/task/task.js';
import { allowAll, checkCommand, checkOperate, decideCheck, issuerOf, type AccessPolicy, type CommandAccessRequest } from '../src/auth/access.js';
import { DEV_PRINCIPAL, authorizationBearer, type Principal } from '../src/auth/tokens.js';
import { ConfigError, loadConfig } from '../src/config.js';

const principal = (sub: string, roles: string[] = [], claims: Record<string, unknown> = {}): Principal => ({ sub, roles, claims: { sub, ...claims } });
const admin = principal('ops', ['admin']);
const cc1 = principal('CC1', ['coordinator']);
const eve = principal('eve');
const complete = (id = 't-1'): CommandAccessRequest => ({ aggregate: 'task', id, command: 'CompleteTask', data: {} });
const assignedTo = (who: string | null): TaskState => ({ ...task.initialState(), status: who ? 'pending' : 'none', assignedTo: who });

describe('authorizationBearer', () => {
  it('takes the token of Bearer <token> (scheme case-insensitive), null for another form, undefined without a header', () => {
    expect(authorizationBearer('Bearer abc.def')).toBe('abc.def');
    expect(authorizationBearer('bearer  abc ')).toBe('abc');
    expect(authorizationBearer(undefined)).toBeUndefined();
    expect(authorizationBearer('')).toBeUndefined();
    for (const h of ['Basic abc', 'Bearer', 'Bearer a b', 'abc', 'Bearerabc']) expect(authorizationBearer(h), h).toBeNull();
    expect(authorizationBearer(['Bearer a', 'Bearer b'])).toBeNull();
  });
});

describe('issuerOf', () => {
  it('user:<sub>, or <actor_type>:<sub> when the token has that claim', () => {
    expect(issuerOf(cc1)).toEqual({ type: 'user', id: 'CC1' });
    expect(issuerOf(principal('billing', [], { actor_type: 'service' }))).toEqual({ type: 'service', id: 'billing' });
    expect(issuerOf(principal('a:b'))).toEqual({ type: 'user', id: 'a:b' });
    expect(issuerOf(DEV_PRINCIPAL)).toEqual({ type: 'user', id: 'dev' });
  });

  it('refuses a sub or actor_type outside the Strand-Actor format', () => {
    for (const p of [principal('x'.repeat(129)), principal('a b'), principal('é'), principal('ok', [], { actor_type: 'a:b' }), principal('ok', [], { actor_type: 5 }), principal('ok', [], { actor_type: '' })]) {
      expect(issuerOf(p), JSON.stringify(p)).toEqual(expect.stringContaining("cannot name a command's issuer"));
    }
  });
});

describe('policy helpers fail closed', () => {
  const broken: AccessPolicy = {
    canSubscribe: () => true,
    canCommand: () => {
      throw new Error('db down');
    },
    canDecide: () => {
      throw new Error('db down');
    },
    canOperate: () => {
      throw new Error('db down');
    },
  };

  it('a hook that throws refuses', () => {
    expect(checkCommand(broken, admin, complete())).toBe('authorization check failed');
    expect(decideCheck(broken, admin, complete())!(assignedTo('ops'))).toBe('authorization check failed');
    expect(checkOperate(broken, admin, { action: 'projections.status' })).toBe('authorization check failed');
  });

  it('an empty or non-string refusal still refuses', () => {
    const odd = { canSubscribe: () => true, canCommand: () => '' as string, canOperate: () => false as unknown as string } as AccessPolicy;
    expect(checkCommand(odd, admin, complete())).toBe('not allowed');
    expect(checkOperate(odd, admin, { action: 'projections.rebuild', projection: 'p' })).toBe('not allowed');
  });

  it('without hooks: every command is allowed, the actor has nothing to call, operating needs the admin role', () => {
    expect(checkCommand(allowAll, eve, complete())).toBe(true);
    expect(decideCheck(allowAll, eve, complete())).toBeUndefined();
    expect(checkOperate(allowAll, admin, { action: 'dead-letters.retry', projection: 'p', seq: 3 })).toBe(true);
    expect(checkOperate(allowAll, cc1, { action: 'dead-letters.retry', projection: 'p', seq: 3 })).toBe('dead-letters.retry needs the admin role');
    expect(checkOperate(allowAll, DEV_PRINCIPAL, { action: 'projections.rebuild', projection: 'p' })).toBe(true);
  });
});

describe('taskAccess: commands and operations', () => {
  it('an admin may send anything and operate; a coordinator only task commands; anyone else nothing', () => {
    expect(checkCommand(taskAccess, admin, { aggregate: 'order', id: 'o', command: 'PlaceOrder', data: {} })).toBe(true);
    expect(checkCommand(taskAccess, cc1, { aggregate: 'task', id: 't', command: 'CreateTask', data: {} })).toBe(true);
    expect(checkCommand(taskAccess, cc1, { aggregate: 'order', id: 'o', command: 'PlaceOrder', data: {} })).toBe('coordinators may send commands only to tasks');
    expect(checkCommand(taskAccess, cc1, { aggregate: 'task', id: 't', command: 'MarkOverdue', data: {} })).toBe('MarkOverdue is sent by Strand when a task falls due');
    expect(checkCommand(taskAccess, admin, { aggregate: 'task', id: 't', command: 'MarkOverdue', data: {} })).toBe(true);
    expect(checkCommand(taskAccess, eve, { aggregate: 'task', id: 't', command: 'CreateTask', data: {} })).toBe('commands need the admin or coordinator role');
    expect(checkOperate(taskAccess, admin, { action: 'projections.rebuild', projection: 'p' })).toBe(true);
    expect(checkOperate(taskAccess, cc1, { action: 'projections.status' })).toBe('projections.status needs the admin role');
  });

  it('a coordinator completes only a task assigned to them, judged on the state given', () => {
    const check = decideCheck(taskAccess, cc1, complete())!;
    expect(check(assignedTo('CC1'))).toBe(true);
    expect(check(assignedTo('CC2'))).toBe('coordinators may complete only tasks assigned to them');
    expect(check(assignedTo(null))).toBe('coordinators may complete only tasks assigned to them');
    expect(decideCheck(taskAccess, cc1, { aggregate: 'task', id: 't', command: 'CancelTask', data: {} })!(assignedTo('CC2'))).toBe(true);
    expect(decideCheck(taskAccess, admin, complete())!(assignedTo('CC2'))).toBe(true);
  });
});

describe('NATS_USER and NATS_PASSWORD', () => {
  it('go together', () => {
    expect(loadConfig({ NATS_USER: 'strand', NATS_PASSWORD: 'x' })).toMatchObject({ NATS_USER: 'strand', NATS_PASSWORD: 'x' });
    expect(() => loadConfig({ NATS_USER: 'strand' })).toThrow(ConfigError);
    expect(() => loadConfig({ NATS_PASSWORD: "x" })).toThrow(/NATS_PASSWORD="x": set NATS_USER and NATS_PASSWORD together/);
  });
});
