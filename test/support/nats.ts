/**
 * Helpers for integration tests that need a real nats-server (>= 2.12, see
 * scripts/ensure-nats-server.sh). Every server gets its own temporary store and a free port;
 * nothing depends on services already running on the machine (e.g. an old NATS on 4222).
 */
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  natsServerBinaryVersion,
  startNatsServer,
  type RunningNatsServer,
} from '../../src/nats/server.js';
import { MIN_NATS_SERVER_VERSION, compareVersions } from '../../src/nats/version.js';

export type TestNats = RunningNatsServer & {
  /** Stops the server (if still running) and removes its temporary directory. */
  cleanup(): Promise<void>;
};

export async function startTestNats(opts: { sync?: 'always' | 'default'; monitor?: boolean } = {}): Promise<TestNats> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'strand-test-'));
  let server: RunningNatsServer;
  try {
    server = await startNatsServer({
      storeDir: dir,
      sync: opts.sync ?? 'default',
      ...(opts.monitor ? { monitor: true } : {}),
    });
  } catch (err) {
    await fs.rm(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    ...server,
    async cleanup() {
      await server.stop();
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}

/** A temporary directory removed by the returned cleanup. */
export async function makeTempDir(prefix = 'strand-test-'): Promise<{ dir: string; cleanup(): Promise<void> }> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => fs.rm(dir, { recursive: true, force: true }) };
}

/**
 * An installed nats-server older than 2.12 (for tests of the version check):
 * $OLD_NATS_SERVER_BIN, else /usr/sbin/nats-server (Debian bookworm's 2.9.10), if it exists
 * and really reports a version below 2.12. Otherwise undefined (skip such tests).
 */
export function oldNatsServerBinary(): string | undefined {
  const candidate = process.env['OLD_NATS_SERVER_BIN'] || '/usr/sbin/nats-server';
  if (!existsSync(candidate)) return undefined;
  const version = natsServerBinaryVersion(candidate);
  if (!version || compareVersions(version, MIN_NATS_SERVER_VERSION) >= 0) return undefined;
  return candidate;
}
