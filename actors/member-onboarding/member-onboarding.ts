import { z } from 'zod';
import { defineProcess } from '../../src/processes/define.js';
import { eligibilityCheck } from '../eligibility-check/eligibility-check.js';
import { task } from '../task/task.js';

/**
 * Member onboarding — process `member-onboarding` (docs/processes.md), from the seed documents:
 * an eligibility check completing eligible creates a profile set-up task; the task completed,
 * the member is welcomed. Not eligible, a failed check, a refused task, a cancelled task: the
 * member's onboarding is marked failed (compensation). A task not done by `profile-setup-due`
 * is escalated to a supervisor; still not done by `profile-setup-abandoned`, it is cancelled
 * and the onboarding failed.
 *
 * One instance per eligibility check (its ID is the check's); the task is `onboarding-<check ID>`,
 * the member the check's account.
 */
export type OnboardingStatus = 'new' | 'checking' | 'profile-setup' | 'welcoming' | 'welcomed' | 'failed';

export interface OnboardingState {
  status: OnboardingStatus;
  accountId: string | null;
  taskId: string | null;
  escalated: boolean;
  failureReason: string | null;
}

export interface OnboardingOptions {
  /** How long the member has to set up the profile before the task is escalated (default 48 hours). */
  readonly profileSetupMs: number;
  /** How long after the escalation the task is abandoned (default 7 days). */
  readonly abandonAfterMs: number;
  /** Who the task is first assigned to, and who it escalates to. */
  readonly team: string;
  readonly supervisor: string;
}

/** The prefix of the profile set-up task's ID: `onboarding-<check ID>`. */
export const TASK_PREFIX = 'onboarding-';

/** The process with its timing; `memberOnboarding` is it with the defaults. */
export function makeMemberOnboarding(o: Partial<OnboardingOptions> = {}) {
  const profileSetupMs = o.profileSetupMs ?? 48 * 3600_000;
  const abandonAfterMs = o.abandonAfterMs ?? 7 * 24 * 3600_000;
  const team = o.team ?? 'onboarding-team';
  const supervisor = o.supervisor ?? 'onboarding-supervisor';
  const fail = (s: OnboardingState, reason: string, extra: { aggregate: string; id: string; command: string; data: unknown }[] = []) => ({
    events: [{ type: 'OnboardingFailed' as const, data: { reason } }],
    commands: [...extra, { aggregate: 'member', id: s.accountId!, command: 'MarkOnboardingFailed', data: { reason } }],
    end: 'failed' as const,
  });
  return defineProcess<OnboardingState>()({
    name: 'member-onboarding',
    sources: { 'eligibility-check': eligibilityCheck, task },
    correlate: (e) => {
      if (e.aggregate === 'eligibility-check') return e.aggregateId;
      // Only the tasks this process created belong to an onboarding.
      return e.aggregateId.startsWith(TASK_PREFIX) && e.aggregateId.length > TASK_PREFIX.length ? e.aggregateId.slice(TASK_PREFIX.length) : undefined;
    },
    events: {
      OnboardingStarted: z.object({ accountId: z.string() }),
      ProfileSetupRequested: z.object({ taskId: z.string() }),
      ProfileSetupEscalated: z.object({ assignedTo: z.string() }),
      WelcomeRequested: z.object({}),
      OnboardingCompleted: z.object({}),
      OnboardingFailed: z.object({ reason: z.string() }),
    },
    initialState: () => ({ status: 'new', accountId: null, taskId: null, escalated: false, failureReason: null }),
    evolve: {
      OnboardingStarted: (s, e) => ({ ...s, status: 'checking', accountId: e.accountId }),
      ProfileSetupRequested: (s, e) => ({ ...s, status: 'profile-setup', taskId: e.taskId }),
      ProfileSetupEscalated: (s) => ({ ...s, escalated: true }),
      WelcomeRequested: (s) => ({ ...s, status: 'welcoming' }),
      OnboardingCompleted: (s) => ({ ...s, status: 'welcomed' }),
      OnboardingFailed: (s, e) => ({ ...s, status: 'failed', failureReason: e.reason }),
    },
    on: {
      'eligibility-check': {
        EligibilityCheckInitiated: (s, e) => (s.status !== 'new' ? {} : { events: [{ type: 'OnboardingStarted', data: { accountId: e.data.accountId } }] }),
        EligibilityCheckCompleted: (s, e, ctx) => {
          if (s.status !== 'checking') return {};
          if (!e.data.eligible) return fail(s, 'not eligible');
          const taskId = `${TASK_PREFIX}${ctx.processId}`;
          return {
            events: [{ type: 'ProfileSetupRequested', data: { taskId } }],
            commands: [{ aggregate: 'task', id: taskId, command: 'CreateTask', data: { title: 'Set up your profile', memberId: s.accountId!, assignedTo: team } }],
            deadlines: { set: [{ name: 'profile-setup-due', after: profileSetupMs }] },
          };
        },
        EligibilityCheckFailed: (s, e) => (s.status !== 'checking' ? {} : fail(s, `eligibility check failed: ${e.data.reason}`.slice(0, 500))),
      },
      task: {
        TaskCompleted: (s) =>
          s.status !== 'profile-setup'
            ? {}
            : {
                events: [{ type: 'WelcomeRequested', data: {} }],
                commands: [{ aggregate: 'member', id: s.accountId!, command: 'SendWelcome', data: { channel: 'email' } }],
                deadlines: { cancel: ['profile-setup-due', 'profile-setup-abandoned'] },
              },
        TaskCancelled: (s, e) => (s.status !== 'profile-setup' ? {} : fail(s, `profile set-up task cancelled: ${e.data.reason}`.slice(0, 500))),
      },
    },
    onDeadline: {
      'profile-setup-due': (s) =>
        s.status !== 'profile-setup' || s.escalated
          ? {}
          : {
              events: [{ type: 'ProfileSetupEscalated', data: { assignedTo: supervisor } }],
              commands: [{ aggregate: 'task', id: s.taskId!, command: 'AssignTask', data: { assignedTo: supervisor } }],
              deadlines: { set: [{ name: 'profile-setup-abandoned', after: abandonAfterMs }] },
            },
      'profile-setup-abandoned': (s) =>
        s.status !== 'profile-setup' ? {} : fail(s, 'profile set-up not done in time', [{ aggregate: 'task', id: s.taskId!, command: 'CancelTask', data: { reason: 'profile set-up not done in time' } }]),
    },
    onReply: (s, r) => {
      if (r.command === 'CreateTask' && !r.accepted && s.status === 'profile-setup') return fail(s, `profile set-up task refused: ${r.code}`);
      if (r.command === 'SendWelcome' && s.status === 'welcoming') {
        if (r.accepted || r.code === 'WELCOME_ALREADY_SENT') return { events: [{ type: 'OnboardingCompleted', data: {} }], end: 'completed' };
        return fail(s, `welcome refused: ${r.code}`);
      }
      return {};
    },
  });
}

export const memberOnboarding = makeMemberOnboarding();
