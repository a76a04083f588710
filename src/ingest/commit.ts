/**
 * The main thread's half of report writing: takes the ingest thread's batches (see writer.ts),
 * writes each with `store.write` and counts what committed.
 *
 * Admission: while `admit(reports)` returns false (the fleet sync's disk budget is full and its
 * policy is to stop acknowledging, or the SLO guard makes bulk work yield) batches are held, not
 * written, and re-checked every `ADMIT_RECHECK_MS`, oldest first, each asked for on its own (the
 * guard admits a rate of reports, not all or nothing). Their reports stay unacknowledged, so
 * devices keep them and the brokers stop feeding us.
 *
 * Chunks: while `chunkRows()` gives a size (the SLO guard makes bulk work yield), a batch is
 * written as consecutive transactions of at most that many reports, one after the other: each
 * holds the main thread for a fraction of a millisecond instead of the whole batch's insert, so
 * an etcd request waits for little between them. The batch is acknowledged once every chunk has
 * committed; if a later chunk fails, none of the batch is acknowledged, and the resent reports of
 * the chunks already stored are taken as redeliveries (the reports' dedupe window).
 */
import type { Clock, Timer } from '../clock.js';
import { type Logger, RepeatLimiter } from '../log.js';
import type { BlobColumn, SqlOp, Store } from '../store/types.js';
import type { IngestMetrics } from './metrics.js';
import { arrivalTime, type ReportBatch } from './writer.js';

// Short, so that a guard admitting a rate releases held batches evenly rather than in bursts.
const ADMIT_RECHECK_MS = 100;

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
    private readonly admit?: (reports: number) => boolean,
    private readonly chunkRows?: () => number | undefined,
  ) {
    this.repeats = new RepeatLimiter(log);
  }

  /** A full disk fails every batch: one line a minute, with a count. */
  private readonly repeats: RepeatLimiter;

  /** Resolves with the rows inserted once committed; rejects when the store refused the batch. */
  commit(batch: ReportBatch): Promise<number> {
    if (this.held.length === 0 && this.admitting(batch)) return this.write(batch);
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

  private admitting(batch: ReportBatch): boolean {
    return !this.admit || this.admit(batch.arrived.length);
  }

  private recheck(): void {
    this.heldTimer ??= this.clock.setTimeout(() => {
      this.heldTimer = undefined;
      let n = 0;
      while (n < this.held.length && this.admitting(this.held[n]!.batch)) n++;
      for (const h of this.held.splice(0, n)) {
        this.heldReports -= h.batch.arrived.length;
        this.write(h.batch).then(h.resolve, h.reject);
      }
      this.updateHeld();
      if (this.held.length > 0) this.recheck();
    }, ADMIT_RECHECK_MS);
  }

  private async write(batch: ReportBatch): Promise<number> {
    const n = batch.arrived.length;
    let inserted = 0;
    try {
      const chunk = this.chunkRows?.();
      if (chunk === undefined || n <= chunk || !('columns' in batch.op)) {
        const res = await this.store.write({ sql: [batch.op] });
        inserted = res.sql[0]?.changes ?? 0;
      } else {
        for (let from = 0; from < n; from += chunk) {
          const res = await this.store.write({ sql: [sliceRows(batch.op, from, Math.min(n, from + chunk))] });
          inserted += res.sql[0]?.changes ?? 0;
        }
      }
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

/** Rows [from, to) of a by-column op. */
function sliceRows(op: Extract<SqlOp, { columns: unknown }>, from: number, to: number): SqlOp {
  const columns: Record<string, unknown[] | BlobColumn> = {};
  for (const [name, c] of Object.entries(op.columns)) {
    if (Array.isArray(c)) {
      columns[name] = c.slice(from, to);
    } else {
      const start = from === 0 ? 0 : c.ends[from - 1]!;
      columns[name] = {
        bytes: c.bytes.subarray(start, c.ends[to - 1]!),
        ends: c.ends.slice(from, to).map((e) => e - start),
      };
    }
  }
  return { sql: op.sql, columns, count: to - from };
}
