/**
 * The revision log's write side: it owns the writer connection and the in-memory key index.
 * `runBatch` executes a group of requests in ONE SQLite transaction (group commit): each
 * request gets its own savepoint, so one failing request does not fail its neighbours, and each
 * write request takes its own revision. It commits without syncing; the Writer makes the batch
 * durable (fdatasync of the WAL) before anyone is told.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, fdatasyncSync, fstatSync, openSync, statSync, writeSync } from 'node:fs';
import Database from 'better-sqlite3';
import {
  CompactedError,
  CorruptDatabaseError,
  EdgeError,
  FutureRevisionError,
  InvalidArgumentError,
  KeyNotFoundError,
  LeaseExistsError,
  LeaseNotFoundError,
  NoSpaceError,
  StorageError,
} from '../errors.js';
import { interval, keyId } from './keys.js';
import { type KeyEntry, KeySpace } from './keyspace.js';
import { rangeAt } from './range.js';
import { LogReader, type Version, versionToKv } from './sql/log.js';
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

/**
 * Page size of a new database. Small pages are what an SD card wants: a commit writes every page
 * it dirtied to the WAL whole, and again at checkpoint. Measured on an ext4 loop device with 2 KB
 * values: 1 KiB pages wrote 11 KB per single-put commit and 4.7 KB per put in 64-put commits,
 * 4 KiB pages 21 KB and 8.4 KB (a 2 KB row fills a 4 KiB page alone). 512 bytes saved little
 * more and makes every B-tree deeper.
 */
export const PAGE_SIZE = 1024;

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
  | { t: 'compactChunk'; rev: number; fromId: number; toId: number };

export type EngineResult =
  | { ok: true; value: unknown; rev: number; events?: ChangeEvent[] }
  | { ok: false; error: EdgeError };

export interface BatchResult {
  results: EngineResult[];
  /** The revision after the batch. */
  revision: number;
  compactRevision: number;
  /** Milliseconds the transaction took to execute and commit (not to sync). */
  execMs: number;
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

/** Extend the WAL with zeros to WAL_PREALLOC_BYTES, synced (see there). */
function preallocateWal(path: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r+');
    const size = fstatSync(fd).size;
    if (size >= WAL_PREALLOC_BYTES) return;
    const zeros = Buffer.alloc(64 * 1024);
    for (let at = size; at < WAL_PREALLOC_BYTES; at += zeros.length)
      writeSync(fd, zeros, 0, Math.min(zeros.length, WAL_PREALLOC_BYTES - at), at);
    fdatasyncSync(fd);
  } catch {
    // No WAL yet (nothing written) or no space: it grows as it would have.
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

function randomId(): bigint {
  // Positive int63, never 0 (etcd's lease and member IDs are positive int64).
  const id = randomBytes(8).readBigUInt64BE() & 0x7fffffffffffffffn;
  return id === 0n ? 1n : id;
}

/**
 * Open a connection with the store's settings. Nothing here checkpoints on its own
 * (`wal_autocheckpoint=0`): the maintenance thread does, on its own connection with
 * `synchronous=NORMAL` (SQLite then syncs the WAL before copying it and the database before the
 * WAL may restart), so a commit never waits for a checkpoint.
 */
export function openDatabase(file: string): Database.Database {
  const db = new Database(file);
  // Only an empty file takes a page size; WAL mode fixes it once set.
  if ((db.pragma('page_count', { simple: true }) as number) === 0) db.pragma(`page_size = ${PAGE_SIZE}`);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('wal_autocheckpoint = 0');
  db.pragma('busy_timeout = 5000');
  db.pragma('cache_size = -4096');
  // After a burst, a WAL larger than this is cut back when it restarts from its beginning.
  db.pragma(`journal_size_limit = ${WAL_LIMIT_BYTES}`);
  return db;
}

/**
 * The writer's connection: as openDatabase, but SQLite never syncs on it (`synchronous=OFF`).
 * The writer syncs the WAL itself, off the event loop, before acknowledging (writer.ts). With
 * NORMAL, SQLite would also fsync the WAL header on this thread whenever the WAL restarts.
 * The writer never checkpoints; before it closes the database (which checkpoints and removes
 * the WAL) `close()` turns syncing back on.
 */
function openWriterDatabase(file: string): Database.Database {
  const db = openDatabase(file);
  db.pragma('synchronous = OFF');
  return db;
}

/** The WAL file is kept (and reused from its start) up to this size. */
export const WAL_LIMIT_BYTES = 4 * 1024 * 1024;
/**
 * The WAL file is made at least this long at open, with zeros: SQLite appends frames to it, and
 * an fdatasync of a file that grew also commits its new size through the file system's journal
 * (two or three more writes per commit). Within its length, commits overwrite it in place.
 * SQLite ignores what follows its last valid frame. 1 MiB is about 300 single-put commits.
 */
export const WAL_PREALLOC_BYTES = 1024 * 1024;

/** Open, then refuse a damaged file with a message that says what to do. */
function openChecked(file: string): Database.Database {
  let db: Database.Database | undefined;
  try {
    db = openWriterDatabase(file);
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

interface TxnContext {
  rev: number;
  wrote: boolean;
  events: ChangeEvent[];
}

export class Engine {
  readonly db: Database.Database;
  readonly space = new KeySpace();
  readonly log: LogReader;
  private rev = 1;
  private compactRev = 0;
  private readonly leases = new Map<bigint, number>();
  private readonly sqlCache = new Map<string, Database.Statement>();
  private readonly quota: number;
  private readonly walFile: string;
  private noSpace = false;
  private wantPrev = true;
  /** Keeper row per key for the compaction in progress (see compactChunk). */
  private keepers = { rev: 0, ids: new Map<string, number | null>() };

  private readonly insLog: Database.Statement;
  private readonly delLog: Database.Statement;
  private readonly setMeta: Database.Statement;
  private readonly insLease: Database.Statement;
  private readonly delLease: Database.Statement;
  private readonly sp: Database.Statement[];
  private readonly pageCount: Database.Statement;
  private readonly freeCount: Database.Statement;
  private readonly pageSize: number;
  private readonly chunkRows: Database.Statement;

  constructor(opts: EngineOptions) {
    this.db = openChecked(opts.file);
    this.quota = opts.quotaBytes;
    this.walFile = `${this.db.name}-wal`;
    migrate(this.db, opts.migrations);
    this.log = new LogReader(this.db);
    this.insLog = this.db.prepare(
      'INSERT INTO kv_log (rev, key, deleted, create_rev, version, lease, prev_id, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
    );
    this.delLog = this.db.prepare('DELETE FROM kv_log WHERE id = ?');
    this.setMeta = this.db.prepare('INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)');
    this.insLease = this.db.prepare('INSERT INTO leases (id, ttl) VALUES (?, ?)');
    this.delLease = this.db.prepare('DELETE FROM leases WHERE id = ?');
    this.sp = ['SAVEPOINT r', 'RELEASE r', 'ROLLBACK TO r'].map((s) => this.db.prepare(s));
    this.pageCount = this.db.prepare('PRAGMA page_count').pluck();
    this.freeCount = this.db.prepare('PRAGMA freelist_count').pluck();
    this.pageSize = this.db.pragma('page_size', { simple: true }) as number;
    this.chunkRows = this.db.prepare('SELECT id, rev, key FROM kv_log WHERE id >= ? AND id < ? AND rev < ?');
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
    this.loadKeys();
    preallocateWal(`${this.db.name}-wal`);
    // The log's newest row carries the revision (compaction never removes it); meta keeps the
    // revision recorded at the last compaction, for a log that has none.
    this.rev = Math.max(Number(meta.get('revision') ?? 1n), this.log.bounds().rev ?? 1);
    this.checkSpace();
    return {
      revision: this.rev,
      compactRevision: this.compactRev,
      leases: [...this.leases],
      keys: this.space.size,
      clusterId,
      memberId,
    };
  }

  /** The newest row of every key; one scan of the log in SQLite, one row per key to JS. */
  private loadKeys(): void {
    const rows = this.db
      .prepare(
        `SELECT l.id, l.rev, l.key, l.deleted, l.create_rev, l.version,
           l.lease >> 32 AS lease_hi, l.lease & 4294967295 AS lease_lo
         FROM kv_log l JOIN (SELECT max(id) AS id FROM kv_log GROUP BY key) n ON n.id = l.id
         ORDER BY l.key`,
      )
      .iterate() as IterableIterator<{
      id: number;
      rev: number;
      key: Buffer;
      deleted: number;
      create_rev: number;
      version: number;
      lease_hi: number;
      lease_lo: number;
    }>;
    for (const r of rows) {
      // A key deleted below the compaction point is gone at every readable revision (an
      // interrupted compaction may not have removed its rows yet).
      if (r.deleted === 1 && r.rev < this.compactRev) continue;
      const lease =
        r.lease_hi === 0 && r.lease_lo === 0 ? 0n : (BigInt(r.lease_hi) << 32n) | BigInt(r.lease_lo);
      this.space.load({
        k: keyId(r.key),
        id: r.id,
        modRevision: r.rev,
        createRevision: r.deleted ? 0 : r.create_rev,
        version: r.deleted ? 0 : r.version,
        lease: r.deleted ? 0n : lease,
      });
    }
  }

  close(): void {
    // Closing the last connection checkpoints the WAL into the database and deletes the WAL:
    // the database must be synced before that.
    this.db.pragma('synchronous = NORMAL');
    this.db.close();
  }

  get revision(): number {
    return this.rev;
  }

  get compactRevision(): number {
    return this.compactRev;
  }

  /** Re-read the space in use (after a VACUUM on another connection). */
  refreshSpace(): boolean {
    this.checkSpace();
    return this.noSpace;
  }

  private checkSpace(): void {
    this.noSpace = this.dbSizeInUse() > this.quota;
  }

  /**
   * Bytes the quota counts: the database's pages in use, and the WAL's length past the size it
   * is kept at (WAL_LIMIT_BYTES, a fixed reserve next to the quota). The WAL grows past that
   * only while checkpoints cannot catch up (a long reader); that growth takes disk like data does.
   */
  private dbSizeInUse(): number {
    const pages = ((this.pageCount.get() as number) - (this.freeCount.get() as number)) * this.pageSize;
    const wal = statSync(this.walFile, { throwIfNoEntry: false })?.size ?? 0;
    return pages + Math.max(0, wal - WAL_LIMIT_BYTES);
  }

  /** Run a group of requests in one transaction, committed but not yet synced. */
  runBatch(reqs: EngineRequest[], wantPrev: boolean): BatchResult {
    this.wantPrev = wantPrev;
    const start = performance.now();
    const results: EngineResult[] = [];
    const before = { rev: this.rev, compactRev: this.compactRev, leases: new Map(this.leases) };
    const mark = this.space.mark();
    try {
      this.db.exec('BEGIN IMMEDIATE');
      for (const req of reqs) results.push(this.runOne(req));
      this.db.exec('COMMIT');
      this.space.forget();
    } catch (e) {
      // The transaction as a whole failed (disk full, I/O error): nothing of it is kept.
      if (this.db.inTransaction) this.db.exec('ROLLBACK');
      this.space.undo(mark);
      this.space.forget();
      this.rev = before.rev;
      this.compactRev = before.compactRev;
      this.leases.clear();
      for (const [k, v] of before.leases) this.leases.set(k, v);
      const err =
        (e as { code?: string }).code === 'SQLITE_FULL'
          ? new StorageError('disk full')
          : new StorageError((e as Error).message);
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
      execMs: performance.now() - start,
      noSpace: this.noSpace,
      keys: this.space.size,
    };
  }

  private runOne(req: EngineRequest): EngineResult {
    // Lease changes happen last in `apply`, after everything that can fail, so only the
    // revision and the key index need undoing here.
    const savedRev = this.rev;
    const mark = this.space.mark();
    this.sp[0]!.run();
    try {
      const r = this.apply(req);
      this.sp[1]!.run();
      return r;
    } catch (e) {
      this.sp[2]!.run();
      this.sp[1]!.run();
      this.rev = savedRev;
      this.space.undo(mark);
      if (e instanceof EdgeError) return { ok: false, error: e };
      const code = (e as { code?: string }).code;
      if (
        typeof code === 'string' &&
        code.startsWith('SQLITE_') &&
        code !== 'SQLITE_FULL' &&
        code !== 'SQLITE_IOERR' &&
        !code.startsWith('SQLITE_IOERR_')
      )
        // A part's SQL was wrong or violated a constraint: that request fails alone.
        return { ok: false, error: new InvalidArgumentError(`${code}: ${(e as Error).message}`) };
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
        const ctx: TxnContext = { rev: this.rev + 1, wrote: false, events: [] };
        const txn = this.txn(req.txn, ctx);
        if (ctx.wrote) this.rev = ctx.rev;
        txn.header.revision = this.rev;
        return { ok: true, value: { sql, txn }, rev: this.rev, events: ctx.events };
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
        const keys = this.space.leaseKeys(req.id);
        if (keys.length > 0) {
          const next = this.rev + 1;
          for (const k of keys) this.deleteEntry(this.space.get(k)!, next, events, this.wantPrev);
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
        this.setMeta.run('revision', this.rev);
        const first = this.log.firstIdAtRev(req.rev);
        const maxId = (first ?? (this.log.bounds().hi ?? 0) + 1) - 1;
        return { ok: true, value: { maxId }, rev: this.rev };
      }
      case 'compactChunk':
        return {
          ok: true,
          value: { deleted: this.compactChunk(req.rev, req.fromId, req.toId) },
          rev: this.rev,
        };
    }
  }

  /**
   * Remove the rows in ids [fromId, toId) below the compaction point `rev` that no read at or
   * above it can need: every row of a key but its newest one at or below `rev`, and that one
   * too when it is a tombstone. Keys deleted below `rev` leave the index.
   */
  private compactChunk(rev: number, fromId: number, toId: number): number {
    if (this.keepers.rev !== rev) this.keepers = { rev, ids: new Map() };
    const keepers = this.keepers.ids;
    let deleted = 0;
    const rows = this.chunkRows.all(fromId, toId, rev) as { id: number; rev: number; key: Buffer }[];
    for (const r of rows) {
      const k = keyId(r.key);
      let keep = keepers.get(k);
      if (keep === undefined) {
        const e = this.space.get(k);
        keep = e ? (this.log.at(e, rev)?.id ?? null) : null;
        keepers.set(k, keep);
      }
      if (r.id === keep) continue;
      this.delLog.run(r.id);
      deleted++;
      const e = this.space.get(k);
      if (e && e.version === 0 && e.modRevision < rev) this.space.drop(k);
    }
    return deleted;
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

  private txn(req: TxnRequest, ctx: TxnContext): TxnResponse {
    const succeeded = (req.compare ?? []).every((c) => this.compare(c));
    const ops = (succeeded ? req.success : req.failure) ?? [];
    const responses: ResponseOp[] = [];
    for (const op of ops) responses.push(this.op(op, ctx));
    return { header: { revision: ctx.rev }, succeeded, responses };
  }

  private op(op: RequestOp, ctx: TxnContext): ResponseOp {
    if ('range' in op) {
      // etcd: txn ops are applied in order; a range sees the writes made before it.
      const view = ctx.wrote ? ctx.rev : ctx.rev - 1;
      const r = rangeAt(this.space, this.log, op.range, view, this.compactRev);
      return { range: { header: { revision: view }, ...r } };
    }
    if ('put' in op) {
      const prevKv = this.put(op.put, ctx);
      ctx.wrote = true;
      return { put: { header: { revision: ctx.rev }, ...(prevKv && op.put.prevKv ? { prevKv } : {}) } };
    }
    if ('deleteRange' in op) {
      const prev = this.deleteRange(op.deleteRange, ctx);
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

  /** Live entries in a compare's or delete's interval, in key order. */
  private liveIn(key: Buffer, rangeEnd: Buffer | undefined): KeyEntry[] {
    const iv = interval(key, rangeEnd);
    const out: KeyEntry[] = [];
    for (const e of this.space.scan(keyId(iv.start), iv.end && keyId(iv.end), iv.single))
      if (e.version > 0) out.push(e);
    return out;
  }

  private entryKv(e: KeyEntry, withValue: boolean): KeyValue {
    return {
      key: Buffer.from(e.k, 'latin1'),
      createRevision: e.createRevision,
      modRevision: e.modRevision,
      version: e.version,
      value: withValue ? this.log.value(e.id) : EMPTY,
      lease: e.lease,
    };
  }

  private compare(c: Compare): boolean {
    const entries = this.liveIn(c.key, c.rangeEnd);
    // etcd: a VALUE compare on missing keys always fails; other targets compare a zero KeyValue.
    if (entries.length === 0) {
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
    return entries.every((e) => compareOne(c, this.entryKv(e, c.target === 'VALUE')));
  }

  /** Returns the previous key-value (with its value when asked or needed). */
  private put(p: PutRequest, ctx: TxnContext): KeyValue | undefined {
    const k = keyId(p.key);
    const cur = this.space.current(k);
    if ((p.ignoreValue || p.ignoreLease) && !cur) throw new KeyNotFoundError();
    const lease = p.ignoreLease ? cur!.lease : (p.lease ?? 0n);
    if (lease !== 0n && !this.leases.has(lease)) throw new LeaseNotFoundError(lease);
    const prev = cur ? this.entryKv(cur, this.wantPrev || !!p.prevKv || !!p.ignoreValue) : undefined;
    const value = p.ignoreValue ? prev!.value : (p.value ?? EMPTY);
    const rev = ctx.rev;
    const createRev = cur ? cur.createRevision : rev;
    const version = cur ? cur.version + 1 : 1;
    const prevId = this.space.get(k)?.id ?? null;
    const id = Number(
      this.insLog.run(rev, p.key, 0, createRev, version, lease, prevId, value).lastInsertRowid,
    );
    this.space.set({ k, id, modRevision: rev, createRevision: createRev, version, lease });
    ctx.events.push({
      type: 'PUT',
      kv: { key: p.key, createRevision: createRev, modRevision: rev, version, value, lease },
      ...(prev && this.wantPrev ? { prevKv: prev } : {}),
    });
    return prev;
  }

  private deleteRange(d: DeleteRangeRequest, ctx: TxnContext): KeyValue[] {
    const prev: KeyValue[] = [];
    const withValue = this.wantPrev || !!d.prevKv;
    for (const e of this.liveIn(d.key, d.rangeEnd))
      prev.push(this.deleteEntry(e, ctx.rev, ctx.events, withValue));
    return prev;
  }

  private deleteEntry(e: KeyEntry, rev: number, events: ChangeEvent[], withValue: boolean): KeyValue {
    const prev = this.entryKv(e, withValue);
    const id = Number(this.insLog.run(rev, prev.key, 1, 0, 0, 0, e.id, EMPTY).lastInsertRowid);
    this.space.set({ k: e.k, id, modRevision: rev, createRevision: 0, version: 0, lease: 0n });
    events.push({
      type: 'DELETE',
      kv: { key: prev.key, createRevision: 0, modRevision: rev, version: 0, value: EMPTY, lease: 0n },
      prevKv: prev,
    });
    return prev;
  }

  /** The version of `key` at `rev` (for replayed watch events' prevKv and history reads). */
  versionAt(key: Buffer, rev: number): Version | undefined {
    const e = this.space.get(keyId(key));
    return e ? this.log.at(e, rev) : undefined;
  }

  /** A key-value of `key` at `rev`, with its value, or undefined. */
  kvAt(key: Buffer, rev: number): KeyValue | undefined {
    const v = this.versionAt(key, rev);
    return v ? versionToKv(key, v, this.log.value(v.id)) : undefined;
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
