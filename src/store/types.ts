/**
 * The store's contract: etcd v3 semantics on one SQLite file, plus a small generic write path for
 * the other parts' append-only tables. Everything here follows etcd's `mvcc` and `etcdserver`
 * rules unless a comment says otherwise.
 *
 * Revisions. An empty store is at revision 1. Every write transaction that changes at least one
 * key (a put, a delete that deletes something, a txn with a write in its taken branch, a lease
 * revoke or expiry that deletes attached keys) takes exactly one new revision; all keys it
 * touches get that `modRevision`. A delete that matches nothing and a read-only txn do not
 * advance the revision (etcd does the same). Revisions are never reused, across restarts and
 * compactions.
 *
 * Keys and values are bytes (Buffer). Lease IDs are int64 (bigint); 0n means "no lease".
 *
 * Reads (range, leases, watch replay) never wait for the writer: they run on their own SQLite
 * connection and see the latest committed state. Writes are queued to one writer that groups
 * concurrent requests into one SQLite transaction; a write's promise resolves only after that
 * transaction has committed at the configured durability.
 */

export interface KeyValue {
  key: Buffer;
  /** Revision of the last creation of this key; 0 in a delete event. */
  createRevision: number;
  /** Revision of the last modification (the delete's revision in a delete event). */
  modRevision: number;
  /** 1 on create, +1 per put; 0 in a delete event. */
  version: number;
  /** Empty when `keysOnly` was asked, and in delete events. */
  value: Buffer;
  /** 0n when the key has no lease. */
  lease: bigint;
}

export type SortOrder = 'NONE' | 'ASCEND' | 'DESCEND';
export type SortTarget = 'KEY' | 'VERSION' | 'CREATE' | 'MOD' | 'VALUE';

/**
 * Range follows etcd's `RangeRequest`:
 * - `rangeEnd` absent or empty: the single key `key`;
 * - `rangeEnd` = `\0`: every key >= `key` (with `key` = `\0` too: every key);
 * - otherwise the half-open interval [key, rangeEnd) (the prefix form is `key` with its last
 *   byte incremented).
 * `revision` <= 0 reads the current revision; a revision below the compaction point fails with
 * CompactedError, one above the current revision with FutureRevisionError.
 * `count` is the number of keys in the range at that revision before the min/max filters and the
 * limit (as etcd); `more` says whether the filtered result had more than `limit` keys.
 * A sort target other than KEY with order NONE sorts ascending (etcd's rule). Ties are broken
 * by key, ascending.
 */
export interface RangeRequest {
  key: Buffer;
  rangeEnd?: Buffer;
  limit?: number;
  revision?: number;
  sortOrder?: SortOrder;
  sortTarget?: SortTarget;
  keysOnly?: boolean;
  countOnly?: boolean;
  minModRevision?: number;
  maxModRevision?: number;
  minCreateRevision?: number;
  maxCreateRevision?: number;
}

export interface ResponseHeader {
  /** The store's revision when the request was served (for writes: the revision it created). */
  revision: number;
}

export interface RangeResponse {
  header: ResponseHeader;
  kvs: KeyValue[];
  more: boolean;
  count: number;
}

/**
 * Put. `lease` attaches the key to a lease (LeaseNotFoundError if it does not exist);
 * `ignoreValue` keeps the current value and `ignoreLease` the current lease (both fail with
 * KeyNotFoundError when the key does not exist, as etcd).
 */
export interface PutRequest {
  key: Buffer;
  value?: Buffer;
  lease?: bigint;
  prevKv?: boolean;
  ignoreValue?: boolean;
  ignoreLease?: boolean;
}

export interface PutResponse {
  header: ResponseHeader;
  prevKv?: KeyValue;
}

export interface DeleteRangeRequest {
  key: Buffer;
  rangeEnd?: Buffer;
  prevKv?: boolean;
}

export interface DeleteRangeResponse {
  header: ResponseHeader;
  deleted: number;
  prevKvs: KeyValue[];
}

export type CompareTarget = 'VERSION' | 'CREATE' | 'MOD' | 'VALUE' | 'LEASE';
export type CompareResult = 'EQUAL' | 'GREATER' | 'LESS' | 'NOT_EQUAL';

/**
 * One txn compare. With `rangeEnd` it must hold for every key in the range. A compare on a key
 * that does not exist sees a zero KeyValue (version 0, revisions 0, lease 0), except a VALUE
 * compare, which then always fails (etcd's rule: a missing value cannot be compared).
 */
export interface Compare {
  key: Buffer;
  rangeEnd?: Buffer;
  target: CompareTarget;
  result: CompareResult;
  version?: number;
  createRevision?: number;
  modRevision?: number;
  value?: Buffer;
  lease?: bigint;
}

export type RequestOp =
  | { range: RangeRequest }
  | { put: PutRequest }
  | { deleteRange: DeleteRangeRequest }
  | { txn: TxnRequest };

export type ResponseOp =
  | { range: RangeResponse }
  | { put: PutResponse }
  | { deleteRange: DeleteRangeResponse }
  | { txn: TxnResponse };

/**
 * A txn: compares, then the success or failure ops in order, all in one revision. Ranges inside
 * a txn see the writes made earlier in the same txn. A branch (nested txns included) that
 * writes one key twice fails with DuplicateKeyError; more than `maxTxnOps` ops with
 * TooManyOpsError. Nested txns take the same revision as their parent.
 */
export interface TxnRequest {
  compare?: Compare[];
  success?: RequestOp[];
  failure?: RequestOp[];
}

export interface TxnResponse {
  header: ResponseHeader;
  succeeded: boolean;
  responses: ResponseOp[];
}

export interface CompactResponse {
  header: ResponseHeader;
}

// --- leases ------------------------------------------------------------------------------------

export interface LeaseGrantResponse {
  header: ResponseHeader;
  id: bigint;
  /** Granted TTL in seconds (raised to the store's minimum TTL, as etcd does). */
  ttl: number;
}

export interface LeaseKeepAliveResponse {
  header: ResponseHeader;
  id: bigint;
  ttl: number;
}

export interface LeaseTimeToLiveResponse {
  header: ResponseHeader;
  id: bigint;
  /** Remaining seconds (rounded down, as etcd). */
  ttl: number;
  grantedTtl: number;
  keys: Buffer[];
}

// --- watch ------------------------------------------------------------------------------------

export type EventType = 'PUT' | 'DELETE';

export interface WatchEvent {
  type: EventType;
  /** For DELETE: only `key` and `modRevision` (the delete's revision) are set, as etcd. */
  kv: KeyValue;
  /** The key's previous value, when the watcher asked for `prevKv` and it is still in history. */
  prevKv?: KeyValue;
}

export interface WatchOptions {
  key: Buffer;
  rangeEnd?: Buffer;
  /**
   * First revision to deliver. Absent or <= 0: only events after the current revision. A start
   * revision below the compaction point fails at once with CompactedError (with the compact
   * revision); one in the future simply waits for it.
   */
  startRevision?: number;
  prevKv?: boolean;
  noPut?: boolean;
  noDelete?: boolean;
}

export interface WatchListener {
  /**
   * Events in revision order, each exactly once, no gaps. `revision` is the store revision the
   * batch is current to (etcd's response header revision).
   */
  onEvents(events: WatchEvent[], revision: number): void;
  /**
   * The watcher ended without being asked: CompactedError while replaying, WatchOverflowError
   * when it fell more than the buffer limit behind, StoreClosedError on shutdown.
   */
  onCancel(reason: Error): void;
}

export interface WatchHandle {
  readonly id: number;
  /** Stop delivering events; idempotent. */
  cancel(): void;
  /**
   * The consumer cannot take more now (for example, a gRPC stream's write returned false):
   * events are buffered up to the limit, then the watcher is cancelled with WatchOverflowError.
   */
  pause(): void;
  /** Deliver what was buffered and continue live. */
  resume(): void;
  /**
   * The revision every event up to which has been delivered to this watcher, or undefined while
   * it is still replaying history or holds buffered events (etcd sends progress only to synced
   * watchers).
   */
  progressRevision(): number | undefined;
}

// --- generic writes for the other parts -------------------------------------------------------

/** The blobs of many rows in one buffer: row i is `bytes[ends[i - 1] ?? 0, ends[i])`. */
export interface BlobColumn {
  bytes: Uint8Array;
  ends: Uint32Array;
}

/**
 * A statement the writer runs inside the group transaction. SQL text is prepared once and
 * cached by the writer.
 *   `params`  runs it once;
 *   `rows`    runs it once per parameter set (batched appends);
 *   `columns` is `rows` of named parameters given by column: row i (of `count`) binds each name
 *             to `columns[name][i]`. Handing a batch to the writer thread then costs far less
 *             than one object per row (500 report rows: 0.4 against 3.5 µs a row to clone).
 * `rows` and `columns` are bulk appends for the writer's scheduling (see writer.ts).
 */
export type SqlOp =
  | { sql: string; params?: unknown[] | Record<string, unknown> }
  | { sql: string; rows: (unknown[] | Record<string, unknown>)[] }
  | { sql: string; columns: Record<string, unknown[] | BlobColumn>; count: number };

export interface SqlResult {
  /** Rows changed, summed over `rows` (or `columns`). */
  changes: number;
  /** The last inserted rowid (of the last row for `rows` or `columns`). */
  lastInsertRowid: number;
}

export interface WriteRequest {
  sql?: SqlOp[];
  /** An etcd txn run in the same SQLite transaction as `sql` (after it). */
  txn?: TxnRequest;
  /**
   * True when the request only frees space (deletes, retention): it is allowed while the
   * database is over its quota.
   */
  freesSpace?: boolean;
}

export interface WriteResponse {
  sql: SqlResult[];
  txn?: TxnResponse;
}

/** A part's schema: numbered steps applied once, in order, at open. */
export interface Migration {
  /** Owner of the tables, e.g. "ingest". */
  part: string;
  /** 1, 2, 3... per part. */
  version: number;
  sql: string;
}

/** Prepared statement on the read connection (better-sqlite3's). */
export interface ReadStatement<R = unknown> {
  get(...params: unknown[]): R | undefined;
  all(...params: unknown[]): R[];
  iterate(...params: unknown[]): IterableIterator<R>;
}

// --- recipes ----------------------------------------------------------------------------------

/** etcd's v3election LeaderKey. */
export interface LeaderKey {
  name: Buffer;
  key: Buffer;
  rev: number;
  lease: bigint;
}

// --- status -----------------------------------------------------------------------------------

export interface StoreStats {
  revision: number;
  compactRevision: number;
  /** File size in bytes (page_count * page_size). */
  dbSize: number;
  /** Bytes in use (file size less free pages). */
  dbSizeInUse: number;
  walSize: number;
  quota: number;
  keys: number;
  leases: number;
  watchers: number;
  /** True while the database is over its quota (etcd's NOSPACE alarm). */
  noSpace: boolean;
  /**
   * Commit latency (execute, commit and sync, ms) over the last minute's commits (at most the
   * last 1,000); undefined with fewer than 20 of them, too few for a p99 to mean anything.
   */
  commitLatencyMs?: { p50: number; p99: number };
}

export type Durability = 'fsync' | 'relaxed';

export interface StoreOptions {
  /** Path of the SQLite file; its directory must exist. */
  file: string;
  durability?: Durability;
  /** Database quota in bytes (etcd's --quota-backend-bytes); default 2 GiB. */
  quotaBytes?: number;
  /** Largest request in bytes; default 1.5 MiB (etcd's --max-request-bytes). */
  maxRequestBytes?: number;
  /** Most ops in one txn; default 128 (etcd's --max-txn-ops). */
  maxTxnOps?: number;
  /** Events a paused or slow watcher may hold before it is cancelled; default 10,000. */
  watchBufferLimit?: number;
  /** Shortest lease TTL in seconds; shorter grants are raised to it. Default 2 (etcd's, at its default election timeout). */
  minLeaseTtl?: number;
  /** Other parts' tables. */
  migrations?: Migration[];
  /** Ignored: the writer always runs on the calling thread now (it syncs off the event loop). */
  inlineWriter?: boolean;
  /**
   * Called once when a WAL sync fails: the store then refuses every write (it can no longer tell
   * what is durable). The daemon exits so that systemd restarts it and recovery reads the disk.
   */
  onFatal?: (e: Error) => void;
  clock?: import('../clock.js').Clock;
  logger?: import('../log.js').Logger;
  /** Register the store's metrics here (prom-client Registry). */
  registry?: import('prom-client').Registry;
}

/**
 * The store. Created by `openStore(options)` from `src/store/index.ts`; close it with `close()`.
 * Every method throws/rejects with the EdgeError subclasses of `src/errors.ts`.
 */
export interface Store {
  // KV (etcd's KV service)
  range(req: RangeRequest): RangeResponse;
  put(req: PutRequest): Promise<PutResponse>;
  deleteRange(req: DeleteRangeRequest): Promise<DeleteRangeResponse>;
  txn(req: TxnRequest): Promise<TxnResponse>;
  /** Compact history below `revision` (etcd's Compact). `physical` waits until the rows are gone. */
  compact(revision: number, physical?: boolean): Promise<CompactResponse>;

  // Leases (etcd's Lease service). Expiry deletes the attached keys in one revision.
  leaseGrant(ttl: number, id?: bigint): Promise<LeaseGrantResponse>;
  leaseRevoke(id: bigint): Promise<ResponseHeader>;
  /** Renews in memory (no disk write, as etcd); LeaseNotFoundError when gone. */
  leaseKeepAlive(id: bigint): LeaseKeepAliveResponse;
  leaseTimeToLive(id: bigint, keys?: boolean): LeaseTimeToLiveResponse;
  leaseList(): bigint[];

  // Watch
  watch(opts: WatchOptions, listener: WatchListener): WatchHandle;

  // Recipes with etcd's `concurrency` key layout (`<name>/<lease hex>`).
  /** Wait until this lease holds the lock `name`; resolves with the lock key. */
  lock(name: Buffer, lease: bigint, signal?: AbortSignal): Promise<{ header: ResponseHeader; key: Buffer }>;
  unlock(key: Buffer): Promise<ResponseHeader>;
  campaign(
    name: Buffer,
    lease: bigint,
    value: Buffer,
    signal?: AbortSignal,
  ): Promise<{ header: ResponseHeader; leader: LeaderKey }>;
  proclaim(leader: LeaderKey, value: Buffer): Promise<ResponseHeader>;
  /** The current leader's key-value, or undefined when there is none. */
  leader(name: Buffer): KeyValue | undefined;
  resign(leader: LeaderKey): Promise<ResponseHeader>;

  // Generic writes and reads for the other parts' tables.
  write(req: WriteRequest): Promise<WriteResponse>;
  /**
   * A prepared read-only statement (cached by SQL text). It sees everything committed, which for
   * a moment includes a batch whose sync has not returned yet; a reader that must see only
   * durable rows (the uplink) awaits `settled()` and reads synchronously right after.
   */
  query<R = unknown>(sql: string): ReadStatement<R>;
  /** Resolves at a moment when every committed write is durable (at once when none is syncing). */
  settled(): Promise<void>;

  // Status and maintenance
  revision(): number;
  compactRevision(): number;
  stats(): StoreStats;
  /** Stable random IDs created with the database (etcd's cluster and member IDs). */
  identity(): { clusterId: bigint; memberId: bigint };
  /** A stable hash of the key space up to `revision` (etcd's HashKV, our own function). */
  hashKv(revision?: number): { hash: number; compactRevision: number; revision: number };
  /** Consistent online copy of the database to `file`. */
  backup(file: string): Promise<void>;
  /** Rebuild the file to return free pages (VACUUM); blocks writes while it runs. */
  defragment(): Promise<void>;
  /** Finish queued writes, stop watchers (StoreClosedError), close the file. */
  close(): Promise<void>;
  /**
   * Observe every committed group transaction: how long it took to run and commit, and (when the
   * store measures it) how long its fsync took. Returns the function that stops the observing.
   * Listeners run on the calling thread after the commit; they must be cheap and must not throw.
   */
  onCommit?(listener: (c: { commitSeconds: number; fsyncSeconds?: number }) => void): () => void;
}
