import { describe, expect, it } from 'vitest';
import { given, TEST_NOW } from '../../src/aggregate/testing.js';
import { member } from './member.js';

const welcomed = { type: 'WelcomeSent', data: { channel: 'email', sentAt: TEST_NOW.toISOString() } };
const failed = { type: 'OnboardingFailed', data: { reason: 'not eligible', failedAt: TEST_NOW.toISOString() } };

describe('member', () => {
  it('declares its commands and events', () => {
    expect([...member.commands.keys()]).toEqual(['SendWelcome', 'MarkOnboardingFailed']);
    expect([...member.events.keys()]).toEqual(['WelcomeSent', 'OnboardingFailed']);
  });

  it('SendWelcome sends the welcome once (email by default)', () => {
    given(member).when('SendWelcome', { channel: 'email' }).then(welcomed);
    expect(given(member).when('SendWelcome', { channel: 'sms' }).stateAfter()).toMatchObject({ status: 'welcomed', channel: 'sms' });
    expect(member.commands.get('SendWelcome')!.parse({})).toEqual({ channel: 'email' });
  });

  it('SendWelcome again: WELCOME_ALREADY_SENT; after a failed onboarding: ONBOARDING_ALREADY_FAILED', () => {
    given(member, welcomed).when('SendWelcome', { channel: 'email' }).thenRejected('WELCOME_ALREADY_SENT');
    given(member, failed).when('SendWelcome', { channel: 'email' }).thenRejected('ONBOARDING_ALREADY_FAILED');
  });

  it('MarkOnboardingFailed records the reason, once, and never after a welcome', () => {
    given(member).when('MarkOnboardingFailed', { reason: 'not eligible' }).then(failed);
    given(member, failed).when('MarkOnboardingFailed', { reason: 'again' }).thenRejected('ONBOARDING_ALREADY_FAILED');
    given(member, welcomed).when('MarkOnboardingFailed', { reason: 'late' }).thenRejected('WELCOME_ALREADY_SENT');
  });

  it('refuses data outside the schema limits', () => {
    expect(member.commands.get('SendWelcome')!.safeParse({ channel: 'pigeon' }).success).toBe(false);
    expect(member.commands.get('MarkOnboardingFailed')!.safeParse({ reason: '' }).success).toBe(false);
  });
});
