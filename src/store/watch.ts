/**
 * The watch hub: fans committed events out to watchers, and replays history for watchers that
 * start in the past.
 *
 * A watcher is either synced (it has seen everything up to the hub's last committed revision and
 * takes live events) or replaying (it reads the log from its next revision, in chunks between
 * event-loop turns, until it reaches the hub's revision, then becomes synced). Replay only reads
 * revisions the hub has already delivered, so replay and live delivery never overlap or leave a
 * gap. A paused watcher buffers live events up to the limit and is then cancelled; a replaying
 * watcher that is paused simply stops reading.
 */
import type Database from 'better-sqlite3';
import { CompactedError, StoreClosedError, WatchOverflowError } from '../errors.js';
import type { ChangeEvent } from './engine.js';
import { contains, interval, type KeyInterval, keyId } from './keys.js';
import { type KvReader, rowToKv } from './sql/kvread.js';
import type { KeyValue, WatchEvent, WatchHandle, WatchListener, WatchOptions } from './types.js';

/** Rows read per replay step; bounds how long one step holds the event loop. */
const REPLAY_CHUNK = 512;

interface Watcher {
  id: number;
  iv: KeyInterval;
  prevKv: boolean;
  noPut: boolean;
  noDelete: boolean;
  listener: WatchListener;
  /** Next revision this watcher must receive. */
  next: number;
  synced: boolean;
  paused: boolean;
  buffer: WatchEvent[];
  bufferRev: number;
  done: boolean;
}

interface LogRow {
  id: bigint;
  rev: bigint;
  key: Buffer;
  deleted: bigint;
  create_rev: bigint;
  version: bigint;
  lease: bigint;
  value: Buffer;
}

export class WatchHub {
  private readonly watchers = new Map<number, Watcher>();
  private readonly byKey = new Map<string, Set<Watcher>>();
  private readonly ranged = new Set<Watcher>();
  private readonly replaying = new Set<Watcher>();
  private nextId = 1;
  private replayScheduled = false;
  private prevKvWatchers = 0;
  private readonly stmts = new Map<string, Database.Statement>();

  constructor(
    private readonly db: Database.Database,
    /** Last revision whose events were handed to the hub. */
    private delivered: number,
    private readonly compactRevision: () => number,
    private readonly bufferLimit: number,
    /** Reads previous values for replayed events. */
    private readonly kv: KvReader,
  ) {}

  get size(): number {
    return this.watchers.size;
  }

  /** True when some watcher wants previous values (the writer then reads them). */
  get wantsPrev(): boolean {
    return this.prevKvWatchers > 0;
  }

  get revision(): number {
    return this.delivered;
  }

  watch(opts: WatchOptions, listener: WatchListener): WatchHandle {
    const start = opts.startRevision && opts.startRevision > 0 ? opts.startRevision : this.delivered + 1;
    const compacted = this.compactRevision();
    if (start < compacted) throw new CompactedError(compacted);
    const w: Watcher = {
      id: this.nextId++,
      iv: interval(opts.key, opts.rangeEnd),
      prevKv: !!opts.prevKv,
      noPut: !!opts.noPut,
      noDelete: !!opts.noDelete,
      listener,
      next: start,
      synced: start > this.delivered,
      paused: false,
      buffer: [],
      bufferRev: 0,
      done: false,
    };
    this.watchers.set(w.id, w);
    if (w.prevKv) this.prevKvWatchers++;
    if (w.iv.single) {
      const k = keyId(w.iv.start);
      const set = this.byKey.get(k) ?? new Set<Watcher>();
      this.byKey.set(k, set);
      set.add(w);
    } else this.ranged.add(w);
    if (!w.synced) {
      this.replaying.add(w);
      this.scheduleReplay();
    }
    return {
      id: w.id,
      cancel: () => this.remove(w),
      pause: () => {
        w.paused = true;
      },
      resume: () => this.resume(w),
      progressRevision: () =>
        w.synced && !w.paused && w.buffer.length === 0 && !w.done ? this.delivered : undefined,
    };
  }

  private remove(w: Watcher): void {
    if (w.done) return;
    w.done = true;
    this.watchers.delete(w.id);
    if (w.prevKv) this.prevKvWatchers--;
    this.replaying.delete(w);
    if (w.iv.single) {
      const k = keyId(w.iv.start);
      const set = this.byKey.get(k);
      set?.delete(w);
      if (set?.size === 0) this.byKey.delete(k);
    } else this.ranged.delete(w);
  }

  private cancel(w: Watcher, reason: Error): void {
    if (w.done) return;
    this.remove(w);
    try {
      w.listener.onCancel(reason);
    } catch {
      // The watcher is gone either way.
    }
  }

  private resume(w: Watcher): void {
    if (w.done || !w.paused) return;
    w.paused = false;
    if (w.buffer.length > 0) {
      const events = w.buffer;
      w.buffer = [];
      this.emit(w, events, this.delivered);
    }
    if (!w.synced) this.scheduleReplay();
  }

  /** Events of committed write requests, in commit order; `revision` is the batch's last revision. */
  publish(changes: { rev: number; events: ChangeEvent[] }[], revision: number): void {
    for (const { rev, events } of changes) {
      if (events.length === 0) continue;
      // Collect per watcher, then deliver once per revision.
      const hits = new Map<Watcher, WatchEvent[]>();
      for (const ev of events) {
        const single = this.byKey.get(keyId(ev.kv.key));
        if (single) for (const w of single) this.match(w, ev, rev, hits);
        for (const w of this.ranged) if (contains(w.iv, ev.kv.key)) this.match(w, ev, rev, hits);
      }
      this.delivered = rev;
      for (const [w, evs] of hits) this.deliver(w, evs, revision);
    }
    this.delivered = Math.max(this.delivered, revision);
  }

  private match(w: Watcher, ev: ChangeEvent, rev: number, hits: Map<Watcher, WatchEvent[]>): void {
    if (!w.synced || rev < w.next) return;
    if (ev.type === 'PUT' ? w.noPut : w.noDelete) return;
    const list = hits.get(w) ?? [];
    if (list.length === 0) hits.set(w, list);
    list.push(w.prevKv || !ev.prevKv ? ev : { type: ev.type, kv: ev.kv });
  }

  private deliver(w: Watcher, evs: WatchEvent[], revision: number): void {
    if (w.done) return;
    if (w.paused) {
      if (w.buffer.length + evs.length > this.bufferLimit) {
        this.cancel(w, new WatchOverflowError(this.bufferLimit));
        return;
      }
      for (const e of evs) w.buffer.push(e);
      return;
    }
    this.emit(w, evs, revision);
  }

  /** A listener that throws loses its watcher, never the commit that produced the events. */
  private emit(w: Watcher, evs: WatchEvent[], revision: number): void {
    try {
      w.listener.onEvents(evs, revision);
    } catch (e) {
      this.cancel(w, e instanceof Error ? e : new Error(String(e)));
    }
  }

  private scheduleReplay(): void {
    if (this.replayScheduled) return;
    this.replayScheduled = true;
    setImmediate(() => {
      this.replayScheduled = false;
      this.replayStep();
    });
  }

  private replayStep(): void {
    let again = false;
    for (const w of [...this.replaying]) {
      if (w.done || w.paused) continue;
      const compacted = this.compactRevision();
      if (w.next < compacted) {
        this.cancel(w, new CompactedError(compacted));
        continue;
      }
      const rows = this.readLog(w, REPLAY_CHUNK);
      let lastRev = this.delivered;
      if (rows.length === REPLAY_CHUNK) {
        // Stop at a revision boundary so a revision is never split between two steps.
        const cut = Number(rows[rows.length - 1]!.rev);
        const whole = rows.filter((r) => Number(r.rev) < cut);
        if (whole.length > 0) {
          rows.length = whole.length;
          lastRev = cut - 1;
        } else {
          rows.push(...this.readRev(w, cut, rows[rows.length - 1]!.id));
          lastRev = cut;
        }
        again = true;
      }
      const events: WatchEvent[] = [];
      for (const r of rows) {
        const deleted = r.deleted === 1n;
        if (deleted ? w.noDelete : w.noPut) continue;
        const rev = Number(r.rev);
        const kv: KeyValue = deleted
          ? { key: r.key, createRevision: 0, modRevision: rev, version: 0, value: Buffer.alloc(0), lease: 0n }
          : rowToKv({ ...r, mod_rev: r.rev });
        const ev: WatchEvent = { type: deleted ? 'DELETE' : 'PUT', kv };
        if (w.prevKv) {
          const p = this.kv.previous(r.key, rev);
          if (p) ev.prevKv = p;
        }
        events.push(ev);
      }
      w.next = lastRev + 1;
      if (w.next > this.delivered) {
        w.synced = true;
        this.replaying.delete(w);
      }
      if (events.length > 0) this.emit(w, events, this.delivered);
    }
    if (again || [...this.replaying].some((w) => !w.paused)) this.scheduleReplay();
  }

  private readLog(w: Watcher, limit: number): LogRow[] {
    const cond = w.iv.single ? 'key = ?' : w.iv.end === undefined ? 'key >= ?' : 'key >= ? AND key < ?';
    const sql = `SELECT id, rev, key, deleted, create_rev, version, lease, value FROM kv_log WHERE ${cond} AND rev >= ? AND rev <= ? ORDER BY id LIMIT ?`;
    const keys = w.iv.single || w.iv.end === undefined ? [w.iv.start] : [w.iv.start, w.iv.end];
    return this.stmt(sql).all(...keys, w.next, this.delivered, limit) as LogRow[];
  }

  private readRev(w: Watcher, rev: number, afterId: bigint): LogRow[] {
    const cond = w.iv.single ? 'key = ?' : w.iv.end === undefined ? 'key >= ?' : 'key >= ? AND key < ?';
    const sql = `SELECT id, rev, key, deleted, create_rev, version, lease, value FROM kv_log WHERE ${cond} AND rev = ? AND id > ? ORDER BY id`;
    const keys = w.iv.single || w.iv.end === undefined ? [w.iv.start] : [w.iv.start, w.iv.end];
    return this.stmt(sql).all(...keys, rev, afterId) as LogRow[];
  }

  private stmt(sql: string): Database.Statement {
    let s = this.stmts.get(sql);
    if (!s) {
      s = this.db.prepare(sql).safeIntegers(true);
      this.stmts.set(sql, s);
    }
    return s;
  }

  /** Cancel every watcher (store shutdown). */
  closeAll(): void {
    for (const w of [...this.watchers.values()]) this.cancel(w, new StoreClosedError());
  }

  /** Watchers whose start revision the new compaction point has passed while replaying. */
  compacted(): void {
    this.scheduleReplay();
  }
}
