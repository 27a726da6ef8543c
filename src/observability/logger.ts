import pino, { type Logger } from 'pino';

/** The process logger: JSON lines on stdout, level from configuration. */
export function createLogger(level: string): Logger {
  return pino({ level, base: { service: 'strand' }, timestamp: pino.stdTimeFunctions.isoTime });
}

export type { Logger };
