/**
 * Everything refused is counted per reason (`edgekeeper_ingest_rejects_total{reason}`) and its
 * first bytes kept in the dead-letter table `ingest_rejects`, bounded by `rejectsMax` rows
 * (oldest deleted in the same transaction). A flood must not turn into a write flood: the table
 * is a sample, at most one row per (device, reason) per second and `ROWS_PER_SEC` rows overall.
 * What the sample leaves out (and rows whose write failed) is counted per reason in
 * `edgekeeper_ingest_rejects_unrecorded_total{reason}`, so the table never drops silently.
 */
import type { Clock } from '../clock.js';
import { type Logger, RepeatLimiter } from '../log.js';
import type { Store } from '../store/types.js';
import { sanitize } from './ids.js';
import type { IngestMetrics } from './metrics.js';
import type { RejectReason } from './payload.js';

/** Bytes of a refused payload kept in its dead letter. */
export const HEAD_BYTES = 256;
const ROWS_PER_SEC = 50;

const INSERT = `INSERT INTO ingest_rejects(ts, device, topic, reason, detail, size, head)
VALUES (@ts, @device, @topic, @reason, @detail, @size, @head)`;
const TRIM = `DELETE FROM ingest_rejects WHERE id <= (SELECT max(id) FROM ingest_rejects) - @max`;

export interface RejectRow {
  id: number;
  ts: number;
  device: string | null;
  topic: string | null;
  reason: string;
  detail: string | null;
  size: number;
  head: Buffer | null;
}

export class DeadLetters {
  readonly counts = new Map<string, number>();
  /** Per reason: rejects counted but not in the table (sampled out, or their write failed). */
  readonly unrecorded = new Map<string, number>();
  private pending: Record<string, unknown>[] = [];
  private recent = new Map<string, number>();
  private second = 0;
  private inSecond = 0;
  private scheduled = false;
  private writing: Promise<void> = Promise.resolve();

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly metrics: IngestMetrics,
    log: Logger,
    private readonly max: number,
  ) {
    this.repeats = new RepeatLimiter(log);
  }

  /** Recording fails for every reject on a full disk: one line a minute, with a count. */
  private readonly repeats: RepeatLimiter;

  record(
    reason: RejectReason,
    info: {
      device?: string;
      topic?: string;
      payload?: Uint8Array;
      size?: number;
      detail?: string;
      /** Refusals this one stands for (the ingest thread folds a turn's alike refusals into one). */
      count?: number;
    },
  ): void {
    const n = info.count ?? 1;
    this.metrics.rejects.inc({ reason }, n);
    this.counts.set(reason, (this.counts.get(reason) ?? 0) + n);
    const now = this.clock.now();
    const sec = Math.floor(now / 1000);
    if (sec !== this.second) {
      this.second = sec;
      this.inSecond = 0;
      this.recent.clear();
    }
    const key = `${info.device ?? ''}\0${reason}`;
    if (this.inSecond >= ROWS_PER_SEC || this.recent.has(key)) {
      this.dropped(reason, 1);
      return;
    }
    this.recent.set(key, now);
    this.inSecond++;
    this.pending.push({
      ts: now,
      device: info.device === undefined ? null : sanitize(info.device, 80),
      topic: info.topic === undefined ? null : sanitize(info.topic, 200),
      reason,
      detail: info.detail === undefined ? null : sanitize(info.detail, 300),
      size: info.size ?? info.payload?.length ?? 0,
      head: info.payload ? Buffer.from(info.payload.subarray(0, HEAD_BYTES)) : null,
    });
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  private flush(): void {
    this.scheduled = false;
    const rows = this.pending.splice(0);
    if (rows.length === 0) return;
    this.writing = this.writing
      .then(() =>
        this.store.write({
          sql: [
            { sql: INSERT, rows },
            { sql: TRIM, params: { max: this.max } },
          ],
        }),
      )
      .then(
        () => undefined,
        (err) => {
          for (const r of rows) this.dropped(r.reason as string, 1);
          this.repeats.warn(
            { err, rows: rows.length },
            'could not record rejected input in ingest_rejects; it is still counted in /metrics',
          );
        },
      );
  }

  private dropped(reason: string, n: number): void {
    this.metrics.rejectsUnrecorded.inc({ reason }, n);
    this.unrecorded.set(reason, (this.unrecorded.get(reason) ?? 0) + n);
  }

  /** Wait for dead letters already recorded to be written. */
  async settle(): Promise<void> {
    if (this.scheduled) this.flush();
    await this.writing;
  }

  static list(store: Store, limit: number): RejectRow[] {
    return store
      .query<RejectRow>(
        'SELECT id, ts, device, topic, reason, detail, size, head FROM ingest_rejects ORDER BY id DESC LIMIT ?',
      )
      .all(limit);
  }
}
