/**
 * The raw baseline of bench/commands.bench.ts: the command loop with no framework.
 *
 *   request on rawcmd.<id>.<Command>
 *     -> JetStream publish on rawevt.<id>.E with Nats-Msg-Id and the expected last subject
 *        sequence of rawevt.<id>.* (tracked in a Map, 0 at first)
 *     -> reply {"ok":true,"seq":N}
 *
 * The publish ack is awaited the lean way (one wildcard reply subscription, a pending map keyed
 * by a counter in the reply subject, no per-request timer). No parsing, no validation, no
 * envelope: the event body is the command body as received. Deliberately self-contained: it
 * imports nothing from src/.
 *
 * Env: NATS_URL (required). Prints "ready" on stdout once subscribed; SIGTERM drains and exits.
 */
import { connect } from '@nats-io/transport-node';
import { headers, nuid, type Msg } from '@nats-io/nats-core';

const url = process.env['NATS_URL'];
if (!url) {
  process.stderr.write('raw-service: NATS_URL is required\n');
  process.exit(2);
}

const nc = await connect({ servers: url, name: 'raw-service', noAsyncTraces: true });
const encoder = new TextEncoder();
const decoder = new TextDecoder();

const lastSeq = new Map<string, number>();
const inboxPrefix = `_INBOX.${nuid.next()}.`;
const waiting = new Map<number, { cmd: Msg; id: string }>();
let nextId = 1;

nc.subscribe(`${inboxPrefix}*`, {
  callback: (err, ack) => {
    if (err) return;
    const n = Number(ack.subject.slice(inboxPrefix.length));
    const w = waiting.get(n);
    if (!w) return;
    waiting.delete(n);
    let reply: string;
    if (ack.headers?.code === 503) {
      reply = '{"ok":false,"error":{"code":"UNAVAILABLE","message":"no responders"}}';
    } else {
      const a = JSON.parse(decoder.decode(ack.data)) as { seq?: number; error?: { err_code?: number; description?: string } };
      if (a.error || a.seq === undefined) {
        reply = JSON.stringify({ ok: false, error: { code: 'STORE', message: `${a.error?.description ?? 'no seq'} (${a.error?.err_code ?? 0})` } });
      } else {
        lastSeq.set(w.id, a.seq);
        reply = `{"ok":true,"seq":${a.seq}}`;
      }
    }
    if (w.cmd.reply) w.cmd.respond(encoder.encode(reply));
  },
});

const sub = nc.subscribe('rawcmd.>', {
  queue: 'raw',
  callback: (err, cmd) => {
    if (err) return;
    // rawcmd.<id>.<Command>
    const s = cmd.subject;
    const a = s.indexOf('.') + 1;
    const b = s.indexOf('.', a);
    const id = b < 0 ? s.slice(a) : s.slice(a, b);
    const h = headers();
    h.set('Nats-Msg-Id', nuid.next());
    h.set('Nats-Expected-Last-Subject-Sequence', String(lastSeq.get(id) ?? 0));
    h.set('Nats-Expected-Last-Subject-Sequence-Subject', `rawevt.${id}.*`);
    const n = nextId++;
    waiting.set(n, { cmd, id });
    nc.publish(`rawevt.${id}.E`, cmd.data, { reply: inboxPrefix + n, headers: h });
  },
});

await nc.flush();
process.stdout.write('ready\n');

let stopping = false;
const stop = async (): Promise<void> => {
  if (stopping) return;
  stopping = true;
  await sub.drain().catch(() => undefined);
  const end = Date.now() + 5_000;
  while (waiting.size > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  await nc.drain().catch(() => undefined);
  process.exit(0);
};
process.on('SIGTERM', () => void stop());
process.on('SIGINT', () => void stop());
