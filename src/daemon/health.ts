/**
 * Is the store still committing? A small heartbeat write goes through the group-commit writer
 * on a timer; the systemd watchdog is pinged only while those writes complete, and readiness
 * fails when they stall, fail, or the commit p99 leaves its objective. A stuck writer therefore
 * stops the pings and systemd restarts us (WatchdogSec=).
 */
import type { Gauge } from 'prom-client';
import type { Clock, Timer } from '../clock.js';
import type { Logger } from '../log.js';
import type { Migration, Store } from '../store/types.js';
import { VERSIONS_TABLE_SQL } from './upgrade.js';

/**
 * The daemon's tables: a single row the heartbeat rewrites; the versions that ran on this
 * database (the last names the edgekeeper a downgrade must go back to).
 */
export const daemonMigrations: Migration[] = [
  {
    part: 'daemon',
    version: 1,
    sql: 'CREATE TABLE daemon_heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), ts INTEGER NOT NULL)',
  },
  { part: 'daemon', version: 2, sql: VERSIONS_TABLE_SQL },
];

const HEARTBEAT_SQL =
  'INSERT INTO daemon_heartbeat (id, ts) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET ts = excluded.ts';

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
    // freesSpace: rewriting one fixed row never grows the file, and the watchdog must keep
    // running while the database is over its quota (a restart would not help).
    this.inFlight = this.o.store
      .write({ sql: [{ sql: HEARTBEAT_SQL, params: [this.o.clock.now()] }], freesSpace: true })
      .then(
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
 * The built-in readiness check: the store answers, its writer commits, the recent commit p99 is
 * within the objective, and the database is under its quota.
 */
export function storeReadinessCheck(
  store: Pick<Store, 'stats'>,
  objectiveMs: number,
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
    const p99 = stats.commitLatencyMs?.p99;
    if (p99 !== undefined && p99 > objectiveMs) {
      return `store commit p99 ${p99.toFixed(1)} ms > objective ${objectiveMs} ms`;
    }
    if (stats.noSpace) {
      return `database is over its quota (${stats.dbSize} > ${stats.quota} bytes): delete keys and compact`;
    }
    return undefined;
  };
}
