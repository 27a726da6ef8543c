/**
 * The data folder lock (src/data-lock.ts) across processes: held while its holder lives, refused
 * to a second process with the holder's pid, free again after the holder's kill -9. Both the
 * kernel-held flock (Linux) and the pid-file fallback.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { DataDirBusy, lockDataDir } from '../src/data-lock.js';
import { makeTempDir } from './support/nats.js';

const root = fileURLToPath(new URL('..', import.meta.url));

/** A process holding the lock of `dir` until it is killed. */
async function holder(dir: string, mode: 'flock' | 'pidfile'): Promise<{ pid: number; kill9(): Promise<void> }> {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', '--input-type=module', '-e', `const { lockDataDir } = await import('./src/data-lock.ts'); await lockDataDir(${JSON.stringify(dir)}, { mode: ${JSON.stringify(mode)} }); console.log('held'); setInterval(() => {}, 1000);`],
    { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => d.toString().includes('held') && resolve());
    void exited.then(() => reject(new Error('the holder exited before it held the lock')));
  });
  return {
    pid: child.pid!,
    kill9: async () => {
      child.kill('SIGKILL');
      await exited;
    },
  };
}

describe.each(['flock', 'pidfile'] as const)('the data folder lock (%s)', (mode) => {
  it('refuses a second process with the holder pid, and is free again after a kill -9 of the holder', { timeout: 30_000 }, async () => {
    const data = await makeTempDir();
    const dir = join(data.dir, 'strand-data'); // created by the lock
    try {
      const first = await holder(dir, mode);
      const refused = lockDataDir(dir, { mode });
      await expect(refused).rejects.toBeInstanceOf(DataDirBusy);
      await expect(refused).rejects.toMatchObject({ dir, pid: first.pid, message: expect.stringContaining(`${dir} is in use by another Strand (pid ${first.pid})`) });

      await first.kill9();
      const mine = await lockDataDir(dir, { mode });
      expect(readFileSync(join(dir, 'strand.lock'), 'utf8').trim()).toBe(String(process.pid));
      await mine.release();
      // flock keeps its file (deleting a locked file would break the lock); the pid file goes.
      expect(existsSync(join(dir, 'strand.lock'))).toBe(mode === 'flock');
      const again = await lockDataDir(dir, { mode });
      await again.release();
    } finally {
      await data.cleanup();
    }
  });
});
