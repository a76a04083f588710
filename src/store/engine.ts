/**
 * The revision log's write side. It runs wherever the single writer runs (a worker thread, or
 * inline) and owns the writer connection. `runBatch` executes a group of requests in ONE SQLite
 * transaction (group commit): each request gets its own savepoint, so one failing request does
 * not fail its neighbours, and each write request takes its own revision.
 */
import { randomBytes } from 'node:crypto';
import Database from 'better-sqlite3';
import {
  CompactedError,
  CorruptDatabaseError,
  EdgeError,
  FutureRevisionError,
  KeyNotFoundError,
  LeaseExistsError,
  LeaseNotFoundError,
  NoSpaceError,
  StorageError,
} from '../errors.js';
import { interval } from './keys.js';
import { KvReader } from './sql/kvread.js';
import { migrate } from './sql/schema.js';
import type {
  BlobColumn,
  Compare,
  DeleteRangeRequest,
  Durability,
  KeyValue,
  Migration,
  PutRequest,
  RequestOp,
  ResponseOp,
  SqlOp,
  SqlResult,
  TxnRequest,
  TxnResponse,
} from './types.js';

const EMPTY = Buffer.alloc(0);

/** One change, as the watch hub needs it. */
export interface ChangeEvent {
  type: 'PUT' | 'DELETE';
  kv: KeyValue;
  prevKv?: KeyValue;
}

export type EngineRequest =
  | { t: 'txn'; txn?: TxnRequest; sql?: SqlOp[]; freesSpace?: boolean }
  | { t: 'grant'; id: bigint; ttl: number }
  | { t: 'revoke'; id: bigint; expired?: boolean }
  | { t: 'compact'; rev: number }
  | { t: 'compactChunk'; rev: number; fromId: number; toId: number }
  | { t: 'vacuum' }
  | { t: 'checkpoint' };

export type EngineResult =
  | { ok: true; value: unknown; rev: number; events?: ChangeEvent[] }
  | { ok: false; error: WireError };

export interface WireError {
  code: string;
  message: string;
  data?: Record<string, unknown>;
}

export interface BatchResult {
  results: EngineResult[];
  revision: number;
  compactRevision: number;
  /** Milliseconds the transaction took, commit included. */
  commitMs: number;
  noSpace: boolean;
  keys: number;
}

export interface EngineOpenResult {
  revision: number;
  compactRevision: number;
  leases: [bigint, number][];
  keys: number;
  clusterId: bigint;
  memberId: bigint;
}

export interface EngineOptions {
  file: string;
  durability: Durability;
  quotaBytes: number;
  migrations: Migration[];
}

/** Serialise an error so it can cross to the main thread and be rebuilt as the same class. */
export function toWireError(e: unknown): WireError {
  if (e instanceof EdgeError) {
    const data: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(e)) if (k !== 'code' && k !== 'status') data[k] = v;
    return { code: e.code, message: e.message, data };
  }
  const msg = e instanceof Error ? e.message : String(e);
  return { code: 'EDGE_ERR_STORAGE', message: msg };
}

function randomId(): bigint {
  // Positive int63, never 0 (etcd's lease and member IDs are positive int64).
  const id = randomBytes(8).readBigUInt64BE() & 0x7fffffffffffffffn;
  return id === 0n ? 1n : id;
}

export function openDatabase(file: string, durability: Durability): Database.Database {
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  // Checkpoint every ~40 MB of WAL instead of SQLite's 4 MB: a checkpoint adds fsyncs to the
  // commit that runs it, and on an SD card those dominate p99 (measured: 64 writers on a 15 ms
  // fsync disk, p99 56 ms -> 28 ms). The store still forces a truncating checkpoint past 64 MiB.
  db.pragma('wal_autocheckpoint = 10000');
  // fsync: every commit reaches the disk (like etcd). relaxed: WAL is synced at checkpoints only;
  // a power cut can lose the last commits, a process crash cannot, and the file never corrupts.
  db.pragma(`synchronous = ${durability === 'fsync' ? 'FULL' : 'NORMAL'}`);
  db.pragma('busy_timeout = 5000');
  db.pragma('cache_size = -4096');
  // Keep the WAL file from staying large after a burst.
  db.pragma('journal_size_limit = 67108864');
  return db;
}

/** Open, then refuse a damaged file with a message that says what to do. */
function openChecked(file: string, durability: Durability): Database.Database {
  let db: Database.Database | undefined;
  try {
    db = openDatabase(file, durability);
    const rows = db.pragma('quick_check') as { quick_check: string }[];
    const first = rows[0]?.quick_check;
    if (first !== 'ok')
      throw new CorruptDatabaseError(
        file,
        rows
          .map((r) => r.quick_check)
          .slice(0, 3)
          .join('; '),
      );
    return db;
  } catch (e) {
    db?.close();
    if (e instanceof EdgeError) throw e;
    const code = (e as { code?: string }).code ?? '';
    if (code === 'SQLITE_NOTADB' || code.startsWith('SQLITE_CORRUPT'))
      throw new CorruptDatabaseError(file, (e as Error).message);
    throw e;
  }
}

export class Engine {
  readonly db: Database.Database;
  private readonly reader: KvReader;
  private rev = 1;
  private compactRev = 0;
  private keyCount = 0;
  private readonly leases = new Map<bigint, number>();
  private readonly sqlCache = new Map<string, Database.Statement>();
  private readonly quota: number;
  private noSpace = false;
  private wantPrev = true;

  private readonly insLog: Database.Statement;
  private readonly upsertKv: Database.Statement;
  private readonly delKv: Database.Statement;
  private readonly setMeta: Database.Statement;
  private readonly insLease: Database.Statement;
  private readonly delLease: Database.Statement;
  private readonly sp: Database.Statement[];
  private readonly pageCount: Database.Statement;
  private readonly freeCount: Database.Statement;
  private readonly pageSize: number;
  private readonly compactDel: Database.Statement;

  constructor(opts: EngineOptions) {
    this.db = openChecked(opts.file, opts.durability);
    this.quota = opts.quotaBytes;
    migrate(this.db, opts.migrations);
    this.reader = new KvReader(this.db);
    this.insLog = this.db.prepare(
      'INSERT INTO kv_log (rev, key, deleted, create_rev, version, lease, value) VALUES (?, ?, ?, ?, ?, ?, ?)',
    );
    this.upsertKv = this.db.prepare(
      'INSERT INTO kv (key, log_id, create_rev, mod_rev, version, lease) VALUES (?, ?, ?, ?, ?, ?) ' +
        'ON CONFLICT (key) DO UPDATE SET log_id = excluded.log_id, mod_rev = excluded.mod_rev, version = excluded.version, lease = excluded.lease',
    );
    this.delKv = this.db.prepare('DELETE FROM kv WHERE key = ?');
    this.setMeta = this.db.prepare('INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)');
    this.insLease = this.db.prepare('INSERT INTO leases (id, ttl) VALUES (?, ?)');
    this.delLease = this.db.prepare('DELETE FROM leases WHERE id = ?');
    this.sp = ['SAVEPOINT r', 'RELEASE r', 'ROLLBACK TO r'].map((s) => this.db.prepare(s));
    this.pageCount = this.db.prepare('PRAGMA page_count').pluck();
    this.freeCount = this.db.prepare('PRAGMA freelist_count').pluck();
    this.pageSize = this.db.pragma('page_size', { simple: true }) as number;
    // A row below the compact revision goes when a later row at or below it supersedes it, or
    // when it is a tombstone (the key is absent at the compact revision either way).
    this.compactDel = this.db.prepare(
      `DELETE FROM kv_log WHERE id IN (
         SELECT l.id FROM kv_log l WHERE l.id > ? AND l.id <= ? AND l.rev < ? AND
           (l.deleted = 1 OR EXISTS (SELECT 1 FROM kv_log n WHERE n.key = l.key AND n.rev > l.rev AND n.rev <= ?)))`,
    );
  }

  /** Load state; called once after construction. */
  open(): EngineOpenResult {
    const meta = new Map(
      (
        this.db.prepare('SELECT name, value FROM meta').safeIntegers(true).all() as {
          name: string;
          value: bigint;
        }[]
      ).map((r) => [r.name, r.value]),
    );
    this.rev = Number(meta.get('revision') ?? 1n);
    this.compactRev = Number(meta.get('compact_revision') ?? 0n);
    let clusterId = meta.get('cluster_id');
    let memberId = meta.get('member_id');
    if (clusterId === undefined || memberId === undefined) {
      clusterId = randomId();
      memberId = randomId();
      this.setMeta.run('cluster_id', clusterId);
      this.setMeta.run('member_id', memberId);
    }
    for (const r of this.db.prepare('SELECT id, ttl FROM leases').safeIntegers(true).all() as {
      id: bigint;
      ttl: bigint;
    }[])
      this.leases.set(r.id, Number(r.ttl));
    this.keyCount = this.db.prepare('SELECT count(*) FROM kv').pluck().get() as number;
    this.checkSpace();
    return {
      revision: this.rev,
      compactRevision: this.compactRev,
      leases: [...this.leases],
      keys: this.keyCount,
      clusterId,
      memberId,
    };
  }

  close(): void {
    this.db.close();
  }

  private checkSpace(): void {
    const used = ((this.pageCount.get() as number) - (this.freeCount.get() as number)) * this.pageSize;
    this.noSpace = used > this.quota;
  }

  private dbSizeInUse(): number {
    return ((this.pageCount.get() as number) - (this.freeCount.get() as number)) * this.pageSize;
  }

  /** Run a group of requests in one transaction. */
  runBatch(reqs: EngineRequest[], wantPrev: boolean): BatchResult {
    this.wantPrev = wantPrev;
    const start = performance.now();
    const results: EngineResult[] = [];
    const special = reqs.length === 1 && (reqs[0]!.t === 'vacuum' || reqs[0]!.t === 'checkpoint');
    if (special) {
      try {
        if (reqs[0]!.t === 'vacuum') this.db.exec('VACUUM');
        else this.db.pragma('wal_checkpoint(TRUNCATE)');
        results.push({ ok: true, value: undefined, rev: this.rev });
      } catch (e) {
        results.push({ ok: false, error: toWireError(new StorageError((e as Error).message)) });
      }
      this.checkSpace();
      return this.finish(results, start);
    }
    const before = {
      rev: this.rev,
      compactRev: this.compactRev,
      keys: this.keyCount,
      leases: new Map(this.leases),
    };
    try {
      this.db.exec('BEGIN IMMEDIATE');
      for (const req of reqs) results.push(this.runOne(req));
      if (this.rev !== before.rev) this.setMeta.run('revision', this.rev);
      this.db.exec('COMMIT');
    } catch (e) {
      // The transaction as a whole failed (disk full, I/O error): nothing of it is kept.
      if (this.db.inTransaction) this.db.exec('ROLLBACK');
      this.rev = before.rev;
      this.compactRev = before.compactRev;
      this.keyCount = before.keys;
      this.leases.clear();
      for (const [k, v] of before.leases) this.leases.set(k, v);
      const err = toWireError(
        (e as { code?: string }).code === 'SQLITE_FULL'
          ? new StorageError('disk full')
          : new StorageError((e as Error).message),
      );
      return this.finish(
        reqs.map(() => ({ ok: false, error: err })),
        start,
      );
    }
    this.checkSpace();
    return this.finish(results, start);
  }

  private finish(results: EngineResult[], start: number): BatchResult {
    return {
      results,
      revision: this.rev,
      compactRevision: this.compactRev,
      commitMs: performance.now() - start,
      noSpace: this.noSpace,
      keys: this.keyCount,
    };
  }

  private runOne(req: EngineRequest): EngineResult {
    // Lease changes happen last in `apply`, after everything that can fail, so only the
    // revision and key count need undoing here.
    const saved = { rev: this.rev, keys: this.keyCount };
    this.sp[0]!.run();
    try {
      const r = this.apply(req);
      this.sp[1]!.run();
      return r;
    } catch (e) {
      this.sp[2]!.run();
      this.sp[1]!.run();
      this.rev = saved.rev;
      this.keyCount = saved.keys;
      if (e instanceof EdgeError) return { ok: false, error: toWireError(e) };
      const code = (e as { code?: string }).code;
      if (
        typeof code === 'string' &&
        code.startsWith('SQLITE_') &&
        code !== 'SQLITE_FULL' &&
        code !== 'SQLITE_IOERR'
      )
        // A part's SQL was wrong or violated a constraint: that request fails alone.
        return {
          ok: false,
          error: { code: 'EDGE_ERR_INVALID_ARGUMENT', message: `${code}: ${(e as Error).message}` },
        };
      throw e;
    }
  }

  private apply(req: EngineRequest): EngineResult {
    switch (req.t) {
      case 'txn': {
        if (this.noSpace && !req.freesSpace && !(req.txn && !req.sql && isDeleteOnly(req.txn)))
          throw new NoSpaceError(this.dbSizeInUse(), this.quota);
        const sql: SqlResult[] = [];
        for (const op of req.sql ?? []) sql.push(this.runSql(op));
        if (!req.txn) return { ok: true, value: { sql }, rev: this.rev };
        const events: ChangeEvent[] = [];
        const next = this.rev + 1;
        const ctx = { rev: next, wrote: false, events };
        const txn = this.txn(req.txn, ctx);
        if (ctx.wrote) this.rev = next;
        txn.header.revision = this.rev;
        return { ok: true, value: { sql, txn }, rev: this.rev, events };
      }
      case 'grant': {
        if (this.noSpace) throw new NoSpaceError(this.dbSizeInUse(), this.quota);
        const id = req.id === 0n ? this.freshLeaseId() : req.id;
        if (this.leases.has(id)) throw new LeaseExistsError(id);
        this.insLease.run(id, req.ttl);
        this.leases.set(id, req.ttl);
        return { ok: true, value: { id, ttl: req.ttl }, rev: this.rev };
      }
      case 'revoke': {
        if (!this.leases.has(req.id)) throw new LeaseNotFoundError(req.id);
        const events: ChangeEvent[] = [];
        const keys = this.reader.leaseKeys(req.id);
        if (keys.length > 0) {
          const next = this.rev + 1;
          for (const key of keys) this.deleteKey(key, next, events);
          this.rev = next;
        }
        this.delLease.run(req.id);
        this.leases.delete(req.id);
        return { ok: true, value: { id: req.id }, rev: this.rev, events };
      }
      case 'compact': {
        if (req.rev <= this.compactRev) throw new CompactedError(this.compactRev);
        if (req.rev > this.rev) throw new FutureRevisionError(req.rev, this.rev);
        this.compactRev = req.rev;
        this.setMeta.run('compact_revision', req.rev);
        const maxId = this.db.prepare('SELECT max(id) FROM kv_log WHERE rev < ?').pluck().get(req.rev) as
          | number
          | null;
        return { ok: true, value: { maxId: maxId ?? 0 }, rev: this.rev };
      }
      case 'compactChunk': {
        const r = this.compactDel.run(req.fromId, req.toId, req.rev, req.rev);
        return { ok: true, value: { deleted: r.changes }, rev: this.rev };
      }
      default:
        throw new StorageError(`request ${req.t} must run alone`);
    }
  }

  private freshLeaseId(): bigint {
    for (;;) {
      const id = randomId();
      if (!this.leases.has(id)) return id;
    }
  }

  private runSql(op: SqlOp): SqlResult {
    let s = this.sqlCache.get(op.sql);
    if (!s) {
      s = this.db.prepare(op.sql);
      this.sqlCache.set(op.sql, s);
    }
    if ('columns' in op) return this.runColumns(s, op.columns, op.count);
    const run = (p: unknown) =>
      p === undefined ? s!.run() : Array.isArray(p) ? s!.run(...p) : s!.run(p as Record<string, unknown>);
    if ('rows' in op) {
      let changes = 0;
      let last = 0;
      for (const row of op.rows) {
        const r = run(row);
        changes += r.changes;
        last = Number(r.lastInsertRowid);
      }
      return { changes, lastInsertRowid: last };
    }
    const r = run(op.params);
    return { changes: r.changes, lastInsertRowid: Number(r.lastInsertRowid) };
  }

  private runColumns(
    s: Database.Statement,
    columns: Record<string, unknown[] | BlobColumn>,
    count: number,
  ): SqlResult {
    const names = Object.keys(columns);
    const params: Record<string, unknown> = {};
    let changes = 0;
    let last = 0;
    for (let i = 0; i < count; i++) {
      for (const name of names) {
        const c = columns[name]!;
        if (Array.isArray(c)) params[name] = c[i];
        else {
          const start = i === 0 ? 0 : c.ends[i - 1]!;
          params[name] = Buffer.from(c.bytes.buffer, c.bytes.byteOffset + start, c.ends[i]! - start);
        }
      }
      const r = s.run(params);
      changes += r.changes;
      last = Number(r.lastInsertRowid);
    }
    return { changes, lastInsertRowid: last };
  }

  // --- etcd verbs inside the writer -----------------------------------------------------------

  private txn(req: TxnRequest, ctx: { rev: number; wrote: boolean; events: ChangeEvent[] }): TxnResponse {
    const succeeded = (req.compare ?? []).every((c) => this.compare(c));
    const ops = (succeeded ? req.success : req.failure) ?? [];
    const responses: ResponseOp[] = [];
    for (const op of ops) responses.push(this.op(op, ctx));
    return { header: { revision: ctx.rev }, succeeded, responses };
  }

  private op(op: RequestOp, ctx: { rev: number; wrote: boolean; events: ChangeEvent[] }): ResponseOp {
    if ('range' in op) {
      const view = ctx.wrote ? ctx.rev : ctx.rev - 1;
      const r = this.reader.range(op.range, view, this.compactRev);
      return { range: { header: { revision: view }, ...r } };
    }
    if ('put' in op) {
      const prevKv = this.put(op.put, ctx.rev, ctx.events);
      ctx.wrote = true;
      return { put: { header: { revision: ctx.rev }, ...(prevKv && op.put.prevKv ? { prevKv } : {}) } };
    }
    if ('deleteRange' in op) {
      const prev = this.deleteRange(op.deleteRange, ctx.rev, ctx.events);
      if (prev.length > 0) ctx.wrote = true;
      return {
        deleteRange: {
          header: { revision: ctx.wrote ? ctx.rev : ctx.rev - 1 },
          deleted: prev.length,
          prevKvs: op.deleteRange.prevKv ? prev : [],
        },
      };
    }
    const inner = this.txn(op.txn, ctx);
    inner.header.revision = ctx.wrote ? ctx.rev : ctx.rev - 1;
    return { txn: inner };
  }

  private compare(c: Compare): boolean {
    const kvs = this.reader.currentIn(interval(c.key, c.rangeEnd), c.target === 'VALUE');
    // etcd: a VALUE compare on missing keys always fails; other targets compare a zero KeyValue.
    if (kvs.length === 0) {
      if (c.target === 'VALUE') return false;
      return compareOne(c, {
        key: c.key,
        createRevision: 0,
        modRevision: 0,
        version: 0,
        value: EMPTY,
        lease: 0n,
      });
    }
    return kvs.every((kv) => compareOne(c, kv));
  }

  /** Returns the previous key-value (with value when asked or needed). */
  private put(p: PutRequest, rev: number, events: ChangeEvent[]): KeyValue | undefined {
    const needValue = this.wantPrev || !!p.prevKv || !!p.ignoreValue;
    const cur = this.reader.current(p.key, needValue);
    if ((p.ignoreValue || p.ignoreLease) && !cur) throw new KeyNotFoundError();
    const lease = p.ignoreLease ? cur!.lease : (p.lease ?? 0n);
    if (lease !== 0n && !this.leases.has(lease)) throw new LeaseNotFoundError(lease);
    const value = p.ignoreValue ? cur!.value : (p.value ?? EMPTY);
    const createRev = cur ? cur.createRevision : rev;
    const version = cur ? cur.version + 1 : 1;
    const logId = this.insLog.run(rev, p.key, 0, createRev, version, lease, value).lastInsertRowid;
    this.upsertKv.run(p.key, logId, createRev, rev, version, lease);
    if (!cur) this.keyCount++;
    let prev: KeyValue | undefined;
    if (cur) {
      const { logId: _drop, ...kv } = cur;
      prev = kv;
    }
    events.push({
      type: 'PUT',
      kv: { key: p.key, createRevision: createRev, modRevision: rev, version, value, lease },
      ...(prev && this.wantPrev ? { prevKv: prev } : {}),
    });
    return prev;
  }

  private deleteRange(d: DeleteRangeRequest, rev: number, events: ChangeEvent[]): KeyValue[] {
    const kvs = this.reader.currentIn(interval(d.key, d.rangeEnd), this.wantPrev || !!d.prevKv);
    for (const kv of kvs) {
      this.insLog.run(rev, kv.key, 1, 0, 0, 0, EMPTY);
      this.delKv.run(kv.key);
      this.keyCount--;
      events.push({
        type: 'DELETE',
        kv: { key: kv.key, createRevision: 0, modRevision: rev, version: 0, value: EMPTY, lease: 0n },
        prevKv: kv,
      });
    }
    return kvs;
  }

  private deleteKey(key: Buffer, rev: number, events: ChangeEvent[]): void {
    this.deleteRange({ key }, rev, events);
  }
}

function compareOne(c: Compare, kv: KeyValue): boolean {
  let d: number;
  switch (c.target) {
    case 'VERSION':
      d = kv.version - (c.version ?? 0);
      break;
    case 'CREATE':
      d = kv.createRevision - (c.createRevision ?? 0);
      break;
    case 'MOD':
      d = kv.modRevision - (c.modRevision ?? 0);
      break;
    case 'VALUE':
      d = Buffer.compare(kv.value, c.value ?? EMPTY);
      break;
    case 'LEASE': {
      const l = c.lease ?? 0n;
      d = kv.lease === l ? 0 : kv.lease > l ? 1 : -1;
      break;
    }
  }
  switch (c.result) {
    case 'EQUAL':
      return d === 0;
    case 'GREATER':
      return d > 0;
    case 'LESS':
      return d < 0;
    case 'NOT_EQUAL':
      return d !== 0;
  }
}

/** A txn that can only delete (allowed over quota, so space can be freed). */
function isDeleteOnly(t: TxnRequest): boolean {
  const ok = (ops?: RequestOp[]) =>
    (ops ?? []).every((o) => 'deleteRange' in o || 'range' in o || ('txn' in o && isDeleteOnly(o.txn)));
  return ok(t.success) && ok(t.failure);
}
