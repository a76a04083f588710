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
import { CompactedError, StoreClosedError, WatchOverflowError } from '../errors.js';
import type { ChangeEvent } from './engine.js';
import { contains, interval, type KeyInterval, keyId } from './keys.js';
import { type LogReader, type LogRow, versionToKv } from './sql/log.js';
import type { KeyValue, WatchEvent, WatchHandle, WatchListener, WatchOptions } from './types.js';

const EMPTY = Buffer.alloc(0);

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
  /** While replaying: the log row to read next (found from `next` on the first step). */
  cursor?: number;
  synced: boolean;
  paused: boolean;
  buffer: WatchEvent[];
  bufferRev: number;
  done: boolean;
}

export class WatchHub {
  private readonly watchers = new Map<number, Watcher>();
  private readonly byKey = new Map<string, Set<Watcher>>();
  private readonly ranged = new Set<Watcher>();
  private readonly replaying = new Set<Watcher>();
  private nextId = 1;
  private replayScheduled = false;
  private prevKvWatchers = 0;

  constructor(
    private readonly log: LogReader,
    /** Last revision whose events were handed to the hub. */
    private delivered: number,
    private readonly compactRevision: () => number,
    private readonly bufferLimit: number,
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
      const { rows, last } = this.readLog(w);
      if (last < this.delivered) again = true;
      const events: WatchEvent[] = [];
      for (const r of rows) {
        if (!contains(w.iv, r.key)) continue;
        if (r.deleted ? w.noDelete : w.noPut) continue;
        const kv: KeyValue = r.deleted
          ? { key: r.key, createRevision: 0, modRevision: r.rev, version: 0, value: EMPTY, lease: 0n }
          : versionToKv(r.key, r, r.value);
        const ev: WatchEvent = { type: r.deleted ? 'DELETE' : 'PUT', kv };
        if (w.prevKv && r.prevId !== null) {
          const p = this.log.meta(r.prevId);
          // The previous version, when it existed and compaction has not removed it.
          if (p && !p.deleted) ev.prevKv = versionToKv(r.key, p, this.log.value(p.id));
        }
        events.push(ev);
      }
      w.next = last + 1;
      if (w.next > this.delivered) {
        w.synced = true;
        w.cursor = undefined;
        this.replaying.delete(w);
      }
      if (events.length > 0) this.emit(w, events, this.delivered);
    }
    if (again || [...this.replaying].some((w) => !w.paused)) this.scheduleReplay();
  }

  /**
   * The next rows for a replaying watcher: whole revisions from `w.next`, up to the hub's
   * delivered revision, about REPLAY_CHUNK rows (a revision is never split between two steps).
   * `last` is the revision the watcher has then seen everything of.
   */
  private readLog(w: Watcher): { rows: LogRow[]; last: number } {
    w.cursor ??= this.log.firstIdAtRev(w.next) ?? Number.MAX_SAFE_INTEGER;
    let rows = this.log.rows(w.cursor, Number.MAX_SAFE_INTEGER, REPLAY_CHUNK + 1);
    // Rows of revisions not yet delivered (committed, not yet durable) wait for live delivery.
    let end = rows.findIndex((r) => r.rev > this.delivered);
    if (end < 0) end = rows.length;
    let last = this.delivered;
    if (end > REPLAY_CHUNK) {
      // A full chunk: stop before the revision it ends in, unless it holds just that one.
      const cut = rows[REPLAY_CHUNK]!.rev;
      const whole = rows.findIndex((r) => r.rev === cut);
      if (whole > 0) {
        end = whole;
        last = cut - 1;
      } else {
        // One revision holds the whole chunk (a large delete or txn): read on to its end.
        rows.length = REPLAY_CHUNK + 1;
        for (;;) {
          const more = this.log.rows(rows[rows.length - 1]!.id + 1, Number.MAX_SAFE_INTEGER, REPLAY_CHUNK);
          const same = more.findIndex((r) => r.rev !== cut);
          rows.push(...(same < 0 ? more : more.slice(0, same)));
          if (same >= 0 || more.length < REPLAY_CHUNK) break;
        }
        end = rows.length;
        last = cut;
      }
    }
    rows = rows.slice(0, end);
    if (rows.length > 0) w.cursor = rows[rows.length - 1]!.id + 1;
    return { rows, last };
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
