import { z } from 'zod';
import { defineAggregate, reject } from '../../src/aggregate/index.js';

/**
 * Members — aggregate `member`: the end of an onboarding (the process `member-onboarding`
 * drives it). Its rejections: docs/errors.md, "Reasons of the example aggregates".
 *
 * Limits: a channel is `email` or `sms`; a failure reason 1..500 characters.
 */
const Reason = z.string().min(1).max(500);
const Channel = z.enum(['email', 'sms']);

export type MemberStatus = 'onboarding' | 'welcomed' | 'onboarding-failed';

export interface MemberState {
  /** `onboarding` until welcomed or failed (also before any event). */
  status: MemberStatus;
  welcomedAt: string | null;
  channel: string | null;
  failedAt: string | null;
  failureReason: string | null;
}

export const member = defineAggregate<MemberState>()({
  name: 'member',
  commands: {
    SendWelcome: z.object({ channel: Channel.default('email') }),
    MarkOnboardingFailed: z.object({ reason: Reason }),
  },
  events: {
    WelcomeSent: z.object({ channel: Channel, sentAt: z.iso.datetime() }),
    OnboardingFailed: z.object({ reason: Reason, failedAt: z.iso.datetime() }),
  },
  initialState: () => ({ status: 'onboarding', welcomedAt: null, channel: null, failedAt: null, failureReason: null }),
  decide: {
    SendWelcome: (cmd, state, ctx) => {
      if (state.status === 'welcomed') return reject('WELCOME_ALREADY_SENT');
      if (state.status === 'onboarding-failed') return reject('ONBOARDING_ALREADY_FAILED');
      return { type: 'WelcomeSent', data: { channel: cmd.channel, sentAt: ctx.now.toISOString() } };
    },
    MarkOnboardingFailed: (cmd, state, ctx) => {
      if (state.status === 'welcomed') return reject('WELCOME_ALREADY_SENT');
      if (state.status === 'onboarding-failed') return reject('ONBOARDING_ALREADY_FAILED');
      return { type: 'OnboardingFailed', data: { reason: cmd.reason, failedAt: ctx.now.toISOString() } };
    },
  },
  evolve: {
    WelcomeSent: (state, e) => ({ ...state, status: 'welcomed', welcomedAt: e.sentAt, channel: e.channel }),
    OnboardingFailed: (state, e) => ({ ...state, status: 'onboarding-failed', failedAt: e.failedAt, failureReason: e.reason }),
  },
});
