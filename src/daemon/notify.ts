/**
 * sd_notify(3): READY=1, STATUS=, STOPPING=1 and WATCHDOG=1 datagrams to `$NOTIFY_SOCKET`.
 *
 * A path socket (what systemd uses: /run/systemd/notify) is written with the `unix-dgram`
 * addon from this process, so the sender is the main PID and `NotifyAccess=main` accepts it.
 * An abstract socket ("@name") cannot be reached through that addon (it copies the address as
 * a C string, and an abstract name starts with a NUL byte), so those messages go through
 * `systemd-notify --pid=<our pid>`; systemd then sees the helper's PID, and the unit needs
 * `NotifyAccess=all`. We say so in the log once.
 */
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import type { Logger } from '../log.js';

interface DgramSocket {
  on(event: 'error', fn: (err: Error) => void): void;
  send(buf: Buffer, offset: number, length: number, path: string, cb?: (err?: Error) => void): void;
  close(): void;
}
interface UnixDgram {
  createSocket(type: 'unix_dgram'): DgramSocket;
}

export interface Notifier {
  /** True when a notify socket is configured. */
  readonly enabled: boolean;
  /** Sends one notification (e.g. "READY=1\nSTATUS=serving"); never throws. */
  send(state: string): Promise<void>;
  close(): void;
}

class NoNotifier implements Notifier {
  readonly enabled = false;
  async send(): Promise<void> {}
  close(): void {}
}

class PathNotifier implements Notifier {
  readonly enabled = true;
  private socket: DgramSocket | undefined;
  constructor(
    private readonly path: string,
    private readonly log: Logger,
  ) {}
  send(state: string): Promise<void> {
    return new Promise((resolve) => {
      try {
        if (!this.socket) {
          const req = createRequire(import.meta.url);
          const unix = req('unix-dgram') as UnixDgram;
          this.socket = unix.createSocket('unix_dgram');
          this.socket.on('error', (err) => this.log.warn({ err: err.message }, 'sd_notify socket error'));
        }
        const buf = Buffer.from(state);
        this.socket.send(buf, 0, buf.length, this.path, (err) => {
          if (err)
            this.log.warn(
              { err: err.message, socket: this.path },
              'sd_notify send failed; systemd may not see our state',
            );
          resolve();
        });
      } catch (err) {
        this.log.warn(
          { err: (err as Error).message, socket: this.path },
          'sd_notify unavailable; systemd will not see our state',
        );
        resolve();
      }
    });
  }
  close(): void {
    try {
      this.socket?.close();
    } catch {
      // already closed
    }
    this.socket = undefined;
  }
}

class HelperNotifier implements Notifier {
  readonly enabled = true;
  private warned = false;
  constructor(
    private readonly socket: string,
    private readonly log: Logger,
  ) {}
  send(state: string): Promise<void> {
    if (!this.warned) {
      this.warned = true;
      this.log.warn(
        { socket: this.socket },
        'NOTIFY_SOCKET is abstract; notifying through systemd-notify, which needs NotifyAccess=all in the unit',
      );
    }
    return new Promise((resolve) => {
      // --no-block: nothing answers the barrier when the receiver is not systemd.
      const child = spawn('systemd-notify', ['--no-block', `--pid=${process.pid}`, ...state.split('\n')], {
        env: { ...process.env, NOTIFY_SOCKET: this.socket },
        stdio: 'ignore',
      });
      child.on('error', (err) => {
        this.log.warn({ err: err.message }, 'systemd-notify could not run; systemd will not see our state');
        resolve();
      });
      child.on('exit', () => resolve());
    });
  }
  close(): void {}
}

/** Picks the notifier for `$NOTIFY_SOCKET` (absent: a no-op). */
export function createNotifier(env: Record<string, string | undefined>, log: Logger): Notifier {
  const socket = env.NOTIFY_SOCKET;
  if (!socket) return new NoNotifier();
  if (socket.startsWith('@')) return new HelperNotifier(socket, log);
  return new PathNotifier(socket, log);
}

/**
 * The watchdog interval from `$WATCHDOG_USEC` (half of it, as sd_watchdog_enabled(3)
 * recommends), or undefined when the watchdog is off or meant for another process
 * (`$WATCHDOG_PID`).
 */
export function watchdogIntervalMs(
  env: Record<string, string | undefined>,
  pid = process.pid,
): number | undefined {
  const usec = Number(env.WATCHDOG_USEC);
  if (!env.WATCHDOG_USEC || !Number.isFinite(usec) || usec <= 0) return undefined;
  if (env.WATCHDOG_PID && Number(env.WATCHDOG_PID) !== pid) return undefined;
  return Math.max(1, Math.floor(usec / 1000 / 2));
}
