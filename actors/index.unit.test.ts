import { describe, expect, it } from 'vitest';
import { aggregates, eligibilityCheck, order, task } from './index.js';

describe('actors', () => {
  it('ships the three example aggregates', () => {
    expect(aggregates).toEqual([task, order, eligibilityCheck]);
    expect(aggregates.map((a) => a.name)).toEqual(['task', 'order', 'eligibility-check']);
  });

  it('gives each aggregate a stable fingerprint', () => {
    const prints = aggregates.map((a) => a.fingerprint);
    expect(new Set(prints).size).toBe(3);
    for (const p of prints) expect(p).toMatch(/^[0-9a-f]{32}$/);
  });
});
