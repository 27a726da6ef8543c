import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { projections } from '../actors/index.js';
import { ConfigSchema } from '../src/config.js';
import { ErrorCode, HttpStatus } from '../src/errors.js';
import { StrandMetrics } from '../src/observability/metrics.js';
import { ClientMessage, CloseCode, LiveErrorCode, ServerMessage } from '../src/live/protocol.js';
import { liveSchemas } from '../scripts/live-schemas.js';

/** The docs are part of the contract: every code, variable, metric and projection the code has is documented. */
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

  it('docs/errors.md gives every error code the HTTP status of HttpStatus', () => {
    const text = doc('docs/errors.md');
    const wrong = Object.values(ErrorCode).filter((code) => !text.includes(`| \`${code}\` | ${HttpStatus[code]} |`));
    expect(wrong, 'codes whose row in the status table of docs/errors.md is missing or has another status').toEqual([]);
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

  it('docs/projections.md names every projection and view of actors/index.ts', () => {
    const text = doc('docs/projections.md');
    const names = projections.flatMap((p) => [p.name, ...Object.keys(p.views)]);
    expect(names.length).toBeGreaterThan(0);
    const missing = names.filter((name) => !text.includes(`\`${name}\``));
    expect(missing, 'projections or views missing from docs/projections.md').toEqual([]);
  });

  it("README.md's first code block runs Strand and its tests", () => {
    const first = /```[^\n]*\n([\s\S]*?)```/.exec(doc('README.md'))?.[1];
    expect(first, 'README.md has no fenced code block').toBeDefined();
    const missing = ['npm start', 'npm test'].filter((command) => !first!.includes(command));
    expect(missing, "commands missing from README.md's first code block").toEqual([]);
  });

  it('docs/live-schemas.json is what scripts/live-schemas.ts generates from src/live/protocol.ts', () => {
    const stored = JSON.parse(doc('docs/live-schemas.json')) as unknown;
    expect(stored, 'docs/live-schemas.json is stale: run `npx tsx scripts/live-schemas.ts`').toEqual(liveSchemas());
  });

  it('docs/live.md names every LiveErrorCode and every CloseCode', () => {
    const text = doc('docs/live.md');
    const missing = [
      ...Object.values(LiveErrorCode).filter((code) => !text.includes(`\`${code}\``)),
      ...Object.entries(CloseCode).filter(([name, code]) => !text.includes(`\`${name}\``) || !text.includes(String(code))).map(([name]) => name),
    ];
    expect(missing, 'error codes or close codes missing from docs/live.md').toEqual([]);
  });

  it('every example message in docs/live.md is a valid client or server message', () => {
    const blocks = [...doc('docs/live.md').matchAll(/```json\n([\s\S]*?)```/g)].map((m) => m[1]!);
    const messages = blocks.map((b) => JSON.parse(b) as unknown).filter((j): j is { type: string } => typeof j === 'object' && j !== null && 'type' in j);
    expect(messages.length).toBeGreaterThan(10);
    const invalid = messages.filter((m) => !ClientMessage.safeParse(m).success && !ServerMessage.safeParse(m).success);
    expect(invalid, 'examples in docs/live.md that no schema of src/live/protocol.ts accepts').toEqual([]);
  });
});
