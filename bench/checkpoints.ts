/**
 * Watching projection checkpoints from inside a process that runs a read side, for the
 * benchmarks (bench/projections.bench.ts and bench/readside-service.ts).
 *
 * The precise way is the runner's public `onAdvance` hook, which fires right after a batch and
 * its checkpoint have committed. `ReadSide` keeps its runners in a private map, so the map is
 * read through a cast here (benchmark code only). When it is not there (renamed, or no local
 * runner holds the lock), the public `readSide.checkpoint(name)` is polled every 2 ms instead.
 */
import type { ReadSide } from '../src/projections/host.js';
import type { ProjectionRunner } from '../src/projections/runner.js';

export type CheckpointListener = (projection: string, checkpoint: number) => void;

/** How a projection's checkpoint is watched: 'hook' (runner.onAdvance) or 'poll' (2 ms). */
export type WatchMode = 'hook' | 'poll';

function activeRunner(readSide: ReadSide, name: string): ProjectionRunner | undefined {
  const runners = (readSide as unknown as { runners?: Map<string, ProjectionRunner> }).runners;
  if (!(runners instanceof Map)) return undefined;
  for (const r of runners.values()) if (r.projection.name === name && r.target.role === 'active') return r;
  return undefined;
}

/**
 * Calls `fn(name, checkpoint)` now and whenever the checkpoint of one of `names` advances.
 * Returns how each one is watched and the function that stops watching.
 */
export function watchCheckpoints(readSide: ReadSide, names: readonly string[], fn: CheckpointListener): { modes: Record<string, WatchMode>; stop: () => void } {
  const stops: (() => void)[] = [];
  const modes: Record<string, WatchMode> = {};
  for (const name of names) {
    const runner = activeRunner(readSide, name);
    if (runner) {
      modes[name] = 'hook';
      let last = runner.checkpoint;
      fn(name, last);
      stops.push(
        runner.onAdvance(() => {
          if (runner.checkpoint > last) {
            last = runner.checkpoint;
            fn(name, last);
          }
        }),
      );
      continue;
    }
    modes[name] = 'poll';
    let last = -1;
    let busy = false;
    const t = setInterval(() => {
      if (busy) return;
      busy = true;
      readSide.checkpoint(name).then(
        (cp) => {
          busy = false;
          if (cp > last) {
            last = cp;
            fn(name, cp);
          }
        },
        () => (busy = false),
      );
    }, 2);
    stops.push(() => clearInterval(t));
  }
  return { modes, stop: () => stops.forEach((s) => s()) };
}
