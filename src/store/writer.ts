/**
 * The single writer and its group commit. Requests queue here; whenever the writer is idle,
 * queued requests go to it as one batch, executed in one SQLite transaction. While a batch
 * commits (fsync), the next one gathers, so the batch size follows the disk's speed: one request
 * per commit when idle, hundreds when the disk is slow. A request's promise settles only after
 * its batch has committed.
 *
 * Two classes share the writer. Bulk appends (SQL ops with `rows` or `columns`: device reports, probe
 * samples) are throughput work; everything else (etcd writes, leases, cursors) is interactive and
 * someone is waiting on it. Each batch takes every queued interactive request first and then bulk
 * requests up to `bulkRowsPerBatch` rows (a quarter of it when interactive requests are in the
 * batch; bulk never starves, see `take`). That bounds how long an etcd put can wait behind
 * report batches: one bounded transaction, and its own carries few rows.
 * Order is kept within a class, not across classes; no caller relies on cross-class order.
 *
 * On a slow disk, right after a commit, the writer lingers before starting a batch that would be
 * at most half the size of the previous one, for at most half of the previous commit's duration:
 * clients answered by the last commit are still sending their next requests, and one fsync for
 * all of them beats one short batch now and a long one later. With a fast disk (commits under `LINGER_MIN_COMMIT_MS`)
 * it never waits.
 *
 * The writer runs on a worker thread by default, so a slow fsync never stalls the event loop
 * that serves reads, watches and the network; `inline` runs it on the calling thread (tests and
 * one-shot CLI commands).
 */
import type { Worker } from 'node:worker_threads';
import { startThread } from '../thread.js';
import { BusyError, StoreClosedError } from '../errors.js';
import type {
  BatchResult,
  EngineOpenResult,
  EngineOptions,
  EngineRequest,
  EngineResult,
  WireError,
} from './engine.js';
import { Engine } from './engine.js';
import { fromWireError, revive } from './wire.js';

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

const isBarrier = (req: EngineRequest) => req.t === 'vacuum' || req.t === 'checkpoint';

interface Backend {
  open(): Promise<EngineOpenResult>;
  run(reqs: EngineRequest[], wantPrev: boolean): Promise<BatchResult>;
  close(): Promise<void>;
}

class InlineBackend implements Backend {
  private engine?: Engine;
  constructor(private readonly opts: EngineOptions) {}
  async open() {
    this.engine = new Engine(this.opts);
    return this.engine.open();
  }
  async run(reqs: EngineRequest[], wantPrev: boolean) {
    return this.engine!.runBatch(reqs, wantPrev);
  }
  async close() {
    this.engine?.close();
  }
}

class WorkerBackend implements Backend {
  private readonly worker: Worker;
  private waiting: ((msg: unknown) => void)[] = [];
  private failed?: Error;

  constructor(opts: EngineOptions) {
    // A young generation of 3 MB (1 MB semi-spaces; V8 would grow them to 16 MB under load and
    // keep them): the writer's garbage is each batch's requests and results, well under 1 MB.
    // With 1,000 devices reporting, about 6 MB less RSS.
    this.worker = startThread(import.meta.url, './writer-worker', opts, {
      resourceLimits: { maxYoungGenerationSizeMb: 3 },
    });
    this.worker.on('message', (msg) => this.waiting.shift()?.(msg));
    this.worker.on('error', (e) => this.fail(e));
    this.worker.on('exit', (code) => this.fail(new Error(`store writer thread exited with code ${code}`)));
  }
  private fail(e: Error) {
    this.failed ??= e;
    for (const w of this.waiting.splice(0)) w({ error: { code: 'EDGE_ERR_STORAGE', message: e.message } });
  }
  private call<T>(msg: unknown): Promise<T> {
    if (this.failed) return Promise.reject(this.failed);
    return new Promise((resolve, reject) => {
      this.waiting.push((reply) => {
        const r = reply as { error?: WireError };
        if (r.error) reject(fromWireError(r.error));
        else resolve(revive(reply) as T);
      });
      this.worker.postMessage(msg);
    });
  }
  open() {
    return this.call<EngineOpenResult>({ t: 'open' });
  }
  run(reqs: EngineRequest[], wantPrev: boolean) {
    return this.call<BatchResult>({ t: 'batch', reqs, wantPrev });
  }
  async close() {
    if (!this.failed) await this.call({ t: 'close' });
    await this.worker.terminate();
  }
}

export interface WriterOptions extends EngineOptions {
  inline: boolean;
  /** Most requests waiting for the writer before new ones are refused with BusyError. */
  maxPending: number;
  /** Most requests in one transaction (bounds a commit's duration). */
  maxBatch: number;
  /** Most bulk rows in one transaction (bounds how long interactive writes wait behind them). */
  bulkRowsPerBatch: number;
}

export class Writer {
  private readonly backend: Backend;
  private interactive: Pending[] = [];
  private bulk: Pending[] = [];
  /** Batches sent to the backend and not yet settled: 0, 1, or 2 with a follower (see canFollow). */
  private inFlight = 0;
  /** The batch in flight appends bulk rows. */
  private bulkAhead = false;
  /** The last transaction left bulk requests queued (see take). */
  private bulkSkipped = false;
  private closed = false;
  private scheduled = false;
  private lingerTimer?: ReturnType<typeof setTimeout>;
  /** Size and duration of the last batch, for lingering. */
  private last = { size: 0, commitMs: 0, endedAt: 0 };
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly opts: WriterOptions,
    /** Called with every committed batch before its requests' promises settle. */
    private readonly onBatch: (batch: BatchResult, reqs: EngineRequest[]) => void,
    private readonly wantPrev: () => boolean,
  ) {
    this.backend = opts.inline ? new InlineBackend(opts) : new WorkerBackend(opts);
  }

  open(): Promise<EngineOpenResult> {
    return this.backend.open();
  }

  submit(req: EngineRequest): Promise<EngineResult> {
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

  private schedule() {
    if (this.scheduled || this.lingerTimer || (this.inFlight > 0 && !this.canFollow())) return;
    this.scheduled = true;
    // setImmediate lets every request issued in this turn of the event loop join the batch.
    setImmediate(() => {
      this.scheduled = false;
      if (this.lingerTimer) return;
      if (this.inFlight > 0) {
        if (this.canFollow()) void this.flush(true);
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
      void this.flush(false);
    });
  }

  /**
   * While a transaction with bulk rows commits, queued interactive requests are sent to the
   * writer thread as the next transaction at once (one follower at most), so they start the
   * moment it ends instead of after its reply has crossed this thread's event loop, which under
   * ingest load can take tens of milliseconds. Only behind bulk: between interactive batches
   * the wait is what grows the next group commit.
   */
  private canFollow(): boolean {
    return (
      this.inFlight === 1 &&
      this.bulkAhead &&
      this.interactive.length > 0 &&
      !isBarrier(this.interactive[0]!.req)
    );
  }

  get inFlightBatches(): number {
    return this.inFlight;
  }

  private flushNow() {
    clearTimeout(this.lingerTimer);
    this.lingerTimer = undefined;
    void this.flush(false);
  }

  /** Queued interactive requests up to the first barrier (all of a follower). */
  private takeInteractive(): Pending[] {
    let n = 0;
    while (n < this.interactive.length && n < this.opts.maxBatch && !isBarrier(this.interactive[n]!.req)) n++;
    return this.interactive.splice(0, n);
  }

  /**
   * The next transaction: interactive requests first, then bulk ones within the row budget.
   * Next to interactive requests bulk gets a quarter of the budget: a put then commits with
   * little besides it. So that a steady stream of interactive writes cannot starve bulk, a
   * transaction that left bulk waiting makes the next one take bulk in full (at least one request).
   */
  private take(): Pending[] {
    const max = this.opts.maxBatch;
    const head = this.interactive[0] ?? this.bulk[0]!;
    if (isBarrier(head.req)) return (this.interactive[0] ? this.interactive : this.bulk).splice(0, 1);
    const take = this.takeInteractive();
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

  private async flush(follow: boolean): Promise<void> {
    if (follow ? !this.canFollow() : this.inFlight > 0 || this.pending === 0) {
      if (this.inFlight === 0 && this.pending === 0) for (const w of this.idleWaiters.splice(0)) w();
      return;
    }
    this.inFlight++;
    const take = follow ? this.takeInteractive() : this.take();
    if (!follow) this.bulkAhead = take.some((p) => p.rows > 0);
    const reqs = take.map((p) => p.req);
    try {
      const batch = await this.backend.run(reqs, this.wantPrev());
      this.last = { size: take.length, commitMs: batch.commitMs, endedAt: performance.now() };
      this.onBatch(batch, reqs);
      for (let i = 0; i < take.length; i++) take[i]!.resolve(batch.results[i]!);
    } catch (e) {
      for (const p of take) p.reject(e as Error);
    } finally {
      this.inFlight--;
      if (!follow) this.bulkAhead = false;
    }
    if (this.pending > 0) this.schedule();
    else if (this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
  }

  /** Refuse new requests, wait for queued ones to commit, close the database. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.lingerTimer) this.flushNow();
    if (this.pending > 0 || this.inFlight > 0) await new Promise<void>((r) => this.idleWaiters.push(r));
    await this.backend.close();
  }
}
