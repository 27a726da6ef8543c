/** The oldest nats-server Strand runs on: atomic batch publish, the wildcard expected-subject-sequence header, batch direct get. */
export const MIN_NATS_SERVER = '2.12.0';

/** The server is older than {@link MIN_NATS_SERVER}. */
export class UnsupportedServer extends Error {
  constructor(
    readonly found: string,
    readonly url: string,
  ) {
    super(
      `nats-server ${found} at ${url} is too old: Strand needs nats-server ${MIN_NATS_SERVER} or newer ` +
        '(atomic batch publish, Nats-Expected-Last-Subject-Sequence-Subject, batch direct get). ' +
        'Run scripts/ensure-nats-server.sh to get a current one, or unset NATS_URL to let Strand start its own.',
    );
    this.name = 'UnsupportedServer';
  }
}

function parts(v: string): [number, number, number] {
  const m = /^v?(\d+)\.(\d+)\.(\d+)/.exec(v);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : [0, 0, 0];
}

/** True when `version` is at least `min` (both `major.minor.patch`, pre-release suffixes ignored). */
export function atLeast(version: string, min: string = MIN_NATS_SERVER): boolean {
  const a = parts(version);
  const b = parts(min);
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i]! > b[i]!;
  return true;
}

/** Throws {@link UnsupportedServer} unless the connected server is new enough. */
export function requireServerVersion(version: string | undefined, url: string): void {
  if (!version || !atLeast(version)) throw new UnsupportedServer(version ?? 'unknown', url);
}
