/** Child service processes for the benchmarks: spawn, wait until ready, SIGTERM and wait for exit. */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const repoRoot = fileURLToPath(new URL('..', import.meta.url));

export interface ServiceProcess {
  readonly name: string;
  readonly child: ChildProcess;
  /** The last lines it wrote (stdout and stderr). */
  output(): string;
  /** Lines written so far (logs at warn or above, for Strand with LOG_LEVEL=warn). */
  readonly lines: { count: number };
  /** Resolves when it has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  hasExited(): boolean;
  /** SIGTERM, wait up to `graceMs`, then SIGKILL. */
  stop(graceMs?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const live = new Set<ServiceProcess>();
let hooked = false;

/** Runs `node [nodeArgs] --import tsx <script>` from the repository root with `env` added. */
export function startService(name: string, script: string, env: Record<string, string>, nodeArgs: string[] = []): ServiceProcess {
  const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', script], {
    cwd: repoRoot,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let buf = '';
  const lines = { count: 0 };
  const push = (s: string): void => {
    for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) === 10) lines.count++;
    buf += s;
    if (buf.length > 16_000) buf = buf.slice(-8_000);
  };
  child.stdout!.setEncoding('utf8').on('data', push);
  child.stderr!.setEncoding('utf8').on('data', push);
  let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      exitInfo = { code, signal };
      resolve(exitInfo);
    });
    child.once('error', () => {
      if (child.pid === undefined) {
        exitInfo = { code: null, signal: null };
        resolve(exitInfo);
      }
    });
  });
  const svc: ServiceProcess = {
    name,
    child,
    lines,
    exited,
    output: () => buf.slice(-4_000),
    hasExited: () => exitInfo !== undefined,
    async stop(graceMs = 20_000) {
      if (!exitInfo) {
        child.kill('SIGTERM');
        const t = setTimeout(() => {
          if (!exitInfo) child.kill('SIGKILL');
        }, graceMs);
        await exited;
        clearTimeout(t);
      }
      live.delete(svc);
      return exitInfo!;
    },
  };
  live.add(svc);
  void exited.then(() => live.delete(svc));
  if (!hooked) {
    hooked = true;
    process.on('exit', () => {
      for (const s of live) {
        try {
          s.child.kill('SIGKILL');
        } catch {
          // gone
        }
      }
    });
  }
  return svc;
}

/** Stops every service still running (SIGTERM, then SIGKILL). */
export async function stopAllServices(): Promise<void> {
  await Promise.all([...live].map((s) => s.stop(5_000)));
}

/** Waits until `ready()` is true; fails when the service exits first or after `timeoutMs`. */
export async function waitReady(svc: ServiceProcess, ready: () => Promise<boolean> | boolean, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (svc.hasExited()) throw new Error(`${svc.name} exited before it was ready:\n${svc.output()}`);
    if (await ready()) return;
    if (Date.now() > end) throw new Error(`${svc.name} not ready within ${timeoutMs} ms:\n${svc.output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
