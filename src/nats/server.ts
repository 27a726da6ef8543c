/**
 * Embedded nats-server launcher: used by the dev runner (no NATS_URL), the tests and the
 * benchmarks. It writes a config file into the store directory, spawns nats-server, and waits
 * until the server has written its ports file and its client port accepts connections.
 *
 * Durability: `sync: 'always'` sets JetStream's `sync_interval: always` (every write is
 * flushed to disk before it is acknowledged); `sync: 'default'` leaves nats-server's default
 * (flush every 2 minutes: much faster, but acknowledged writes can be lost on power failure).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { deathSignalPrefix, describeExit } from '../lifetime.js';

export interface NatsServerOptions {
  /** Client port. Default: a free port chosen by the server (`-1`), read back from its ports file. */
  port?: number;
  /** JetStream store directory; the generated config file and the ports file live here too. */
  storeDir: string;
  /** 'always': `sync_interval: always` (flush before ack). 'default': nats-server's 2-minute default. */
  sync: 'always' | 'default';
  /** Path of the nats-server binary. Default: resolveNatsServerBinary(). */
  binary?: string;
  serverName?: string;
  /** Where the server logs. Default: its output is kept in memory (the tail shows up in errors). */
  logFile?: string;
  /** Also open the HTTP monitoring endpoint (/varz, /healthz, …) on a free port. */
  monitor?: boolean;
  /** Subject mappings of the global account (`mappings = { from: to }`), e.g. Strand's partition mapping. */
  mappings?: Readonly<Record<string, string>>;
  /** How long to wait for the server to come up. Default 10 s. */
  startTimeoutMs?: number;
  /** Progress of finding (or fetching) the binary, line by line; see resolveNatsServerBinary(). */
  onProgress?: (line: string) => void;
}

export interface RunningNatsServer {
  /** nats://127.0.0.1:<port> */
  url: string;
  port: number;
  pid: number;
  storeDir: string;
  /** http://127.0.0.1:<port> of the monitoring endpoint, when started with `monitor: true`. */
  monitorUrl?: string;
  /** How the server ended ("exited with code 0", "was killed by SIGINT"), undefined while it runs. */
  readonly exitStatus: string | undefined;
  /** SIGTERM, wait for exit, SIGKILL after 5 s. Idempotent. */
  stop(): Promise<void>;
  /** SIGKILL and wait for exit (for crash tests). Idempotent. */
  kill9(): Promise<void>;
}


const CONFIG_FILE = 'nats-server.conf';
const STOP_GRACE_MS = 5_000;
const OUTPUT_TAIL_CHARS = 8_000;

// ---------------------------------------------------------------------------------------------
// Binary resolution and versions

let resolving: Promise<string> | undefined;
const progressListeners = new Set<(line: string) => void>();

/**
 * The nats-server to run: $NATS_SERVER_BIN when set, else whatever scripts/ensure-nats-server.sh
 * prints (a nats-server >= 2.12 on PATH, or Debian sid's, downloaded once into .cache/).
 * `onProgress` receives the script's progress lines as they come (the first fetch takes 10-20 s).
 */
export function resolveNatsServerBinary(onProgress?: (line: string) => void): Promise<string> {
  const fromEnv = process.env['NATS_SERVER_BIN'];
  if (fromEnv) return checkExecutable(fromEnv, 'NATS_SERVER_BIN');
  if (onProgress) progressListeners.add(onProgress);
  resolving ??= runEnsureScript((line) => progressListeners.forEach((l) => l(line)))
    .catch((err: unknown) => {
      resolving = undefined;
      throw err;
    })
    .finally(() => progressListeners.clear());
  return resolving;
}

async function checkExecutable(file: string, what: string): Promise<string> {
  try {
    await fs.access(file, fsConstants.X_OK);
  } catch {
    throw new Error(`${what}=${file}: no executable file there`);
  }
  return file;
}

const ENSURE_TIMEOUT_MS = 300_000;

function runEnsureScript(onProgress: (line: string) => void): Promise<string> {
  const script = fileURLToPath(new URL('../../scripts/ensure-nats-server.sh', import.meta.url));
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    const stderr = new OutputTail();
    let partial = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    // Line by line as they come, so a first start says what it is waiting for.
    child.stderr.setEncoding('utf8').on('data', (s: string) => {
      stderr.push(s);
      const lines = (partial + s).split('\n');
      partial = lines.pop()!;
      for (const line of lines) if (line.trim()) onProgress(line.trimEnd());
    });
    const timer = setTimeout(() => child.kill('SIGTERM'), ENSURE_TIMEOUT_MS);
    const failed = (why: string): Error =>
      new Error(`${script} failed to provide a nats-server >= 2.12: ${why}\n${tail(stderr.text())}`);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(failed(err.message));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (partial.trim()) onProgress(partial.trimEnd());
      const bin = stdout.trim().split('\n').pop()?.trim();
      if (code !== 0 || !bin) reject(failed(code === 0 ? 'no output' : signal ? `killed by ${signal} (timeout ${ENSURE_TIMEOUT_MS / 1000} s?)` : `exit code ${code}`));
      else resolve(bin);
    });
  });
}

/** "2.15.1" out of `nats-server --version` output ("nats-server: v2.15.1"), or undefined. */
export function parseNatsServerVersion(output: string): string | undefined {
  return /v?(\d+\.\d+\.\d+)/.exec(output)?.[1];
}

/** The version a nats-server binary reports (`--version`), e.g. "2.15.1". */
export function natsServerBinaryVersion(binary: string): string | undefined {
  const r = spawnSync(binary, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  if (r.error || r.status !== 0) return undefined;
  return parseNatsServerVersion(`${r.stdout}${r.stderr}`);
}

// ---------------------------------------------------------------------------------------------
// Child tracking: nothing we start outlives this process.

const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;

function track(child: ChildProcess): void {
  liveChildren.add(child);
  child.once('exit', () => liveChildren.delete(child));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const c of liveChildren) {
        try {
          c.kill('SIGKILL');
        } catch {
          // already gone
        }
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Launching

/** nats-server config string literal (double-quoted; JSON escaping is what its lexer accepts). */
const q = (s: string): string => JSON.stringify(s);

function renderConfig(opts: NatsServerOptions, storeDir: string): string {
  const port = opts.port ?? -1;
  const lines = [
    '# Generated by Strand (src/nats/server.ts) at every start; edits are overwritten.',
    `listen: "127.0.0.1:${port}"`,
  ];
  if (opts.serverName) lines.push(`server_name: ${q(opts.serverName)}`);
  if (opts.logFile) lines.push(`log_file: ${q(path.resolve(opts.logFile))}`);
  if (opts.monitor) lines.push('http: "127.0.0.1:-1"');
  lines.push('jetstream {', `  store_dir: ${q(storeDir)}`);
  if (opts.sync === 'always') {
    lines.push('  # flush every write to disk before acknowledging it (power-loss safe)');
    lines.push('  sync_interval: always');
  } else {
    lines.push("  # sync_interval left at nats-server's default (2 minutes)");
  }
  lines.push('}', ...mappingsConfig(opts.mappings), '');
  return lines.join('\n');
}

/** The `mappings` block of a config (no lines for none). */
export function mappingsConfig(mappings: Readonly<Record<string, string>> | undefined): string[] {
  const entries = Object.entries(mappings ?? {});
  if (entries.length === 0) return [];
  return ['mappings = {', ...entries.map(([from, to]) => `  ${q(from)}: ${q(to)}`), '}'];
}

/** Start a nats-server with JetStream on 127.0.0.1 for the given store directory. */
export async function startNatsServer(opts: NatsServerOptions): Promise<RunningNatsServer> {
  if (opts.port !== undefined && (!Number.isInteger(opts.port) || opts.port < 1 || opts.port > 65535)) {
    throw new Error(`startNatsServer: port must be an integer 1..65535 (or omitted for a free one), got ${opts.port}`);
  }
  const storeDir = path.resolve(opts.storeDir);
  await fs.mkdir(storeDir, { recursive: true });
  const configFile = path.join(storeDir, CONFIG_FILE);
  await fs.writeFile(configFile, renderConfig(opts, storeDir));
  const binary = opts.binary ?? (await resolveNatsServerBinary(opts.onProgress));
  return launchNatsServer({
    binary,
    args: ['-c', configFile],
    runDir: storeDir,
    storeDir,
    ...(opts.logFile ? { logFile: path.resolve(opts.logFile) } : {}),
    ...(opts.startTimeoutMs !== undefined ? { startTimeoutMs: opts.startTimeoutMs } : {}),
  });
}

export interface LaunchOptions {
  binary: string;
  /** Arguments for nats-server; `--ports_file_dir <runDir>` is added. */
  args: string[];
  /** Where the ports file is written (and the working directory). */
  runDir: string;
  /** Reported back as RunningNatsServer.storeDir. */
  storeDir: string;
  /** The server's log file, if its config sends logs there (its tail goes into errors). */
  logFile?: string;
  startTimeoutMs?: number;
}

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * Lower-level launcher: runs nats-server with arbitrary arguments (e.g. a deploy/ config file
 * with ports overridden by flags) and waits until it is up. startNatsServer() builds on this.
 */
export async function launchNatsServer(opts: LaunchOptions): Promise<RunningNatsServer> {
  await checkExecutable(opts.binary, 'nats-server binary');
  await fs.mkdir(opts.runDir, { recursive: true });
  const timeoutMs = opts.startTimeoutMs ?? 10_000;
  // Its own process group, and SIGKILL from the kernel when this process dies (src/lifetime.ts):
  // a terminal's Ctrl-C reaches only Strand, which drains before it stops the server.
  const prefix = deathSignalPrefix('KILL');
  const argv = [...prefix, opts.binary, ...opts.args, '--ports_file_dir', opts.runDir];
  const child = spawn(argv[0]!, argv.slice(1), { cwd: opts.runDir, stdio: ['ignore', 'pipe', 'pipe'], detached: true });

  const output = new OutputTail();
  child.stdout!.setEncoding('utf8').on('data', (s: string) => output.push(s));
  child.stderr!.setEncoding('utf8').on('data', (s: string) => output.push(s));
  // The pipes and the child must not keep the event loop alive on their own: if the owner
  // forgets to stop the server, the process still ends and the exit hook kills the server.
  child.unref();
  (child.stdout as unknown as net.Socket).unref?.();
  (child.stderr as unknown as net.Socket).unref?.();

  let exit: Exit | undefined;
  let spawnError: Error | undefined;
  const exited = new Promise<Exit>((resolve) => {
    child.once('exit', (code, signal) => {
      exit = { code, signal };
      resolve(exit);
    });
    child.once('error', (err) => {
      spawnError = err;
      // 'exit' may never come when the spawn itself failed.
      if (child.pid === undefined) {
        exit = { code: null, signal: null };
        resolve(exit);
      }
    });
  });
  if (child.pid !== undefined) track(child);

  const describe = async (what: string): Promise<Error> => {
    let text = output.text();
    if (opts.logFile) {
      try {
        const log = await fs.readFile(opts.logFile, 'utf8');
        text = `${text}\n--- ${opts.logFile} ---\n${log}`;
      } catch {
        // no log file yet
      }
    }
    return new Error(
      `nats-server (${opts.binary} ${opts.args.join(' ')}) ${what}` +
        (spawnError ? `: ${spawnError.message}` : '') +
        `\n--- last output ---\n${tail(text) || '(none)'}`,
    );
  };

  // The child is unref'd, so hold the event loop open while someone awaits its exit.
  const waitExit = async (): Promise<Exit> => {
    const keepAlive = setInterval(() => undefined, 1_000);
    try {
      return await exited;
    } finally {
      clearInterval(keepAlive);
    }
  };
  const forceKill = async (): Promise<void> => {
    if (exit) return;
    child.kill('SIGKILL');
    await waitExit();
  };

  // Wait for the ports file of *this* process (written once its listeners are up, after
  // JetStream has recovered its store), then for the client port to accept connections.
  // The ports file, not a bare TCP probe, is the signal: a fixed port may already be taken
  // by another server, and a probe would happily connect to that one.
  const deadline = Date.now() + timeoutMs;
  let ports: PortsFile | undefined;
  let portsFile: string | undefined;
  for (;;) {
    if (exit) {
      const how = describeExit(exit.code, exit.signal);
      throw await describe(`${how} before it was ready`);
    }
    if (Date.now() > deadline) {
      await forceKill();
      throw await describe(`did not come up within ${timeoutMs} ms`);
    }
    if (!ports && child.pid !== undefined) {
      const found = await readPortsFile(opts.runDir, child.pid);
      if (found) [portsFile, ports] = found;
    }
    if (ports && (await canConnect(ports.host, ports.port))) break;
    await sleep(25);
  }

  const pid = child.pid!;
  const cleanupPortsFile = async (): Promise<void> => {
    // A clean shutdown removes it; a SIGKILL leaves it behind.
    if (portsFile) await fs.rm(portsFile, { force: true }).catch(() => undefined);
  };
  const stop = async (): Promise<void> => {
    if (!exit) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => {
        if (!exit) child.kill('SIGKILL');
      }, STOP_GRACE_MS);
      await waitExit();
      clearTimeout(timer);
    }
    await cleanupPortsFile();
  };
  const kill9 = async (): Promise<void> => {
    await forceKill();
    await cleanupPortsFile();
  };

  return {
    url: `nats://127.0.0.1:${ports.port}`,
    port: ports.port,
    pid,
    storeDir: opts.storeDir,
    get exitStatus() {
      return exit ? describeExit(exit.code, exit.signal) : undefined;
    },
    ...(ports.monitorUrl ? { monitorUrl: ports.monitorUrl } : {}),
    stop,
    kill9,
  };
}

interface PortsFile {
  host: string;
  port: number;
  monitorUrl?: string;
}

/** Reads `<exe>_<pid>.ports` ({"nats":["nats://127.0.0.1:4222"],"monitoring":[…]}) if complete. */
async function readPortsFile(dir: string, pid: number): Promise<[string, PortsFile] | undefined> {
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch {
    return undefined;
  }
  const name = names.find((n) => n.endsWith(`_${pid}.ports`));
  if (!name) return undefined;
  const file = path.join(dir, name);
  try {
    const parsed = JSON.parse(await fs.readFile(file, 'utf8')) as { nats?: string[]; monitoring?: string[] };
    const first = parsed.nats?.[0];
    if (!first) return undefined;
    const u = new URL(first);
    let host = u.hostname.replace(/^\[|\]$/g, '');
    if (host === '0.0.0.0' || host === '::' || host === '') host = '127.0.0.1';
    const port = Number(u.port);
    if (!Number.isInteger(port) || port <= 0) return undefined;
    const monitorUrl = parsed.monitoring?.[0];
    return [file, { host, port, ...(monitorUrl ? { monitorUrl } : {}) }];
  } catch {
    return undefined; // not fully written yet
  }
}

function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (ok: boolean): void => {
      socket.removeAllListeners();
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1_000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function tail(text: string, lines = 30): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

class OutputTail {
  private buf = '';
  push(s: string): void {
    this.buf += s;
    if (this.buf.length > 2 * OUTPUT_TAIL_CHARS) this.buf = this.buf.slice(-OUTPUT_TAIL_CHARS);
  }
  text(): string {
    return this.buf.slice(-OUTPUT_TAIL_CHARS);
  }
}
