import { fstatSync } from 'node:fs';
import { pino, type Logger } from 'pino';

export type { Logger };

/** pino's numeric levels as syslog priorities (sd-daemon(3)'s "<N>" line prefixes). */
const PRIORITY: Record<number, number> = { 10: 7, 20: 7, 30: 6, 40: 4, 50: 3, 60: 2 };

/**
 * Whether file descriptor `fd` is the journal's stream: systemd sets JOURNAL_STREAM to its
 * "device:inode" (systemd.exec(5)). A variable inherited by a process whose output went
 * elsewhere does not count.
 */
export function isJournalStream(env: NodeJS.ProcessEnv = process.env, fd = 1): boolean {
  const m = /^(\d+):(\d+)$/.exec(env.JOURNAL_STREAM ?? '');
  if (!m) return false;
  try {
    const st = fstatSync(fd, { bigint: true });
    return st.dev === BigInt(m[1]!) && st.ino === BigInt(m[2]!);
  } catch {
    return false;
  }
}

/**
 * One pino JSON line as journald should store it: the syslog priority prefix (journald takes it
 * as the entry's PRIORITY and strips it, so `journalctl -p warning` works), then the message, so
 * `journalctl` shows what happened first, then every other field as JSON. journald splits
 * entries at newlines; a message's own are folded into spaces (the JSON keeps them escaped).
 */
export function journalLine(line: string): string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return `<6>${line.replace(/\n(?!$)/g, ' ')}`;
  }
  const { msg, ...fields } = o;
  const text = typeof msg === 'string' ? msg.replace(/\s*\n\s*/g, ' ') : '';
  return `<${PRIORITY[fields.level as number] ?? 6}>${text} ${JSON.stringify(fields)}\n`;
}

/**
 * JSON logs to stdout, one line each (tools and tests parse them). Under systemd, when stdout
 * is the journal, each line becomes journalLine(line). Each part takes a child logger
 * `{part: "<name>"}` so a line always says where it came from.
 */
export function createLogger(
  level: string = process.env.EDGEKEEPER_LOG_LEVEL ?? 'info',
  env: NodeJS.ProcessEnv = process.env,
): Logger {
  return pino({
    level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    ...(isJournalStream(env) ? { hooks: { streamWrite: journalLine } } : {}),
  });
}

/** A logger that drops everything; for tests and CLI commands that print their own output. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
