/**
 * The revision log on disk (`kv_log`), SQL alone. Rows are appended in revision order (row id
 * order is revision order); each row points at the previous row of its key (`prev_id`), so the
 * version of a key at any revision since the compaction point is found by walking back from its
 * newest row, which the in-memory KeySpace knows.
 */
import type Database from 'better-sqlite3';
import type { KeyEntry } from '../keyspace.js';
import type { KeyValue } from '../types.js';

const EMPTY = Buffer.alloc(0);

/** One version of a key: the row that made it. */
export interface Version {
  id: number;
  rev: number;
  createRevision: number;
  version: number;
  lease: bigint;
}

/** A row without its value. */
export interface LogMeta extends Version {
  deleted: boolean;
  prevId: number | null;
}

/** A row as replay and compaction read it. */
export interface LogRow extends LogMeta {
  key: Buffer;
  value: Buffer;
}

interface RawMeta {
  rev: number;
  deleted: number;
  create_rev: number;
  version: number;
  lease_hi: number;
  lease_lo: number;
  prev_id: number | null;
}

/** Lease IDs are int64: read as two halves so every other column stays a plain number. */
const LEASE_COLS = 'lease >> 32 AS lease_hi, lease & 4294967295 AS lease_lo';

function lease(r: RawMeta): bigint {
  return r.lease_hi === 0 && r.lease_lo === 0 ? 0n : (BigInt(r.lease_hi) << 32n) | BigInt(r.lease_lo);
}

interface RawRow extends RawMeta {
  id: number;
  key: Buffer;
  value: Buffer;
}

function toMeta(id: number, r: RawMeta): LogMeta {
  return {
    id,
    rev: r.rev,
    deleted: r.deleted === 1,
    createRevision: r.create_rev,
    version: r.version,
    lease: lease(r),
    prevId: r.prev_id,
  };
}

export class LogReader {
  private readonly metaStmt: Database.Statement;
  private readonly valueStmt: Database.Statement;
  private readonly valuesStmt: Database.Statement;
  private readonly fromStmt: Database.Statement;
  private readonly firstAtStmt: Database.Statement;
  private readonly boundsStmt: Database.Statement;

  constructor(db: Database.Database) {
    // Lease IDs are int64: only that column needs BigInt; the rest are safe JS integers.
    this.metaStmt = db.prepare(
      `SELECT rev, deleted, create_rev, version, ${LEASE_COLS}, prev_id FROM kv_log WHERE id = ?`,
    );
    this.valueStmt = db.prepare('SELECT value FROM kv_log WHERE id = ?').pluck();
    // Values of many rows in one statement; hex text decodes through Node's pooled allocator,
    // which is several times cheaper than one BLOB Buffer per row (measured on 1,000-key ranges).
    this.valuesStmt = db.prepare(
      'SELECT id, hex(value) AS v FROM kv_log WHERE id IN (SELECT value FROM json_each(?))',
    );
    this.fromStmt = db.prepare(
      `SELECT id, rev, key, deleted, create_rev, version, ${LEASE_COLS}, prev_id, value FROM kv_log WHERE id >= ? AND id <= ? ORDER BY id LIMIT ?`,
    );
    this.firstAtStmt = db.prepare('SELECT id, rev FROM kv_log WHERE id >= ? ORDER BY id LIMIT 1');
    this.boundsStmt = db.prepare('SELECT min(id) AS lo, max(id) AS hi, max(rev) AS rev FROM kv_log');
  }

  meta(id: number): LogMeta | undefined {
    const r = this.metaStmt.get(id) as RawMeta | undefined;
    return r ? toMeta(id, r) : undefined;
  }

  value(id: number): Buffer {
    return (this.valueStmt.get(id) as Buffer | undefined) ?? EMPTY;
  }

  /** Values of `ids` (rows that do not exist are missing from the map). */
  values(ids: readonly number[]): Map<number, Buffer> {
    const out = new Map<number, Buffer>();
    if (ids.length === 0) return out;
    if (ids.length === 1) {
      const v = this.valueStmt.get(ids[0]) as Buffer | undefined;
      if (v) out.set(ids[0]!, v);
      return out;
    }
    for (const r of this.valuesStmt.all(JSON.stringify(ids)) as { id: number; v: string }[])
      out.set(r.id, r.v.length === 0 ? EMPTY : Buffer.from(r.v, 'hex'));
    return out;
  }

  /**
   * The version of a key at revision `rev`: its newest row at or below `rev`, found by walking
   * back from `e`. Undefined when the key did not exist then (never created, or deleted).
   */
  at(e: KeyEntry, rev: number): Version | undefined {
    if (e.modRevision <= rev) {
      if (e.version === 0) return undefined;
      return {
        id: e.id,
        rev: e.modRevision,
        createRevision: e.createRevision,
        version: e.version,
        lease: e.lease,
      };
    }
    let id: number | null = e.id;
    while (id !== null) {
      const m = this.meta(id);
      // A row compaction removed: nothing at or below `rev` survives for this key.
      if (!m) return undefined;
      if (m.rev <= rev) return m.deleted ? undefined : m;
      id = m.prevId;
    }
    return undefined;
  }

  /** Rows with ids in [fromId, toId], in id order, at most `limit`. */
  rows(fromId: number, toId: number, limit: number): LogRow[] {
    return (this.fromStmt.all(fromId, toId, limit) as RawRow[]).map((r) => ({
      ...toMeta(r.id, r),
      key: r.key,
      value: r.value,
    }));
  }

  /** The first row id whose revision is >= `rev` (ids and revisions grow together), or undefined. */
  firstIdAtRev(rev: number): number | undefined {
    const b = this.bounds();
    if (b.lo === null || b.hi === null || (b.rev ?? 0) < rev) return undefined;
    // Lower bound over ids, where probing `x` reads the first row at or after it (compaction
    // leaves gaps). A probe that lands below `rev` rules out every id up to the row it found.
    let lo = b.lo;
    let hi = b.hi;
    while (lo < hi) {
      const mid = lo + Math.floor((hi - lo) / 2);
      const r = this.firstAtStmt.get(mid) as { id: number; rev: number };
      if (r.rev >= rev) hi = mid;
      else lo = r.id + 1;
    }
    return (this.firstAtStmt.get(lo) as { id: number; rev: number } | undefined)?.id;
  }

  bounds(): { lo: number | null; hi: number | null; rev: number | null } {
    return this.boundsStmt.get() as { lo: number | null; hi: number | null; rev: number | null };
  }
}

/** A row as an etcd KeyValue (`key` from the caller, value optional). */
export function versionToKv(key: Buffer, m: Version, value: Buffer = EMPTY): KeyValue {
  return {
    key,
    createRevision: m.createRevision,
    modRevision: m.rev,
    version: m.version,
    value,
    lease: m.lease,
  };
}
