/**
 * The main thread's half of report writing: takes the ingest thread's batches (see writer.ts),
 * writes each with `store.write` and counts what committed.
 *
 * Admission: while `admit()` returns false (the fleet sync's disk budget is full and its policy
 * is to stop acknowledging) batches are held, not written, and re-checked every
 * `ADMIT_RECHECK_MS`. Their reports stay unacknowledged, so devices keep them and the brokers
 * stop feeding us.
 */
import type { Clock, Timer } from '../clock.js';
import { type Logger, RepeatLimiter } from '../log.js';
import type { Store } from '../store/types.js';
import type { IngestMetrics } from './metrics.js';
import { arrivalTime, type ReportBatch } from './writer.js';

const ADMIT_RECHECK_MS = 500;

interface Held {
  batch: ReportBatch;
  resolve: (inserted: number) => void;
  reject: (err: Error) => void;
}

export class ReportCommitter {
  private held: Held[] = [];
  private heldReports = 0;
  /** Reports waiting on the ingest thread behind the held batches (it reports them). */
  private waiting = 0;
  private heldTimer: Timer | undefined;
  /** Set on shutdown: what is not admitted from then on is refused at once. */
  private refusing: Error | undefined;
  /** Reports committed, for the status rate. */
  onCommitted?: (n: number) => void;

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly metrics: IngestMetrics,
    log: Logger,
    private readonly admit?: () => boolean,
  ) {
    this.repeats = new RepeatLimiter(log);
  }

  /** A full disk fails every batch: one line a minute, with a count. */
  private readonly repeats: RepeatLimiter;

  /** Resolves with the rows inserted once committed; rejects when the store refused the batch. */
  commit(batch: ReportBatch): Promise<number> {
    if (this.held.length === 0 && this.admitting()) return this.write(batch);
    if (this.refusing) return Promise.reject(this.refusing);
    return new Promise((resolve, reject) => {
      this.held.push({ batch, resolve, reject });
      this.heldReports += batch.arrived.length;
      this.updateHeld();
      this.recheck();
    });
  }

  /** The ingest thread's queue length, counted as held while admission is closed. */
  set queued(n: number) {
    this.waiting = n;
    this.updateHeld();
  }

  private updateHeld(): void {
    this.metrics.held.set(this.heldReports > 0 ? this.heldReports + this.waiting : 0);
  }

  private admitting(): boolean {
    return !this.admit || this.admit();
  }

  private recheck(): void {
    this.heldTimer ??= this.clock.setTimeout(() => {
      this.heldTimer = undefined;
      if (!this.admitting()) {
        this.recheck();
        return;
      }
      this.heldReports = 0;
      this.updateHeld();
      for (const h of this.held.splice(0)) this.write(h.batch).then(h.resolve, h.reject);
    }, ADMIT_RECHECK_MS);
  }

  private async write(batch: ReportBatch): Promise<number> {
    const n = batch.arrived.length;
    let inserted: number;
    try {
      const res = await this.store.write({ sql: [batch.op] });
      inserted = res.sql[0]?.changes ?? 0;
    } catch (err) {
      this.metrics.writeErrors.inc();
      this.repeats.warn(
        { err, reports: n },
        'storing a batch of reports failed; they stay unacknowledged and devices will resend them',
      );
      throw err;
    }
    const now = arrivalTime();
    this.metrics.batch.observe(n);
    if (inserted < n) this.metrics.duplicates.inc(n - inserted);
    for (let i = 0; i < n; i++) this.metrics.latency.observe((now - batch.arrived[i]!) / 1000);
    if (batch.qos0) this.metrics.reports.inc({ qos: '0' }, batch.qos0);
    if (n - batch.qos0) this.metrics.reports.inc({ qos: '1' }, n - batch.qos0);
    this.onCommitted?.(n);
    return inserted;
  }

  /** On shutdown: give up on batches held by admission (and later ones); their reports were never acknowledged. */
  failHeld(err: Error): void {
    this.refusing = err;
    this.heldTimer?.cancel();
    this.heldTimer = undefined;
    this.heldReports = 0;
    this.updateHeld();
    for (const h of this.held.splice(0)) h.reject(err);
  }
}
