/**
 * The daemon: wiring, lifecycle, sd_notify and the watchdog, scheduled compaction and backups,
 * and the `run` loop with its signal handling. `src/main.ts` is its only user.
 */
import { setFlagsFromString } from 'node:v8';
import type { Config } from '../config/index.js';
import { createLogger } from '../log.js';
import { type Daemon, type DaemonOptions, startDaemon } from './daemon.js';
import type { PartEntry } from './parts.js';

export {
  DB_FILE,
  restoreDatabase,
  restoreFromEtcdSnapshot,
  runScheduledBackup,
  verifyDatabaseFile,
  writeEtcdBackup,
} from './backup.js';
export { daemonCliCommands } from './cli.js';
export { Compactor } from './compaction.js';
export { type Daemon, type DaemonOptions, startDaemon } from './daemon.js';
export {
  daemonMigrations,
  Heartbeat,
  registerObjectiveMetrics,
  registerReadinessMetrics,
  storeReadinessCheck,
} from './health.js';
export { JobRecorder } from './jobs.js';
export { createNotifier, watchdogIntervalMs } from './notify.js';
export { allFlags, allSections, type PartEntry, partCommands, parts } from './parts.js';
export { acquirePidFile, runningPid } from './pidfile.js';
export { VERSION } from './version.js';

// V8 lets a heap's old generation grow to up to 4x what survived the last full collection before
// collecting again, a factor chosen for throughput. Under 1,000 reports/s the ingest thread's old
// generation reached 40 MB between full collections that left 18 MB (70 MB flat out); growing by
// 20% it stays at 19-31 MB: 17 MB less steady RSS with 1,000 devices, 35-48 MB less flat out, and
// no CPU per report the ingest bench could tell apart. The flag is global to V8, so it applies to
// every thread of the daemon; a --heap-growing-percent on node's command line wins.
const HEAP_GROWING_PERCENT = 20;
/** Exit status after a failed WAL sync (EX_IOERR). */
export const EXIT_IO_ERROR = 74;

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
  if (!process.execArgv.some((a) => a.startsWith('--heap-growing-percent'))) {
    setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
  }
  // A --max-semi-space-size (the unit's NODE_OPTIONS) has sized the main thread's young
  // generation by now. Cleared (0 is V8's "unset"), so that the worker threads' own young
  // generations apply (store/maintenance.ts, ingest/thread.ts): the flag would win over them.
  setFlagsFromString('--max-semi-space-size=0');
  // Everything the daemon creates (database, backups, snapshots being sent, the admin token) is
  // for its own user only, also when run by hand with a umask of 022 (the unit sets UMask=0077).
  process.umask(0o077);
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
  // A failed WAL sync: nothing can be acknowledged any more, and only a restart reads back what
  // the disk really holds. 74 is EX_IOERR; the unit restarts on it.
  const onStoreFatal = () => process.exit(EXIT_IO_ERROR);
  try {
    daemon = await startDaemon(config, entries, { onStoreFatal, ...opts });
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
