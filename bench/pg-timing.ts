/**
 * Times every statement this process sends through `pg` (pg.Client.prototype.query, which
 * Pool.query goes through too), grouped by the statement's first words with column lists
 * folded: how long a projection batch waits on each round trip to PostgreSQL. "Awaited" is
 * from the call until its result is delivered to JavaScript, so it includes the time the
 * reply waited for this process's event loop and, on a busy machine, for a CPU.
 *
 * Benchmark code only: it patches the pg prototype while installed.
 */
import pg from 'pg';

export interface StatementStat {
  n: number;
  ms: number;
}

export interface StatementTimer {
  /** A copy of the figures so far. */
  stats(): Map<string, StatementStat>;
  reset(): void;
  /** Restores pg's own query and returns the figures. */
  stop(): Map<string, StatementStat>;
}

export function statementKind(text: string): string {
  return text
    .replace(/\s+/g, ' ')
    .trim()
    .replace(/\(("?\w+"?,? ?){2,}\)/, '(…)')
    .slice(0, 72);
}

export function timeStatements(): StatementTimer {
  const proto = pg.Client.prototype as unknown as { query: (...a: unknown[]) => unknown };
  const original = proto.query;
  let stats = new Map<string, StatementStat>();
  proto.query = function (this: unknown, ...a: unknown[]): unknown {
    const cfg = a[0];
    const text = typeof cfg === 'string' ? cfg : ((cfg as { text?: string } | undefined)?.text ?? '');
    const kind = statementKind(text);
    const into = stats;
    const t0 = performance.now();
    const record = (): void => {
      let e = into.get(kind);
      if (!e) into.set(kind, (e = { n: 0, ms: 0 }));
      e.n++;
      e.ms += performance.now() - t0;
    };
    const last = a[a.length - 1];
    if (typeof last === 'function') {
      a[a.length - 1] = (...r: unknown[]) => {
        record();
        return (last as (...x: unknown[]) => unknown)(...r);
      };
      return original.apply(this, a);
    }
    const out = original.apply(this, a) as Promise<unknown> | undefined;
    if (out && typeof out.then === 'function') out.then(record, record);
    return out;
  };
  const copy = (): Map<string, StatementStat> => new Map([...stats].map(([k, v]) => [k, { ...v }]));
  return {
    stats: copy,
    reset: () => {
      stats = new Map();
    },
    stop: () => {
      proto.query = original;
      return copy();
    },
  };
}

/** The top statements by time awaited, one line each. */
export function formatStatements(stats: Map<string, StatementStat>, top = 12, indent = '    '): string {
  const rows = [...stats].sort((x, y) => y[1].ms - x[1].ms).slice(0, top);
  const total = rows.reduce((t, [, e]) => t + e.ms, 0);
  const lines = rows.map(([kind, e]) => `${indent}${String(e.n).padStart(6)} x ${(e.ms / e.n).toFixed(2).padStart(7)} ms = ${Math.round(e.ms).toLocaleString('en-US').padStart(6)} ms  ${kind}`);
  lines.push(`${indent}(these ${rows.length}: ${Math.round(total).toLocaleString('en-US')} ms awaited in all)`);
  return lines.join('\n');
}
