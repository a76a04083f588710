/**
 * Is the store's writer still working? An empty write goes through the group-commit writer on a
 * timer: it queues behind every batch ahead of it (and waits for their sync), but writes nothing
 * itself, so it costs the disk nothing and answers on a full disk too. The systemd watchdog is
 * pinged only while these complete, and readiness fails when they stall or fail. A stuck writer
 * or a hung disk therefore stops the pings and systemd restarts us (WatchdogSec=); a full disk
 * does not (writes are refused with a clear error, reads go on).
 *
 * Readiness answers "can this node serve now" (the store answers and commits, writes are not
 * refused, every part's listener is up), never "is it fast enough": one slow commit on an idle
 * node must not take it out of service. Whether commits meet `store.commitP99Objective` is a
 * metric (`edgekeeper_daemon_commit_objective_met`) and a Prometheus alert instead.
 */
import { Gauge, type Registry } from 'prom-client';
import type { Clock, Timer } from '../clock.js';
import type { Logger } from '../log.js';
import type { Migration, Store } from '../store/types.js';
import { registerView } from '../metrics.js';
import { VERSIONS_TABLE_SQL } from './upgrade.js';

/**
 * The daemon's tables: a single row earlier versions rewrote at every heartbeat (kept so existing
 * databases need no migration); the versions that ran on this database (the last names the
 * edgekeeper a downgrade must go back to).
 */
export const daemonMigrations: Migration[] = [
  {
    part: 'daemon',
    version: 1,
    sql: 'CREATE TABLE daemon_heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), ts INTEGER NOT NULL)',
  },
  { part: 'daemon', version: 2, sql: VERSIONS_TABLE_SQL },
];

export interface HeartbeatOptions {
  store: Pick<Store, 'write'>;
  clock: Clock;
  logger: Logger;
  /** Time between heartbeat writes. */
  intervalMs: number;
  /** Called after each committed heartbeat (the watchdog ping). */
  onCommitted?: () => void;
  /** A heartbeat pending longer than this is a stalled store. Default 5 s. */
  stallMs?: number;
  lastCommitGauge?: Gauge;
}

export class Heartbeat {
  private pendingSince: number | undefined;
  private lastError: string | undefined;
  private lastCommitAt: number | undefined;
  private timer: Timer | undefined;
  private stopped = true;
  private inFlight: Promise<void> | undefined;
  private warnedStall = false;
  private readonly stallMs: number;

  constructor(private readonly o: HeartbeatOptions) {
    this.stallMs = o.stallMs ?? 5000;
  }

  start(): void {
    this.stopped = false;
    this.tick();
  }

  /** Stops the timer and waits for a heartbeat in flight. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.timer?.cancel();
    await this.inFlight;
  }

  /** What is wrong with the store's writer, or undefined when it commits. */
  problem(): string | undefined {
    const now = this.o.clock.monotonic();
    if (this.pendingSince !== undefined && now - this.pendingSince > this.stallMs) {
      return `store has not committed a write for ${Math.round(now - this.pendingSince)} ms`;
    }
    if (this.lastError !== undefined) return `store write failed: ${this.lastError}`;
    return undefined;
  }

  private tick(): void {
    if (this.stopped) return;
    if (this.pendingSince === undefined) {
      this.beat();
    } else if (!this.warnedStall) {
      this.warnedStall = true;
      this.o.logger.error(
        { pendingMs: Math.round(this.o.clock.monotonic() - this.pendingSince) },
        'store writer is not committing; withholding watchdog pings so systemd restarts the daemon',
      );
    }
    this.timer = this.o.clock.setTimeout(() => this.tick(), this.o.intervalMs);
  }

  private beat(): void {
    this.pendingSince = this.o.clock.monotonic();
    // freesSpace: the watchdog must keep running while the database is over its quota (a
    // restart would not help).
    this.inFlight = this.o.store.write({ freesSpace: true }).then(
      () => {
        this.pendingSince = undefined;
        this.lastError = undefined;
        this.lastCommitAt = this.o.clock.now();
        this.o.lastCommitGauge?.set(this.lastCommitAt / 1000);
        if (this.warnedStall) this.o.logger.info('store writer commits again');
        this.warnedStall = false;
        if (!this.stopped) this.o.onCommitted?.();
      },
      (err: unknown) => {
        this.pendingSince = undefined;
        const msg = err instanceof Error ? err.message : String(err);
        if (this.lastError !== msg)
          this.o.logger.error({ err: msg }, 'heartbeat write failed; withholding watchdog pings');
        this.lastError = msg;
      },
    );
  }

  /** Epoch ms of the last committed heartbeat. */
  lastCommit(): number | undefined {
    return this.lastCommitAt;
  }
}

/**
 * The built-in readiness check: the store answers, its writer commits (the heartbeat), and the
 * database is under its quota (over it, writes are refused).
 */
export function storeReadinessCheck(
  store: Pick<Store, 'stats'>,
  heartbeat?: Pick<Heartbeat, 'problem'>,
): () => string | undefined {
  return () => {
    let stats: ReturnType<Store['stats']>;
    try {
      stats = store.stats();
    } catch (err) {
      return `store does not answer: ${(err as Error).message}`;
    }
    const hb = heartbeat?.problem();
    if (hb) return hb;
    if (stats.noSpace) {
      return `database is over its quota (${stats.dbSize} > ${stats.quota} bytes): writes are refused; delete keys and compact`;
    }
    return undefined;
  };
}

/**
 * The commit objective as metrics: the p99 of the last minute's commits (the store's window,
 * at least 20 commits), the objective, and whether it is met. With fewer commits there is no
 * p99 and no `_met` sample at all: an idle node neither meets nor misses its objective.
 */
export function registerObjectiveMetrics(
  registry: Registry,
  store: Pick<Store, 'stats'>,
  objectiveMs: number,
): void {
  const p99 = () => {
    try {
      return store.stats().commitLatencyMs?.p99;
    } catch {
      return undefined; // closed: no sample
    }
  };
  new Gauge({
    name: 'edgekeeper_daemon_commit_objective_seconds',
    help: 'The commit p99 objective (store.commitP99Objective)',
    registers: [registry],
  }).set(objectiveMs / 1000);
  registerView(
    registry,
    'edgekeeper_daemon_commit_p99_seconds',
    "p99 of the last minute's store commits; absent with fewer than 20 of them",
    'gauge',
    () => {
      const v = p99();
      return v === undefined ? [] : [{ value: v / 1000 }];
    },
  );
  registerView(
    registry,
    'edgekeeper_daemon_commit_objective_met',
    "1 while the last minute's commit p99 is within the objective, 0 when above; absent with fewer than 20 commits",
    'gauge',
    () => {
      const v = p99();
      return v === undefined ? [] : [{ value: v <= objectiveMs ? 1 : 0 }];
    },
  );
}

/** `edgekeeper_daemon_ready` and one `edgekeeper_daemon_check_ok{check}` per readiness check. */
export function registerReadinessMetrics(
  registry: Registry,
  readiness: () => { ready: boolean; failing: Record<string, string>; checks: string[] },
): void {
  new Gauge({
    name: 'edgekeeper_daemon_ready',
    help: '1 while every readiness check passes (what /readyz answers)',
    registers: [registry],
    collect() {
      this.set(readiness().ready ? 1 : 0);
    },
  });
  // Label values are the registered check names: a fixed set per daemon.
  new Gauge({
    name: 'edgekeeper_daemon_check_ok',
    help: 'Per readiness check: 1 while it passes, 0 while it fails (/readyz says why)',
    labelNames: ['check'],
    registers: [registry],
    collect() {
      this.reset();
      const r = readiness();
      for (const c of r.checks) this.set({ check: c }, r.failing[c] === undefined ? 1 : 0);
      if (r.failing.shutdown !== undefined) this.set({ check: 'shutdown' }, 0);
    },
  });
}
