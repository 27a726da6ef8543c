import { defineProjection, on } from '../../src/projections/define.js';
import type { ProjectionEvent } from '../../src/projections/types.js';
import { task } from './task.js';

/** The `<id>` part of an event's `actor` (`<type>:<id>`), or null. */
function actorId(e: ProjectionEvent): string | null {
  if (!e.actor) return null;
  const i = e.actor.indexOf(':');
  return i >= 0 ? e.actor.slice(i + 1) : e.actor;
}

/** UTC calendar day of an ISO time: the analytics' bucket. */
function day(iso: string): string {
  return iso.slice(0, 10);
}

/** One row per task: what a coordinator's board shows. */
export const taskListView = defineProjection({
  name: 'task_list_view',
  version: 1,
  migrations: [
    `CREATE TABLE task_list_view (
       task_id      text PRIMARY KEY,
       title        text,
       description  text,
       status       text,
       assigned_to  text,
       member_id    text,
       created_at   timestamptz,
       completed_at timestamptz,
       completed_by text,
       cancel_reason text,
       version      integer NOT NULL,
       updated_at   timestamptz NOT NULL)`,
    'CREATE INDEX task_list_view_assigned_status ON task_list_view (assigned_to, status, task_id)',
    'CREATE INDEX task_list_view_status ON task_list_view (status, task_id)',
    'CREATE INDEX task_list_view_member ON task_list_view (member_id, task_id)',
  ],
  tables: { task_list_view: { key: ['task_id'] } },
  views: {
    task_list_view: {
      relation: 'task_list_view',
      key: 'taskId',
      columns: {
        taskId: 'task_id',
        title: 'title',
        description: 'description',
        status: 'status',
        assignedTo: 'assigned_to',
        memberId: 'member_id',
        createdAt: 'created_at',
        completedAt: 'completed_at',
        completedBy: 'completed_by',
        cancelReason: 'cancel_reason',
        version: 'version',
      },
      filters: ['status', 'assignedTo', 'memberId'],
    },
  },
  handlers: [
    on(task, {
      TaskCreated: (e, db) =>
        db.upsert('task_list_view', {
          task_id: e.aggregateId,
          title: e.data.title,
          description: e.data.description ?? null,
          status: 'pending',
          assigned_to: e.data.assignedTo,
          member_id: e.data.memberId,
          created_at: e.time,
          version: e.version,
          updated_at: e.time,
        }),
      TaskAssigned: (e, db) => db.upsert('task_list_view', { task_id: e.aggregateId, assigned_to: e.data.assignedTo, version: e.version, updated_at: e.time }),
      TaskCompleted: (e, db) =>
        db.upsert('task_list_view', {
          task_id: e.aggregateId,
          status: 'completed',
          completed_at: e.data.completedAt,
          completed_by: actorId(e),
          version: e.version,
          updated_at: e.time,
        }),
      TaskCancelled: (e, db) =>
        db.upsert('task_list_view', { task_id: e.aggregateId, status: 'cancelled', cancel_reason: e.data.reason, version: e.version, updated_at: e.time }),
    }),
  ],
});

/** Every change to a member's tasks, newest first. */
export const memberTaskHistory = defineProjection({
  name: 'member_task_history',
  version: 1,
  migrations: [
    `CREATE TABLE member_task_history (
       seq         bigint PRIMARY KEY,
       member_id   text NOT NULL,
       task_id     text NOT NULL,
       event_type  text NOT NULL,
       at          timestamptz NOT NULL,
       actor       text,
       assigned_to text,
       status      text NOT NULL,
       detail      text)`,
    'CREATE INDEX member_task_history_member ON member_task_history (member_id, seq DESC)',
    'CREATE INDEX member_task_history_task ON member_task_history (task_id, seq DESC)',
    // The member of each task: later events do not carry it.
    'CREATE TABLE task_member (task_id text PRIMARY KEY, member_id text NOT NULL, assigned_to text)',
  ],
  tables: {
    member_task_history: { key: ['seq'] },
    // Every event after TaskCreated reads its task's member: one query per batch, not per event.
    task_member: { key: ['task_id'], prefetch: (e) => (e.type === 'TaskCreated' ? undefined : { task_id: e.aggregateId }) },
  },
  views: {
    member_task_history: {
      relation: 'member_task_history',
      key: 'seq',
      order: 'desc',
      columns: { seq: 'seq', memberId: 'member_id', taskId: 'task_id', eventType: 'event_type', at: 'at', actor: 'actor', assignedTo: 'assigned_to', status: 'status', detail: 'detail' },
      filters: ['memberId', 'taskId'],
    },
  },
  handlers: [
    on(task, {
      TaskCreated: (e, db) => {
        db.upsert('task_member', { task_id: e.aggregateId, member_id: e.data.memberId, assigned_to: e.data.assignedTo });
        db.upsert('member_task_history', { seq: e.seq, member_id: e.data.memberId, task_id: e.aggregateId, event_type: e.type, at: e.time, actor: e.actor ?? null, assigned_to: e.data.assignedTo, status: 'pending', detail: e.data.title });
      },
      TaskAssigned: async (e, db) => {
        const t = await db.get('task_member', { task_id: e.aggregateId });
        if (!t) throw new Error(`task ${e.aggregateId} has no TaskCreated before it`);
        // The whole row (member_id from the prefetch): a full-row upsert, not the partial-row merge.
        db.upsert('task_member', { task_id: e.aggregateId, member_id: t['member_id'], assigned_to: e.data.assignedTo });
        db.upsert('member_task_history', { seq: e.seq, member_id: t['member_id'], task_id: e.aggregateId, event_type: e.type, at: e.time, actor: e.actor ?? null, assigned_to: e.data.assignedTo, status: 'pending', detail: `from ${e.data.previousAssignee}` });
      },
      TaskCompleted: async (e, db) => {
        const t = await db.get('task_member', { task_id: e.aggregateId });
        if (!t) throw new Error(`task ${e.aggregateId} has no TaskCreated before it`);
        db.upsert('member_task_history', { seq: e.seq, member_id: t['member_id'], task_id: e.aggregateId, event_type: e.type, at: e.time, actor: e.actor ?? null, assigned_to: t['assigned_to'], status: 'completed', detail: e.data.notes });
      },
      TaskCancelled: async (e, db) => {
        const t = await db.get('task_member', { task_id: e.aggregateId });
        if (!t) throw new Error(`task ${e.aggregateId} has no TaskCreated before it`);
        db.upsert('member_task_history', { seq: e.seq, member_id: t['member_id'], task_id: e.aggregateId, event_type: e.type, at: e.time, actor: e.actor ?? null, assigned_to: t['assigned_to'], status: 'cancelled', detail: e.data.reason });
      },
    }),
  ],
});

/** Per UTC day: tasks created, completed, and average hours from creation to completion. */
export const taskAnalytics = defineProjection({
  name: 'task_analytics',
  version: 1,
  migrations: [
    `CREATE TABLE task_analytics_days (
       day                  text PRIMARY KEY,
       created              integer NOT NULL DEFAULT 0,
       completed            integer NOT NULL DEFAULT 0,
       -- exact integer sums: a rebuild reproduces the same averages bit for bit
       completion_ms_sum    bigint  NOT NULL DEFAULT 0)`,
    'CREATE TABLE task_created_at (task_id text PRIMARY KEY, created_at timestamptz NOT NULL)',
    `CREATE VIEW task_analytics AS
       SELECT day, created, completed,
              CASE WHEN completed > 0 THEN completion_ms_sum::double precision / completed / 3600000 END AS avg_hours_to_complete
       FROM task_analytics_days`,
  ],
  tables: {
    task_analytics_days: { key: ['day'] },
    task_created_at: { key: ['task_id'], prefetch: (e) => (e.type === 'TaskCompleted' ? { task_id: e.aggregateId } : undefined) },
  },
  views: {
    task_analytics: {
      relation: 'task_analytics',
      key: 'day',
      order: 'desc',
      columns: { day: 'day', created: 'created', completed: 'completed', avgHoursToComplete: 'avg_hours_to_complete' },
      filters: ['day'],
    },
  },
  handlers: [
    on(task, {
      TaskCreated: (e, db) => {
        db.upsert('task_created_at', { task_id: e.aggregateId, created_at: e.time });
        db.increment('task_analytics_days', { day: day(e.time) }, { created: 1 });
      },
      TaskCompleted: async (e, db) => {
        const t = await db.get('task_created_at', { task_id: e.aggregateId });
        if (!t) throw new Error(`task ${e.aggregateId} has no TaskCreated before it`);
        const ms = Date.parse(e.data.completedAt) - new Date(t['created_at'] as string | Date).getTime();
        db.increment('task_analytics_days', { day: day(e.data.completedAt) }, { completed: 1, completion_ms_sum: ms });
      },
    }),
  ],
});
