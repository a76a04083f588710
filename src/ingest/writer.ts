/**
 * Batches reports into `store.write` calls and resolves each report's promise only after the
 * transaction holding its row has committed: the caller sends the PUBACK from there.
 *
 * Batching: reports that arrive in the same event-loop turn go into one write; at most
 * `MAX_INFLIGHT` writes are outstanding, so under load the next batch grows while the store
 * commits the previous one (the store also groups concurrent writes into one transaction).
 *
 * Release: a committed batch's reports are resolved (acknowledged) `RELEASE_SLICE` at a time, one
 * slice per turn of the event loop. Each acknowledgement is a socket write and, in embedded mode,
 * frees its device to send the next report; releasing a whole batch (hundreds) at once made one
 * long turn and the next, full of the devices' answers, longer still, while etcd requests waited
 * behind both.
 *
 * Admission: while `admit()` returns false (the fleet sync's disk budget is full and its policy
 * is to stop acknowledging) nothing is written and nothing is acknowledged; the queue is
 * re-checked every `ADMIT_RECHECK_MS`. Devices keep their unacknowledged QoS 1 reports and the
 * brokers stop feeding us (aedes waits for each client's batch, MQTT brokers for their in-flight
 * window), which is what keeps this queue bounded.
 */
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import { blobColumn } from '../store/index.js';
import type { SqlOp, Store } from '../store/types.js';
import type { IngestMetrics } from './metrics.js';

const MAX_INFLIGHT = 2;
const RELEASE_SLICE = 64;
const ADMIT_RECHECK_MS = 500;
// Bytes of report bodies in one write: with 64 KiB payloads, `batchMax` alone would allow tens
// of MB in one transaction, holding the writer (and every etcd put behind it) for that long.
export const BATCH_MAX_BYTES = 1024 * 1024;

/**
 * A redelivered report (same device, seq and ts, received within the window: `since`) inserts
 * nothing; reports without seq are always inserted.
 *
 * Why a single-row INSERT with OR IGNORE and not `INSERT ... SELECT ... WHERE NOT EXISTS`: the
 * store runs every request inside a SAVEPOINT, and under it SQLite gives a statement that may
 * insert several rows (any INSERT ... SELECT) its own statement journal, copying every page it
 * touches: that made each report cost about four times its insert. A VALUES insert needs no
 * statement journal. A duplicate turns `device` into NULL, so the NOT NULL constraint skips
 * the row (OR IGNORE applies to it); no other constraint of `reports` can fail for our rows.
 */
export const INSERT_REPORT = `INSERT OR IGNORE INTO reports(device, received_at, ts, seq, body)
VALUES (
  CASE WHEN @seq IS NOT NULL AND EXISTS (
    SELECT 1 FROM reports WHERE device = @device AND seq = @seq AND ts IS @ts AND received_at >= @since)
  THEN NULL ELSE @device END,
  @receivedAt, @ts, @seq, @body)`;

export interface ReportRow {
  device: string;
  receivedAt: number;
  ts: number | null;
  seq: number | null;
  body: Buffer;
}

interface Pending extends ReportRow {
  qos: number;
  t0: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

export class ReportWriter {
  private queue: Pending[] = [];
  private scheduled = false;
  private inflight = 0;
  private heldTimer: { cancel(): void } | undefined;
  private idle: (() => void)[] = [];
  /** Committed reports not yet resolved, oldest first, and where the next slice starts. */
  private releasing: Pending[] = [];
  private released = 0;
  /** Committed reports, for the status rate. */
  onCommitted?: (n: number) => void;

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly metrics: IngestMetrics,
    private readonly log: Logger,
    private readonly opts: { batchMax: number; dedupeWindow: number; admit?: () => boolean },
  ) {}

  /** Resolves after the row (or its earlier copy) is committed. */
  add(row: ReportRow, qos: number, t0: number): Promise<void> {
    return new Promise((resolve, reject) => {
      // a literal, not a spread: one hidden class for every pending report
      this.queue.push({
        device: row.device,
        receivedAt: row.receivedAt,
        ts: row.ts,
        seq: row.seq,
        body: row.body,
        qos,
        t0,
        resolve,
        reject,
      });
      this.schedule();
    });
  }

  get queued(): number {
    return this.queue.length;
  }

  private schedule(): void {
    if (this.scheduled || this.heldTimer) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.pump();
    });
  }

  private pump(): void {
    while (this.queue.length > 0 && this.inflight < MAX_INFLIGHT) {
      if (this.opts.admit && !this.opts.admit()) {
        this.metrics.held.set(this.queue.length);
        this.heldTimer ??= this.clock.setTimeout(() => {
          this.heldTimer = undefined;
          this.pump();
        }, ADMIT_RECHECK_MS);
        return;
      }
      this.metrics.held.set(0);
      const batch = this.queue.splice(0, this.batchLength());
      this.inflight++;
      void this.writeBatch(batch).finally(() => {
        this.inflight--;
        if (this.queue.length > 0) this.pump();
        else this.checkIdle();
      });
    }
  }

  /** How many queued reports the next batch takes: at most batchMax, at most BATCH_MAX_BYTES (at least one). */
  private batchLength(): number {
    const max = Math.min(this.queue.length, this.opts.batchMax);
    let bytes = this.queue[0]!.body.length;
    let n = 1;
    while (n < max) {
      bytes += this.queue[n]!.body.length;
      if (bytes > BATCH_MAX_BYTES) break;
      n++;
    }
    return n;
  }

  private async writeBatch(batch: Pending[]): Promise<void> {
    try {
      const res = await this.store.write({ sql: [this.insert(batch)] });
      const inserted = res.sql[0]?.changes ?? 0;
      const now = this.clock.monotonic();
      this.metrics.batch.observe(batch.length);
      if (inserted < batch.length) this.metrics.duplicates.inc(batch.length - inserted);
      let q0 = 0;
      for (const p of batch) {
        if (p.qos === 0) q0++;
        this.metrics.latency.observe((now - p.t0) / 1000);
      }
      this.release(batch);
      if (q0) this.metrics.reports.inc({ qos: '0' }, q0);
      if (batch.length - q0) this.metrics.reports.inc({ qos: '1' }, batch.length - q0);
      this.onCommitted?.(batch.length);
    } catch (err) {
      // Not committed, so not acknowledged: the device (or the broker's session) resends.
      this.metrics.writeErrors.inc();
      this.log.warn(
        { err, reports: batch.length },
        'storing a batch of reports failed; they stay unacknowledged and devices will resend them',
      );
      for (const p of batch) p.reject(err as Error);
    }
  }

  /** The batch's INSERT_REPORT, by column (see SqlOp). */
  private insert(batch: Pending[]): SqlOp {
    const n = batch.length;
    const device = new Array<string>(n);
    const receivedAt = new Array<number>(n);
    const ts = new Array<number | null>(n);
    const seq = new Array<number | null>(n);
    const since = new Array<number>(n);
    for (let i = 0; i < n; i++) {
      const p = batch[i]!;
      device[i] = p.device;
      receivedAt[i] = p.receivedAt;
      ts[i] = p.ts;
      seq[i] = p.seq;
      since[i] = p.receivedAt - this.opts.dedupeWindow;
    }
    const body = blobColumn(batch.map((p) => p.body));
    return { sql: INSERT_REPORT, columns: { device, receivedAt, ts, seq, since, body }, count: n };
  }

  private release(batch: Pending[]): void {
    const start = this.releasing.length === 0;
    for (const p of batch) this.releasing.push(p);
    if (start) this.releaseSlice();
  }

  private releaseSlice(): void {
    const end = Math.min(this.released + RELEASE_SLICE, this.releasing.length);
    for (let i = this.released; i < end; i++) this.releasing[i]!.resolve();
    this.released = end;
    if (end < this.releasing.length) {
      setImmediate(() => this.releaseSlice());
      return;
    }
    this.releasing = [];
    this.released = 0;
    this.checkIdle();
  }

  private checkIdle(): void {
    if (this.queue.length === 0 && this.inflight === 0 && this.releasing.length === 0)
      for (const f of this.idle.splice(0)) f();
  }

  /** Resolves when nothing is queued or in flight (held reports are released as errors by `failHeld`). */
  drain(): Promise<void> {
    if (this.queue.length === 0 && this.inflight === 0 && this.releasing.length === 0)
      return Promise.resolve();
    return new Promise((r) => this.idle.push(r));
  }

  /** On shutdown: give up on reports still held by admission; they were never acknowledged. */
  failHeld(err: Error): void {
    this.heldTimer?.cancel();
    this.heldTimer = undefined;
    for (const p of this.queue.splice(0)) p.reject(err);
    this.checkIdle();
  }
}
