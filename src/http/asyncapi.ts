import type { FastifyPluginAsync } from 'fastify';
import type { Aggregate } from '../aggregate/define.js';
import { CommandHeader, EventHeader, JetStreamHeader, OUTCOME_REQUEST, commandStreamName, commandSubject, durableCommandSubject, eventSubject } from '../../subjects/index.js';
import {
  CommandOutcomeSchema,
  CommandReplySchema,
  EXPECTED_VERSION_PATTERN,
  ID_PATTERN,
  ISSUER_PATTERN,
  TRACE_ID_PATTERN,
  envelopeOf,
  jsonSchema,
  releaseVersion,
} from './contract.js';
import type { ApiDeps } from './server.js';

type Obj = Record<string, unknown>;

const ref = (path: string): Obj => ({ $ref: path });

/** The optional headers of a command (all transports). */
function commandHeadersSchema(): Obj {
  return {
    type: 'object',
    description: 'All optional; header names are case-sensitive on NATS; an empty value counts as absent',
    properties: {
      [CommandHeader.CommandId]: { type: 'string', pattern: TRACE_ID_PATTERN, description: 'Idempotency key: the same command ID produces its events once; the repeat is answered with duplicate: true' },
      [CommandHeader.CorrelationId]: { type: 'string', pattern: TRACE_ID_PATTERN, description: "Copied to the events' metadata.correlationId (default: the command ID)" },
      [CommandHeader.CausationId]: { type: 'string', pattern: TRACE_ID_PATTERN, description: "Copied to the events' metadata.causationId" },
      [CommandHeader.Actor]: { type: 'string', pattern: ISSUER_PATTERN, description: 'Who issues the command: <type>:<id>' },
      [CommandHeader.ExpectedVersion]: { type: 'string', pattern: EXPECTED_VERSION_PATTERN, description: 'Reject with WRONG_VERSION unless the aggregate is at this version' },
    },
  };
}

function eventHeadersSchema(type: string): Obj {
  return {
    type: 'object',
    required: [JetStreamHeader.MsgId, EventHeader.EventType, EventHeader.Version],
    properties: {
      [JetStreamHeader.MsgId]: { type: 'string', description: "The envelope's id: JetStream drops a republished duplicate within the duplicate window" },
      [EventHeader.EventType]: { type: 'string', const: type, description: 'The event type, to route without parsing the body' },
      [EventHeader.Version]: { type: 'string', pattern: '^[1-9][0-9]*$', description: "The aggregate's version after the event (the envelope's version)" },
    },
  };
}

/**
 * The NATS contract as an AsyncAPI 3.0.0 document: one channel per command subject
 * (`cmd.<aggregate>.{id}.<Command>`, received, replied to on the request's reply subject) and
 * one per event subject (`evt.<aggregate>.{id}.<EventType>`, sent to the JetStream stream).
 * Schemas are JSON Schema draft-07, AsyncAPI's default schema format.
 */
/**
 * AsyncAPI `servers` for the NATS URL(s) Strand is connected to (NATS_URL, a comma-separated
 * list, or the embedded server's), credentials left out. Without one: a `host` variable.
 */
export function asyncApiServers(natsUrl: string | undefined): Obj {
  const description = 'nats-server 2.12 or newer with JetStream (NATS_URL)';
  const hosts = (natsUrl ?? '')
    .split(',')
    .map((u) => u.trim())
    .filter((u) => u !== '')
    .map((u) => {
      try {
        // A bare host:port is how nats.js also accepts a server.
        const url = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(u) ? u : `nats://${u}`);
        return url.host ? `${url.hostname}:${url.port || '4222'}` : undefined;
      } catch {
        return undefined;
      }
    })
    .filter((h): h is string => h !== undefined);
  if (hosts.length === 0) {
    return { nats: { host: '{host}', protocol: 'nats', description, variables: { host: { default: 'localhost:4222', description: 'host:port of the NATS server' } } } };
  }
  const servers: Obj = {};
  hosts.forEach((host, i) => (servers[i === 0 ? 'nats' : `nats-${i + 1}`] = { host, protocol: 'nats', description }));
  return servers;
}

export function buildAsyncApi(aggregates: ReadonlyMap<string, Aggregate>, stream: string, natsUrl?: string): Obj {
  const channels: Obj = {};
  const operations: Obj = {};
  const messages: Obj = {};

  messages['CommandReply'] = {
    name: 'CommandReply',
    title: 'Command reply',
    summary: '{ok:true,...} when the command was carried out (or had been: duplicate), else {ok:false,error:{code,message,reason?,details?}}',
    contentType: 'application/json',
    payload: ref('#/components/schemas/CommandReply'),
  };
  channels['commandReply'] = {
    address: null,
    title: 'Command replies',
    description: "The command request's reply subject (an inbox the sender chose). A command sent without one is still carried out, unanswered.",
    messages: { CommandReply: ref('#/components/messages/CommandReply') },
  };

  messages['OutcomeRequest'] = {
    name: 'OutcomeRequest',
    title: 'Outcome request',
    summary: 'The command ID of a durable command, as the body (plain text)',
    contentType: 'text/plain',
    payload: { type: 'string', pattern: TRACE_ID_PATTERN },
  };
  messages['OutcomeReply'] = {
    name: 'OutcomeReply',
    title: 'Outcome of a durable command',
    summary: 'The outcome as recorded, or {ok:false,error:{code:"OUTCOME_NOT_FOUND",...}} while there is none',
    contentType: 'application/json',
    payload: { oneOf: [ref('#/components/schemas/CommandOutcome'), ref('#/components/schemas/CommandReply')] },
  };
  channels['outcomeReply'] = {
    address: null,
    title: 'Outcome replies',
    description: "The outcome request's reply subject (an inbox the sender chose).",
    messages: { OutcomeReply: ref('#/components/messages/OutcomeReply') },
  };
  channels[OUTCOME_REQUEST] = {
    address: OUTCOME_REQUEST,
    title: 'Outcome of a durable command',
    description: 'Request-reply: the body is a command ID; any instance answers (queue group) from the outcome bucket.',
    messages: { OutcomeRequest: ref('#/components/messages/OutcomeRequest') },
  };
  operations[OUTCOME_REQUEST] = {
    action: 'receive',
    title: 'Read the outcome of a durable command',
    channel: ref(`#/channels/${OUTCOME_REQUEST}`),
    messages: [ref(`#/channels/${OUTCOME_REQUEST}/messages/OutcomeRequest`)],
    reply: { channel: ref('#/channels/outcomeReply'), messages: [ref('#/channels/outcomeReply/messages/OutcomeReply')] },
  };

  for (const a of aggregates.values()) {
    for (const [command, schema] of a.commands) {
      const id = `cmd.${a.name}.${command}`;
      messages[id] = {
        name: command,
        title: `${a.name} ${command}`,
        contentType: 'application/json',
        headers: ref('#/components/schemas/CommandHeaders'),
        correlationId: { description: 'Strand-Correlation-Id', location: `$message.header#/${CommandHeader.CorrelationId}` },
        payload: jsonSchema(schema, { io: 'input', target: 'draft-7' }),
      };
      channels[id] = {
        address: commandSubject(a.name, '{id}', command),
        title: `${a.name} ${command}`,
        parameters: { id: ref('#/components/parameters/id') },
        messages: { [command]: ref(`#/components/messages/${id}`) },
      };
      operations[id] = {
        action: 'receive',
        title: `Take ${a.name} ${command}`,
        summary: `Strand decides ${command} on the ${a.name} instance and replies (queue group: every instance shares the work)`,
        channel: ref(`#/channels/${id}`),
        messages: [ref(`#/channels/${id}/messages/${command}`)],
        reply: { channel: ref('#/channels/commandReply'), messages: [ref('#/channels/commandReply/messages/CommandReply')] },
      };
      const durable = `cmdq.${a.name}.${command}`;
      channels[durable] = {
        address: durableCommandSubject(a.name, '{id}', command),
        title: `${a.name} ${command} (durable)`,
        description: `With STRAND_DURABLE_INTAKE=true: stored in the JetStream stream ${commandStreamName(stream)} (publish with JetStream; the PubAck says it is stored) until the owner of its partition has processed it, exactly once, even if no instance runs at publish time. No reply: read its outcome by command ID on ${OUTCOME_REQUEST} or GET /commands/{commandId}.`,
        parameters: { id: ref('#/components/parameters/id') },
        messages: { [command]: ref(`#/components/messages/${id}`) },
      };
      operations[durable] = {
        action: 'receive',
        title: `Take ${a.name} ${command} durably`,
        summary: `The partition's owner decides ${command} on the ${a.name} instance and records its outcome under the command ID (Strand-Command-Id, else cmdq-<stream sequence>)`,
        channel: ref(`#/channels/${durable}`),
        messages: [ref(`#/channels/${durable}/messages/${command}`)],
      };
    }
    for (const [type, ev] of a.events) {
      const id = `evt.${a.name}.${type}`;
      messages[id] = {
        name: type,
        title: `${a.name} ${type}`,
        summary: `Schema version ${ev.version}`,
        contentType: 'application/json',
        headers: eventHeadersSchema(type),
        payload: envelopeOf(a, type, 'draft-7'),
      };
      channels[id] = {
        address: eventSubject(a.name, '{id}', type),
        title: `${a.name} ${type}`,
        description: `Stored in the JetStream stream ${stream}; history is never deleted. Subscribe with a JetStream consumer (e.g. filter evt.${a.name}.>).`,
        parameters: { id: ref('#/components/parameters/id') },
        messages: { [type]: ref(`#/components/messages/${id}`) },
      };
      operations[id] = {
        action: 'send',
        title: `Append ${a.name} ${type}`,
        summary: `Strand appends ${type} under the instance's expected last sequence; all events of one command commit atomically`,
        channel: ref(`#/channels/${id}`),
        messages: [ref(`#/channels/${id}/messages/${type}`)],
      };
    }
  }

  return {
    asyncapi: '3.0.0',
    info: {
      title: 'Strand NATS contract',
      version: releaseVersion(),
      description: 'Commands on cmd.<aggregate>.<id>.<Command> (request-reply) or, durably, cmdq.<aggregate>.<id>.<Command> (a JetStream stream; outcomes on strand.outcome.get); events on evt.<aggregate>.<id>.<EventType> in a JetStream stream. See docs/contract.md.',
    },
    defaultContentType: 'application/json',
    servers: asyncApiServers(natsUrl),
    channels,
    operations,
    components: {
      schemas: {
        CommandReply: jsonSchema(CommandReplySchema, { target: 'draft-7' }),
        CommandOutcome: jsonSchema(CommandOutcomeSchema, { target: 'draft-7' }),
        CommandHeaders: commandHeadersSchema(),
      },
      parameters: {
        id: { description: 'Aggregate instance ID: 1-128 characters of [A-Za-z0-9_-] (one subject token)', examples: ['task-789'], 'x-pattern': ID_PATTERN },
      },
      messages,
    },
  };
}

/** `GET /asyncapi.json` */
export const asyncApiRoute: FastifyPluginAsync<{ api: ApiDeps }> = async (app, { api }) => {
  // Built on first use, not at start: converting every schema takes a noticeable fraction of a second.
  let doc: Obj | undefined;
  app.get('/asyncapi.json', async () => (doc ??= buildAsyncApi(api.aggregates, api.stream, api.natsUrl)));
};
