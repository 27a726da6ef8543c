import { defineProjection, on } from '../../src/projections/define.js';
import { eligibilityCheck } from './eligibility-check.js';

/** UTC calendar day of an ISO time. */
function day(iso: string): string {
  return iso.slice(0, 10);
}

/** Per UTC day: checks started, completed, failed, and the average payer response latency. */
export const eligibilityMetrics = defineProjection({
  name: 'eligibility_metrics',
  version: 1,
  migrations: [
    `CREATE TABLE eligibility_metrics_days (
       day            text PRIMARY KEY,
       checks         integer NOT NULL DEFAULT 0,
       completed      integer NOT NULL DEFAULT 0,
       failed         integer NOT NULL DEFAULT 0,
       responses      integer NOT NULL DEFAULT 0,
       -- numeric: exact sums, so a rebuild reproduces the same averages bit for bit
       latency_ms_sum numeric NOT NULL DEFAULT 0)`,
    `CREATE VIEW eligibility_metrics AS
       SELECT day, checks, completed, failed, responses,
              CASE WHEN responses > 0 THEN (latency_ms_sum / responses)::double precision END AS avg_latency_ms
       FROM eligibility_metrics_days`,
  ],
  tables: { eligibility_metrics_days: { key: ['day'] } },
  views: {
    eligibility_metrics: {
      relation: 'eligibility_metrics',
      key: 'day',
      order: 'desc',
      columns: { day: 'day', checks: 'checks', completed: 'completed', failed: 'failed', responses: 'responses', avgLatencyMs: 'avg_latency_ms' },
      filters: ['day'],
    },
  },
  handlers: [
    on(eligibilityCheck, {
      EligibilityCheckInitiated: (e, db) => db.increment('eligibility_metrics_days', { day: day(e.time) }, { checks: 1 }),
      ResponseReceived: (e, db) => db.increment('eligibility_metrics_days', { day: day(e.time) }, { responses: 1, latency_ms_sum: e.data.latencyMs }),
      EligibilityCheckCompleted: (e, db) => db.increment('eligibility_metrics_days', { day: day(e.time) }, { completed: 1 }),
      EligibilityCheckFailed: (e, db) => db.increment('eligibility_metrics_days', { day: day(e.time) }, { failed: 1 }),
    }),
  ],
});
