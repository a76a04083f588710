/**
 * The single writer and its group commit. Requests queue here; whenever the writer is idle,
 * queued requests run as one batch in one SQLite transaction on this thread, and the batch is
 * made durable with one fdatasync of the WAL. While a batch syncs, the next one gathers, so the
 * batch size follows the disk's speed: one request per commit when idle, hundreds when the disk
 * is slow. A request's promise settles only after its batch is durable.
 *
 * Why an acknowledged write survives a power cut. SQLite never syncs on the writer's connection
 * (`synchronous=OFF`): COMMIT appends the transaction's pages to the WAL with write() and returns.
 * The writer then calls fdatasync() on the WAL file (on libuv's thread pool, so the event loop
 * keeps serving) and answers nobody before it returns. fdatasync flushes every written byte of
 * the file and the metadata needed to read it back (its size), whichever descriptor wrote them,
 * so the commit frame and every frame before it, and the WAL header after a restart, are on the
 * disk. After a power cut SQLite's recovery reads the WAL up to the last frame whose salt,
 * checksum chain and commit marker are intact: every synced commit is there, and a torn later
 * one is dropped whole. The WAL file was created before the first sync and its directory entry
 * is synced once. Checkpoints run on another connection with `synchronous=NORMAL`: SQLite syncs
 * the database before it records frames as copied, and the WAL restarts (is overwritten from
 * its start) only after that, so a checkpoint never loses a synced frame. This is what
 * `synchronous=FULL` guarantees, without a sync on the committing thread.
 *
 * Reads never see a write before it is durable: the store serves reads at the revision of the
 * last synced batch (see store.ts), and watchers get events only after the sync.
 *
 * If an fdatasync fails, the kernel may already have dropped the unwritten pages, so the batch
 * cannot be known durable and retrying the sync would lie. The batch fails with StorageError,
 * the writer refuses everything after it, and `onFatal` tells the owner (the daemon exits so
 * systemd restarts it; recovery then reads what really reached the disk).
 *
 * Two classes share the writer. Bulk appends (SQL ops with `rows` or `columns`: device reports,
 * probe samples) are throughput work; everything else (etcd writes, leases, cursors) is
 * interactive and someone is waiting on it. Each batch takes every queued interactive request
 * first and then bulk requests up to `bulkRowsPerBatch` rows (a quarter of it when interactive
 * requests are in the batch; bulk never starves, see `take`). That bounds how long an etcd put
 * can wait behind report batches. Order is kept within a class, not across classes; no caller
 * relies on cross-class order.
 *
 * On a slow disk, right after a commit, the writer lingers before starting a batch that would be
 * at most half the size of the previous one, for at most half of the previous commit's duration:
 * clients answered by the last commit are still sending their next requests, and one fsync for
 * all of them beats one short batch now and a long one later. With a fast disk (commits under
 * `LINGER_MIN_COMMIT_MS`) it never waits.
 */
import { closeSync, fdatasync, fsyncSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { BusyError, StorageError, StoreClosedError } from '../errors.js';
import type { BatchResult, EngineOpenResult, EngineOptions, EngineRequest, EngineResult } from './engine.js';
import { Engine } from './engine.js';
import { WalIndex, type WalState } from './sql/walindex.js';

interface Pending {
  req: EngineRequest;
  /** Rows a bulk request appends; 0 for interactive requests. */
  rows: number;
  resolve: (r: EngineResult) => void;
  reject: (e: Error) => void;
}

/** Commits faster than this never linger: the disk is fast and waiting would only add latency. */
const LINGER_MIN_COMMIT_MS = 2;
/** The longest a batch waits for stragglers, however slow the disk. */
const LINGER_MAX_MS = 10;

/** Whether frames were written between two reads of the WAL index (unknown counts as yes). */
function wroteFrames(before: WalState | undefined, after: WalState | undefined): boolean {
  return !before || !after || before.frames !== after.frames || before.checksum !== after.checksum;
}

/** Rows appended by a bulk request (SQL `rows`/`columns` ops without an etcd txn); 0 when interactive. */
function bulkRows(req: EngineRequest): number {
  if (req.t !== 'txn' || req.txn || !req.sql) return 0;
  let rows = 0;
  for (const op of req.sql) {
    if ('rows' in op) rows += op.rows.length;
    else if ('columns' in op) rows += op.count;
  }
  return rows;
}

/** A committed batch as the owner sees it once it is durable. */
export interface DurableBatch extends BatchResult {
  /** The WAL was synced for it (false: relaxed durability, or it wrote nothing). */
  synced: boolean;
  /** Milliseconds the WAL sync took (0 when not synced). */
  syncMs: number;
  /** Execute + commit + sync. */
  commitMs: number;
}

export interface WriterOptions extends EngineOptions {
  /** Most requests waiting for the writer before new ones are refused with BusyError. */
  maxPending: number;
  /** Most requests in one transaction (bounds a commit's duration). */
  maxBatch: number;
  /** Most bulk rows in one transaction (bounds how long interactive writes wait behind them). */
  bulkRowsPerBatch: number;
}

export class Writer {
  readonly engine: Engine;
  private interactive: Pending[] = [];
  private bulk: Pending[] = [];
  /** A batch is executing or syncing. */
  private busy = false;
  /** The last transaction left bulk requests queued (see take). */
  private bulkSkipped = false;
  private closed = false;
  private failed?: Error;
  private scheduled = false;
  private lingerTimer?: ReturnType<typeof setTimeout>;
  /** Size and duration of the last batch, for lingering. */
  private last = { size: 0, commitMs: 0, endedAt: 0 };
  private idleWaiters: (() => void)[] = [];
  /** Waiting for the batch in its sync to be durable (see settled). */
  private settleWaiters: (() => void)[] = [];
  private walFd?: number;
  private readonly walIndex: WalIndex;
  /** Work that must run alone (defragmentation): waits for the writer to be idle. */
  private exclusive: { fn: () => Promise<void>; resolve: () => void; reject: (e: Error) => void }[] = [];

  constructor(
    private readonly opts: WriterOptions,
    /** Called with every durable batch before its requests' promises settle. */
    private readonly onBatch: (batch: DurableBatch, reqs: EngineRequest[]) => void,
    private readonly wantPrev: () => boolean,
    /** A sync failed: nothing after it can be acknowledged (see the header). */
    private readonly onFatal: (e: Error) => void,
  ) {
    this.engine = new Engine(opts);
    this.walIndex = new WalIndex(opts.file);
  }

  open(): EngineOpenResult {
    return this.engine.open();
  }

  submit(req: EngineRequest): Promise<EngineResult> {
    if (this.failed) return Promise.reject(this.failed);
    if (this.closed) return Promise.reject(new StoreClosedError());
    if (this.pending >= this.opts.maxPending) return Promise.reject(new BusyError(this.opts.maxPending));
    return new Promise((resolve, reject) => {
      const rows = bulkRows(req);
      (rows > 0 ? this.bulk : this.interactive).push({ req, rows, resolve, reject });
      if (this.lingerTimer && this.pending >= this.last.size) this.flushNow();
      else this.schedule();
    });
  }

  get pending(): number {
    return this.interactive.length + this.bulk.length;
  }

  /** True while a batch executes or syncs. */
  get active(): boolean {
    return this.busy;
  }

  /**
   * Resolves when nothing committed is waiting for its sync. The waiters run as microtasks right
   * after a sync, before the next batch (scheduled with setImmediate) can commit anything.
   */
  settled(): Promise<void> {
    if (!this.busy) return Promise.resolve();
    return new Promise((r) => this.settleWaiters.push(r));
  }

  /**
   * Run `fn` while no batch executes or syncs and none starts; queued requests wait for it.
   * For work that needs the database to itself (VACUUM on another connection).
   */
  runExclusive(fn: () => Promise<void>): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    if (this.closed) return Promise.reject(new StoreClosedError());
    return new Promise((resolve, reject) => {
      this.exclusive.push({ fn, resolve, reject });
      this.schedule();
    });
  }

  private schedule() {
    if (this.scheduled || this.lingerTimer || this.busy) return;
    this.scheduled = true;
    // setImmediate lets every request issued in this turn of the event loop join the batch.
    setImmediate(() => {
      this.scheduled = false;
      if (this.lingerTimer || this.busy) return;
      if (this.exclusive.length > 0) {
        void this.runExclusiveNow();
        return;
      }
      const { size, commitMs, endedAt } = this.last;
      // Only right after a commit: a request arriving after a quiet spell goes at once.
      const recent = performance.now() - endedAt < commitMs;
      if (recent && commitMs >= LINGER_MIN_COMMIT_MS && this.pending * 2 <= size) {
        // Real time on purpose, not the injected clock: the wait is measured against the disk's
        // real commit time, and a test's manual clock must never hold a commit back.
        this.lingerTimer = setTimeout(() => this.flushNow(), Math.min(LINGER_MAX_MS, commitMs / 2));
        return;
      }
      void this.flush();
    });
  }

  private async runExclusiveNow(): Promise<void> {
    this.busy = true;
    const x = this.exclusive.shift()!;
    try {
      await x.fn();
      x.resolve();
    } catch (e) {
      x.reject(e as Error);
    } finally {
      this.busy = false;
      for (const w of this.settleWaiters.splice(0)) w();
      this.afterBatch();
    }
  }

  private flushNow() {
    clearTimeout(this.lingerTimer);
    this.lingerTimer = undefined;
    void this.flush();
  }

  /**
   * The next transaction: interactive requests first, then bulk ones within the row budget.
   * Next to interactive requests bulk gets a quarter of the budget: a put then commits with
   * little besides it. So that a steady stream of interactive writes cannot starve bulk, a
   * transaction that left bulk waiting makes the next one take bulk in full (at least one request).
   */
  private take(): Pending[] {
    const max = this.opts.maxBatch;
    const take = this.interactive.splice(0, max);
    const shared = take.length > 0 && !this.bulkSkipped;
    const budget = shared ? Math.floor(this.opts.bulkRowsPerBatch / 4) : this.opts.bulkRowsPerBatch;
    let rows = 0;
    let b = 0;
    while (b < this.bulk.length && take.length + b < max) {
      const next = this.bulk[b]!;
      if (rows + next.rows > budget && (b > 0 || shared)) break;
      rows += next.rows;
      b++;
    }
    this.bulkSkipped = b === 0 && this.bulk.length > 0;
    if (b > 0) take.push(...this.bulk.splice(0, b));
    return take;
  }

  private async flush(): Promise<void> {
    if (this.busy || this.pending === 0 || this.failed) {
      this.afterBatch();
      return;
    }
    this.busy = true;
    const take = this.take();
    const reqs = take.map((p) => p.req);
    const start = performance.now();
    let batch: BatchResult;
    const before = this.walIndex.read();
    try {
      batch = this.engine.runBatch(reqs, this.wantPrev());
    } catch (e) {
      for (const p of take) p.reject(e as Error);
      this.busy = false;
      for (const w of this.settleWaiters.splice(0)) w();
      this.afterBatch();
      return;
    }
    let syncMs = 0;
    // A batch that wrote no frame (reads, no-ops, the daemon's heartbeat) has nothing to sync: no
    // I/O at all, which keeps an idle node quiet and lets the heartbeat answer on a full disk.
    const synced = this.opts.durability === 'fsync' && wroteFrames(before, this.walIndex.read());
    try {
      if (synced) syncMs = await this.sync();
    } catch (e) {
      this.fail(new StorageError(`syncing the WAL failed (${(e as Error).message})`), take);
      return;
    }
    const commitMs = performance.now() - start;
    this.last = { size: take.length, commitMs, endedAt: performance.now() };
    try {
      this.onBatch({ ...batch, synced, syncMs, commitMs }, reqs);
    } finally {
      for (let i = 0; i < take.length; i++) take[i]!.resolve(batch.results[i]!);
      this.busy = false;
      for (const w of this.settleWaiters.splice(0)) w();
      this.afterBatch();
    }
  }

  private afterBatch(): void {
    if (this.pending > 0 || this.exclusive.length > 0) this.schedule();
    else if (!this.busy) for (const w of this.idleWaiters.splice(0)) w();
  }

  /** fdatasync the WAL (see the header); resolves with the milliseconds it took. */
  private sync(): Promise<number> {
    const fd = this.wal();
    const t = performance.now();
    return new Promise((resolve, reject) =>
      fdatasync(fd, (err) => (err ? reject(err) : resolve(performance.now() - t))),
    );
  }

  /**
   * The WAL's descriptor, opened once it exists (after the first commit); its directory is synced
   * then, so the file's name survives a power cut too. The file is never replaced while the
   * writer's connection is open (SQLite removes a WAL only when its last connection closes, and
   * cuts it back in place), so the descriptor stays valid for the store's life.
   */
  private wal(): number {
    if (this.walFd !== undefined) return this.walFd;
    const path = `${this.opts.file}-wal`;
    this.walFd = openSync(path, 'r');
    const dir = openSync(dirname(path), 'r');
    try {
      fsyncSync(dir);
    } finally {
      closeSync(dir);
    }
    return this.walFd;
  }

  private fail(e: Error, take: Pending[]): void {
    this.failed = e;
    for (const p of [...take, ...this.interactive.splice(0), ...this.bulk.splice(0)]) p.reject(e);
    for (const x of this.exclusive.splice(0)) x.reject(e);
    this.busy = false;
    for (const w of [...this.idleWaiters.splice(0), ...this.settleWaiters.splice(0)]) w();
    this.onFatal(e);
  }

  /** Refuse new requests, wait for queued ones to commit, close the database. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.lingerTimer) this.flushNow();
    if (this.pending > 0 || this.busy || this.exclusive.length > 0)
      await new Promise<void>((r) => this.idleWaiters.push(r));
    if (this.walFd !== undefined) closeSync(this.walFd);
    this.walFd = undefined;
    this.walIndex.close();
    this.engine.close();
  }
}
