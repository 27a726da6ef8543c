import { describe, expect, it } from 'vitest';
import {
  compareDeadlineStreamConfig,
  deadlineConsumerConfig,
  deadlineFireSubject,
  deadlineScheduleSubject,
  deadlineSchedules,
  deadlineStreamConfig,
  instanceDeadlineSchedules,
  isDeadlineName,
  ownerFiredDeadlines,
  parseDeadlineSubject,
} from './index.js';

describe('deadline subjects', () => {
  it('builds and parses the schedule and fire subjects', () => {
    expect(deadlineScheduleSubject('task', 't-1', 'overdue', 'G1')).toBe('dl.at.task.t-1.overdue.G1');
    expect(deadlineFireSubject('task', 't-1', 'overdue')).toBe('dl.fire.task.t-1.overdue');
    expect(deadlineSchedules('task', 't-1', 'overdue')).toBe('dl.at.task.t-1.overdue.*');
    expect(instanceDeadlineSchedules('task', 't-1')).toBe('dl.at.task.t-1.*.*');
    expect(ownerFiredDeadlines('task')).toBe('dl.fire.task.>');
    expect(parseDeadlineSubject('dl.at.task.t-1.overdue.G1')).toEqual({ kind: 'at', owner: 'task', id: 't-1', name: 'overdue', generation: 'G1' });
    expect(parseDeadlineSubject('dl.fire.task.t-1.overdue')).toEqual({ kind: 'fire', owner: 'task', id: 't-1', name: 'overdue' });
    for (const s of ['dl.fire.task.t-1', 'dl.at.task.t-1.overdue', 'evt.task.t-1.TaskCreated', 'dl.fire.task.t-1.overdue.x', 'dl.other.a.b.c']) expect(parseDeadlineSubject(s), s).toBeUndefined();
  });

  it('takes a deadline name that is one subject token, and a generation of letters and digits only', () => {
    for (const ok of ['overdue', 'payment-due', 'a', 'Step_2', 'x'.repeat(64)]) expect(isDeadlineName(ok), ok).toBe(true);
    for (const bad of ['', '9lives', '-x', 'a.b', 'a*', '>', 'a b', 'a\r\nb', 'x'.repeat(65)]) expect(isDeadlineName(bad), bad).toBe(false);
    expect(() => deadlineScheduleSubject('task', 't', 'n', 'a.b')).toThrow(/generation/);
    expect(() => deadlineScheduleSubject('task', 't', 'n', '')).toThrow(/generation/);
  });
});

describe('deadline stream and consumer configuration', () => {
  const wanted = deadlineStreamConfig({ name: 'EVENTS', replicas: 3 });

  it('is a work queue with schedules, rollups and purges allowed, and no limits', () => {
    expect(wanted).toMatchObject({
      name: 'EVENTS_DEADLINES',
      subjects: ['dl.at.*.*.*.*', 'dl.fire.*.*.*'],
      retention: 'workqueue',
      num_replicas: 3,
      discard: 'old',
      allow_msg_schedules: true,
      allow_rollup_hdrs: true,
      deny_purge: false,
      allow_direct: true,
      max_age: 0,
      max_msgs: -1,
      max_bytes: -1,
    });
    expect(compareDeadlineStreamConfig(wanted, wanted)).toEqual([]);
  });

  it('names each difference of an existing stream that would lose or misdeliver deadlines', () => {
    const diffs = compareDeadlineStreamConfig({ ...wanted, retention: 'limits' as never, allow_msg_schedules: false, max_age: 1e9, max_msgs: 10, max_bytes: 10, max_msgs_per_subject: 1, num_replicas: 1, subjects: ['dl.>'], allow_direct: false }, wanted);
    expect(diffs).toHaveLength(9);
    expect(diffs.join('\n')).toMatch(/allow_msg_schedules is off/);
    expect(diffs.join('\n')).toMatch(/num_replicas is 1, configured 3/);
  });

  it('gives a consumer one filter per owner', () => {
    expect(deadlineConsumerConfig({ name: 'c', owners: ['task'], ackWaitMs: 30_000, maxPending: 10 })).toMatchObject({ durable_name: 'c', filter_subject: 'dl.fire.task.>', ack_policy: 'explicit', ack_wait: 30_000_000_000, max_ack_pending: 10, max_deliver: -1 });
    expect(deadlineConsumerConfig({ name: 'c', owners: ['a', 'b'], ackWaitMs: 1000, maxPending: 1 }).filter_subjects).toEqual(['dl.fire.a.>', 'dl.fire.b.>']);
    expect(deadlineConsumerConfig({ name: 'c', owners: ['task'], ackWaitMs: 1000, maxPending: 1 })).not.toHaveProperty('priority_groups');
    expect(deadlineConsumerConfig({ name: 'c', owners: ['task'], ackWaitMs: 1000, maxPending: 1, pinTtlMs: 5000 })).toMatchObject({ priority_groups: ['strand'], priority_policy: 'pinned_client', priority_timeout: 5_000_000_000 });
  });
});
