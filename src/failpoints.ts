/**
 * Crash points for tests of recovery. `STRAND_FAILPOINT=<name>[:<n>]` makes the process kill
 * itself with SIGKILL the n-th time (default first) it passes the named point: a real crash,
 * at an exact place, with nothing flushed or acknowledged afterwards. Unset in production; a
 * check of one environment variable read once at start costs nothing on the paths it guards.
 */
const spec = process.env['STRAND_FAILPOINT'] ?? '';
const [armed = '', countText = '1'] = spec.split(':');
let remaining = Number(countText) || 1;

/** Passing a named point; dies here when that point is armed and its count is reached. */
export function failpoint(name: string): void {
  if (armed === '' || armed !== name) return;
  if (--remaining > 0) return;
  process.stderr.write(`strand: failpoint ${name} reached; killing the process\n`);
  process.kill(process.pid, 'SIGKILL');
}
