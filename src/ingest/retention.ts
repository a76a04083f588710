/**
 * Retention of `reports` by age and by size, oldest first, in chunks so the writer is never
 * blocked for long. With an uplink configured nothing above `cursors.reports` (not yet uploaded)
 * is deleted; what retention would have deleted but kept is exported as
 * `edgekeeper_ingest_retention_blocked_reports` (the fleet sync's disk budget decides beyond that).
 *
 * Age assumes received_at grows with id (it is the node clock at insert); after the node clock
 * steps back, rows behind a newer row wait for it.
 * Size is an estimate: rows (max id - min id + 1, ids are never reused and only retention
 * deletes) times the average stored row of the newest 1,000 plus a per-row overhead.
 */
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import type { Store } from '../store/types.js';
import type { IngestMetrics } from './metrics.js';

const CHUNK = 5000;
// rowid, index entries, record header: measured roughly on this schema
const ROW_OVERHEAD = 48;

export interface RetentionResult {
  deletedAge: number;
  deletedSize: number;
  blocked: number;
}

export class Retention {
  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly metrics: IngestMetrics,
    private readonly log: Logger,
    private readonly opts: { retentionAge: number; retentionBytes: number; uplinkEnabled?: boolean },
  ) {}

  private bounds(): { min: number; max: number } | undefined {
    const r = this.store
      .query<{ min: number | null; max: number | null }>('SELECT min(id) AS min, max(id) AS max FROM reports')
      .get();
    return r?.min == null || r.max == null ? undefined : { min: r.min, max: r.max };
  }

  private uploaded(): number {
    if (!this.opts.uplinkEnabled) return Number.MAX_SAFE_INTEGER;
    return (
      this.store.query<{ position: number }>("SELECT position FROM cursors WHERE name = 'reports'").get()
        ?.position ?? 0
    );
  }

  /** The highest id whose received_at is before the cutoff, scanning from the oldest. */
  private ageBoundary(minId: number, cutoff: number): number {
    const stmt = this.store.query<{ id: number; received_at: number }>(
      'SELECT id, received_at FROM reports WHERE id >= ? ORDER BY id LIMIT ?',
    );
    let boundary = minId - 1;
    let from = minId;
    for (;;) {
      const rows = stmt.all(from, CHUNK);
      for (const r of rows) {
        if (r.received_at >= cutoff) return boundary;
        boundary = r.id;
      }
      if (rows.length < CHUNK) return boundary;
      from = boundary + 1;
    }
  }

  private async deleteUpTo(fromId: number, upTo: number, reason: 'age' | 'size'): Promise<number> {
    let deleted = 0;
    for (let lo = fromId; lo <= upTo; lo += CHUNK) {
      const hi = Math.min(upTo, lo + CHUNK - 1);
      const res = await this.store.write({
        sql: [{ sql: 'DELETE FROM reports WHERE id >= ? AND id <= ?', params: [lo, hi] }],
        freesSpace: true,
      });
      deleted += res.sql[0]?.changes ?? 0;
    }
    if (deleted) this.metrics.retentionDeleted.inc({ reason }, deleted);
    return deleted;
  }

  async run(): Promise<RetentionResult> {
    const out: RetentionResult = { deletedAge: 0, deletedSize: 0, blocked: 0 };
    let b = this.bounds();
    if (!b) {
      this.metrics.retentionBlocked.set(0);
      return out;
    }
    const cursor = this.uploaded();
    const cutoff = this.clock.now() - this.opts.retentionAge;
    const ageB = this.ageBoundary(b.min, cutoff);
    if (ageB >= b.min) {
      const allowed = Math.min(ageB, cursor);
      out.blocked = Math.max(out.blocked, ageB - Math.max(allowed, b.min - 1));
      if (allowed >= b.min) out.deletedAge = await this.deleteUpTo(b.min, allowed, 'age');
    }
    b = this.bounds();
    if (b) {
      const avg =
        (this.store
          .query<{ avg: number | null }>(
            'SELECT avg(length(body)) AS avg FROM (SELECT body FROM reports ORDER BY id DESC LIMIT 1000)',
          )
          .get()?.avg ?? 0) + ROW_OVERHEAD;
      const rows = b.max - b.min + 1;
      if (rows * avg > this.opts.retentionBytes) {
        // trim to 90% so retention does not run on every tick right at the limit
        const excess = Math.ceil((rows * avg - this.opts.retentionBytes * 0.9) / avg);
        const sizeB = b.min + excess - 1;
        const allowed = Math.min(sizeB, cursor);
        out.blocked = Math.max(out.blocked, sizeB - Math.max(allowed, b.min - 1));
        if (allowed >= b.min) out.deletedSize = await this.deleteUpTo(b.min, allowed, 'size');
      }
    }
    this.metrics.retentionBlocked.set(out.blocked);
    if (out.blocked > 0) {
      this.log.warn(
        { blocked: out.blocked },
        'retention keeps reports the uplink has not sent yet; check the fleet sync',
      );
    }
    return out;
  }
}
