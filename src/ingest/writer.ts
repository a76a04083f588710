/**
 * Batches reports into writes and resolves each report's promise only after the transaction
 * holding its row has committed: the caller sends the PUBACK from there. This runs on the ingest
 * thread next to the broker; `ReportCommitter` (commit.ts) does the write on the main thread.
 *
 * Batching: reports that arrive in the same event-loop turn go into one write; at most
 * `MAX_INFLIGHT` writes are outstanding, so under load the next batch grows while the store
 * commits the previous one (the store also groups concurrent writes into one transaction).
 *
 * Release: a committed batch's reports are resolved (acknowledged) `RELEASE_SLICE` at a time, one
 * slice per turn of the event loop. Each acknowledgement is a socket write and, in embedded mode,
 * frees its device to send the next report; releasing a whole batch (hundreds) at once made one
 * long turn and the next, full of the devices' answers, longer still.
 *
 * Backpressure: nothing here is bounded by count. aedes reads a client's next packets only when
 * its current ones are acknowledged, and an external broker sends no more than its in-flight
 * window, so the queue is bounded by devices x in-flight reports. While admission is closed the
 * committer holds the writes and this queue stops moving, which stops the devices in turn.
 */
// not the store's index: this module runs on the ingest thread, which has no business loading SQLite
import { type Clock, systemClock, WallFrames } from '../clock.js';
import { blobColumn } from '../store/columns.js';
import type { SqlOp } from '../store/types.js';

const MAX_INFLIGHT = 2;
const RELEASE_SLICE = 64;
// Bytes of report bodies in one write: with 64 KiB payloads, `batchMax` alone would allow tens
// of MB in one transaction, holding the writer (and every etcd put behind it) for that long.
export const BATCH_MAX_BYTES = 1024 * 1024;

/**
 * A redelivered report (same device, seq and ts, received within the window: `since` to
 * `until`) inserts nothing; reports without seq are always inserted. The window is the last
 * `dedupeWindow` of monotonic time in wall terms (WallFrames): after the node clock steps, it
 * covers both the old and the new frame until the window has passed, so a step either way
 * neither lets a redelivery in twice nor keeps an old copy matching for the length of the step. The lookup is one probe of the index
 * reports_ts_device_seq (see the ingest schema for why ts leads it).
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
    SELECT 1 FROM reports WHERE ts IS @ts AND device = @device AND seq = @seq AND received_at >= @since AND received_at <= @until)
  THEN NULL ELSE @device END,
  @receivedAt, @ts, @seq, @body)`;

export interface ReportRow {
  device: string;
  receivedAt: number;
  ts: number | null;
  seq: number | null;
  body: Buffer;
}

/**
 * Milliseconds since the epoch, sub-millisecond and comparable between threads (each thread's
 * `timeOrigin` is taken from the same clock): the commit latency runs from a report's arrival
 * on the ingest thread to its commit seen on the main thread.
 */
export function arrivalTime(): number {
  return performance.timeOrigin + performance.now();
}

/** One write: the batch's INSERT_REPORT by column, and what the committer counts. */
export interface ReportBatch {
  op: SqlOp;
  /** Reports in the batch sent with QoS 0 (the rest are QoS 1). */
  qos0: number;
  /** Each report's `arrivalTime()`. */
  arrived: Float64Array;
}

/** Commits a batch; resolves with the rows inserted (duplicates insert none). */
export type CommitBatch = (batch: ReportBatch) => Promise<number>;

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
  private idle: (() => void)[] = [];
  /** Committed reports not yet resolved, oldest first, and where the next slice starts. */
  private releasing: Pending[] = [];
  private released = 0;

  private readonly frames: WallFrames;

  /** `lastStamp`: the newest received_at already stored (from before this process). */
  constructor(
    private readonly commit: CommitBatch,
    private readonly opts: { batchMax: number; dedupeWindow: number },
    private readonly clock: Clock = systemClock,
    lastStamp?: number,
  ) {
    this.frames = new WallFrames(clock);
    if (lastStamp !== undefined) this.frames.remember(lastStamp);
  }

  /** Resolves after the row (or its earlier copy) is committed; `t0` is its `arrivalTime()`. */
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

  /** Reports waiting for a write (not those in flight). */
  get queued(): number {
    return this.queue.length;
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.pump();
    });
  }

  private pump(): void {
    while (this.queue.length > 0 && this.inflight < MAX_INFLIGHT) {
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
    const arrived = new Float64Array(batch.length);
    let qos0 = 0;
    for (let i = 0; i < batch.length; i++) {
      const p = batch[i]!;
      arrived[i] = p.t0;
      if (p.qos === 0) qos0++;
    }
    try {
      await this.commit({ op: this.insert(batch), qos0, arrived });
    } catch (err) {
      // Not committed, so not acknowledged: the device (or the broker's session) resends.
      for (const p of batch) p.reject(err as Error);
      return;
    }
    this.release(batch);
  }

  /** The batch's INSERT_REPORT, by column (see SqlOp). */
  private insert(batch: Pending[]): SqlOp {
    const n = batch.length;
    const device = new Array<string>(n);
    const receivedAt = new Array<number>(n);
    const ts = new Array<number | null>(n);
    const seq = new Array<number | null>(n);
    const since = new Array<number>(n);
    const until = new Array<number>(n);
    const now = this.clock.now();
    const span = this.frames.span(this.opts.dedupeWindow);
    for (let i = 0; i < n; i++) {
      const p = batch[i]!;
      device[i] = p.device;
      receivedAt[i] = p.receivedAt;
      ts[i] = p.ts;
      seq[i] = p.seq;
      // the span as seen from the report's arrival (a few ms ago)
      since[i] = span.from + (p.receivedAt - now);
      until[i] = Math.max(p.receivedAt, span.to + (p.receivedAt - now));
    }
    const body = blobColumn(batch.map((p) => p.body));
    return { sql: INSERT_REPORT, columns: { device, receivedAt, ts, seq, since, until, body }, count: n };
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

  /** Resolves when nothing is queued, in flight or waiting to be released. */
  drain(): Promise<void> {
    if (this.queue.length === 0 && this.inflight === 0 && this.releasing.length === 0)
      return Promise.resolve();
    return new Promise((r) => this.idle.push(r));
  }
}
