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

/** A repeating failure is logged at most this often per cause. */
export const REPEAT_INTERVAL_MS = 60_000;

/**
 * Logs a repeating failure once per cause per interval: the first occurrence at once, the next
 * one an interval later with how many were left out in between (`suppressed`). A failure that
 * repeats every tick (a full disk fails every part's writes) would otherwise fill the journal —
 * 52.7 MB in 6 minutes with 20 devices — and the disk it is about. The cause is the message and
 * the error's code (else its message), so a new kind of failure is logged at once.
 */
export class RepeatLimiter {
  private readonly last = new Map<string, { at: number; suppressed: number }>();

  constructor(
    private readonly logger: Logger,
    private readonly intervalMs = REPEAT_INTERVAL_MS,
    private readonly now: () => number = () => performance.now(),
  ) {}

  warn(fields: { err?: unknown } & Record<string, unknown>, msg: string): void {
    this.log('warn', fields, msg);
  }

  error(fields: { err?: unknown } & Record<string, unknown>, msg: string): void {
    this.log('error', fields, msg);
  }

  private log(
    level: 'warn' | 'error',
    fields: { err?: unknown } & Record<string, unknown>,
    msg: string,
  ): void {
    const err = fields.err as { code?: unknown; message?: unknown } | string | undefined;
    const why = typeof err === 'object' && err ? String(err.code ?? err.message ?? '') : String(err ?? '');
    const cause = `${msg}\0${why}`;
    const t = this.now();
    const seen = this.last.get(cause);
    if (seen && t - seen.at < this.intervalMs) {
      seen.suppressed++;
      return;
    }
    if (this.last.size >= 1000) this.last.clear(); // causes are few; never let them grow
    this.last.set(cause, { at: t, suppressed: 0 });
    if (seen?.suppressed)
      this.logger[level](
        { ...fields, suppressed: seen.suppressed },
        `${msg} (${seen.suppressed} more like it left out in the last ${Math.round((t - seen.at) / 1000)} s)`,
      );
    else this.logger[level](fields, msg);
  }
}
