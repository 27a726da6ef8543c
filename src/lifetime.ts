/**
 * How the servers Strand starts (nats-server, PostgreSQL) are tied to its lifetime.
 *
 * - Their own process group (spawn's `detached: true`): a Ctrl-C in a terminal signals the whole
 *   foreground process group, and must reach only Strand, which drains first and then stops them;
 *   if it reached them too they would go away under the drain.
 * - A parent-death signal: a process in its own group no longer goes down with a group kill, and
 *   nothing in Strand runs when it is killed with SIGKILL. On Linux, util-linux's
 *   `setpriv --pdeathsig <SIG>` asks the kernel to send the child that signal when Strand dies,
 *   however it dies, and then execs the server, so the pid stays the server's.
 */
import { spawnSync } from 'node:child_process';

const prefixes = new Map<string, string[]>();

/**
 * The argv prefix that makes the kernel send `signal` to the command when this process dies
 * (`['setpriv', '--pdeathsig', signal, '--']`), or `[]` where that is not available (not Linux,
 * no working setpriv) or turned off with STRAND_NO_PDEATHSIG=1.
 */
export function deathSignalPrefix(signal: 'KILL' | 'INT' | 'TERM'): string[] {
  let prefix = prefixes.get(signal);
  if (prefix) return prefix;
  prefix = [];
  if (process.platform === 'linux' && process.env['STRAND_NO_PDEATHSIG'] !== '1') {
    const r = spawnSync('setpriv', ['--pdeathsig', signal, '--', 'true'], { stdio: 'ignore', timeout: 5_000 });
    if (!r.error && r.status === 0) prefix = ['setpriv', '--pdeathsig', signal, '--'];
  }
  prefixes.set(signal, prefix);
  return prefix;
}

/** "exited with code 1", "was killed by SIGINT": how a child ended, for logs and errors. */
export function describeExit(code: number | null, signal: NodeJS.Signals | null): string {
  return signal ? `was killed by ${signal}` : `exited with code ${code}`;
}
