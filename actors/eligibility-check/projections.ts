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
       -- whole microseconds: integer sums are exact, so a rebuild reproduces the averages bit for bit
       latency_us_sum bigint NOT NULL DEFAULT 0)`,
    `CREATE VIEW eligibility_metrics AS
       SELECT day, checks, completed, failed, responses,
              CASE WHEN responses > 0 THEN latency_us_sum::double precision / responses / 1000 END AS avg_latency_ms
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
      // Latency is kept to the microsecond (rounded), the precision that keeps sums exact.
      ResponseReceived: (e, db) => db.increment('eligibility_metrics_days', { day: day(e.time) }, { responses: 1, latency_us_sum: Math.round(e.data.latencyMs * 1000) }),
      EligibilityCheckCompleted: (e, db) => db.increment('eligibility_metrics_days', { day: day(e.time) }, { completed: 1 }),
      EligibilityCheckFailed: (e, db) => db.increment('eligibility_metrics_days', { day: day(e.time) }, { failed: 1 }),
    }),
  ],
});
