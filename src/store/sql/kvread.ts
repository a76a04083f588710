/**
 * Reads of the key space, on any connection: the main thread's read connection serves Range,
 * the writer's connection serves the reads inside a txn (which must see the txn's own writes).
 * SQL alone lives here; etcd's rules for ranges are applied on top of it.
 */
import type Database from 'better-sqlite3';
import { CompactedError, FutureRevisionError } from '../../errors.js';
import { interval, type KeyInterval } from '../keys.js';
import type { KeyValue, RangeRequest, SortTarget } from '../types.js';

const EMPTY = Buffer.alloc(0);

interface Row {
  key: Buffer;
  create_rev: bigint;
  mod_rev: bigint;
  version: bigint;
  lease: bigint;
  value?: Buffer;
}

export function rowToKv(r: Row): KeyValue {
  return {
    key: r.key,
    createRevision: Number(r.create_rev),
    modRevision: Number(r.mod_rev),
    version: Number(r.version),
    value: r.value ?? EMPTY,
    lease: r.lease,
  };
}

/**
 * A row as the bulk reads select it (`FAST_COLS`): key and value as hex text, revisions as
 * numbers and the 64-bit lease split in halves. Measured on 1,000-key ranges: better-sqlite3
 * spends ~3 us making each BLOB a Buffer (a fresh allocation per blob), while a hex string
 * decoded by Buffer.from comes from Node's pooled allocator; the range went from ~6 ms to ~1.4 ms.
 */
interface FastRow {
  hkey: string;
  create_rev: number;
  mod_rev: number;
  version: number;
  lease_hi: number;
  lease_lo: number;
  hvalue?: string;
}

/** Select list for FastRow from table alias `t` (`''` for none); `value` is the value column or null. */
function fastCols(t: string, value: string | null, modRev = `${t}mod_rev`): string {
  const v = value ? `, hex(${value}) AS hvalue` : '';
  return `hex(${t}key) AS hkey, ${t}create_rev AS create_rev, ${modRev} AS mod_rev, ${t}version AS version, ${t}lease >> 32 AS lease_hi, ${t}lease & 4294967295 AS lease_lo${v}`;
}

function fastToKv(r: FastRow): KeyValue {
  return {
    key: Buffer.from(r.hkey, 'hex'),
    createRevision: r.create_rev,
    modRevision: r.mod_rev,
    version: r.version,
    value: r.hvalue ? Buffer.from(r.hvalue, 'hex') : EMPTY,
    lease: r.lease_hi === 0 && r.lease_lo === 0 ? 0n : (BigInt(r.lease_hi) << 32n) | BigInt(r.lease_lo),
  };
}

export interface RangeResult {
  kvs: KeyValue[];
  more: boolean;
  count: number;
}

const ORDER_COLUMN: Record<SortTarget, string> = {
  KEY: 'k.key',
  VERSION: 'k.version',
  CREATE: 'k.create_rev',
  MOD: 'k.mod_rev',
  VALUE: 'l.value',
};

const SORT_FIELD: Record<SortTarget, (kv: KeyValue) => number | Buffer> = {
  KEY: (kv) => kv.key,
  VERSION: (kv) => kv.version,
  CREATE: (kv) => kv.createRevision,
  MOD: (kv) => kv.modRevision,
  VALUE: (kv) => kv.value,
};

function keyCondition(iv: KeyInterval, col: string): string {
  if (iv.single) return `${col} = ?`;
  return iv.end === undefined ? `${col} >= ?` : `${col} >= ? AND ${col} < ?`;
}

function keyParams(iv: KeyInterval): Buffer[] {
  if (iv.single || iv.end === undefined) return [iv.start];
  return [iv.start, iv.end];
}

export class KvReader {
  private readonly stmts = new Map<string, Database.Statement>();
  private readonly currentStmt: Database.Statement;
  private readonly currentWithValueStmt: Database.Statement;
  private readonly leaseKeysStmt: Database.Statement;
  private readonly prevStmt: Database.Statement;

  constructor(private readonly db: Database.Database) {
    this.currentStmt = db
      .prepare('SELECT key, log_id, create_rev, mod_rev, version, lease FROM kv WHERE key = ?')
      .safeIntegers(true);
    this.currentWithValueStmt = db
      .prepare(
        'SELECT k.key, k.log_id, k.create_rev, k.mod_rev, k.version, k.lease, l.value FROM kv k JOIN kv_log l ON l.id = k.log_id WHERE k.key = ?',
      )
      .safeIntegers(true);
    this.leaseKeysStmt = db.prepare('SELECT key FROM kv WHERE lease = ? ORDER BY key').pluck();
    this.prevStmt = db
      .prepare(
        'SELECT key, deleted, create_rev, rev AS mod_rev, version, lease, value FROM kv_log WHERE key = ? AND rev < ? ORDER BY rev DESC LIMIT 1',
      )
      .safeIntegers(true);
  }

  private stmt(sql: string, safe = true): Database.Statement {
    let s = this.stmts.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      if (safe) s.safeIntegers(true);
      this.stmts.set(sql, s);
    }
    return s;
  }

  /** The live row of one key (with its value when asked), or undefined. */
  current(key: Buffer, withValue: boolean): (KeyValue & { logId: bigint }) | undefined {
    const r = (withValue ? this.currentWithValueStmt : this.currentStmt).get(key) as
      | (Row & { log_id: bigint })
      | undefined;
    if (!r) return undefined;
    return { ...rowToKv(r), logId: r.log_id };
  }

  /** Live key-values in an interval, key order, with values when asked. */
  currentIn(iv: KeyInterval, withValue: boolean): KeyValue[] {
    const sql = withValue
      ? `SELECT ${fastCols('k.', 'l.value')} FROM kv k JOIN kv_log l ON l.id = k.log_id WHERE ${keyCondition(iv, 'k.key')} ORDER BY k.key`
      : `SELECT ${fastCols('k.', null)} FROM kv k WHERE ${keyCondition(iv, 'k.key')} ORDER BY k.key`;
    return (this.stmt(sql, false).all(...keyParams(iv)) as FastRow[]).map(fastToKv);
  }

  leaseKeys(id: bigint): Buffer[] {
    return this.leaseKeysStmt.all(id) as Buffer[];
  }

  /** The key's value just before `rev` (undefined when it did not exist or history is gone). */
  previous(key: Buffer, rev: number): KeyValue | undefined {
    const r = this.prevStmt.get(key, rev) as (Row & { deleted: bigint }) | undefined;
    if (!r || r.deleted === 1n) return undefined;
    return rowToKv(r);
  }

  /**
   * etcd's Range. `current` is the revision the caller's view is at; `compacted` the compaction
   * point the caller knows (rows below it may be gone).
   */
  range(req: RangeRequest, current: number, compacted: number): RangeResult {
    const rev = req.revision && req.revision > 0 ? req.revision : current;
    if (rev > current) throw new FutureRevisionError(rev, current);
    if (rev < compacted) throw new CompactedError(compacted);
    const iv = interval(req.key, req.rangeEnd);
    let target: SortTarget = req.sortTarget ?? 'KEY';
    let order = req.sortOrder ?? 'NONE';
    const limit = req.limit && req.limit > 0 ? req.limit : 0;
    const filtered = !!(
      req.minModRevision ||
      req.maxModRevision ||
      req.minCreateRevision ||
      req.maxCreateRevision
    );
    // etcd 3.4 quirk, kept for compatibility: with order NONE, a non-KEY target, a limit and no
    // filters, etcd takes the first limit+1 keys in key order and only then sorts them.
    if (target !== 'KEY' && order === 'NONE' && limit > 0 && !filtered && !req.countOnly) {
      const head = this.range(
        {
          ...req,
          sortTarget: 'KEY',
          sortOrder: 'NONE',
          limit: limit + 1,
          keysOnly: req.keysOnly && target !== 'VALUE',
        },
        current,
        compacted,
      );
      const field = SORT_FIELD[target];
      const kvs = [...head.kvs].sort((a, b) => {
        const fa = field(a);
        const fb = field(b);
        const c = typeof fa === 'number' ? fa - (fb as number) : Buffer.compare(fa, fb as Buffer);
        return c !== 0 ? c : Buffer.compare(a.key, b.key);
      });
      const more = kvs.length > limit;
      if (more) kvs.length = limit;
      return {
        kvs: req.keysOnly ? kvs.map((kv) => ({ ...kv, value: EMPTY })) : kvs,
        more,
        count: head.count,
      };
    }
    // etcd: a target other than KEY with order NONE sorts ascending.
    if (target !== 'KEY' && order === 'NONE') order = 'ASCEND';
    if (order === 'NONE') {
      target = 'KEY';
      order = 'ASCEND';
    }
    if (rev === current) return this.rangeCurrent(req, iv, target, order === 'DESCEND', limit);
    return this.rangeHistory(req, iv, rev, target, order === 'DESCEND', limit);
  }

  private filters(req: RangeRequest, prefix: string): { sql: string; params: number[] } {
    const parts: string[] = [];
    const params: number[] = [];
    const add = (v: number | undefined, cond: string) => {
      if (v && v > 0) {
        parts.push(cond);
        params.push(v);
      }
    };
    add(req.minModRevision, `${prefix}mod_rev >= ?`);
    add(req.maxModRevision, `${prefix}mod_rev <= ?`);
    add(req.minCreateRevision, `${prefix}create_rev >= ?`);
    add(req.maxCreateRevision, `${prefix}create_rev <= ?`);
    return { sql: parts.map((p) => ` AND ${p}`).join(''), params };
  }

  private rangeCurrent(req: RangeRequest, iv: KeyInterval, target: SortTarget, desc: boolean, limit: number) {
    const kc = keyCondition(iv, 'k.key');
    const kp = keyParams(iv);
    const count = Number(
      this.stmt(`SELECT count(*) AS n FROM kv k WHERE ${kc}`, false)
        .pluck()
        .get(...kp),
    );
    if (req.countOnly || count === 0) return { kvs: [], more: false, count };
    const f = this.filters(req, 'k.');
    const withValue = !req.keysOnly || target === 'VALUE';
    const dir = desc ? 'DESC' : 'ASC';
    const orderBy = target === 'KEY' ? `k.key ${dir}` : `${ORDER_COLUMN[target]} ${dir}, k.key ASC`;
    const cols = fastCols('k.', req.keysOnly ? null : 'l.value');
    const from = withValue ? 'kv k JOIN kv_log l ON l.id = k.log_id' : 'kv k';
    const sql = `SELECT ${cols} FROM ${from} WHERE ${kc}${f.sql} ORDER BY ${orderBy}${limit ? ' LIMIT ?' : ''}`;
    const params: unknown[] = [...kp, ...f.params];
    if (limit) params.push(limit + 1);
    const rows = this.stmt(sql, false).all(...params) as FastRow[];
    const more = limit > 0 && rows.length > limit;
    if (more) rows.length = limit;
    return { kvs: rows.map(fastToKv), more, count };
  }

  private rangeHistory(
    req: RangeRequest,
    iv: KeyInterval,
    rev: number,
    target: SortTarget,
    desc: boolean,
    limit: number,
  ): RangeResult {
    // SQLite returns the bare columns of the row holding max(rev) within each group.
    const sql = `SELECT ${fastCols('', 'value', 'rev')}, deleted, max(rev) AS m FROM kv_log WHERE ${keyCondition(iv, 'key')} AND rev <= ? GROUP BY key ORDER BY key`;
    const rows = (
      this.stmt(sql, false).all(...keyParams(iv), rev) as (FastRow & { deleted: number })[]
    ).filter((r) => r.deleted === 0);
    const count = rows.length;
    if (req.countOnly) return { kvs: [], more: false, count };
    let kvs = rows.map(fastToKv);
    const inRange = (v: number, min?: number, max?: number) => (!min || v >= min) && (!max || v <= max);
    kvs = kvs.filter(
      (kv) =>
        inRange(kv.modRevision, req.minModRevision, req.maxModRevision) &&
        inRange(kv.createRevision, req.minCreateRevision, req.maxCreateRevision),
    );
    const field = SORT_FIELD[target];
    kvs.sort((a, b) => {
      const fa = field(a);
      const fb = field(b);
      let c = typeof fa === 'number' ? fa - (fb as number) : Buffer.compare(fa, fb as Buffer);
      if (desc) c = -c;
      return c !== 0 ? c : Buffer.compare(a.key, b.key);
    });
    const more = limit > 0 && kvs.length > limit;
    if (more) kvs.length = limit;
    if (req.keysOnly) kvs = kvs.map((kv) => ({ ...kv, value: EMPTY }));
    return { kvs, more, count };
  }
}
