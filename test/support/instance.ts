/**
 * Strand instances as separate processes (`src/main.ts`, as `npm start` runs it), for tests
 * that kill, pause and restart them: each on its own HTTP port, with its log kept.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { freePorts } from '../../src/nats/cluster.js';
import { alive } from './process.js';

const root = fileURLToPath(new URL('../..', import.meta.url));

export interface InstanceProcess {
  readonly pid: number;
  readonly port: number;
  readonly url: string;
  /** Everything it wrote (JSON log lines). */
  output(): string;
  /** Waits until its /health/ready answers 200 (it holds its share of the partitions). */
  ready(timeoutMs?: number): Promise<void>;
  /** SIGTERM and wait for the exit code. */
  stop(): Promise<number | null>;
  kill9(): Promise<void>;
  pause(): void;
  resume(): void;
  readonly exited: Promise<number | null>;
}

/**
 * Starts `src/main.ts` (or `o.entry`, a script path from the repository root, e.g.
 * test/support/processes-instance.ts) with `env` on top of this process's environment.
 */
export async function spawnInstance(env: Record<string, string>, o: { entry?: string } = {}): Promise<InstanceProcess> {
  const [port] = await freePorts(1);
  let out = '';
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', o.entry ?? 'src/main.ts'], {
    cwd: root,
    env: { ...process.env, LOG_LEVEL: 'info', PORT: String(port), STRAND_ACTOR_IDLE_MS: '600000', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const url = `http://127.0.0.1:${port}`;
  const pid = child.pid!;
  return {
    pid,
    port: port!,
    url,
    output: () => out,
    exited,
    async ready(timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        try {
          const r = await fetch(`${url}/health/ready`);
          if (r.status === 200) return;
        } catch {
          // not listening yet
        }
        if (!alive(pid)) throw new Error(`instance ${pid} exited before it was ready:\n${out.slice(-4000)}`);
        if (Date.now() > deadline) throw new Error(`instance ${pid} not ready after ${timeoutMs} ms:\n${out.slice(-4000)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async stop() {
      if (alive(pid)) child.kill('SIGTERM');
      return exited;
    },
    async kill9() {
      if (alive(pid)) child.kill('SIGKILL');
      await exited;
    },
    pause() {
      child.kill('SIGSTOP');
    },
    resume() {
      child.kill('SIGCONT');
    },
  };
}
