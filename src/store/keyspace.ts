/**
 * The key space's index, in memory (as etcd keeps its `treeIndex`): for every key that has a row
 * in the revision log at or above the compaction point, where its newest row is and what that
 * row says. The log on disk is append-only and keyed by row id alone, so a put writes one row
 * and dirties no page chosen by its key: what a put costs the card does not grow with the
 * number of keys. Older versions are found by following each row's `prev_id` back through the
 * log (see LogReader).
 *
 * Keys are held as latin1 strings: one JS char per byte, so string order is byte order and a
 * string costs far less memory than a Buffer.
 *
 * Changes are journaled so a failed request (a savepoint rolled back) or a failed transaction
 * can be undone exactly: `mark()` before, `undo(mark)` to roll back, `forget()` once committed.
 */

/** The newest row of one key. A tombstone has `version` 0 and `createRevision` 0. */
export interface KeyEntry {
  /** The key, as latin1. */
  readonly k: string;
  /** Row id of the newest row in kv_log. */
  readonly id: number;
  /** Revision of the newest row (the put's or the delete's). */
  readonly modRevision: number;
  readonly createRevision: number;
  readonly version: number;
  readonly lease: bigint;
}

export class KeySpace {
  private readonly map = new Map<string, KeyEntry>();
  /** Every key of `map`, in byte order. */
  private sorted: string[] = [];
  private readonly byLease = new Map<bigint, Set<string>>();
  private live = 0;
  private journal: [string, KeyEntry | undefined][] = [];

  /** Live keys (not counting tombstones). */
  get size(): number {
    return this.live;
  }

  /** Keys with an entry, tombstones included (for memory accounting). */
  get entries(): number {
    return this.map.size;
  }

  get(k: string): KeyEntry | undefined {
    return this.map.get(k);
  }

  /** The live entry of `k`, undefined when absent or deleted. */
  current(k: string): KeyEntry | undefined {
    const e = this.map.get(k);
    return e && e.version > 0 ? e : undefined;
  }

  /** Install `e` as the newest row of its key (journaled). */
  set(e: KeyEntry): void {
    const old = this.map.get(e.k);
    // Entries are never changed in place, so the journal can hold the old object itself.
    this.journal.push([e.k, old]);
    this.apply(e.k, old, e);
  }

  /** Forget a key whose history compaction removed entirely (not journaled). */
  drop(k: string): void {
    const old = this.map.get(k);
    if (old) this.apply(k, old, undefined);
  }

  /** Load an entry at open (not journaled). */
  load(e: KeyEntry): void {
    this.apply(e.k, this.map.get(e.k), e);
  }

  mark(): number {
    return this.journal.length;
  }

  /** Roll back every change since `mark`, newest first. */
  undo(mark: number): void {
    while (this.journal.length > mark) {
      const [k, prev] = this.journal.pop()!;
      this.apply(k, this.map.get(k), prev);
    }
  }

  /** The changes so far are committed: drop the journal. */
  forget(): void {
    this.journal = [];
  }

  /** Live keys attached to `lease`, in key order. */
  leaseKeys(lease: bigint): string[] {
    const s = this.byLease.get(lease);
    return s ? [...s].sort() : [];
  }

  /**
   * Entries (tombstones included) with keys in [start, end) in key order; `end` undefined means
   * to the end of the key space. With `single`, just `start`.
   */
  *scan(start: string, end: string | undefined, single: boolean, descending = false): Generator<KeyEntry> {
    if (single) {
      const e = this.map.get(start);
      if (e) yield e;
      return;
    }
    const from = lowerBound(this.sorted, start);
    const to = end === undefined ? this.sorted.length : lowerBound(this.sorted, end);
    if (descending) for (let i = to - 1; i >= from; i--) yield this.map.get(this.sorted[i]!)!;
    else for (let i = from; i < to; i++) yield this.map.get(this.sorted[i]!)!;
  }

  private apply(k: string, old: KeyEntry | undefined, next: KeyEntry | undefined): void {
    if (old && old.version > 0) {
      this.live--;
      if (old.lease !== 0n) this.unlease(old.lease, k);
    }
    if (next) {
      if (!old) insertSorted(this.sorted, k);
      this.map.set(k, next);
      if (next.version > 0) {
        this.live++;
        if (next.lease !== 0n) {
          const s = this.byLease.get(next.lease);
          if (s) s.add(k);
          else this.byLease.set(next.lease, new Set([k]));
        }
      }
    } else if (old) {
      this.map.delete(k);
      removeSorted(this.sorted, k);
    }
  }

  private unlease(lease: bigint, k: string): void {
    const s = this.byLease.get(lease);
    if (!s) return;
    s.delete(k);
    if (s.size === 0) this.byLease.delete(lease);
  }
}

/** First index whose element is >= x. */
function lowerBound(a: string[], x: string): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function insertSorted(a: string[], x: string): void {
  // Keys mostly arrive in increasing order at open and under many workloads: append is O(1).
  const n = a.length;
  if (n === 0 || a[n - 1]! < x) a.push(x);
  else a.splice(lowerBound(a, x), 0, x);
}

function removeSorted(a: string[], x: string): void {
  const i = lowerBound(a, x);
  if (a[i] === x) a.splice(i, 1);
}
