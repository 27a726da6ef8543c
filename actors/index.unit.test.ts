/**
 * What must hold for whatever set of aggregates and projections actors/index.ts registers, so
 * that adding one as docs/aggregates.md says keeps these tests green, and forgetting to
 * register one (or registering a clash) turns them red. The three examples must still ship.
 */
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import type { Aggregate } from '../src/aggregate/define.js';
import type { Projection } from '../src/projections/types.js';
import * as registry from './index.js';
import { aggregates, eligibilityCheck, order, processes, projections, task } from './index.js';

const isAggregate = (v: unknown): v is Aggregate =>
  typeof v === 'object' && v !== null && typeof (v as Aggregate).fingerprint === 'string' && (v as Aggregate).commands instanceof Map;
const isProjection = (v: unknown): v is Projection =>
  typeof v === 'object' && v !== null && Array.isArray((v as Projection).filterSubjects) && typeof (v as Projection).handlerFor === 'function';

/** Every module under actors/<name>/ (tests aside), as a user adds them. */
async function actorModules(): Promise<Record<string, unknown>[]> {
  const root = fileURLToPath(new URL('.', import.meta.url));
  const mods: Record<string, unknown>[] = [];
  for (const dir of readdirSync(root, { withFileTypes: true })) {
    if (!dir.isDirectory()) continue;
    for (const file of readdirSync(`${root}${dir.name}`)) {
      if (!file.endsWith('.ts') || file.endsWith('.test.ts') || file.endsWith('.d.ts')) continue;
      mods.push((await import(`./${dir.name}/${file.replace(/\.ts$/, '.js')}`)) as Record<string, unknown>);
    }
  }
  return mods;
}

describe('registered aggregates', () => {
  it('still ship the three examples', () => {
    expect(aggregates).toEqual(expect.arrayContaining([task, order, eligibilityCheck]));
    const names = projections.map((p) => p.name);
    expect(names).toEqual(expect.arrayContaining(['task_list_view', 'member_task_history', 'task_analytics', 'order_list', 'eligibility_metrics']));
  });

  it('have unique names that are valid subject tokens', () => {
    const names = aggregates.map((a) => a.name);
    expect(new Set(names).size).toBe(names.length);
    for (const n of names) expect(n).toMatch(/^[a-z][a-z0-9-]*$/);
  });

  it('have distinct fingerprints, each 32 hex digits', () => {
    const prints = aggregates.map((a) => a.fingerprint);
    expect(new Set(prints).size).toBe(prints.length);
    for (const p of prints) expect(p).toMatch(/^[0-9a-f]{32}$/);
  });

  it('include every aggregate actors/ defines or actors/index.ts exports', async () => {
    const defined = new Set<Aggregate>();
    for (const mod of [registry as Record<string, unknown>, ...(await actorModules())]) {
      for (const v of Object.values(mod)) if (isAggregate(v)) defined.add(v);
    }
    expect(defined.size).toBeGreaterThanOrEqual(3);
    const missing = [...defined].filter((a) => !(aggregates as readonly Aggregate[]).includes(a)).map((a) => a.name);
    expect(missing, 'defined in actors/ but not in the aggregates list of actors/index.ts').toEqual([]);
  });
});

describe('registered projections', () => {
  it('have unique names', () => {
    const names = projections.map((p) => p.name);
    expect(new Set(names).size).toBe(names.length);
  });

  it('include every projection actors/ defines or actors/index.ts exports', async () => {
    const defined = new Set<Projection>();
    for (const mod of [registry as Record<string, unknown>, ...(await actorModules())]) {
      for (const v of Object.values(mod)) if (isProjection(v)) defined.add(v);
    }
    expect(defined.size).toBeGreaterThanOrEqual(5);
    const missing = [...defined].filter((p) => !(projections as readonly Projection[]).includes(p)).map((p) => p.name);
    expect(missing, 'defined in actors/ but not in the projections list of actors/index.ts').toEqual([]);
  });

  it('handle only events of registered aggregates (or processes)', () => {
    const known = new Map([...aggregates.map((a) => [a.name, a as Aggregate] as const), ...processes.map((p) => [p.name, p.aggregate as Aggregate] as const)]);
    for (const p of projections) {
      for (const subject of p.filterSubjects) {
        const [, aggregate, , type] = subject.split('.');
        expect(known.has(aggregate!), `${p.name} handles ${subject}: aggregate not registered`).toBe(true);
        expect(known.get(aggregate!)!.events.has(type!), `${p.name} handles ${subject}: no such event`).toBe(true);
        expect(p.aggregateFor(aggregate!), `${p.name} handles ${subject} of another definition of ${aggregate}`).toBe(known.get(aggregate!));
      }
    }
  });
});
