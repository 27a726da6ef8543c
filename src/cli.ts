/**
 * `npm run strand -- <command>`: send commands and follow events over NATS, inspect aggregates
 * and operate projections over a running Strand's HTTP API. `strand help` lists the commands,
 * `strand <command> --help` explains one.
 *
 * NATS: `--nats` or NATS_URL (a comma-separated list is fine). HTTP: `--url` or STRAND_URL
 * (default http://127.0.0.1:$PORT, PORT defaulting to 3000), with `Authorization: Bearer
 * $STRAND_TOKEN` on every request when STRAND_TOKEN is set.
 * Exit codes: 0 done, 1 refused (the reply or the server said no; printed), 2 bad usage or
 * unreachable.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { NoRespondersError, RequestError, TimeoutError, headers as natsHeaders, type NatsConnection } from '@nats-io/nats-core';
import { connect } from '@nats-io/transport-node';
import { CommandHeader, EVENT_PREFIX, commandSubject, isAggregateId, isAggregateName, isMessageName } from '../subjects/index.js';
import type { ProjectionStatus } from './projections/host.js';

const out = process.stdout;
const err = process.stderr;

/** The server, the reply or the stream said no: exit 1. */
class Refused extends Error {}
/** Bad usage or nothing to talk to: exit 2. */
class Unusable extends Error {}

type Options = NonNullable<ParseArgsConfig['options']>;
type Values = Record<string, string | boolean | string[] | undefined>;

interface Command {
  /** `projections rebuild`: the words that select it. */
  readonly name: string;
  readonly args: string;
  readonly summary: string;
  /** Shown by `--help` under the usage line. */
  readonly details: string;
  readonly options: Options;
  /** How many positional arguments it takes. */
  readonly positionals: readonly [min: number, max: number];
  run(args: string[], values: Values): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// HTTP

const httpOption: Options = { url: { type: 'string' } };
const HTTP_HELP = '  --url <url>    the Strand instance (default: $STRAND_URL, else http://127.0.0.1:$PORT, PORT 3000)';

function baseUrl(values: Values): string {
  const url = (values['url'] as string | undefined) ?? process.env['STRAND_URL'] ?? `http://127.0.0.1:${process.env['PORT'] || '3000'}`;
  return url.replace(/\/$/, '');
}

async function call<T>(values: Values, method: 'GET' | 'POST' | 'DELETE', path: string): Promise<T> {
  const base = baseUrl(values);
  const token = process.env['STRAND_TOKEN'];
  let res: Response;
  try {
    res = await fetch(`${base}${path}`, { method, headers: token ? { authorization: `Bearer ${token}` } : {} });
  } catch (e) {
    const cause = (e as { cause?: { message?: string } }).cause?.message;
    throw new Unusable(`cannot reach ${base}: ${(e as Error).message}${cause ? ` (${cause})` : ''}`);
  }
  const text = await res.text();
  let body: (T & { code?: string; message?: string }) | undefined;
  try {
    body = JSON.parse(text) as T & { code?: string; message?: string };
  } catch {
    body = undefined;
  }
  if (res.ok && body !== undefined) return body;
  const said = body ? `${body.code ?? ''}: ${body.message ?? res.statusText}` : `${res.statusText}: ${text.slice(0, 200).trim() || '(empty body)'}`;
  if (res.status === 401) {
    throw new Refused(
      `401 ${said} — ${token ? 'the server did not accept STRAND_TOKEN' : 'the server wants a token: set STRAND_TOKEN'}`,
    );
  }
  if (res.status === 403) throw new Refused(`403 ${said} — the token is valid, but its subject may not do this`);
  throw new Refused(`${res.status} ${said}`);
}

function table(rows: Record<string, unknown>[]): string {
  if (rows.length === 0) return '(none)\n';
  const cols = Object.keys(rows[0]!);
  const cell = (v: unknown) => (v === null || v === undefined ? '-' : typeof v === 'object' ? JSON.stringify(v) : String(v));
  const widths = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(cols), line(widths.map((w) => '-'.repeat(w))), ...rows.map((r) => line(cols.map((c) => cell(r[c]))))].join('\n') + '\n';
}

function progressBar(fraction: number, width = 30): string {
  const done = Math.round(Math.max(0, Math.min(1, fraction)) * width);
  return `[${'#'.repeat(done)}${'.'.repeat(width - done)}] ${(fraction * 100).toFixed(1).padStart(5)}%`;
}

const enc = encodeURIComponent;

async function showProjections(values: Values): Promise<void> {
  const { projections } = await call<{ projections: ProjectionStatus[] }>(values, 'GET', '/projections');
  out.write(
    table(
      projections.map((p) => ({
        name: p.name,
        version: p.version,
        serving: p.activeGeneration,
        checkpoint: p.checkpoint,
        pending: p.pending,
        here: p.local,
        rebuilding: p.rebuild ? `g${p.rebuild.generation} at ${p.rebuild.checkpoint}` : null,
        deadLetters: p.deadLetters,
      })),
    ),
  );
}

async function rebuild(values: Values, name: string): Promise<void> {
  const { generation } = await call<{ generation: number }>(values, 'POST', `/projections/${enc(name)}/rebuild`);
  const tty = err.isTTY === true;
  err.write(`rebuilding ${name} into generation ${generation}\n`);
  let lastLog = 0;
  for (;;) {
    const s = await call<ProjectionStatus>(values, 'GET', `/projections/${enc(name)}`);
    if (s.activeGeneration === generation) {
      if (tty) err.write(`\r${progressBar(1)}  done\n`);
      out.write(`${name}: generation ${generation} is serving (checkpoint ${s.checkpoint})\n`);
      return;
    }
    if (s.rebuild?.generation !== generation) throw new Refused(`rebuild of ${name} into generation ${generation} was superseded`);
    // The server's own figure, the same as strand_projection_rebuild_progress: the checkpoint over the stream's end.
    const { checkpoint, pending, progress } = s.rebuild;
    if (tty) err.write(`\r${progressBar(progress)}  checkpoint ${checkpoint}, ${pending >= 0 ? pending : '?'} pending   `);
    else if (Date.now() - lastLog > 5000) {
      lastLog = Date.now();
      err.write(`${name}: ${(progress * 100).toFixed(1)}%, checkpoint ${checkpoint}, ${pending >= 0 ? pending : '?'} pending\n`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function deadLetters(values: Values, projection: string): Promise<void> {
  const { deadLetters: list } = await call<{ deadLetters: { seq: number; subject: string; attempts: number; parkedAt: string; error: string }[] }>(
    values,
    'GET',
    `/projections/${enc(projection)}/dead-letters`,
  );
  out.write(table(list.map((d) => ({ seq: d.seq, subject: d.subject, attempts: d.attempts, parkedAt: d.parkedAt, error: d.error.slice(0, 80) }))));
}

async function discard(values: Values, projection: string, seq: string): Promise<void> {
  if (!/^\d+$/.test(seq)) throw new Unusable(`seq must be a number, got ${seq}`);
  await call(values, 'DELETE', `/projections/${enc(projection)}/dead-letters/${seq}`);
  out.write(`${projection}: event ${seq} discarded from the dead letters; it will not be applied\n`);
}

async function retry(values: Values, projection: string, seq: string): Promise<void> {
  if (!/^\d+$/.test(seq)) throw new Unusable(`seq must be a number, got ${seq}`);
  await call(values, 'POST', `/projections/${enc(projection)}/dead-letters/${seq}/retry`);
  out.write(`${projection}: event ${seq} applied and removed from the dead letters\n`);
}

interface StoredEvent {
  seq: number;
  type: string;
  version: number;
  time: string;
  actor?: string;
  data: unknown;
  metadata?: { commandId?: string };
}

async function inspect(values: Values, aggregate: string, id: string): Promise<void> {
  const q = new URLSearchParams();
  if (values['version'] !== undefined) q.set('version', values['version'] as string);
  if (values['at'] !== undefined) q.set('at', values['at'] as string);
  const path = `/aggregates/${enc(aggregate)}/${enc(id)}`;
  const state = await call<{ version: number; seq: number; state: unknown }>(values, 'GET', `${path}${q.size ? `?${q}` : ''}`);
  const events: StoredEvent[] = [];
  for (let after: number | undefined; ; ) {
    const page = await call<{ events: StoredEvent[]; next?: number }>(values, 'GET', `${path}/events?limit=1000${after !== undefined ? `&after=${after}` : ''}`);
    // The history up to the state shown (time travel shows the past).
    events.push(...page.events.filter((e) => e.version <= state.version));
    if (page.next === undefined || page.events.length === 0 || page.events.at(-1)!.version >= state.version) break;
    after = page.next;
  }
  if (values['json']) {
    out.write(`${JSON.stringify({ ...state, events })}\n`);
    return;
  }
  out.write(`${aggregate} ${id}: version ${state.version}, stream sequence ${state.seq}\n\nstate:\n${JSON.stringify(state.state, null, 2)}\n\nhistory:\n`);
  out.write(table(events.map((e) => ({ seq: e.seq, version: e.version, type: e.type, time: e.time, actor: e.actor ?? null, commandId: e.metadata?.commandId ?? null }))));
}

// ---------------------------------------------------------------------------------------------
// NATS

const natsOption: Options = { nats: { type: 'string' } };
const NATS_HELP = '  --nats <url>   the NATS server(s), comma-separated (default: $NATS_URL, else nats://127.0.0.1:4222)';

async function natsConnect(values: Values, reconnect: boolean): Promise<NatsConnection> {
  const url = (values['nats'] as string | undefined) ?? process.env['NATS_URL'] ?? 'nats://127.0.0.1:4222';
  const servers = url.split(',').map((s) => s.trim()).filter(Boolean);
  try {
    return await connect({ servers, name: 'strand-cli', timeout: 5_000, reconnect, maxReconnectAttempts: reconnect ? -1 : 0 });
  } catch (e) {
    throw new Unusable(`cannot reach NATS at ${servers.join(',')}: ${(e as Error).message}`);
  }
}

function checkToken(what: string, value: string, ok: (s: string) => boolean, rule: string): void {
  if (!ok(value)) throw new Unusable(`${what} ${JSON.stringify(value)} is not valid: ${rule}`);
}

function header(spec: string): [string, string] {
  const m = /^([^=:\s]+)\s*[=:]\s*(.*)$/.exec(spec);
  if (!m) throw new Unusable(`--header ${JSON.stringify(spec)}: write it as Name=value`);
  return [m[1]!, m[2]!];
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

async function send(values: Values, aggregate: string, id: string, command: string, body?: string): Promise<void> {
  checkToken('aggregate', aggregate, isAggregateName, 'lower case, [a-z][a-z0-9-]*');
  checkToken('id', id, isAggregateId, '1-128 characters of [A-Za-z0-9_-]');
  checkToken('command', command, isMessageName, 'letters and digits, starting with a letter');
  const data = body === '-' ? await readStdin() : (body ?? '{}');
  try {
    JSON.parse(data);
  } catch (e) {
    throw new Unusable(`the command's data must be JSON: ${(e as Error).message}`);
  }
  const h = natsHeaders();
  for (const spec of (values['header'] as string[] | undefined) ?? []) {
    const [k, v] = header(spec);
    h.set(k, v);
  }
  // A command ID of our own unless given: a reply lost to a timeout can then be resent safely.
  const commandId = (values['command-id'] as string | undefined) || h.get(CommandHeader.CommandId) || `cli-${randomUUID()}`;
  h.set(CommandHeader.CommandId, commandId);
  const named: [string, string][] = [
    ['correlation-id', CommandHeader.CorrelationId],
    ['causation-id', CommandHeader.CausationId],
    ['actor', CommandHeader.Actor],
    ['expected-version', CommandHeader.ExpectedVersion],
  ];
  for (const [opt, name] of named) if (values[opt] !== undefined) h.set(name, values[opt] as string);
  const timeout = Number(values['timeout'] ?? 10_000);
  if (!Number.isInteger(timeout) || timeout < 1) throw new Unusable(`--timeout must be a positive number of milliseconds, got ${String(values['timeout'])}`);

  const nc = await natsConnect(values, false);
  const subject = commandSubject(aggregate, id, command);
  try {
    let reply: { ok: boolean; error?: { code: string; message: string; reason?: string } };
    try {
      const m = await nc.request(subject, data, { headers: h, timeout });
      reply = m.json();
    } catch (e) {
      if ((e instanceof RequestError && e.isNoResponders()) || e instanceof NoRespondersError) {
        throw new Unusable(`nothing takes commands on ${subject}: is Strand running on this NATS server?`);
      }
      if (e instanceof TimeoutError || (e as Error).cause instanceof TimeoutError) {
        throw new Unusable(`no reply within ${timeout} ms; the command may still have been carried out: resend it with --command-id ${commandId}`);
      }
      throw new Unusable(`${subject}: ${(e as Error).message}`);
    }
    out.write(`${JSON.stringify(reply, null, 2)}\n`);
    if (!reply.ok) {
      const e = reply.error;
      throw new Refused(`${e?.code ?? 'refused'}${e?.reason ? ` ${e.reason}` : ''}: ${e?.message ?? 'no message'}`);
    }
  } finally {
    await nc.close().catch(() => undefined);
  }
}

interface Envelope {
  type?: string;
  aggregate?: string;
  aggregateId?: string;
  version?: number;
  time?: string;
  actor?: string;
  data?: unknown;
}

async function tail(values: Values): Promise<void> {
  const aggregate = values['aggregate'] as string | undefined;
  const id = values['id'] as string | undefined;
  const type = values['type'] as string | undefined;
  if (aggregate !== undefined) checkToken('--aggregate', aggregate, isAggregateName, 'lower case, [a-z][a-z0-9-]*');
  if (id !== undefined) checkToken('--id', id, isAggregateId, '1-128 characters of [A-Za-z0-9_-]');
  if (type !== undefined) checkToken('--type', type, isMessageName, 'letters and digits, starting with a letter');
  const fromSeq = values['from-seq'] === undefined ? undefined : Number(values['from-seq']);
  if (fromSeq !== undefined && (!Number.isInteger(fromSeq) || fromSeq < 1)) throw new Unusable(`--from-seq must be a stream sequence >= 1, got ${String(values['from-seq'])}`);
  const count = values['count'] === undefined ? undefined : Number(values['count']);
  if (count !== undefined && (!Number.isInteger(count) || count < 1)) throw new Unusable(`--count must be a number >= 1, got ${String(values['count'])}`);
  const stream = (values['stream'] as string | undefined) ?? process.env['STRAND_STREAM'] ?? 'EVENTS';
  const filter = [EVENT_PREFIX, aggregate ?? '*', id ?? '*', type ?? '*'].join('.');

  const nc = await natsConnect(values, true);
  try {
    try {
      await (await jetstreamManager(nc)).streams.info(stream);
    } catch (e) {
      throw new Refused(`stream ${stream}: ${(e as Error).message} (set --stream or STRAND_STREAM)`);
    }
    const consumer = await jetstream(nc).consumers.get(stream, {
      filter_subjects: [filter],
      ...(fromSeq !== undefined ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: fromSeq } : { deliver_policy: DeliverPolicy.New }),
    });
    const messages = await consumer.consume();
    const stop = (): void => void messages.close();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    err.write(`following ${filter} in ${stream} ${fromSeq !== undefined ? `from sequence ${fromSeq}` : 'from now'}${count ? `, ${count} event(s)` : ''} (Ctrl-C stops)\n`);
    let seen = 0;
    for await (const m of messages) {
      let e: Envelope | undefined;
      try {
        e = m.json<Envelope>();
      } catch {
        e = undefined;
      }
      if (values['json']) out.write(`${JSON.stringify(e ? { seq: m.seq, ...e } : { seq: m.seq, subject: m.subject, raw: m.string() })}\n`);
      else if (!e?.type) out.write(`#${m.seq}  ${m.subject}  (not an event envelope: ${m.string().slice(0, 80)})\n`);
      else out.write(`#${m.seq}  ${e.time ?? '-'}  ${e.aggregate}/${e.aggregateId}  v${e.version}  ${e.type}${e.actor ? `  by ${e.actor}` : ''}  ${JSON.stringify(e.data)}\n`);
      if (count !== undefined && ++seen >= count) break;
    }
    process.removeListener('SIGINT', stop);
    process.removeListener('SIGTERM', stop);
  } finally {
    await nc.close().catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------------
// The commands

const help = { help: { type: 'boolean', short: 'h' } } as const satisfies Options;

const commands: readonly Command[] = [
  {
    name: 'send',
    args: '<aggregate> <id> <Command> [<json> | -]',
    summary: 'send a command over NATS and print the reply',
    details: [
      'Requests cmd.<aggregate>.<id>.<Command> with the JSON data given (default {}; - reads it from stdin)',
      'and prints the reply. Exit 0 when it was carried out (or had been: "duplicate": true), 1 when it',
      'was refused (the reply says why), 2 when nothing answered.',
      '',
      '  --header, -H <Name=value>  a header, repeatable (Strand-Actor=user:CC1, Strand-Expected-Version=3, ...)',
      '  --command-id <id>          Strand-Command-Id, the idempotency key (default: a new one, cli-<uuid>)',
      '  --actor <type:id>          Strand-Actor, who issues it',
      '  --correlation-id <id>      Strand-Correlation-Id',
      '  --causation-id <id>        Strand-Causation-Id',
      '  --expected-version <n>     Strand-Expected-Version',
      '  --timeout <ms>             wait this long for the reply (default 10000)',
      NATS_HELP,
      '',
      "Example: strand send task task-1 CreateTask '{\"title\":\"Call member\",\"memberId\":\"M1\",\"assignedTo\":\"CC456\"}' --header Strand-Actor=user:CC100",
    ].join('\n'),
    options: {
      ...natsOption,
      header: { type: 'string', short: 'H', multiple: true },
      'command-id': { type: 'string' },
      actor: { type: 'string' },
      'correlation-id': { type: 'string' },
      'causation-id': { type: 'string' },
      'expected-version': { type: 'string' },
      timeout: { type: 'string' },
    },
    positionals: [3, 4],
    run: ([aggregate, id, command, body], v) => send(v, aggregate!, id!, command!, body),
  },
  {
    name: 'tail',
    args: '',
    summary: 'follow the event stream over NATS, filtered',
    details: [
      'Prints events as they are appended, one line each (#seq time aggregate/id version type actor data),',
      'until Ctrl-C. Reads the stream through an ephemeral ordered consumer: nothing is left behind.',
      '',
      '  --aggregate, -a <name>  only this aggregate',
      '  --id <id>               only this instance',
      '  --type, -t <Event>      only this event type',
      '  --from-seq <n>          start at stream sequence n (1: the whole history) instead of now',
      '  --count, -n <n>         stop after n events',
      '  --json                  one JSON object per event: the envelope and its seq',
      '  --stream <name>         the stream (default: $STRAND_STREAM, else EVENTS)',
      NATS_HELP,
    ].join('\n'),
    options: {
      ...natsOption,
      aggregate: { type: 'string', short: 'a' },
      id: { type: 'string' },
      type: { type: 'string', short: 't' },
      'from-seq': { type: 'string' },
      count: { type: 'string', short: 'n' },
      json: { type: 'boolean' },
      stream: { type: 'string' },
    },
    positionals: [0, 0],
    run: (_, v) => tail(v),
  },
  {
    name: 'inspect',
    args: '<aggregate> <id>',
    summary: "an aggregate instance's state and history, over HTTP",
    details: [
      "Prints the instance's state (GET /aggregates/<aggregate>/<id>) and its events up to that state",
      '(GET /aggregates/<aggregate>/<id>/events): sequence, version, type, time, actor, command ID.',
      '',
      '  --version <n>   the state at version n (time travel)',
      '  --at <time>     the state at an RFC 3339 time with a zone, e.g. 2025-06-01T12:00:00Z',
      '  --json          one JSON object: the state reply and its events',
      HTTP_HELP,
    ].join('\n'),
    options: { ...httpOption, version: { type: 'string' }, at: { type: 'string' }, json: { type: 'boolean' } },
    positionals: [2, 2],
    run: ([aggregate, id], v) => inspect(v, aggregate!, id!),
  },
  {
    name: 'projections',
    args: '',
    summary: 'status of every projection',
    details: [
      'A table: name, version, serving generation, checkpoint, pending, here (applied by this instance),',
      'rebuilding (g<n> at <checkpoint>), deadLetters.',
      '',
      HTTP_HELP,
    ].join('\n'),
    options: httpOption,
    positionals: [0, 0],
    run: (_, v) => showProjections(v),
  },
  {
    name: 'projections rebuild',
    args: '<name>',
    summary: 'rebuild a projection from the start of the stream, with progress',
    details: [
      'Starts a rebuild into a new generation and follows it until that generation serves reads:',
      'a progress bar on stderr when it is a terminal, else a line every 5 s.',
      '',
      HTTP_HELP,
    ].join('\n'),
    options: httpOption,
    positionals: [1, 1],
    run: ([name], v) => rebuild(v, name!),
  },
  {
    name: 'dead-letters',
    args: '<projection>',
    summary: "list a projection's parked events",
    details: ['A table: seq, subject, attempts, parkedAt, error (its first 80 characters).', '', HTTP_HELP].join('\n'),
    options: httpOption,
    positionals: [1, 1],
    run: ([projection], v) => deadLetters(v, projection!),
  },
  {
    name: 'dead-letters retry',
    args: '<projection> <seq>',
    summary: 'apply a parked event again',
    details: ['Exit 1 with RETRY_FAILED when it fails again (the message is its error).', '', HTTP_HELP].join('\n'),
    options: httpOption,
    positionals: [2, 2],
    run: ([projection, seq], v) => retry(v, projection!, seq!),
  },
  {
    name: 'dead-letters discard',
    args: '<projection> <seq>',
    summary: 'remove a parked event for good (it is never applied)',
    details: ['Exit 1 with DEAD_LETTER_NOT_FOUND when the projection has no parked event with that sequence.', '', HTTP_HELP].join('\n'),
    options: httpOption,
    positionals: [2, 2],
    run: ([projection, seq], v) => discard(v, projection!, seq!),
  },
];

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

function overview(): string {
  const width = Math.max(...commands.map((c) => `${c.name} ${c.args}`.trim().length));
  return [
    `strand ${version()}: send commands to, follow and operate a running Strand`,
    '',
    'usage: npm run -s strand -- <command> [options]',
    '',
    ...commands.map((c) => `  ${`${c.name} ${c.args}`.trim().padEnd(width)}  ${c.summary}`),
    `  ${'help [command]'.padEnd(width)}  this text, or a command's`,
    '',
    'Environment: NATS_URL (send, tail), STRAND_URL and STRAND_TOKEN (the HTTP commands), STRAND_STREAM (tail).',
    'Exit codes: 0 done, 1 refused (the reply or the server said no), 2 bad usage or unreachable.',
    "`strand <command> --help` explains one.",
    '',
  ].join('\n');
}

function commandHelp(c: Command): string {
  return `usage: strand ${`${c.name} ${c.args}`.trim()} [options]\n\n${c.summary}.\n\n${c.details}\n`;
}

/** The command named by the first words of argv (the longest match), and the rest. */
function select(argv: string[]): [Command, string[]] | undefined {
  const matches = commands
    .filter((c) => {
      const words = c.name.split(' ');
      return words.every((w, i) => argv[i] === w);
    })
    .sort((a, b) => b.name.length - a.name.length);
  const c = matches[0];
  return c ? [c, argv.slice(c.name.split(' ').length)] : undefined;
}

function usage(problem: string, c?: Command): never {
  throw new Unusable(`${problem}\n${c ? `usage: strand ${`${c.name} ${c.args}`.trim()} [options] (strand ${c.name} --help)` : 'strand help lists the commands'}`);
}

async function main(argv: string[]): Promise<void> {
  const [first, ...rest] = argv;
  if (first === undefined || first === '--help' || first === '-h') {
    out.write(overview());
    return;
  }
  if (first === '--version' || first === '-V' || first === 'version') {
    out.write(`strand ${version()}\n`);
    return;
  }
  if (first === 'help') {
    if (rest.length === 0) {
      out.write(overview());
      return;
    }
    const found = select(rest);
    if (!found || found[1].length > 0) usage(`no command ${rest.join(' ')}`);
    out.write(commandHelp(found[0]));
    return;
  }
  const found = select(argv);
  if (!found) usage(`unknown command: ${argv.join(' ')}`);
  const [c, args] = found;
  let parsed: { values: Values; positionals: string[] };
  try {
    parsed = parseArgs({ args, options: { ...c.options, ...help }, allowPositionals: true, strict: true }) as typeof parsed;
  } catch (e) {
    usage((e as Error).message, c);
  }
  if (parsed.values['help']) {
    out.write(commandHelp(c));
    return;
  }
  const [min, max] = c.positionals;
  if (parsed.positionals.length < min || parsed.positionals.length > max) {
    const n = parsed.positionals.length;
    usage(n < min ? `${c.name}: missing ${c.args.split(' ').slice(n, min).join(' ')}` : `${c.name}: unexpected ${parsed.positionals.slice(max).join(' ')}`, c);
  }
  await c.run(parsed.positionals, parsed.values);
}

// exitCode, not exit(): output still on its way to a pipe is written before the process ends.
main(process.argv.slice(2)).then(
  () => (process.exitCode = 0),
  (e: unknown) => {
    err.write(`strand: ${e instanceof Refused || e instanceof Unusable ? e.message : e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = e instanceof Refused ? 1 : 2;
  },
);
