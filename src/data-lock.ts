/**
 * One Strand per data folder (STRAND_DATA_DIR): `npm start` takes this lock before it starts
 * anything, so a second start in the same folder stops at once instead of running a second
 * nats-server on the live JetStream store.
 *
 * On Linux the lock is flock(2) on `<dir>/strand.lock`, held by the kernel: it goes when the
 * holder goes, however it goes (kill -9 included), with no stale file to judge and no pid that
 * may have been reused by another process meanwhile (containers restart with the same small
 * pids). It works across pid namespaces on one kernel too (two containers sharing the folder).
 * Node has no flock(), so a small helper holds it: util-linux's `flock` running `cat`, whose
 * standard input is a pipe from Strand. When Strand dies the kernel closes the pipe, `cat` reads
 * EOF and exits, and the lock is released; the helper is in its own process group, so a Ctrl-C
 * in the terminal does not release the lock while Strand is still draining. The lock file also
 * holds the holder's pid, for the message a second start prints. The file is never deleted:
 * deleting a flock'ed file lets two processes lock two different files of the same name.
 *
 * Where util-linux's flock is missing (macOS, busybox), the fallback is the file's existence
 * (O_EXCL) with the holder's pid checked for liveness: a lock left by a killed Strand is taken
 * over when its pid is dead, which a reused pid can defeat (then delete the file by hand).
 */
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import fs from 'node:fs/promises';
import type net from 'node:net';
import path from 'node:path';

/** A held lock on a data folder. */
export interface DataDirLock {
  readonly dir: string;
  readonly file: string;
  /** 'flock' (kernel-held) or 'pidfile' (the fallback). */
  readonly kind: 'flock' | 'pidfile';
  /** Gives the lock up (also done by the kernel or the exit hook when the process ends). */
  release(): Promise<void>;
}

/** The data folder is locked by another process. */
export class DataDirBusy extends Error {
  constructor(
    readonly dir: string,
    /** The holder's pid, when it could be read. */
    readonly pid: number | undefined,
  ) {
    super(
      `the data folder ${dir} is in use by another Strand (${pid ? `pid ${pid}` : 'pid unknown'}): ` +
        'stop that one first, or give this one another folder with STRAND_DATA_DIR',
    );
    this.name = 'DataDirBusy';
  }
}

const LOCK_FILE = 'strand.lock';
const BUSY_EXIT = 75; // EX_TEMPFAIL
const READY = 'locked';
const START_TIMEOUT_MS = 10_000;

let flockWorks: boolean | undefined;

function haveFlock(): boolean {
  if (flockWorks !== undefined) return flockWorks;
  const r = spawnSync('flock', ['--version'], { encoding: 'utf8', timeout: 5_000 });
  flockWorks = process.platform === 'linux' && !r.error && r.status === 0 && /util-linux/.test(`${r.stdout}${r.stderr}`);
  return flockWorks;
}

/** Takes the lock of `dir` (created if missing), or throws DataDirBusy naming the holder's pid. */
export async function lockDataDir(dir: string, opts: { mode?: 'flock' | 'pidfile' } = {}): Promise<DataDirLock> {
  const abs = path.resolve(dir);
  await fs.mkdir(abs, { recursive: true });
  const file = path.join(abs, LOCK_FILE);
  const mode = opts.mode ?? (haveFlock() ? 'flock' : 'pidfile');
  return mode === 'flock' ? flockLock(abs, file) : pidFileLock(abs, file);
}

/** The pid written in a lock file, if it holds one. */
async function readPid(file: string): Promise<number | undefined> {
  const text = await fs.readFile(file, 'utf8').catch(() => '');
  const pid = Number(text.trim().split(/\s+/)[0]);
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function flockLock(dir: string, file: string): Promise<DataDirLock> {
  const child = spawn('flock', ['--exclusive', '--nonblock', '--conflict-exit-code', String(BUSY_EXIT), file, 'sh', '-c', `echo ${READY} && exec cat`], {
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  });
  let out = '';
  let errText = '';
  child.stdout!.setEncoding('utf8');
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (errText += s));
  child.stdin!.on('error', () => undefined); // EPIPE once the helper is gone
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const acquired = await new Promise<boolean | Error>((resolve) => {
    const timer = setTimeout(() => resolve(new Error(`flock on ${file} did not answer within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
    const onData = (s: string): void => {
      out += s;
      if (out.includes(READY)) {
        clearTimeout(timer);
        child.stdout!.off('data', onData);
        resolve(true);
      }
    };
    child.stdout!.on('data', onData);
    child.once('error', (err) => {
      clearTimeout(timer);
      resolve(err);
    });
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      resolve(code === BUSY_EXIT ? false : new Error(`flock on ${file} ${signal ? `was killed by ${signal}` : `exited with code ${code}`}: ${errText.trim()}`));
    });
  });
  if (acquired !== true) {
    child.kill('SIGKILL');
    if (acquired instanceof Error) throw acquired;
    // The holder writes its pid right after it locks: give it a moment if the file is still empty.
    let pid: number | undefined;
    for (let i = 0; i < 20 && pid === undefined; i++) {
      pid = await readPid(file);
      if (pid === undefined) await sleep(50);
    }
    throw new DataDirBusy(dir, pid);
  }
  await fs.writeFile(file, `${process.pid}\n`);
  // Neither the helper nor its pipes keep the event loop alive: the lock lasts as long as the
  // process, not longer.
  child.unref();
  for (const s of [child.stdin, child.stdout, child.stderr]) (s as unknown as net.Socket | null)?.unref?.();
  let released: Promise<void> | undefined;
  return {
    dir,
    file,
    kind: 'flock',
    release: () =>
      (released ??= (async () => {
        child.stdin!.end();
        const timer = setTimeout(() => child.kill('SIGKILL'), 2_000);
        await exited;
        clearTimeout(timer);
      })()),
  };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function pidFileLock(dir: string, file: string): Promise<DataDirLock> {
  for (let attempt = 0; ; attempt++) {
    try {
      const fh = await fs.open(file, 'wx');
      try {
        await fh.writeFile(`${process.pid}\n`);
      } finally {
        await fh.close();
      }
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const pid = await readPid(file);
    if (pid === undefined && attempt === 0) {
      await sleep(100); // being written right now
      continue;
    }
    if (pid !== undefined && pid !== process.pid && isAlive(pid)) throw new DataDirBusy(dir, pid);
    if (attempt >= 3) throw new DataDirBusy(dir, pid);
    await fs.rm(file, { force: true }); // left by a process that is gone
  }
  // A normal exit removes it even without release(); a kill -9 leaves it, for the pid check.
  const onExit = (): void => {
    try {
      if (readFileSync(file, 'utf8').trim() === String(process.pid)) rmSync(file, { force: true });
    } catch {
      // nothing more to do at exit
    }
  };
  process.once('exit', onExit);
  let released = false;
  return {
    dir,
    file,
    kind: 'pidfile',
    release: async () => {
      if (released) return;
      released = true;
      process.removeListener('exit', onExit);
      if ((await readPid(file)) === process.pid) await fs.rm(file, { force: true });
    },
  };
}

