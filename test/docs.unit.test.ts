import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ConfigSchema } from '../src/config.js';
import { ErrorCode } from '../src/errors.js';
import { StrandMetrics } from '../src/observability/metrics.js';

/** The docs are part of the contract: every code, variable and metric the code has is documented. */
const doc = (path: string): string => readFileSync(new URL(`../${path}`, import.meta.url), 'utf8');

describe('documentation', () => {
  it('docs/errors.md has a "## CODE" section for every error code', () => {
    const headings = new Set(
      doc('docs/errors.md')
        .split('\n')
        .filter((line) => line.startsWith('## '))
        .map((line) => line.slice(3).trim()),
    );
    const missing = Object.values(ErrorCode).filter((code) => !headings.has(code));
    expect(missing, 'error codes without a "## CODE" heading in docs/errors.md').toEqual([]);
  });

  it('docs/configuration.md names every configuration variable', () => {
    const text = doc('docs/configuration.md');
    const missing = Object.keys(ConfigSchema.shape).filter((key) => !text.includes(`\`${key}\``));
    expect(missing, 'variables of ConfigSchema missing from docs/configuration.md').toEqual([]);
  });

  it('docs/operations.md names every metric', async () => {
    const text = doc('docs/operations.md');
    const m = new StrandMetrics({ defaultMetrics: false });
    const names = (await m.registry.getMetricsAsJSON()).map((metric) => metric.name);
    expect(names.length).toBeGreaterThan(0);
    const missing = names.filter((name) => !text.includes(name));
    expect(missing, 'metrics missing from docs/operations.md').toEqual([]);
  });

  it("README.md's first code block runs Strand and its tests", () => {
    const first = /```[^\n]*\n([\s\S]*?)```/.exec(doc('README.md'))?.[1];
    expect(first, 'README.md has no fenced code block').toBeDefined();
    const missing = ['npm start', 'npm test'].filter((command) => !first!.includes(command));
    expect(missing, "commands missing from README.md's first code block").toEqual([]);
  });
});
