/**
 * `npm run strand -- <command>`: operate a running Strand over its HTTP API.
 *
 *   projections                         status of every projection
 *   projections rebuild <name>          rebuild from the start of the stream, with progress
 *   dead-letters <projection>           list parked events
 *   dead-letters retry <projection> <seq>
 *
 * STRAND_URL names the instance (default http://127.0.0.1:$PORT, PORT defaulting to 3000).
 * Exit codes: 0 done, 1 the server said no (its error is printed), 2 bad usage or unreachable.
 */
import type { ProjectionStatus } from './projections/host.js';

const base = (process.env['STRAND_URL'] ?? `http://127.0.0.1:${process.env['PORT'] || '3000'}`).replace(/\/$/, '');
const out = process.stdout;
const err = process.stderr;

class Refused extends Error {}

async function call<T>(method: 'GET' | 'POST', path: string): Promise<T> {
  let res: Response;
  try {
    res = await fetch(`${base}${path}`, { method });
  } catch (e) {
    err.write(`strand: cannot reach ${base}: ${(e as Error).message}\n`);
    process.exit(2);
  }
  const body = (await res.json().catch(() => ({}))) as T & { code?: string; message?: string };
  if (!res.ok) throw new Refused(`${res.status} ${body.code ?? ''}: ${body.message ?? res.statusText}`);
  return body;
}

function table(rows: Record<string, unknown>[]): string {
  if (rows.length === 0) return '(none)\n';
  const cols = Object.keys(rows[0]!);
  const cell = (v: unknown) => (v === null || v === undefined ? '-' : typeof v === 'object' ? JSON.stringify(v) : String(v));
  const widths = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(cols), line(widths.map((w) => '-'.repeat(w))), ...rows.map((r) => line(cols.map((c) => cell(r[c]))))].join('\n') + '\n';
}

function progressBar(fraction: number, width = 30): string {
  const done = Math.round(Math.max(0, Math.min(1, fraction)) * width);
  return `[${'#'.repeat(done)}${'.'.repeat(width - done)}] ${(fraction * 100).toFixed(1).padStart(5)}%`;
}

async function showProjections(): Promise<void> {
  const { projections } = await call<{ projections: ProjectionStatus[] }>('GET', '/projections');
  out.write(
    table(
      projections.map((p) => ({
        name: p.name,
        version: p.version,
        serving: p.activeGeneration,
        checkpoint: p.checkpoint,
        pending: p.pending,
        here: p.local,
        rebuilding: p.rebuild ? `g${p.rebuild.generation} at ${p.rebuild.checkpoint}` : null,
        deadLetters: p.deadLetters,
      })),
    ),
  );
}

async function rebuild(name: string): Promise<void> {
  const { generation } = await call<{ generation: number }>('POST', `/projections/${encodeURIComponent(name)}/rebuild`);
  const tty = err.isTTY === true;
  err.write(`rebuilding ${name} into generation ${generation}\n`);
  let lastLog = 0;
  for (;;) {
    const s = await call<ProjectionStatus>('GET', `/projections/${encodeURIComponent(name)}`);
    if (s.activeGeneration === generation) {
      if (tty) err.write(`\r${progressBar(1)}  done\n`);
      out.write(`${name}: generation ${generation} is serving (checkpoint ${s.checkpoint})\n`);
      return;
    }
    if (s.rebuild?.generation !== generation) throw new Refused(`rebuild of ${name} into generation ${generation} was superseded`);
    const { checkpoint, pending } = s.rebuild;
    const fraction = pending >= 0 && checkpoint + pending > 0 ? checkpoint / (checkpoint + pending) : 0;
    if (tty) err.write(`\r${progressBar(fraction)}  checkpoint ${checkpoint}, ${pending >= 0 ? pending : '?'} pending   `);
    else if (Date.now() - lastLog > 5000) {
      lastLog = Date.now();
      err.write(`${name}: checkpoint ${checkpoint}, ${pending >= 0 ? pending : '?'} pending\n`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function deadLetters(projection: string): Promise<void> {
  const { deadLetters: list } = await call<{ deadLetters: { seq: number; subject: string; attempts: number; parkedAt: string; error: string }[] }>(
    'GET',
    `/projections/${encodeURIComponent(projection)}/dead-letters`,
  );
  out.write(table(list.map((d) => ({ seq: d.seq, subject: d.subject, attempts: d.attempts, parkedAt: d.parkedAt, error: d.error.slice(0, 80) }))));
}

async function retry(projection: string, seq: string): Promise<void> {
  if (!/^\d+$/.test(seq)) usage(`seq must be a number, got ${seq}`);
  await call('POST', `/projections/${encodeURIComponent(projection)}/dead-letters/${seq}/retry`);
  out.write(`${projection}: event ${seq} applied and removed from the dead letters\n`);
}

function usage(problem?: string): never {
  if (problem) err.write(`strand: ${problem}\n`);
  err.write('usage: strand projections [rebuild <name>] | dead-letters <projection> | dead-letters retry <projection> <seq>\n');
  process.exit(2);
}

async function main(argv: string[]): Promise<void> {
  const [cmd, a, b, c] = argv;
  try {
    if (cmd === 'projections' && a === undefined) return await showProjections();
    if (cmd === 'projections' && a === 'rebuild' && b) return await rebuild(b);
    if (cmd === 'dead-letters' && a === 'retry' && b && c) return await retry(b, c);
    if (cmd === 'dead-letters' && a && a !== 'retry' && b === undefined) return await deadLetters(a);
  } catch (e) {
    if (e instanceof Refused) {
      err.write(`strand: ${e.message}\n`);
      process.exit(1);
    }
    throw e;
  }
  usage(cmd ? `unknown command: ${argv.join(' ')}` : undefined);
}

void main(process.argv.slice(2));
