import { z } from 'zod';
import { defineAggregate, reject } from '../../src/aggregate/index.js';
import type { AggregateDeadlineRule } from '../../src/processes/aggregate-deadlines.js';

/**
 * Care tasks — aggregate `task` (the rejections it gives: docs/errors.md, "Reasons of the example aggregates").
 *
 * Limits: IDs (memberId, assignedTo) 1..128 characters; title 1..200; description and notes
 * up to 2000; a cancellation reason 1..500.
 *
 * Overdue: with deadlines on (STRAND_DEADLINES=true), Strand sets the deadline `overdue` of each
 * task when it is created (STRAND_TASK_OVERDUE_MS later, default 48 h), cancels it when the task
 * is completed or cancelled, and sends MarkOverdue when it fires (src/processes/aggregate-deadlines.ts).
 * A fire that raced with the closing of the task is refused TASK_CLOSED, and ignored.
 */
const Id = z.string().min(1).max(128);
const Title = z.string().min(1).max(200);
const LongText = z.string().max(2000);
const Reason = z.string().min(1).max(500);

/**
 * TaskCreated is at schema version 2. v1 (before 0.1) had no `description` and named the
 * member field `member`: `{title, member, assignedTo}`. The upcaster renames `member` to
 * `memberId` and leaves `description` absent.
 */
const TaskCreatedV2 = z.object({
  title: Title,
  description: LongText.optional(),
  memberId: Id,
  assignedTo: Id,
});
interface TaskCreatedV1 {
  title: string;
  member: string;
  assignedTo: string;
}

export type TaskStatus = 'none' | 'pending' | 'completed' | 'cancelled';

export interface TaskState {
  /** `pending` while open; `none` before TaskCreated. */
  status: TaskStatus;
  title: string | null;
  description: string | null;
  memberId: string | null;
  assignedTo: string | null;
  createdAt: string | null;
  completedAt: string | null;
  completedBy: string | null;
  notes: string | null;
  cancelReason: string | null;
  /** When the task was found overdue (TaskOverdue's `dueAt`), or null. It stays pending. */
  overdueAt: string | null;
}

export const task = defineAggregate<TaskState>()({
  name: 'task',
  commands: {
    CreateTask: z.object({ title: Title, description: LongText.optional(), memberId: Id, assignedTo: Id }),
    AssignTask: z.object({ assignedTo: Id }),
    CompleteTask: z.object({ notes: LongText.optional() }),
    CancelTask: z.object({ reason: Reason }),
    /** Sent by Strand when the task's `overdue` deadline fires; `dueAt` is when it was due. */
    MarkOverdue: z.object({ dueAt: z.iso.datetime() }),
  },
  events: {
    TaskCreated: {
      schema: TaskCreatedV2,
      version: 2,
      upcast: {
        1: (v1: TaskCreatedV1): z.infer<typeof TaskCreatedV2> => ({
          title: v1.title,
          memberId: v1.member,
          assignedTo: v1.assignedTo,
        }),
      },
    },
    TaskAssigned: z.object({ assignedTo: Id, previousAssignee: Id }),
    TaskCompleted: z.object({ notes: LongText.nullable(), completedAt: z.iso.datetime() }),
    TaskCancelled: z.object({ reason: Reason }),
    TaskOverdue: z.object({ dueAt: z.iso.datetime() }),
  },
  initialState: () => ({
    status: 'none',
    title: null,
    description: null,
    memberId: null,
    assignedTo: null,
    createdAt: null,
    completedAt: null,
    completedBy: null,
    notes: null,
    cancelReason: null,
    overdueAt: null,
  }),
  decide: {
    CreateTask: (cmd, state) => {
      if (state.status !== 'none') return reject('TASK_ALREADY_EXISTS');
      return {
        type: 'TaskCreated',
        data: {
          title: cmd.title,
          ...(cmd.description !== undefined ? { description: cmd.description } : {}),
          memberId: cmd.memberId,
          assignedTo: cmd.assignedTo,
        },
      };
    },
    AssignTask: (cmd, state) => {
      if (state.status === 'none') return reject('TASK_NOT_FOUND');
      if (state.status !== 'pending') return reject('TASK_CLOSED');
      return { type: 'TaskAssigned', data: { assignedTo: cmd.assignedTo, previousAssignee: state.assignedTo! } };
    },
    CompleteTask: (cmd, state, ctx) => {
      if (state.status === 'none') return reject('TASK_NOT_FOUND');
      if (state.status === 'completed') return reject('TASK_ALREADY_COMPLETED');
      if (state.status === 'cancelled') return reject('TASK_CLOSED');
      if (ctx.issuer === undefined || ctx.issuer.id !== state.assignedTo) {
        return reject('NOT_ASSIGNEE', 'only the assignee may complete the task');
      }
      return { type: 'TaskCompleted', data: { notes: cmd.notes ?? null, completedAt: ctx.now.toISOString() } };
    },
    CancelTask: (cmd, state) => {
      if (state.status === 'none') return reject('TASK_NOT_FOUND');
      if (state.status !== 'pending') return reject('TASK_CLOSED');
      return { type: 'TaskCancelled', data: { reason: cmd.reason } };
    },
    MarkOverdue: (cmd, state) => {
      if (state.status === 'none') return reject('TASK_NOT_FOUND');
      if (state.status !== 'pending') return reject('TASK_CLOSED');
      if (state.overdueAt !== null) return reject('TASK_ALREADY_OVERDUE');
      return { type: 'TaskOverdue', data: { dueAt: cmd.dueAt } };
    },
  },
  evolve: {
    TaskCreated: (state, e, event) => ({
      ...state,
      status: 'pending',
      title: e.title,
      description: e.description ?? null,
      memberId: e.memberId,
      assignedTo: e.assignedTo,
      createdAt: event.time,
    }),
    TaskAssigned: (state, e) => ({ ...state, assignedTo: e.assignedTo }),
    TaskCompleted: (state, e, event) => ({
      ...state,
      status: 'completed',
      completedAt: e.completedAt,
      completedBy: event.issuer?.id ?? null,
      notes: e.notes,
    }),
    TaskCancelled: (state, e) => ({ ...state, status: 'cancelled', cancelReason: e.reason }),
    TaskOverdue: (state, e) => ({ ...state, overdueAt: e.dueAt }),
  },
});

/** The task's `overdue` deadline: due `afterMs` (STRAND_TASK_OVERDUE_MS) after TaskCreated, cancelled when the task closes, MarkOverdue when it fires. */
export function taskOverdue(afterMs: number): AggregateDeadlineRule {
  return { aggregate: 'task', name: 'overdue', setOn: 'TaskCreated', afterMs, cancelOn: ['TaskCompleted', 'TaskCancelled'], command: 'MarkOverdue' };
}
