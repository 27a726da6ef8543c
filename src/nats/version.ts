/** The oldest nats-server Strand runs on: atomic batch publish, the wildcard expected-subject-sequence header, batch direct get. */
export const MIN_NATS_SERVER_VERSION = '2.12.0';

/** The server is older than {@link MIN_NATS_SERVER_VERSION}. */
export class UnsupportedServer extends Error {
  constructor(
    readonly found: string,
    readonly url: string,
  ) {
    super(
      `nats-server ${found} at ${url} is too old: Strand needs nats-server ${MIN_NATS_SERVER_VERSION} or newer ` +
        '(atomic batch publish, Nats-Expected-Last-Subject-Sequence-Subject, batch direct get). ' +
        'Run scripts/ensure-nats-server.sh to get a current one, or unset NATS_URL to let Strand start its own.',
    );
    this.name = 'UnsupportedServer';
  }
}

/** Numeric comparison of dotted versions ("2.9.10" < "2.12.0"); pre-release suffixes are ignored. */
export function compareVersions(a: string, b: string): number {
  const pa = a.replace(/^v/, '').split(/[.-]/).map((x) => Number.parseInt(x, 10));
  const pb = b.replace(/^v/, '').split(/[.-]/).map((x) => Number.parseInt(x, 10));
  for (let i = 0; i < 3; i++) {
    const x = Number.isFinite(pa[i]) ? pa[i]! : 0;
    const y = Number.isFinite(pb[i]) ? pb[i]! : 0;
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}

/** True when `version` is at least `min`. */
export function atLeast(version: string, min: string = MIN_NATS_SERVER_VERSION): boolean {
  return compareVersions(version, min) >= 0;
}

/** Throws {@link UnsupportedServer} unless the connected server is new enough. */
export function requireServerVersion(version: string | undefined, url: string): void {
  if (!version || !atLeast(version)) throw new UnsupportedServer(version ?? 'unknown', url);
}
