import { describe, expect, it } from 'vitest';
import { accepted, event, fired, given, rejected, TEST_NOW } from '../../src/processes/testing.js';
import { makeMemberOnboarding, memberOnboarding } from './member-onboarding.js';

const t = TEST_NOW.toISOString();
const initiated = event('eligibility-check', 'chk-1', 'EligibilityCheckInitiated', { accountId: 'acct-1', initiatedAt: t });
const eligible = event('eligibility-check', 'chk-1', 'EligibilityCheckCompleted', { eligible: true, copayAmount: 1000, networkStatus: 'in', completedAt: t });
const notEligible = event('eligibility-check', 'chk-1', 'EligibilityCheckCompleted', { eligible: false, copayAmount: null, networkStatus: null, completedAt: t });
const checkFailed = event('eligibility-check', 'chk-1', 'EligibilityCheckFailed', { reason: 'payer timeout', failedAt: t });
const taskDone = event('task', 'onboarding-chk-1', 'TaskCompleted', { notes: null, completedAt: t });
const taskCancelled = event('task', 'onboarding-chk-1', 'TaskCancelled', { reason: 'duplicate' });
const after = (ms: number) => new Date(TEST_NOW.getTime() + ms);
const createTask = { aggregate: 'task', id: 'onboarding-chk-1', command: 'CreateTask', data: { title: 'Set up your profile', memberId: 'acct-1', assignedTo: 'onboarding-team' } };
const markFailed = (reason: string) => ({ aggregate: 'member', id: 'acct-1', command: 'MarkOnboardingFailed', data: { reason } });
const welcome = { aggregate: 'member', id: 'acct-1', command: 'SendWelcome', data: { channel: 'email' } };

describe('member-onboarding', () => {
  it('correlates checks by their ID, and only its own tasks', () => {
    expect(memberOnboarding.correlate({ aggregate: 'eligibility-check', aggregateId: 'chk-1', type: 'EligibilityCheckInitiated', data: {}, seq: 1, eventId: 'e', version: 1, time: t })).toBe('chk-1');
    expect(memberOnboarding.correlate({ aggregate: 'task', aggregateId: 'onboarding-chk-1', type: 'TaskCompleted', data: {}, seq: 1, eventId: 'e', version: 1, time: t })).toBe('chk-1');
    expect(memberOnboarding.correlate({ aggregate: 'task', aggregateId: 'task-9', type: 'TaskCompleted', data: {}, seq: 1, eventId: 'e', version: 1, time: t })).toBeUndefined();
  });

  it('a check initiated starts it, waiting for the verdict', () => {
    const o = given(memberOnboarding).when(initiated).then({ commands: [], events: [{ type: 'OnboardingStarted', data: { accountId: 'acct-1' } }] });
    expect(o.after.state).toMatchObject({ status: 'checking', accountId: 'acct-1' });
  });

  it('eligible: CreateTask for the profile set-up, with the escalation deadline', () => {
    const o = given(memberOnboarding, initiated).when(eligible).then({
      commands: [createTask],
      events: [{ type: 'ProfileSetupRequested', data: { taskId: 'onboarding-chk-1' } }],
      deadlines: { set: [{ name: 'profile-setup-due', due: after(48 * 3600_000) }] },
    });
    expect(o.step!.commands[0]!.commandId).toBe('member-onboarding:chk-1:2:1');
    expect(o.step!.commands[0]!.actor).toBe('process:member-onboarding');
  });

  it('a verdict without the initiation seen is ignored (no account to onboard)', () => {
    given(memberOnboarding).when(eligible).thenIgnored();
  });

  it('task completed: the deadline cancelled, SendWelcome', () => {
    given(memberOnboarding, initiated, eligible, accepted('CreateTask')).when(taskDone).then({
      commands: [welcome],
      events: [{ type: 'WelcomeRequested', data: {} }],
      deadlines: { set: [], cancel: ['profile-setup-due'] },
    });
  });

  it('welcome sent (or already sent): completed', () => {
    const o = given(memberOnboarding, initiated, eligible, accepted('CreateTask'), taskDone).when(accepted('SendWelcome')).then({ events: [{ type: 'OnboardingCompleted', data: {} }], end: 'completed' });
    expect(o.after).toMatchObject({ status: 'completed', state: { status: 'welcomed' }, deadlines: {} });
    given(memberOnboarding, initiated, eligible, accepted('CreateTask'), taskDone).when(rejected('SendWelcome', 'WELCOME_ALREADY_SENT')).then({ end: 'completed' });
  });

  it('welcome refused otherwise: compensation marks the onboarding failed', () => {
    given(memberOnboarding, initiated, eligible, accepted('CreateTask'), taskDone)
      .when(rejected('SendWelcome', 'ONBOARDING_ALREADY_FAILED'))
      .then({ commands: [markFailed('welcome refused: ONBOARDING_ALREADY_FAILED')], end: 'failed' });
  });

  it('not eligible: compensation marks the onboarding failed, no task', () => {
    const o = given(memberOnboarding, initiated).when(notEligible).then({ commands: [markFailed('not eligible')], events: [{ type: 'OnboardingFailed', data: { reason: 'not eligible' } }], end: 'failed' });
    expect(o.after.state.status).toBe('failed');
  });

  it('the check failed: compensation', () => {
    given(memberOnboarding, initiated).when(checkFailed).then({ commands: [markFailed('eligibility check failed: payer timeout')], end: 'failed' });
  });

  it('the task refused: compensation, and its deadline cancelled', () => {
    given(memberOnboarding, initiated, eligible).when(rejected('CreateTask', 'TASK_ALREADY_EXISTS')).then({
      commands: [markFailed('profile set-up task refused: TASK_ALREADY_EXISTS')],
      deadlines: { cancel: ['profile-setup-due'] },
      end: 'failed',
    });
  });

  it('the task cancelled by someone: compensation', () => {
    given(memberOnboarding, initiated, eligible, accepted('CreateTask')).when(taskCancelled).then({ commands: [markFailed('profile set-up task cancelled: duplicate')], end: 'failed' });
  });

  it('the task not done in time: escalated to the supervisor, with a last deadline', () => {
    const p = makeMemberOnboarding({ profileSetupMs: 1000, abandonAfterMs: 5000, supervisor: 'sup-1' });
    const o = given(p, initiated, eligible, accepted('CreateTask')).when(fired('profile-setup-due')).then({
      commands: [{ aggregate: 'task', id: 'onboarding-chk-1', command: 'AssignTask', data: { assignedTo: 'sup-1' } }],
      events: [{ type: 'ProfileSetupEscalated', data: { assignedTo: 'sup-1' } }],
      deadlines: { set: [{ name: 'profile-setup-abandoned', due: after(5000) }] },
    });
    expect(Object.keys(o.after.deadlines)).toEqual(['profile-setup-abandoned']);
  });

  it('completed after the escalation: welcome, and the last deadline cancelled', () => {
    given(memberOnboarding, initiated, eligible, accepted('CreateTask'), fired('profile-setup-due'), accepted('AssignTask'))
      .when(taskDone)
      .then({ commands: [welcome], deadlines: { cancel: ['profile-setup-abandoned'] } });
  });

  it('still not done at the last deadline: compensation cancels the task and fails the onboarding', () => {
    given(memberOnboarding, initiated, eligible, accepted('CreateTask'), fired('profile-setup-due'), accepted('AssignTask'))
      .when(fired('profile-setup-abandoned'))
      .then({
        commands: [
          { aggregate: 'task', id: 'onboarding-chk-1', command: 'CancelTask', data: { reason: 'profile set-up not done in time' } },
          markFailed('profile set-up not done in time'),
        ],
        end: 'failed',
      });
  });

  it('a deadline firing after completion, and a stale fire, are ignored', () => {
    given(memberOnboarding, initiated, eligible, accepted('CreateTask'), taskDone, accepted('SendWelcome')).when(fired('profile-setup-due', { token: '2' })).thenIgnored();
    given(memberOnboarding, initiated, eligible, accepted('CreateTask'), taskDone).when(fired('profile-setup-due', { token: '2' })).thenIgnored();
  });

  it('replies after the end are ignored', () => {
    given(memberOnboarding, initiated, notEligible).when(accepted('MarkOnboardingFailed')).thenIgnored();
  });
});
