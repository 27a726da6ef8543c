import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';

export interface LoggerOptions {
  /**
   * Human-readable lines (pino-pretty) instead of JSON. Default: when stdout is a terminal, so a
   * person at `npm start` reads prose while a pipe, a file or a log collector gets JSON lines.
   */
  pretty?: boolean;
}

/** The process logger on stdout, level from configuration: JSON lines, or pretty ones on a terminal. */
export function createLogger(level: string, opts: LoggerOptions = {}): Logger {
  const options = { level, base: { service: 'strand' }, timestamp: pino.stdTimeFunctions.isoTime };
  if (!(opts.pretty ?? process.stdout.isTTY === true)) return pino(options);
  // In this thread and synchronous rather than as a worker transport: a line written just before
  // process.exit() (the fatal line of a refused start, the final `stopped`) is never lost, and a
  // terminal's throughput is no concern.
  const stream = pretty({
    sync: true,
    translateTime: 'SYS:HH:MM:ss.l',
    ignore: 'service,component',
    messageFormat: '{if component}[{component}] {end}{msg}',
    singleLine: true,
    errorLikeObjectKeys: ['err', 'error'],
  });
  return pino(options, stream);
}

export type { Logger };
