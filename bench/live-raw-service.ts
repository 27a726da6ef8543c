/**
 * The raw baselines of bench/live.bench.ts: a trivial WebSocket server on `/live` (the `ws`
 * package on a bare node:http server), speaking just enough of Strand's live protocol for the
 * benchmark's clients. Deliberately self-contained: it imports nothing from src/.
 *
 * Client messages: `{"type":"subscribe","id","view","filter":{"assignedTo"}}` or
 * `{…,"key"}`; each gets a `snapshot` (no rows for a filter, one made-up row for a key; rows
 * are built per reply and not kept). Pings every HEARTBEAT_MS (default 30,000, Strand's
 * default), terminating a client that did not answer the previous one, as Strand does.
 *
 * RAW_LIVE_MODE:
 *  - `bare` (default): nothing else. The memory baseline: a process holding the connections.
 *  - `relay`: also the command path's stand-in, on core NATS (NATS_URL): a request on
 *    `rawcmd.<id>.CreateTask` with body `{"title","memberId","assignedTo"}` is answered
 *    `{"ok":true}` at once and the row is published on the core subject `rawlive.task`; this
 *    process's own subscription to that subject sends `{"type":"change","sub","version",
 *    "changes":[{"op":"upsert","key","row"}]}` to each connection subscribed with that
 *    `assignedTo` (one JSON.stringify per connection, as Strand's gateway does). So the change
 *    takes one hop through nats-server, like Strand's `strand.live.<projection>` feed, and the
 *    fan-out is an index lookup: the least a NATS -> WebSocket relay can do.
 *
 * Env: PORT (default 0), HOST (127.0.0.1), RAW_LIVE_MODE, NATS_URL (relay), HEARTBEAT_MS.
 * Prints `ready port=<port>` on stdout; SIGTERM closes everything and exits.
 */
import http from 'node:http';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { WebSocket, WebSocketServer, type RawData } from 'ws';

const mode = process.env['RAW_LIVE_MODE'] ?? 'bare';
if (mode !== 'bare' && mode !== 'relay') {
  process.stderr.write(`live-raw-service: RAW_LIVE_MODE must be bare or relay, got ${mode}\n`);
  process.exit(2);
}
const heartbeatMs = Number(process.env['HEARTBEAT_MS'] ?? 30_000);

interface Entry {
  readonly c: Client;
  readonly sub: string;
  readonly who: string;
}

interface Client {
  readonly ws: WebSocket;
  alive: boolean;
  /** Its filtered subscriptions, as indexed in `byAssignee`. */
  readonly entries: Entry[];
}

const clients = new Set<Client>();
/** assignedTo -> the (client, sub id) pairs subscribed to it. */
const byAssignee = new Map<string, Set<Entry>>();

const server = http.createServer((_req, res) => {
  res.writeHead(404).end();
});
const wss = new WebSocketServer({ noServer: true, maxPayload: 1_048_576 });
server.on('upgrade', (req, socket, head) => {
  if ((req.url ?? '').split('?')[0] !== '/live') {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => accept(ws));
});

function accept(ws: WebSocket): void {
  const c: Client = { ws, alive: true, entries: [] };
  clients.add(c);
  ws.on('pong', () => (c.alive = true));
  ws.on('message', (data: RawData) => onMessage(c, data));
  const drop = (): void => {
    if (!clients.delete(c)) return;
    for (const e of c.entries) byAssignee.get(e.who)?.delete(e);
  };
  ws.on('close', drop);
  ws.on('error', drop);
}

function onMessage(c: Client, data: RawData): void {
  let m: { type?: string; id?: string; view?: string; key?: string | number; filter?: Record<string, string> };
  try {
    m = JSON.parse(String(data)) as typeof m;
  } catch {
    return;
  }
  if (m.type !== 'subscribe' || typeof m.id !== 'string') return;
  if (m.key !== undefined) {
    const row = { taskId: String(m.key), title: `Task ${m.key}`, description: null, status: 'pending', assignedTo: 'idle', memberId: 'M1', createdAt: new Date().toISOString(), completedAt: null, completedBy: null, cancelReason: null, version: 1 };
    c.ws.send(JSON.stringify({ type: 'snapshot', sub: m.id, view: m.view, checkpoint: 0, rows: [row], complete: true, fresh: false }));
    return;
  }
  const who = m.filter?.['assignedTo'] ?? '';
  const entry: Entry = { c, sub: m.id, who };
  c.entries.push(entry);
  let set = byAssignee.get(who);
  if (!set) byAssignee.set(who, (set = new Set()));
  set.add(entry);
  c.ws.send(JSON.stringify({ type: 'snapshot', sub: m.id, view: m.view, checkpoint: 0, rows: [], complete: true, fresh: false }));
}

const heartbeat = setInterval(() => {
  for (const c of clients) {
    if (!c.alive) {
      c.ws.terminate();
      continue;
    }
    c.alive = false;
    try {
      c.ws.ping();
    } catch {
      // closing already
    }
  }
}, heartbeatMs);
heartbeat.unref();

let nc: NatsConnection | undefined;
if (mode === 'relay') {
  const url = process.env['NATS_URL'];
  if (!url) {
    process.stderr.write('live-raw-service: NATS_URL is required in relay mode\n');
    process.exit(2);
  }
  nc = await connect({ servers: url, name: 'live-raw-relay', noAsyncTraces: true });
  const conn = nc;
  let version = 0;
  conn.subscribe('rawlive.task', {
    callback: (err, msg) => {
      if (err) return;
      const row = msg.json<{ taskId: string; assignedTo: string }>();
      const subs = byAssignee.get(row.assignedTo);
      if (!subs) return;
      const v = ++version;
      for (const { c, sub } of subs) c.ws.send(JSON.stringify({ type: 'change', sub, version: v, changes: [{ op: 'upsert', key: row.taskId, row }] }));
    },
  });
  conn.subscribe('rawcmd.*.CreateTask', {
    callback: (err, msg) => {
      if (err) return;
      const id = msg.subject.split('.')[1]!;
      const cmd = msg.json<{ title: string; memberId: string; assignedTo: string }>();
      msg.respond('{"ok":true}');
      const now = new Date().toISOString();
      conn.publish(
        'rawlive.task',
        JSON.stringify({ taskId: id, title: cmd.title, description: null, status: 'pending', assignedTo: cmd.assignedTo, memberId: cmd.memberId, createdAt: now, completedAt: null, completedBy: null, cancelReason: null, version: 1 }),
      );
    },
  });
  await conn.flush();
}

await new Promise<void>((resolve) => server.listen(Number(process.env['PORT'] ?? 0), process.env['HOST'] ?? '127.0.0.1', resolve));
const address = server.address();
process.stdout.write(`ready port=${typeof address === 'object' && address ? address.port : '?'}\n`);

let stopping = false;
async function shutdown(): Promise<void> {
  if (stopping) return;
  stopping = true;
  clearInterval(heartbeat);
  for (const c of clients) c.ws.terminate();
  await new Promise<void>((r) => wss.close(() => r()));
  await new Promise<void>((r) => server.close(() => r()));
  await nc?.drain().catch(() => undefined);
  process.exit(0);
}
process.on('SIGTERM', () => void shutdown());
process.on('SIGINT', () => void shutdown());
