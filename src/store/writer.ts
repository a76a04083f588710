/**
 * The single writer and its group commit. Requests queue here; whenever the writer is idle, every
 * queued request goes to it as one batch, executed in one SQLite transaction. While a batch
 * commits (fsync), the next one gathers, so the batch size follows the disk's speed: one request
 * per commit when idle, hundreds when the disk is slow. A request's promise settles only after
 * its batch has committed.
 *
 * The writer runs on a worker thread by default, so a slow fsync never stalls the event loop
 * that serves reads, watches and the network; `inline` runs it on the calling thread (tests and
 * one-shot CLI commands).
 */
import { Worker } from 'node:worker_threads';
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
  resolve: (r: EngineResult) => void;
  reject: (e: Error) => void;
}

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
    // From source (tests run TypeScript through tsx) the worker must register tsx itself:
    // loader hooks of the main thread do not reach worker threads on Node 20.
    const fromSource = import.meta.url.endsWith('.ts');
    const entry = new URL(`./writer-worker${fromSource ? '.ts' : '.js'}`, import.meta.url).href;
    const boot = `const { workerData } = require('node:worker_threads');
      (async () => {
        if (workerData.fromSource) (await import('tsx/esm/api')).register();
        await import(workerData.entry);
      })().catch((e) => { throw e; });`;
    this.worker = new Worker(boot, { eval: true, workerData: { ...opts, entry, fromSource } });
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
}

export class Writer {
  private readonly backend: Backend;
  private queue: Pending[] = [];
  private inFlight = false;
  private closed = false;
  private scheduled = false;
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
    if (this.queue.length >= this.opts.maxPending) return Promise.reject(new BusyError(this.opts.maxPending));
    return new Promise((resolve, reject) => {
      this.queue.push({ req, resolve, reject });
      this.schedule();
    });
  }

  get pending(): number {
    return this.queue.length;
  }

  private schedule() {
    if (this.scheduled || this.inFlight) return;
    this.scheduled = true;
    // setImmediate lets every request issued in this turn of the event loop join the batch.
    setImmediate(() => {
      this.scheduled = false;
      void this.flush();
    });
  }

  private async flush(): Promise<void> {
    if (this.inFlight || this.queue.length === 0) {
      if (!this.inFlight && this.queue.length === 0) for (const w of this.idleWaiters.splice(0)) w();
      return;
    }
    this.inFlight = true;
    let take: Pending[];
    const first = this.queue[0]!;
    if (first.req.t === 'vacuum' || first.req.t === 'checkpoint') take = this.queue.splice(0, 1);
    else {
      let n = 0;
      while (n < this.queue.length && n < this.opts.maxBatch) {
        const t = this.queue[n]!.req.t;
        if (t === 'vacuum' || t === 'checkpoint') break;
        n++;
      }
      take = this.queue.splice(0, n);
    }
    const reqs = take.map((p) => p.req);
    try {
      const batch = await this.backend.run(reqs, this.wantPrev());
      this.onBatch(batch, reqs);
      for (let i = 0; i < take.length; i++) take[i]!.resolve(batch.results[i]!);
    } catch (e) {
      for (const p of take) p.reject(e as Error);
    } finally {
      this.inFlight = false;
    }
    if (this.queue.length > 0) this.schedule();
    else for (const w of this.idleWaiters.splice(0)) w();
  }

  /** Refuse new requests, wait for queued ones to commit, close the database. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.queue.length > 0 || this.inFlight) await new Promise<void>((r) => this.idleWaiters.push(r));
    await this.backend.close();
  }
}
