import { describe, expect, it } from 'vitest';
import { given, TEST_NOW } from '../../src/aggregate/testing.js';
import { eligibilityCheck } from './eligibility-check.js';

const T = TEST_NOW.toISOString();
const initiated = { type: 'EligibilityCheckInitiated', data: { accountId: 'acct-1', initiatedAt: T } };
const received = { type: 'ResponseReceived', data: { requestId: 'req-1', responseCode: '200', latencyMs: 42 } };
const completed = {
  type: 'EligibilityCheckCompleted',
  data: { eligible: true, copayAmount: 2500, networkStatus: 'IN_NETWORK', completedAt: T },
};
const failed = { type: 'EligibilityCheckFailed', data: { reason: 'timeout', failedAt: T } };

describe('eligibility-check', () => {
  it('declares exactly the commands and events of the contract', () => {
    expect(eligibilityCheck.name).toBe('eligibility-check');
    expect([...eligibilityCheck.commands.keys()]).toEqual(['Initiate', 'RecordResponse', 'Fail']);
    expect([...eligibilityCheck.events.keys()]).toEqual([
      'EligibilityCheckInitiated',
      'ResponseReceived',
      'EligibilityCheckCompleted',
      'EligibilityCheckFailed',
    ]);
  });

  describe('Initiate', () => {
    it('initiates a check at the command time', () => {
      const now = new Date('2026-03-04T05:06:07.000Z');
      const outcome = given(eligibilityCheck).when('Initiate', { accountId: 'acct-1' }, { now });
      outcome.then({ type: 'EligibilityCheckInitiated', data: { accountId: 'acct-1', initiatedAt: now.toISOString() } });
      expect(outcome.stateAfter()).toMatchObject({ status: 'initiated', accountId: 'acct-1', initiatedAt: now.toISOString() });
    });

    it('is rejected when the check exists: CHECK_ALREADY_INITIATED', () => {
      given(eligibilityCheck, initiated).when('Initiate', { accountId: 'acct-1' }).thenRejected('CHECK_ALREADY_INITIATED');
    });
  });

  describe('RecordResponse', () => {
    it('records a response without a verdict as one event', () => {
      const outcome = given(eligibilityCheck, initiated).when('RecordResponse', {
        requestId: 'req-1',
        responseCode: '200',
        latencyMs: 42,
      });
      outcome.then(received);
      expect(outcome.stateAfter()).toMatchObject({
        status: 'initiated',
        responses: 1,
        lastRequestId: 'req-1',
        lastResponseCode: '200',
        lastLatencyMs: 42,
      });
    });

    it('records a response with a verdict as two events, response first', () => {
      const outcome = given(eligibilityCheck, initiated).when('RecordResponse', {
        requestId: 'req-1',
        responseCode: '200',
        latencyMs: 42,
        eligible: true,
        copayAmount: 2500,
        networkStatus: 'IN_NETWORK',
      });
      outcome.then(received, completed);
      expect(outcome.stateAfter()).toMatchObject({
        status: 'completed',
        responses: 1,
        eligible: true,
        copayAmount: 2500,
        networkStatus: 'IN_NETWORK',
        completedAt: T,
      });
    });

    it('completes on eligible: false too, with null copay and network status when absent', () => {
      given(eligibilityCheck, initiated)
        .when('RecordResponse', { requestId: 'req-2', responseCode: '404', latencyMs: 0, eligible: false })
        .then(
          { type: 'ResponseReceived', data: { requestId: 'req-2', responseCode: '404', latencyMs: 0 } },
          { type: 'EligibilityCheckCompleted', data: { eligible: false, copayAmount: null, networkStatus: null, completedAt: T } },
        );
    });

    it('completes after earlier responses without a verdict', () => {
      const s = given(eligibilityCheck, initiated, received)
        .when('RecordResponse', { requestId: 'req-2', responseCode: '200', latencyMs: 12.5, eligible: true })
        .stateAfter();
      expect(s).toMatchObject({ status: 'completed', responses: 2, lastRequestId: 'req-2', lastLatencyMs: 12.5 });
    });

    it('refuses negative latency and copay by schema', () => {
      const schema = eligibilityCheck.commands.get('RecordResponse')!;
      expect(schema.safeParse({ requestId: 'r', responseCode: '200', latencyMs: -1 }).success).toBe(false);
      expect(schema.safeParse({ requestId: 'r', responseCode: '200', latencyMs: 1, eligible: true, copayAmount: -5 }).success).toBe(false);
    });

    it('is rejected when not initiated: CHECK_NOT_FOUND', () => {
      given(eligibilityCheck)
        .when('RecordResponse', { requestId: 'req-1', responseCode: '200', latencyMs: 42 })
        .thenRejected('CHECK_NOT_FOUND');
    });

    it('is rejected when completed: CHECK_FINISHED', () => {
      given(eligibilityCheck, initiated, received, completed)
        .when('RecordResponse', { requestId: 'req-2', responseCode: '200', latencyMs: 42 })
        .thenRejected('CHECK_FINISHED');
    });

    it('is rejected when failed: CHECK_FINISHED', () => {
      given(eligibilityCheck, initiated, failed)
        .when('RecordResponse', { requestId: 'req-2', responseCode: '200', latencyMs: 42, eligible: true })
        .thenRejected('CHECK_FINISHED');
    });
  });

  describe('Fail', () => {
    it('fails an initiated check', () => {
      const outcome = given(eligibilityCheck, initiated, received).when('Fail', { reason: 'timeout' });
      outcome.then(failed);
      expect(outcome.stateAfter()).toMatchObject({ status: 'failed', failureReason: 'timeout', failedAt: T });
    });

    it('is rejected when not initiated: CHECK_NOT_FOUND', () => {
      given(eligibilityCheck).when('Fail', { reason: 'timeout' }).thenRejected('CHECK_NOT_FOUND');
    });

    it('is rejected when completed: CHECK_FINISHED', () => {
      given(eligibilityCheck, initiated, received, completed).when('Fail', { reason: 'timeout' }).thenRejected('CHECK_FINISHED');
    });

    it('is rejected when failed: CHECK_FINISHED', () => {
      given(eligibilityCheck, initiated, failed).when('Fail', { reason: 'again' }).thenRejected('CHECK_FINISHED');
    });
  });
});
