/** A WebSocket client for tests of `/live`: collects messages and keeps a copy of each view subscription. */
import { WebSocket } from 'ws';
import type { ServerMessage } from '../../src/live/protocol.js';

export class LiveClient {
  readonly messages: ServerMessage[] = [];
  /** Per subscription: rows by key, as the protocol says to maintain them. */
  readonly copies = new Map<string, Map<string, Record<string, unknown>>>();
  /** Per subscription: the last version (checkpoint) seen: what to resume after. */
  readonly versions = new Map<string, number>();
  closed: { code: number; reason: string } | undefined;
  private waiters: (() => void)[] = [];

  private constructor(
    readonly ws: WebSocket,
    private readonly keyOf: (sub: string) => string,
  ) {
    ws.on('message', (data) => {
      const m = JSON.parse(data.toString()) as ServerMessage;
      this.messages.push(m);
      this.apply(m);
      for (const w of this.waiters.splice(0)) w();
    });
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      for (const w of this.waiters.splice(0)) w();
    });
  }

  static connect(url: string, opts: { token?: string; keyOf?: (sub: string) => string; headers?: Record<string, string>; autoPong?: boolean } = {}): Promise<LiveClient> {
    const headers = { ...(opts.headers ?? {}), ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}) };
    const ws = new WebSocket(url, { headers, autoPong: opts.autoPong ?? true });
    const client = new LiveClient(ws, opts.keyOf ?? (() => 'taskId'));
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(client));
      ws.once('error', reject);
      ws.once('close', () => resolve(client));
    });
  }

  send(m: unknown): void {
    this.ws.send(typeof m === 'string' ? m : JSON.stringify(m));
  }

  private apply(m: ServerMessage): void {
    if (m.type === 'snapshot') {
      const rows = new Map<string, Record<string, unknown>>();
      for (const r of m.rows) rows.set(String(r[this.keyOf(m.sub)]), r);
      this.copies.set(m.sub, rows);
      this.versions.set(m.sub, m.checkpoint);
    } else if (m.type === 'resumed') {
      if (!this.copies.has(m.sub)) this.copies.set(m.sub, new Map());
      this.versions.set(m.sub, m.after);
    } else if (m.type === 'change') {
      const copy = this.copies.get(m.sub) ?? new Map();
      this.copies.set(m.sub, copy);
      const before = this.versions.get(m.sub) ?? 0;
      if (m.version <= before) throw new Error(`change ${m.version} is not after ${before}: a duplicate or out of order`);
      for (const c of m.changes) {
        if (c.op === 'upsert') copy.set(String(c.key), c.row!);
        else copy.delete(String(c.key));
      }
      this.versions.set(m.sub, m.version);
    }
  }

  /** Waits until `check` holds for the messages received, or fails after `ms`. */
  async until(check: (c: LiveClient) => boolean, what: string, ms = 5000): Promise<void> {
    const end = Date.now() + ms;
    while (!check(this)) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}; last messages: ${JSON.stringify(this.messages.slice(-3))}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(1, end - Date.now()));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  of<T extends ServerMessage['type']>(type: T): Extract<ServerMessage, { type: T }>[] {
    return this.messages.filter((m) => m.type === type) as Extract<ServerMessage, { type: T }>[];
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((r) => {
      this.ws.once('close', () => r());
      this.ws.close();
    });
  }
}
