import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * JSON logs to stdout (journald keeps them under systemd). Each part takes a child logger
 * `{part: "<name>"}` so a line always says where it came from.
 */
export function createLogger(level: string = process.env.EDGEKEEPER_LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime });
}

/** A logger that drops everything; for tests and CLI commands that print their own output. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
