/**
 * Summarises a V8 .cpuprofile (as written by `node --cpu-prof`): self time per function and
 * per source (file or package), as a share of the non-idle time.
 *
 *   node --import tsx bench/cpuprofile.ts <file.cpuprofile> [top]
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

interface CpuNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  hitCount?: number;
  children?: number[];
}

export interface CpuProfile {
  nodes: CpuNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

/**
 * The main thread's profile in a `--cpu-prof-dir` (CPU.<date>.<time>.<pid>.0.<n>.cpuprofile;
 * tsx's module-loader worker writes another, skipped), or undefined.
 */
export async function mainThreadProfile(dir: string): Promise<string | undefined> {
  let files: string[];
  try {
    files = await fs.promises.readdir(dir);
  } catch {
    return undefined;
  }
  const main = files.find((f) => /^CPU\.\d+\.\d+\.\d+\.0\.\d+\.cpuprofile$/.test(f));
  return main ? path.join(dir, main) : undefined;
}

/** A short name for where a function lives: `src/actor/system.ts`, `@nats-io/nats-core`, `node:internal/…`. */
function sourceOf(url: string, fn: string): string {
  if (!url) return fn.startsWith('(') ? fn : '(native/builtin)';
  const nm = url.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const rest = url.slice(nm + '/node_modules/'.length).split('/');
    return rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]!;
  }
  if (url.startsWith('node:')) return url.split('/').slice(0, 2).join('/');
  const m = /\/(src|actors|subjects|bench|test)\/(.*)$/.exec(url);
  if (m) return `${m[1]}/${m[2]}`;
  return url.replace(/^file:\/\//, '');
}

export function summarizeCpuProfile(p: CpuProfile, top = 25): string {
  const byId = new Map<number, CpuNode>();
  for (const n of p.nodes) byId.set(n.id, n);
  const self = new Map<number, number>(); // node id -> microseconds
  if (p.samples && p.timeDeltas && p.samples.length === p.timeDeltas.length) {
    // timeDeltas[i] is the time before sample i; attribute it to the sample after it.
    for (let i = 0; i < p.samples.length; i++) {
      const d = p.timeDeltas[i + 1] ?? 0;
      const id = p.samples[i]!;
      self.set(id, (self.get(id) ?? 0) + Math.max(0, d));
    }
  } else {
    const total = p.endTime - p.startTime;
    const hits = p.nodes.reduce((s, n) => s + (n.hitCount ?? 0), 0) || 1;
    for (const n of p.nodes) self.set(n.id, ((n.hitCount ?? 0) / hits) * total);
  }
  const fnTime = new Map<string, number>();
  const srcTime = new Map<string, number>();
  let total = 0;
  let idle = 0;
  for (const [id, us] of self) {
    const n = byId.get(id)!;
    const fn = n.callFrame.functionName || '(anonymous)';
    total += us;
    if (fn === '(idle)') {
      idle += us;
      continue;
    }
    const src = sourceOf(n.callFrame.url, fn);
    const key = `${fn}  ${src}${n.callFrame.url ? `:${n.callFrame.lineNumber + 1}` : ''}`;
    fnTime.set(key, (fnTime.get(key) ?? 0) + us);
    srcTime.set(src, (srcTime.get(src) ?? 0) + us);
  }
  const busy = total - idle || 1;

  // Inclusive (self + callees) time per function, each counted once per stack even when recursive.
  const keyOf = (n: CpuNode): string => {
    const fn = n.callFrame.functionName || '(anonymous)';
    const src = sourceOf(n.callFrame.url, fn);
    return `${fn}  ${src}${n.callFrame.url ? `:${n.callFrame.lineNumber + 1}` : ''}`;
  };
  const subtotal = new Map<number, number>();
  const totalOf = (id: number): number => {
    const cached = subtotal.get(id);
    if (cached !== undefined) return cached;
    // Iterative post-order, the tree can be deep.
    const stack: [number, boolean][] = [[id, false]];
    while (stack.length > 0) {
      const [cur, expanded] = stack.pop()!;
      const n = byId.get(cur)!;
      if (expanded) {
        let t = self.get(cur) ?? 0;
        for (const c of n.children ?? []) t += subtotal.get(c) ?? 0;
        subtotal.set(cur, t);
      } else {
        stack.push([cur, true]);
        for (const c of n.children ?? []) if (!subtotal.has(c)) stack.push([c, false]);
      }
    }
    return subtotal.get(id)!;
  };
  const root = p.nodes[0]!;
  totalOf(root.id);
  const inclusive = new Map<string, number>();
  const active = new Map<string, number>();
  const walk: [number, boolean][] = [[root.id, false]];
  while (walk.length > 0) {
    const [id, leaving] = walk.pop()!;
    const n = byId.get(id)!;
    const k = keyOf(n);
    if (leaving) {
      active.set(k, (active.get(k) ?? 1) - 1);
      continue;
    }
    if (!active.get(k)) inclusive.set(k, (inclusive.get(k) ?? 0) + (subtotal.get(id) ?? 0));
    active.set(k, (active.get(k) ?? 0) + 1);
    walk.push([id, true]);
    for (const c of n.children ?? []) walk.push([c, false]);
  }
  const pct = (us: number): string => `${((100 * us) / busy).toFixed(1).padStart(5)}%`;
  const lines: string[] = [];
  lines.push(`profiled ${(total / 1e6).toFixed(2)} s, of which idle ${(idle / 1e6).toFixed(2)} s; shares below are of the ${(busy / 1e6).toFixed(2)} s busy`);
  lines.push('self time by source:');
  for (const [k, us] of [...srcTime].sort((a, b) => b[1] - a[1]).slice(0, 15)) lines.push(`  ${pct(us)}  ${k}`);
  lines.push(`top ${top} functions by self time:`);
  for (const [k, us] of [...fnTime].sort((a, b) => b[1] - a[1]).slice(0, top)) lines.push(`  ${pct(us)}  ${k}`);
  lines.push(`inclusive time (self + callees) of the project's own functions, top ${top}:`);
  const own = [...inclusive].filter(([k]) => /  (src|actors|subjects|bench)\//.test(k)).sort((a, b) => b[1] - a[1]).slice(0, top);
  for (const [k, us] of own) lines.push(`  ${pct(us)}  ${k}`);
  return lines.join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const file = process.argv[2];
  if (!file) {
    process.stderr.write('usage: node --import tsx bench/cpuprofile.ts <file.cpuprofile> [top]\n');
    process.exit(2);
  }
  console.log(summarizeCpuProfile(JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile, Number(process.argv[3] ?? 30)));
}
