/**
 * Retention of `reports` by age and by size, oldest first, in chunks so the writer is never
 * blocked for long. With an uplink configured nothing above `cursors.reports` (not yet uploaded)
 * is deleted; what retention would have deleted but kept is exported as
 * `edgekeeper_ingest_retention_blocked_reports` (the fleet sync's disk budget decides beyond that).
 *
 * Age is elapsed time, not a difference of stamps: received_at is the node's wall clock at insert,
 * and a Pi's clock steps (NTP, by up to years). Each run looks for a step since the last one
 * (WallFrames) and records it in ingest_clock_steps: the last report stamped before it and the
 * shift that brings earlier stamps to today's clock. A step forward of a year therefore deletes
 * nothing early, a step back keeps nothing for a year. At the first run after a start, a newest
 * stamp ahead of the clock means it went back while the node was down (recorded the same way);
 * a step forward while down cannot be told from downtime and counts as time that passed.
 * Age assumes corrected stamps grow with id; a row behind a newer one waits for it.
 * Size is an estimate: rows (max id - min id + 1, ids are never reused and only retention
 * deletes) times the average stored row of the newest 1,000 plus a per-row overhead.
 */
import { type Clock, WallFrames } from '../clock.js';
import type { Logger } from '../log.js';
import type { Store } from '../store/types.js';
import type { IngestMetrics } from './metrics.js';

const CHUNK = 5000;
// rowid, index entries, record header: measured roughly on this schema
const ROW_OVERHEAD = 48;
// stamps this close to the last look's clock still belong to its frame (slew, commit delay)
const FRAME_SLACK_MS = 2000;

export interface RetentionResult {
  deletedAge: number;
  deletedSize: number;
  blocked: number;
}

export class Retention {
  private readonly frames: WallFrames;
  /** At the last run: the newest id and both clocks. */
  private last: { maxId: number; wall: number; mono: number } | undefined;

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly metrics: IngestMetrics,
    private readonly log: Logger,
    private readonly opts: { retentionAge: number; retentionBytes: number; uplinkEnabled?: boolean },
  ) {
    this.frames = new WallFrames(clock);
  }

  /** Records a wall-clock step since the last run (see the top of this file). */
  private async noteStep(): Promise<void> {
    const step = this.frames.look();
    const wall = this.clock.now();
    const mono = this.clock.monotonic();
    const newest = this.store
      .query<{ id: number; at: number }>('SELECT id, received_at AS at FROM reports ORDER BY id DESC LIMIT 1')
      .get();
    let at: { id: number; shift: number } | undefined;
    if (!this.last) {
      if (newest && newest.at > wall + FRAME_SLACK_MS) at = { id: newest.id, shift: wall - newest.at };
    } else if (step !== 0) {
      // the last report still stamped in the old frame: it came after the last run, with a stamp
      // within the old frame's reach
      const l = this.last;
      const b = this.store
        .query<{ id: number | null }>(
          'SELECT max(id) AS id FROM reports WHERE id > ? AND received_at BETWEEN ? AND ?',
        )
        .get(l.maxId, l.wall - FRAME_SLACK_MS, l.wall + (mono - l.mono) + FRAME_SLACK_MS);
      at = { id: b?.id ?? l.maxId, shift: step };
    }
    if (at && at.id > 0) {
      await this.store.write({
        sql: [
          {
            sql: `INSERT INTO ingest_clock_steps(report_id, shift) VALUES (?, ?)
ON CONFLICT(report_id) DO UPDATE SET shift = shift + excluded.shift`,
            params: [at.id, at.shift],
          },
        ],
      });
      this.log.warn(
        { stepMs: at.shift, reportId: at.id },
        'the wall clock stepped; retention ages reports by elapsed time',
      );
    }
    this.last = { maxId: newest?.id ?? 0, wall, mono };
  }

  /** Per recorded step, oldest first: reports up to `id` get `shift` (the sum of later steps). */
  private shifts(): { id: number; shift: number }[] {
    const steps = this.store
      .query<{ id: number; shift: number }>(
        'SELECT report_id AS id, shift FROM ingest_clock_steps ORDER BY report_id DESC',
      )
      .all();
    let sum = 0;
    const out: { id: number; shift: number }[] = [];
    for (const s of steps) {
      sum += s.shift;
      out.unshift({ id: s.id, shift: sum });
    }
    return out;
  }

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
    const shifts = this.shifts();
    const shiftOf = (id: number) => {
      while (shifts.length > 0 && shifts[0]!.id < id) shifts.shift();
      return shifts[0]?.shift ?? 0;
    };
    const stmt = this.store.query<{ id: number; received_at: number }>(
      'SELECT id, received_at FROM reports WHERE id >= ? ORDER BY id LIMIT ?',
    );
    let boundary = minId - 1;
    let from = minId;
    for (;;) {
      const rows = stmt.all(from, CHUNK);
      for (const r of rows) {
        if (r.received_at + shiftOf(r.id) >= cutoff) return boundary;
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
    await this.noteStep();
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
    // steps before the oldest report left no longer matter
    const stale = this.store
      .query<{ n: number }>('SELECT count(*) AS n FROM ingest_clock_steps WHERE report_id < ?')
      .get(b?.min ?? Number.MAX_SAFE_INTEGER)!.n;
    if (stale > 0)
      await this.store.write({
        sql: [
          {
            sql: 'DELETE FROM ingest_clock_steps WHERE report_id < ?',
            params: [b?.min ?? Number.MAX_SAFE_INTEGER],
          },
        ],
      });
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
