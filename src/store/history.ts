/**
 * The revision log in and out, for etcd snapshots: the only code outside the engine that reads
 * or writes the store's tables for them. Both functions speak in `HistoryRow`s (one change to one
 * key at one revision, as `kv_log` holds it) so the etcd side never sees SQL.
 */
import { existsSync } from 'node:fs';
import Database from 'better-sqlite3';
import { InvalidArgumentError } from '../errors.js';
import { PAGE_SIZE } from './engine.js';
import { migrate } from './sql/schema.js';
import type { Store } from './types.js';

/** One change to one key. A delete has `deleted`, createRev/version 0, lease 0n, empty value. */
export interface HistoryRow {
  rev: number;
  key: Buffer;
  deleted: boolean;
  createRev: number;
  version: number;
  lease: bigint;
  value: Buffer;
}

export interface HistoryLease {
  id: bigint;
  /** Granted TTL in seconds. */
  ttl: number;
}

/** The store at one revision, as `exportHistory` reads it. */
export interface HistoryExport {
  revision: number;
  compactRevision: number;
  clusterId: bigint;
  memberId: bigint;
  /** Every lease (16 bytes each in memory; a node holds few). */
  leases: HistoryLease[];
  /**
   * In revision order (within a revision, in the order the txn made the changes):
   * - every row with rev >= compactRevision, deletes included;
   * - below it, the rows etcd's compaction keeps: for each key, its latest row at or below the
   *   compact revision, when that row is a put (the key space at the compact revision).
   * Rows the store has not physically compacted yet are left out the same way. Iterate once.
   */
  rows: IterableIterator<HistoryRow>;
  /** Ends the read transaction and closes its connection; call it even after an error. */
  close(): void;
}

/**
 * Opens a second, read-only connection to the store's file and reads everything in ONE read
 * transaction, so the export is consistent at `revision` while the store keeps writing (WAL
 * readers see a snapshot). The rows come from an open cursor: memory stays at one row.
 */
export function exportHistory(store: Pick<Store, 'query' | 'revision'>): HistoryExport {
  const file = (store.query<{ name: string; file: string }>('PRAGMA database_list').all() ?? []).find(
    (d) => d.name === 'main',
  )?.file;
  if (!file) throw new InvalidArgumentError('the store has no database file to export');
  const db = new Database(file, { readonly: true, fileMustExist: true });
  let open = true;
  let iter: IterableIterator<unknown> | undefined;
  const close = () => {
    if (!open) return;
    open = false;
    try {
      iter?.return?.(); // a cursor left open mid-way (an error) keeps the connection busy
      if (db.inTransaction) db.exec('COMMIT');
    } finally {
      db.close();
    }
  };
  try {
    // The store's durable revision: a batch still syncing is committed in the file but not yet
    // acknowledged, and stays out. Read before the snapshot, so every row up to it is in it.
    const durable = store.revision();
    db.exec('BEGIN');
    const meta = new Map(
      (
        db.prepare('SELECT name, value FROM meta').safeIntegers(true).all() as {
          name: string;
          value: bigint;
        }[]
      ).map((r) => [r.name, r.value]),
    );
    const revision = durable;
    const compactRevision = Number(meta.get('compact_revision') ?? 0n);
    const leases = (
      db.prepare('SELECT id, ttl FROM leases ORDER BY id').safeIntegers(true).all() as {
        id: bigint;
        ttl: bigint;
      }[]
    ).map((r) => ({ id: r.id, ttl: Number(r.ttl) }));
    // Plain numbers are far cheaper than safeIntegers' BigInts; only a lease ID (int64) needs
    // more than 53 bits, so it comes as text when it is set.
    // Below the compact revision only each key's newest row at it, when a put (the log has no
    // index by key: the newest rows come from one grouped scan).
    const rows = db.prepare(
      `SELECT rev, key, deleted, create_rev, version,
         CASE WHEN lease = 0 THEN NULL ELSE CAST(lease AS TEXT) END AS lease, value FROM kv_log l
       WHERE l.rev <= :r AND (l.rev >= :c OR (l.deleted = 0 AND l.id IN
         (SELECT max(id) FROM kv_log WHERE rev <= :c GROUP BY key)))
       ORDER BY l.id`,
    );
    type Raw = {
      rev: number;
      key: Buffer;
      deleted: number;
      create_rev: number;
      version: number;
      lease: string | null;
      value: Buffer;
    };
    const cursor = rows.iterate({ c: compactRevision, r: revision }) as IterableIterator<Raw>;
    iter = cursor;
    function* gen(): IterableIterator<HistoryRow> {
      for (const r of cursor)
        yield {
          rev: r.rev,
          key: r.key,
          deleted: r.deleted === 1,
          createRev: r.create_rev,
          version: r.version,
          lease: r.lease === null ? 0n : BigInt(r.lease),
          value: r.value,
        };
    }
    return {
      revision,
      compactRevision,
      clusterId: meta.get('cluster_id') ?? 0n,
      memberId: meta.get('member_id') ?? 0n,
      leases,
      rows: gen(),
      close,
    };
  } catch (err) {
    close();
    throw err;
  }
}

/** What `importHistory` writes: an etcd key space with its history since `compactRevision`. */
export interface HistoryImport {
  /**
   * The revision the store continues from when above the last row's (etcd: its compact revision,
   * when the deletes made at it were compacted away). The store takes the larger of the two.
   */
  revision: number;
  compactRevision: number;
  /** Rows in revision order (as HistoryExport.rows); rows below the compact revision that a later row at or below it supersedes are dropped. */
  rows: Iterable<HistoryRow>;
  leases: Iterable<HistoryLease>;
}

/**
 * Writes a NEW database file `file` (refused if it exists) with the store's full schema and the
 * given history, in one transaction, then checkpoints it into WAL mode as the store expects.
 * The caller makes sure no daemon runs, verifies the file and swaps it in (see daemon/backup.ts);
 * a throw leaves a partial `file` for the caller to delete.
 * `identityFrom`: an existing database whose cluster and member IDs the new one keeps (fleet sync
 * names the node's stream after the cluster ID); unreadable or absent, the store makes new ones.
 */
export function importHistory(
  file: string,
  data: HistoryImport,
  opts: { identityFrom?: string } = {},
): { revision: number; rows: number; keys: number; leases: number } {
  if (existsSync(file)) throw new InvalidArgumentError(`${file} exists; importHistory writes a new file`);
  const db = new Database(file);
  try {
    // A new file nobody else sees: no journal to fsync for each step; the caller fsyncs the result.
    db.pragma(`page_size = ${PAGE_SIZE}`);
    db.pragma('journal_mode = OFF');
    db.pragma('synchronous = OFF');
    db.pragma('cache_size = -65536');
    migrate(db, []);
    let rows = 0;
    let leases = 0;
    let revision = 1;
    db.transaction(() => {
      const ins = db.prepare(
        'INSERT INTO kv_log (rev, key, deleted, create_rev, version, lease, prev_id, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      );
      // Each row points at the previous row of its key (the store walks history that way).
      const newest = new Map<string, number>();
      let last = 0;
      for (const r of data.rows) {
        if (r.rev < last)
          throw new InvalidArgumentError(`history rows out of order: revision ${r.rev} after ${last}`);
        last = r.rev;
        const k = r.key.toString('latin1');
        const id = ins.run(
          r.rev,
          r.key,
          r.deleted ? 1 : 0,
          r.createRev,
          r.version,
          r.lease,
          newest.get(k) ?? null,
          r.value,
        ).lastInsertRowid;
        newest.set(k, Number(id));
        rows++;
      }
      newest.clear();
      const insLease = db.prepare('INSERT INTO leases (id, ttl) VALUES (?, ?)');
      for (const l of data.leases) {
        insLease.run(l.id, l.ttl);
        leases++;
      }
      // What the store's compaction leaves below the compact revision (engine.ts, compactChunk):
      // each key's newest row at it, unless that is a delete.
      db.prepare(
        `DELETE FROM kv_log WHERE rev < :c AND (deleted = 1 OR id NOT IN
           (SELECT max(id) FROM kv_log WHERE rev <= :c GROUP BY key))`,
      ).run({ c: data.compactRevision });
      const setMeta = db.prepare('INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)');
      revision = Math.max(1, data.revision, last, data.compactRevision);
      setMeta.run('revision', revision);
      setMeta.run('compact_revision', data.compactRevision);
      // Read last: an import that fails before here has not opened the old database at all.
      const identity = opts.identityFrom ? readIdentity(opts.identityFrom) : undefined;
      if (identity) {
        setMeta.run('cluster_id', identity.clusterId);
        setMeta.run('member_id', identity.memberId);
      }
    })();
    const keys = db
      .prepare(
        'SELECT count(*) FROM kv_log WHERE id IN (SELECT max(id) FROM kv_log GROUP BY key) AND deleted = 0',
      )
      .pluck()
      .get() as number;
    db.pragma('journal_mode = WAL');
    return { revision, rows, keys, leases };
  } finally {
    db.close();
  }
}

function readIdentity(file: string): { clusterId: bigint; memberId: bigint } | undefined {
  if (!existsSync(file)) return undefined;
  let db: Database.Database | undefined;
  try {
    db = new Database(file, { readonly: true, fileMustExist: true });
    const get = db.prepare('SELECT value FROM meta WHERE name = ?').safeIntegers(true).pluck();
    const clusterId = get.get('cluster_id') as bigint | undefined;
    const memberId = get.get('member_id') as bigint | undefined;
    return clusterId !== undefined && memberId !== undefined ? { clusterId, memberId } : undefined;
  } catch {
    // A damaged old database is often why a node is being restored: new IDs, then.
    return undefined;
  } finally {
    db?.close();
  }
}
