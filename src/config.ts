import { z } from 'zod';
import { badNatsServer, natsServers } from './nats/connect.js';

const bool = z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1');
const int = (min: number, max = Number.MAX_SAFE_INTEGER) => z.coerce.number().int().min(min).max(max);

/**
 * Every setting, read from the environment and validated at start. docs/configuration.md
 * lists them; a bad value stops the program with a message naming the variable.
 */
export const ConfigSchema = z.object({
  NATS_URL: z
    .string()
    .min(1)
    .superRefine((v, ctx) => {
      const servers = natsServers(v);
      if (servers.length === 0) ctx.addIssue({ code: 'custom', message: 'names no server' });
      for (const s of servers) {
        const bad = badNatsServer(s);
        if (bad) ctx.addIssue({ code: 'custom', message: bad });
      }
    })
    .optional(),
  NATS_USER: z.string().min(1).optional(),
  NATS_PASSWORD: z.string().min(1).optional(),
  DATABASE_URL: z.string().min(1).optional(),
  PORT: int(0, 65535).default(3000),
  HOST: z.string().min(1).default('127.0.0.1'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  STRAND_DATA_DIR: z.string().min(1).default('.strand'),
  NATS_PORT: int(0, 65535).default(0),
  PG_PORT: int(0, 65535).default(0),
  NATS_SYNC: z.enum(['always', 'default']).default('always'),
  STRAND_STREAM: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'letters, digits, _ and - only').default('EVENTS'),
  STRAND_STREAM_REPLICAS: z.coerce.number().int().refine((n) => [1, 3, 5].includes(n), 'must be 1, 3 or 5').default(1),
  STRAND_DUPLICATE_WINDOW_MS: int(1000).default(120_000),
  STRAND_SNAPSHOT_EVERY: int(0).default(100),
  STRAND_MAX_ACTORS: int(1).default(100_000),
  STRAND_ACTOR_MEMORY_MB: int(0, 1_048_576).default(512),
  STRAND_ACTOR_IDLE_MS: int(100).default(600_000),
  STRAND_MAILBOX_LIMIT: int(1).default(1024),
  STRAND_CONFLICT_RETRIES: int(0, 100).default(5),
  STRAND_MAX_COMMAND_BYTES: int(1).default(65_536),
  STRAND_MAX_IN_FLIGHT: int(1).default(10_000),
  STRAND_STORE_TIMEOUT_MS: int(100).default(5_000),
  STRAND_DRAIN_TIMEOUT_MS: int(0).default(15_000),
  STRAND_QUEUE_GROUP: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/).default('strand'),
  STRAND_VALIDATE_EVENTS: bool.default(true),
  STRAND_PROJECTION_BATCH_SIZE: int(1, 10_000).default(500),
  STRAND_PROJECTION_BATCH_MS: int(0, 60_000).default(20),
  STRAND_PROJECTION_LIVE_BATCH_MS: int(0, 1_000).default(5),
  STRAND_PROJECTION_MAX_ATTEMPTS: int(1, 100).default(3),
  STRAND_PROJECTION_COMMIT: z.enum(['async', 'sync']).default('async'),
  STRAND_PROJECTION_STANDBY_MS: int(100).default(5_000),
  STRAND_READ_SIDE_THREAD: bool.default(true),
  STRAND_MIN_SEQ_WAIT_MS: int(0, 120_000).default(5_000),
  STRAND_PG_POOL_SIZE: int(1, 1000).default(10),
  NODE_ENV: z.string().default('development'),
  STRAND_AUTH: z.enum(['dev', 'jwt']).optional(),
  STRAND_JWT_SECRET: z.string().min(32, 'an HS256 secret needs at least 32 characters').optional(),
  STRAND_JWT_PUBLIC_KEY: z.string().min(1).optional(),
  STRAND_JWT_ISSUER: z.string().min(1).optional(),
  STRAND_JWT_AUDIENCE: z.string().min(1).optional(),
  STRAND_WS_MAX_SUBSCRIPTIONS: int(1, 10_000).default(100),
  STRAND_WS_MAX_MESSAGE_BYTES: int(256, 1_048_576).default(16_384),
  STRAND_WS_RATE: int(1, 100_000).default(50),
  STRAND_WS_SEND_QUEUE_BYTES: int(1024).default(1_048_576),
  STRAND_WS_MAX_PENDING: int(1).default(10_000),
  STRAND_WS_HEARTBEAT_MS: int(1000).default(30_000),
  STRAND_LIVE_BUFFER: int(0).default(10_000),
  STRAND_PARTITIONS: int(1, 4096).default(64),
  STRAND_HEARTBEAT_MS: int(100, 60_000).default(1000),
  STRAND_MEMBER_TTL_MS: int(300, 600_000).default(3000),
  STRAND_OWNER_WAIT_MS: int(0, 120_000).default(5000),
  STRAND_HANDOFF_WAIT_MS: int(0, 120_000).default(2000),
  STRAND_PARTITION_BUFFER: int(1).default(10_000),
  STRAND_DURABLE_INTAKE: bool.default(false),
  STRAND_OUTCOME_TTL_MS: int(1000).default(86_400_000),
  STRAND_INTAKE_MAX_PENDING: int(1, 100_000).default(128),
  STRAND_INTAKE_ACK_WAIT_MS: int(1000, 3_600_000).default(30_000),
  STRAND_DEADLINES: bool.default(false),
  STRAND_TASK_OVERDUE_MS: int(100).default(172_800_000),
  STRAND_ROLES: z
    .string()
    .transform((s) => s.split(',').map((r) => r.trim()).filter(Boolean))
    .pipe(z.array(z.enum(['commands', 'projections', 'processes'])).min(1))
    .default(['commands', 'projections', 'processes']),
  STRAND_PROCESS_MAX_ATTEMPTS: int(1, 1000).default(5),
  STRAND_PROCESS_ACK_WAIT_MS: int(1000, 3_600_000).default(30_000),
  STRAND_PROCESS_MAX_PENDING: int(1, 100_000).default(256),
  STRAND_PROCESS_COMMAND_TIMEOUT_MS: int(100, 600_000).default(10_000),
  STRAND_PROCESS_PIN_TTL_MS: int(1000, 600_000).default(5_000),
});

export type Config = z.infer<typeof ConfigSchema>;

/** Bad configuration: the message names every offending variable. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** Reads the configuration; empty variables count as unset. */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const input: Record<string, string> = {};
  for (const key of Object.keys(ConfigSchema.shape)) {
    const v = env[key];
    if (v !== undefined && v !== '') input[key] = v;
  }
  const r = ConfigSchema.superRefine((c, ctx) => {
    // A member must be able to miss a heartbeat without being declared dead.
    if (c.STRAND_MEMBER_TTL_MS < 2 * c.STRAND_HEARTBEAT_MS) {
      ctx.addIssue({ code: 'custom', path: ['STRAND_MEMBER_TTL_MS'], message: `must be at least twice STRAND_HEARTBEAT_MS (${c.STRAND_HEARTBEAT_MS})` });
    }
    if ((c.NATS_USER === undefined) !== (c.NATS_PASSWORD === undefined)) {
      ctx.addIssue({ code: 'custom', path: [c.NATS_USER === undefined ? 'NATS_PASSWORD' : 'NATS_USER'], message: 'set NATS_USER and NATS_PASSWORD together' });
    }
  }).safeParse(input);
  if (!r.success) {
    const lines = r.error.issues.map((i) => `  ${i.path.join('.')}=${JSON.stringify(input[String(i.path[0])] ?? '')}: ${i.message}`);
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`);
  }
  return r.data;
}
