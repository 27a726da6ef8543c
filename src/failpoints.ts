/**
 * Crash points for tests of recovery. `STRAND_FAILPOINT=<name>[:<n>[:throw]]` makes the process
 * kill itself with SIGKILL the n-th time (default first) it passes the named point: a real
 * crash, at an exact place, with nothing flushed or acknowledged afterwards. With `:throw` the
 * point throws an Error instead (a bug in Strand's own code, for tests of what survives one).
 * Tests in one process arm a point with {@link armFailpoint}. Unset in production; a check of
 * one string on the paths it guards costs nothing.
 */
let armed = '';
let remaining = 0;
let throws = false;

/** Arms a point as STRAND_FAILPOINT would (`''` disarms). */
export function armFailpoint(spec: string): void {
  const [name = '', countText = '1', mode = ''] = spec.split(':');
  armed = name;
  remaining = Number(countText) || 1;
  throws = mode === 'throw';
}

armFailpoint(process.env['STRAND_FAILPOINT'] ?? '');

/** Passing a named point; dies (or throws) here when that point is armed and its count is reached. */
export function failpoint(name: string): void {
  if (armed === '' || armed !== name) return;
  if (--remaining > 0) return;
  armed = '';
  if (throws) throw new Error(`failpoint ${name} reached`);
  process.stderr.write(`strand: failpoint ${name} reached; killing the process\n`);
  process.kill(process.pid, 'SIGKILL');
}
