import { describe, expect, it } from 'vitest';
import { given, TEST_NOW } from '../../src/aggregate/testing.js';
import { task } from './task.js';

const alice = { type: 'user', id: 'alice' };
const bob = { type: 'user', id: 'bob' };

const created = {
  type: 'TaskCreated',
  data: { title: 'Call member', description: 'Follow-up call', memberId: 'member-1', assignedTo: 'alice' },
};
const completed = { type: 'TaskCompleted', data: { notes: null, completedAt: TEST_NOW.toISOString() } };
const cancelled = { type: 'TaskCancelled', data: { reason: 'duplicate' } };

describe('task', () => {
  it('declares exactly the commands and events of the contract', () => {
    expect(task.name).toBe('task');
    expect([...task.commands.keys()]).toEqual(['CreateTask', 'AssignTask', 'CompleteTask', 'CancelTask', 'MarkOverdue']);
    expect([...task.events.keys()]).toEqual(['TaskCreated', 'TaskAssigned', 'TaskCompleted', 'TaskCancelled', 'TaskOverdue']);
  });

  describe('CreateTask', () => {
    it('creates a task with the same fields', () => {
      given(task)
        .when('CreateTask', { title: 'Call member', description: 'Follow-up call', memberId: 'member-1', assignedTo: 'alice' })
        .then(created);
    });

    it('leaves out description when it is not given', () => {
      given(task)
        .when('CreateTask', { title: 'Call member', memberId: 'member-1', assignedTo: 'alice' })
        .then({ type: 'TaskCreated', data: { title: 'Call member', memberId: 'member-1', assignedTo: 'alice' } });
    });

    it('makes a pending task', () => {
      const s = given(task)
        .when('CreateTask', { title: 'Call member', memberId: 'member-1', assignedTo: 'alice' })
        .stateAfter();
      expect(s).toMatchObject({
        status: 'pending',
        title: 'Call member',
        description: null,
        memberId: 'member-1',
        assignedTo: 'alice',
        createdAt: TEST_NOW.toISOString(),
        completedAt: null,
        completedBy: null,
      });
    });

    it('is rejected when the task exists: TASK_ALREADY_EXISTS', () => {
      given(task, created)
        .when('CreateTask', { title: 'Again', memberId: 'member-1', assignedTo: 'alice' })
        .thenRejected('TASK_ALREADY_EXISTS');
    });

    it('refuses data outside the schema limits', () => {
      expect(task.commands.get('CreateTask')!.safeParse({ title: '', memberId: 'm', assignedTo: 'a' }).success).toBe(false);
      expect(task.commands.get('CreateTask')!.safeParse({ title: 'x'.repeat(201), memberId: 'm', assignedTo: 'a' }).success).toBe(false);
      expect(task.commands.get('CreateTask')!.safeParse({ title: 't', memberId: 'm'.repeat(129), assignedTo: 'a' }).success).toBe(false);
    });
  });

  describe('AssignTask', () => {
    it('reassigns, naming the previous assignee', () => {
      const outcome = given(task, created).when('AssignTask', { assignedTo: 'bob' });
      outcome.then({ type: 'TaskAssigned', data: { assignedTo: 'bob', previousAssignee: 'alice' } });
      expect(outcome.stateAfter().assignedTo).toBe('bob');
    });

    it('is rejected when the task is absent: TASK_NOT_FOUND', () => {
      given(task).when('AssignTask', { assignedTo: 'bob' }).thenRejected('TASK_NOT_FOUND');
    });

    it('is rejected when the task is completed: TASK_CLOSED', () => {
      given(task, created, completed).when('AssignTask', { assignedTo: 'bob' }).thenRejected('TASK_CLOSED');
    });

    it('is rejected when the task is cancelled: TASK_CLOSED', () => {
      given(task, created, cancelled).when('AssignTask', { assignedTo: 'bob' }).thenRejected('TASK_CLOSED');
    });
  });

  describe('CompleteTask', () => {
    it('completes when the assignee asks, with notes', () => {
      const now = new Date('2026-02-03T04:05:06.789Z');
      const outcome = given(task, created).when('CompleteTask', { notes: 'Spoke to member' }, { issuer: alice, now });
      outcome.then({ type: 'TaskCompleted', data: { notes: 'Spoke to member', completedAt: '2026-02-03T04:05:06.789Z' } });
      expect(outcome.stateAfter()).toMatchObject({
        status: 'completed',
        completedAt: '2026-02-03T04:05:06.789Z',
        notes: 'Spoke to member',
      });
    });

    it('records notes as null when absent', () => {
      given(task, created).when('CompleteTask', {}, { issuer: alice }).then(completed);
    });

    it('lets the new assignee complete after a reassignment', () => {
      given(task, created, { type: 'TaskAssigned', data: { assignedTo: 'bob', previousAssignee: 'alice' } })
        .when('CompleteTask', {}, { issuer: bob })
        .then(completed);
    });

    it('records who completed it from the event issuer', () => {
      const pending = given(task).when('CreateTask', created.data).stateAfter();
      const s = task.evolve(pending, 'TaskCompleted', completed.data, {
        type: 'TaskCompleted',
        version: 2,
        time: TEST_NOW.toISOString(),
        issuer: alice,
        metadata: {},
      });
      expect(s).toMatchObject({ status: 'completed', completedBy: 'alice' });
    });

    it('is rejected when the task is absent: TASK_NOT_FOUND', () => {
      given(task).when('CompleteTask', {}, { issuer: alice }).thenRejected('TASK_NOT_FOUND');
    });

    it('is rejected when done: TASK_ALREADY_COMPLETED', () => {
      given(task, created, completed).when('CompleteTask', {}, { issuer: alice }).thenRejected('TASK_ALREADY_COMPLETED');
    });

    it('is rejected when cancelled: TASK_CLOSED', () => {
      given(task, created, cancelled).when('CompleteTask', {}, { issuer: alice }).thenRejected('TASK_CLOSED');
    });

    it('is rejected when another actor asks: NOT_ASSIGNEE', () => {
      given(task, created).when('CompleteTask', {}, { issuer: bob }).thenRejected('NOT_ASSIGNEE');
    });

    it('is rejected when no actor is named: NOT_ASSIGNEE', () => {
      given(task, created).when('CompleteTask', {}).thenRejected('NOT_ASSIGNEE');
    });

    it('is rejected for the previous assignee after a reassignment: NOT_ASSIGNEE', () => {
      given(task, created, { type: 'TaskAssigned', data: { assignedTo: 'bob', previousAssignee: 'alice' } })
        .when('CompleteTask', {}, { issuer: alice })
        .thenRejected('NOT_ASSIGNEE');
    });
  });

  describe('CancelTask', () => {
    it('cancels with a reason', () => {
      const outcome = given(task, created).when('CancelTask', { reason: 'duplicate' });
      outcome.then(cancelled);
      expect(outcome.stateAfter()).toMatchObject({ status: 'cancelled', cancelReason: 'duplicate' });
    });

    it('is rejected when the task is absent: TASK_NOT_FOUND', () => {
      given(task).when('CancelTask', { reason: 'x' }).thenRejected('TASK_NOT_FOUND');
    });

    it('is rejected when completed: TASK_CLOSED', () => {
      given(task, created, completed).when('CancelTask', { reason: 'x' }).thenRejected('TASK_CLOSED');
    });

    it('is rejected when cancelled: TASK_CLOSED', () => {
      given(task, created, cancelled).when('CancelTask', { reason: 'x' }).thenRejected('TASK_CLOSED');
    });
  });

  describe('TaskCreated schema versions', () => {
    it('is at version 2 with an upcaster from version 1', () => {
      expect(task.events.get('TaskCreated')!.version).toBe(2);
    });

    it('upcasts v1 data ({title, member, assignedTo}) to v2', () => {
      const v1 = { title: 'Old task', member: 'member-9', assignedTo: 'carol' };
      const v2 = task.upcast('TaskCreated', 1, v1);
      expect(v2).toEqual({ title: 'Old task', memberId: 'member-9', assignedTo: 'carol' });
      const parsed = task.events.get('TaskCreated')!.schema.safeParse(v2);
      expect(parsed.success).toBe(true);
      expect(parsed.data).toEqual({ title: 'Old task', memberId: 'member-9', assignedTo: 'carol' });
      // v1 data is not valid v2 data on its own.
      expect(task.events.get('TaskCreated')!.schema.safeParse(v1).success).toBe(false);
    });

    it('replays an upcast v1 event into the same state as a v2 one', () => {
      const v2 = task.upcast('TaskCreated', 1, { title: 'Old task', member: 'member-9', assignedTo: 'carol' });
      given(task, { type: 'TaskCreated', data: v2 })
        .when('CompleteTask', {}, { issuer: { type: 'user', id: 'carol' } })
        .then(completed);
    });

    it('leaves current-version data alone', () => {
      expect(task.upcast('TaskCreated', 2, created.data)).toEqual(created.data);
    });
  });

  describe('MarkOverdue', () => {
    const dueAt = '2026-01-03T00:00:00.000Z';
    const overdue = { type: 'TaskOverdue', data: { dueAt } };

    it('marks a pending task overdue; it stays pending and can still be completed', () => {
      const s = given(task, created).when('MarkOverdue', { dueAt }).then(overdue).stateAfter();
      expect(s).toMatchObject({ status: 'pending', overdueAt: dueAt });
      given(task, created, overdue).when('CompleteTask', {}, { issuer: alice }).then({ type: 'TaskCompleted', data: { notes: null, completedAt: TEST_NOW.toISOString() } });
    });

    it('is rejected on a closed task (a deadline that raced with its closing): TASK_CLOSED', () => {
      given(task, created, completed).when('MarkOverdue', { dueAt }).thenRejected('TASK_CLOSED');
      given(task, created, cancelled).when('MarkOverdue', { dueAt }).thenRejected('TASK_CLOSED');
    });

    it('is rejected when there is no task, or it is already overdue', () => {
      given(task).when('MarkOverdue', { dueAt }).thenRejected('TASK_NOT_FOUND');
      given(task, created, overdue).when('MarkOverdue', { dueAt }).thenRejected('TASK_ALREADY_OVERDUE');
    });

    it('needs an ISO time', () => {
      expect(task.commands.get('MarkOverdue')!.safeParse({ dueAt: 'tomorrow' }).success).toBe(false);
    });
  });
});
