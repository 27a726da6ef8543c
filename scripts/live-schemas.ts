/**
 * Generates docs/live-schemas.json: the JSON Schema (draft 2020-12) of every message of the
 * `/live` WebSocket protocol, from the zod schemas in src/live/protocol.ts.
 *
 *   npx tsx scripts/live-schemas.ts
 *
 * Client messages are described as the server accepts them (`io: 'input'`), server messages as
 * the server sends them (`io: 'output'`). test/docs.unit.test.ts imports `liveSchemas()` and
 * fails when docs/live-schemas.json differs from it, so rerun this after changing protocol.ts.
 * Importing this module only defines the functions; the file is written only when it is run.
 */
import { writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import {
  ChangeMessage,
  ClientMessage,
  ErrorMessage,
  EventMessage,
  Ping,
  PongMessage,
  ResumedMessage,
  ServerMessage,
  SnapshotMessage,
  StateMessage,
  SubscribeAggregate,
  SubscribeView,
  Unsubscribe,
  UnsubscribedMessage,
} from '../src/live/protocol.js';

/** Where the generated schemas are written. */
export const LIVE_SCHEMAS_FILE = fileURLToPath(new URL('../docs/live-schemas.json', import.meta.url));

/** What a client sends, by the name of its schema in protocol.ts (`ClientMessage`: any of them). */
const CLIENT = { SubscribeView, SubscribeAggregate, Unsubscribe, Ping, ClientMessage } as const;

/** What the server sends, by the name of its schema in protocol.ts (`ServerMessage`: any of them). */
const SERVER = {
  SnapshotMessage,
  ResumedMessage,
  ChangeMessage,
  StateMessage,
  EventMessage,
  UnsubscribedMessage,
  PongMessage,
  ErrorMessage,
  ServerMessage,
} as const;

/** The JSON Schema of every protocol message, keyed by the name of its zod schema. */
export function liveSchemas(): Record<string, Record<string, unknown>> {
  const out: Record<string, Record<string, unknown>> = {};
  for (const [name, schema] of Object.entries(CLIENT)) out[name] = z.toJSONSchema(schema, { io: 'input' }) as Record<string, unknown>;
  for (const [name, schema] of Object.entries(SERVER)) out[name] = z.toJSONSchema(schema, { io: 'output' }) as Record<string, unknown>;
  return out;
}

/** The text of docs/live-schemas.json. */
export function renderLiveSchemas(): string {
  return `${JSON.stringify(liveSchemas(), null, 2)}\n`;
}

const invoked = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (invoked) {
  writeFileSync(LIVE_SCHEMAS_FILE, renderLiveSchemas());
  process.stdout.write(`wrote ${LIVE_SCHEMAS_FILE}\n`);
}
