import { z } from 'zod';
import { defineAggregate, reject } from '../../src/aggregate/index.js';

/**
 * Eligibility checks — aggregate `eligibility-check` (the rejections it gives: docs/errors.md, "Reasons of the example aggregates").
 *
 * Limits: IDs (accountId, requestId) 1..128 characters; responseCode 1..64; networkStatus
 * 1..64; a failure reason 1..500. latencyMs is a nonnegative number of milliseconds (may be
 * fractional). copayAmount is in integer cents (nonnegative), despite the name.
 */
const Id = z.string().min(1).max(128);
const Code = z.string().min(1).max(64);
const Reason = z.string().min(1).max(500);
const LatencyMs = z.number().nonnegative();
const CopayCents = z.number().int().nonnegative();
const Time = z.iso.datetime();

export type EligibilityCheckStatus = 'none' | 'initiated' | 'completed' | 'failed';

export interface EligibilityCheckState {
  /** `none` before EligibilityCheckInitiated; `completed` and `failed` are finished. */
  status: EligibilityCheckStatus;
  accountId: string | null;
  initiatedAt: string | null;
  /** How many responses were recorded. */
  responses: number;
  lastRequestId: string | null;
  lastResponseCode: string | null;
  lastLatencyMs: number | null;
  eligible: boolean | null;
  copayAmount: number | null;
  networkStatus: string | null;
  completedAt: string | null;
  failedAt: string | null;
  failureReason: string | null;
}

const finished = (s: EligibilityCheckState): boolean => s.status === 'completed' || s.status === 'failed';

export const eligibilityCheck = defineAggregate<EligibilityCheckState>()({
  name: 'eligibility-check',
  commands: {
    Initiate: z.object({ accountId: Id }),
    RecordResponse: z.object({
      requestId: Id,
      responseCode: Code,
      latencyMs: LatencyMs,
      eligible: z.boolean().optional(),
      copayAmount: CopayCents.optional(),
      networkStatus: Code.optional(),
    }),
    Fail: z.object({ reason: Reason }),
  },
  events: {
    EligibilityCheckInitiated: z.object({ accountId: Id, initiatedAt: Time }),
    ResponseReceived: z.object({ requestId: Id, responseCode: Code, latencyMs: LatencyMs }),
    EligibilityCheckCompleted: z.object({
      eligible: z.boolean(),
      copayAmount: CopayCents.nullable(),
      networkStatus: Code.nullable(),
      completedAt: Time,
    }),
    EligibilityCheckFailed: z.object({ reason: Reason, failedAt: Time }),
  },
  initialState: () => ({
    status: 'none',
    accountId: null,
    initiatedAt: null,
    responses: 0,
    lastRequestId: null,
    lastResponseCode: null,
    lastLatencyMs: null,
    eligible: null,
    copayAmount: null,
    networkStatus: null,
    completedAt: null,
    failedAt: null,
    failureReason: null,
  }),
  decide: {
    Initiate: (cmd, state, ctx) => {
      if (state.status !== 'none') return reject('CHECK_ALREADY_INITIATED');
      return { type: 'EligibilityCheckInitiated', data: { accountId: cmd.accountId, initiatedAt: ctx.now.toISOString() } };
    },
    RecordResponse: (cmd, state, ctx) => {
      if (state.status === 'none') return reject('CHECK_NOT_FOUND');
      if (finished(state)) return reject('CHECK_FINISHED');
      const received = {
        type: 'ResponseReceived' as const,
        data: { requestId: cmd.requestId, responseCode: cmd.responseCode, latencyMs: cmd.latencyMs },
      };
      if (cmd.eligible === undefined) return received;
      // Two events, one atomic commit: the response, then the verdict.
      return [
        received,
        {
          type: 'EligibilityCheckCompleted' as const,
          data: {
            eligible: cmd.eligible,
            copayAmount: cmd.copayAmount ?? null,
            networkStatus: cmd.networkStatus ?? null,
            completedAt: ctx.now.toISOString(),
          },
        },
      ];
    },
    Fail: (cmd, state, ctx) => {
      if (state.status === 'none') return reject('CHECK_NOT_FOUND');
      if (finished(state)) return reject('CHECK_FINISHED');
      return { type: 'EligibilityCheckFailed', data: { reason: cmd.reason, failedAt: ctx.now.toISOString() } };
    },
  },
  evolve: {
    EligibilityCheckInitiated: (state, e) => ({
      ...state,
      status: 'initiated',
      accountId: e.accountId,
      initiatedAt: e.initiatedAt,
    }),
    ResponseReceived: (state, e) => ({
      ...state,
      responses: state.responses + 1,
      lastRequestId: e.requestId,
      lastResponseCode: e.responseCode,
      lastLatencyMs: e.latencyMs,
    }),
    EligibilityCheckCompleted: (state, e) => ({
      ...state,
      status: 'completed',
      eligible: e.eligible,
      copayAmount: e.copayAmount,
      networkStatus: e.networkStatus,
      completedAt: e.completedAt,
    }),
    EligibilityCheckFailed: (state, e) => ({ ...state, status: 'failed', failureReason: e.reason, failedAt: e.failedAt }),
  },
});
