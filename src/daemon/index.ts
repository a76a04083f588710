/**
 * The daemon: wiring, lifecycle, sd_notify and the watchdog, scheduled compaction and backups,
 * and the `run` loop with its signal handling. `src/main.ts` is its only user.
 */
import type { Config } from '../config/index.js';
import { createLogger } from '../log.js';
import { type Daemon, type DaemonOptions, startDaemon } from './daemon.js';
import type { PartEntry } from './parts.js';

export { DB_FILE, restoreDatabase, runScheduledBackup, verifyDatabaseFile } from './backup.js';
export { Compactor } from './compaction.js';
export { type Daemon, type DaemonOptions, startDaemon } from './daemon.js';
export { daemonMigrations, Heartbeat, storeReadinessCheck } from './health.js';
export { JobRecorder } from './jobs.js';
export { createNotifier, watchdogIntervalMs } from './notify.js';
export { allFlags, allSections, type PartEntry, partCommands, parts } from './parts.js';
export { acquirePidFile, runningPid } from './pidfile.js';
export { VERSION } from './version.js';

/**
 * `edgekeeper run`: starts the daemon and stays up until SIGTERM or SIGINT, then stops it
 * (stop taking work, stop parts, finish in-flight commits, close the database). Resolves with
 * the exit code: 0 after a clean stop, 1 when stopping failed. A second signal while stopping
 * exits at once with 1, for an operator whose shutdown hangs.
 */
export async function runDaemon(
  config: Config,
  entries: PartEntry[],
  opts: DaemonOptions = {},
): Promise<number> {
  let daemon: Daemon | undefined;
  let signalled: NodeJS.Signals | undefined;
  let wake: (() => void) | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    if (signalled) {
      daemon?.logger.warn({ signal: sig }, 'second signal while stopping; exiting now');
      process.exit(1);
    }
    signalled = sig;
    wake?.();
  };
  // A crash is logged as one JSON line before the process dies, so journald shows why systemd restarted us.
  const onCrash = (err: unknown, origin: string) => {
    (daemon?.logger ?? createLogger()).fatal(
      { err, origin },
      'unexpected error; exiting so systemd restarts the daemon',
    );
    process.exit(1);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  process.on('uncaughtException', onCrash);
  try {
    daemon = await startDaemon(config, entries, opts);
    if (!signalled) await new Promise<void>((r) => (wake = r));
    daemon.logger.info({ signal: signalled }, 'signal received; shutting down');
    await daemon.stop();
    return 0;
  } catch (err) {
    const logger = daemon?.logger;
    if (logger) logger.fatal({ err }, 'daemon failed');
    throw err;
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    process.off('uncaughtException', onCrash);
  }
}
