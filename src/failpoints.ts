/**
 * Crash points for tests of recovery. `STRAND_FAILPOINT=<name>[:<n>[:throw|:pause]]` makes the
 * process kill itself with SIGKILL the n-th time (default first) it passes the named point: a
 * real crash, at an exact place, with nothing flushed or acknowledged afterwards. With `:throw`
 * the point throws an Error instead (a bug in Strand's own code, for tests of what survives
 * one); with `:pause` the process stops itself with SIGSTOP there (a stall, as in a long GC or a
 * frozen VM) and goes on from that very point when sent SIGCONT. At the points passed with
 * {@link failpointWait}, `:delay<ms>` (e.g. `cluster.joined:1:delay4000`) makes that one pass
 * wait so long, the rest of the process running on: a slow step, widened on purpose.
 * Tests in one process arm a point with {@link armFailpoint}. Unset in production; a check of
 * one string on the paths it guards costs nothing.
 */
let armed = '';
let remaining = 0;
let mode = '';

/** Arms a point as STRAND_FAILPOINT would (`''` disarms). */
export function armFailpoint(spec: string): void {
  const [name = '', countText = '1', how = ''] = spec.split(':');
  armed = name;
  remaining = Number(countText) || 1;
  mode = how;
}

armFailpoint(process.env['STRAND_FAILPOINT'] ?? '');

/** Passing a named point; dies (or throws) here when that point is armed and its count is reached. */
export function failpoint(name: string): void {
  if (armed === '' || armed !== name) return;
  if (--remaining > 0) return;
  armed = '';
  if (mode === 'throw') throw new Error(`failpoint ${name} reached`);
  if (mode === 'pause') {
    process.stderr.write(`strand: failpoint ${name} reached; pausing the process (SIGSTOP)\n`);
    process.kill(process.pid, 'SIGSTOP');
    return;
  }
  process.stderr.write(`strand: failpoint ${name} reached; killing the process\n`);
  process.kill(process.pid, 'SIGKILL');
}

/**
 * An asynchronous point: as {@link failpoint}, and with `:delay<ms>` it waits that long (the
 * process running on) the n-th time it is passed.
 */
export async function failpointWait(name: string): Promise<void> {
  if (armed === '' || armed !== name) return;
  const delay = /^delay(\d+)$/.exec(mode);
  if (!delay) return failpoint(name);
  if (--remaining > 0) return;
  armed = '';
  process.stderr.write(`strand: failpoint ${name} reached; waiting ${delay[1]} ms\n`);
  await new Promise((r) => setTimeout(r, Number(delay[1])));
}
