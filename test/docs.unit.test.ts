import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { projections } from '../actors/index.js';
import { ConfigSchema } from '../src/config.js';
import { ErrorCode, HttpStatus } from '../src/errors.js';
import { StrandMetrics } from '../src/observability/metrics.js';
import { ClientMessage, CloseCode, LibraryCloseCode, LiveErrorCode, ServerMessage } from '../src/live/protocol.js';
import { logMessages, normaliseMessage } from '../scripts/log-messages.js';
import { readdirSync } from 'node:fs';
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

  it('docs/errors.md documents no error code the code does not have', () => {
    const text = doc('docs/errors.md');
    const headings = text.split('\n').filter((l) => /^## [A-Z][A-Z_]+$/.test(l)).map((l) => l.slice(3));
    const rows = [...text.matchAll(/^\| `([A-Z][A-Z_]+)` \| \d{3} \|/gm)].map((m) => m[1]!);
    const known = new Set<string>(Object.values(ErrorCode));
    expect([...headings, ...rows].filter((c) => !known.has(c)), 'codes in docs/errors.md that src/errors.ts does not have').toEqual([]);
  });

  it("docs/errors.md lists exactly the rejection reasons the example aggregates give", () => {
    const dir = new URL('../actors/', import.meta.url);
    const inCode = new Set<string>();
    for (const name of readdirSync(dir, { withFileTypes: true })) {
      if (!name.isDirectory()) continue;
      for (const f of readdirSync(new URL(`${name.name}/`, dir))) {
        if (!f.endsWith('.ts') || f.endsWith('.test.ts')) continue;
        for (const m of readFileSync(new URL(`${name.name}/${f}`, dir), 'utf8').matchAll(/reject\(\s*'([A-Z][A-Z_]+)'/g)) inCode.add(m[1]!);
      }
    }
    const documented = new Set([...doc('docs/errors.md').matchAll(/^\| `([A-Z][A-Z_]+)` \| [A-Z][A-Za-z]+/gm)].map((m) => m[1]!));
    expect(inCode.size).toBeGreaterThan(10);
    expect([...inCode].filter((r) => !documented.has(r)).sort(), 'reasons the aggregates give that docs/errors.md does not list').toEqual([]);
    expect([...documented].filter((r) => !inCode.has(r)).sort(), 'reasons docs/errors.md lists that no aggregate gives').toEqual([]);
  });

  it('docs/live.md lists exactly the live error codes and the close codes a client can see', () => {
    const text = doc('docs/live.md');
    const codes = new Set([...text.matchAll(/^\| `([A-Z][A-Z_]+)` \|/gm)].map((m) => m[1]!));
    expect([...codes].sort()).toEqual([...new Set<string>(Object.values(LiveErrorCode))].sort());
    const closes = new Set([...text.matchAll(/^\| `(\d{4})` \|/gm)].map((m) => Number(m[1])));
    expect([...closes].sort()).toEqual([...new Set<number>([...Object.values(CloseCode), ...Object.values(LibraryCloseCode)])].sort());
  });

  it("docs/operations.md's log table lists exactly the log lines the code can write", () => {
    const text = doc('docs/operations.md');
    const start = text.indexOf('### Every log line');
    expect(start, 'docs/operations.md has a "### Every log line" section').toBeGreaterThan(0);
    const section = text.slice(start, text.indexOf('\n#', start + 5));
    const documented = new Set<string>();
    for (const m of section.matchAll(/^\| ([a-z, ]+) \| `((?:[^`]|\\`)+)` \|/gm)) {
      const msg = normaliseMessage(m[2]!.replace(/\\\|/g, '|'));
      const levels = m[1]!.split(',').map((l) => l.trim());
      if (levels.some((l) => !['trace', 'debug', 'info', 'warn', 'error', 'fatal'].includes(l))) continue; // the header row
      for (const level of levels) documented.add(`${level} ${msg}`);
    }
    const inCode = new Set(logMessages().map((l) => `${l.level} ${l.msg}`));
    expect(inCode.size).toBeGreaterThan(50);
    expect([...inCode].filter((x) => !documented.has(x)).sort(), 'log lines of the code missing from the table').toEqual([]);
    expect([...documented].filter((x) => !inCode.has(x)).sort(), 'log lines in the table that no code writes').toEqual([]);
  });
});
