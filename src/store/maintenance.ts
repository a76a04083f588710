/**
 * When and how the WAL is checkpointed. SQLite's automatic checkpoint runs inside the commit
 * that crosses its threshold, so every client waiting on that commit waits while pages are
 * copied and the database is synced at the card's speed. Here the writer connection never
 * checkpoints; a thread of our own does (maintenance-worker.ts), passively (it never blocks the
 * writer), while the writer is idle (no batch executing or syncing, nothing queued), at most once
 * a second and once `IDLE_BYTES` are uncopied (or the oldest is `IDLE_MAX_AGE_MS` old), so each
 * checkpoint stays small and a burst of writes is never slowed by one: on an SD card a
 * checkpoint and a commit share the card's few write I/Os. Only a WAL that passed `BUSY_BYTES`
 * uncopied is checkpointed while the writer is busy.
 *
 * The WAL restarts (is overwritten from its start, in place) when a writer begins while every
 * frame has been copied: after an idle checkpoint, at the next commit. Until then it grows, and
 * every fdatasync of a growing file also writes the file system's metadata (its size) through
 * the journal: measured here, 9 ms per sequential put instead of under 1 ms. A writer that is
 * never idle would never let it restart: past `HOLD_BYTES` the writer holds its queue for one
 * checkpoint of what is left (the one time background work makes commits wait; counted as a
 * `wal-restart` stall).
 *
 * The policy reads the WAL's length and how much of it is copied straight from the WAL-index
 * header in the -shm file (SQLite's documented layout), without asking SQLite.
 *
 * What the card costs the commits is measured, not assumed: the store asks `causeDuring()`
 * which background work overlapped each sync, and keeps the longest sync per cause (metrics).
 */
import type { Worker } from 'node:worker_threads';
import type { Logger } from '../log.js';
import { startThread } from '../thread.js';
import { WAL_LIMIT_BYTES } from './engine.js';
import { WalIndex } from './sql/walindex.js';

/** How often the policy looks at the WAL and the writer. */
const TICK_MS = 50;
/** Idle checkpoints at most this often: each one syncs the WAL and the database. */
const MIN_INTERVAL_MS = 1000;
/**
 * An idle writer's WAL is checkpointed once this much is uncopied, or once its oldest uncopied
 * frame is `IDLE_MAX_AGE_MS` old: each checkpoint also writes the file system's journal (its
 * syncs carry the files' times), so a node committing a few times a minute checkpoints a few
 * times an hour, not after every commit.
 */
const IDLE_BYTES = 128 * 1024;
const IDLE_MAX_AGE_MS = 10 * 60_000;
/** This much uncopied WAL is checkpointed even while the writer is busy. */
const BUSY_BYTES = WAL_LIMIT_BYTES / 2;
/** A WAL this long that has not restarted makes the writer hold its queue for one checkpoint. */
const HOLD_BYTES = WAL_LIMIT_BYTES;

export interface CheckpointResult {
  /** Frames in the WAL, and how many of them are now in the database. */
  log: number;
  checkpointed: number;
  busy: number;
  ms: number;
  /** Why it ran; `wal-restart` held the writer's queue for `ms`. */
  cause: StallCause;
}

type Reply = ({ ok: true } & Partial<CheckpointResult>) | { ok: false; code?: string; message: string };

export type StallCause = 'checkpoint' | 'wal-restart' | 'vacuum' | 'backup';

export class Maintenance {
  private readonly worker: Worker;
  private waiting: ((r: Reply) => void)[] = [];
  private timer?: ReturnType<typeof setInterval>;
  private running?: StallCause;
  private backups = 0;
  /** Recent background work, for attributing slow syncs (newest last). */
  private recent: { cause: StallCause; start: number; end: number }[] = [];
  private dead = false;
  private lastCheckpoint = 0;
  /** When the WAL was first seen with uncopied frames (0: all copied). */
  private uncopiedSince = 0;
  private closed = false;
  private readonly walIndex: WalIndex;

  constructor(
    file: string,
    private readonly log: Logger,
    /** True while the writer executes or syncs a batch or has requests queued. */
    private readonly writerBusy: () => boolean,
    private readonly onCheckpoint: (r: CheckpointResult) => void,
    /** Run `fn` while the writer holds its queue (Writer.runExclusive). */
    private readonly holdWriter: (fn: () => Promise<void>) => Promise<void>,
  ) {
    this.walIndex = new WalIndex(file);
    // The thread holds a connection and little else: a small young generation is plenty.
    this.worker = startThread(
      import.meta.url,
      './maintenance-worker',
      { file },
      {
        resourceLimits: { maxYoungGenerationSizeMb: 1 },
      },
    );
    this.worker.on('message', (r: Reply) => {
      this.waiting.shift()?.(r);
      if (this.waiting.length === 0) this.worker.unref();
    });
    this.worker.on('error', (e) => this.gone(e));
    this.worker.on('exit', (code) =>
      this.gone(new Error(`store maintenance thread exited with code ${code}`)),
    );
    // After the listeners: adding a 'message' listener refs the thread's port again. Idle, the
    // thread must not keep the process alive (a store nobody closed); `ask` refs it while a
    // request waits for its answer.
    this.worker.unref();
  }

  start(): void {
    this.timer = setInterval(() => this.tick(), TICK_MS);
    this.timer.unref();
  }

  /** The background work that overlapped [start, end] (monotonic ms), if any. */
  causeDuring(start: number, end: number): StallCause | undefined {
    if (this.running) return this.running;
    if (this.backups > 0) return 'backup';
    for (let i = this.recent.length - 1; i >= 0; i--) {
      const a = this.recent[i]!;
      if (a.start <= end && a.end >= start) return a.cause;
    }
    return undefined;
  }

  private record(cause: StallCause, start: number): void {
    this.recent.push({ cause, start, end: performance.now() });
    if (this.recent.length > 8) this.recent.shift();
  }

  /** Mark an online backup as running (it reads the database and writes its copy). */
  async duringBackup<T>(fn: () => Promise<T>): Promise<T> {
    const start = performance.now();
    this.backups++;
    try {
      return await fn();
    } finally {
      this.backups--;
      this.record('backup', start);
    }
  }

  private tick(): void {
    if (this.running || this.closed || this.dead) return;
    const w = this.walIndex.read();
    const now = performance.now();
    if (!w || w.copied >= w.frames) {
      this.uncopiedSince = 0;
      return;
    }
    if (this.uncopiedSince === 0) this.uncopiedSince = now;
    const uncopied = (w.frames - w.copied) * w.frameBytes;
    const busy = this.writerBusy();
    if (uncopied < BUSY_BYTES) {
      if (busy || now - this.lastCheckpoint < MIN_INTERVAL_MS) return;
      if (uncopied < IDLE_BYTES && now - this.uncopiedSince < IDLE_MAX_AGE_MS) return;
    }
    const hold = busy && w.frames * w.frameBytes >= HOLD_BYTES;
    (hold
      ? this.holdWriter(async () => {
          await this.checkpoint('PASSIVE', 'wal-restart');
        })
      : this.checkpoint('PASSIVE')
    ).catch((e) =>
      this.log.warn({ err: e }, 'WAL checkpoint failed; it is retried, and commits are not affected'),
    );
  }

  /** Copy the WAL into the database (TRUNCATE also empties the WAL file, waiting for readers). */
  async checkpoint(
    mode: 'PASSIVE' | 'TRUNCATE',
    cause: StallCause = 'checkpoint',
  ): Promise<CheckpointResult> {
    const r = await this.run(cause, { t: 'checkpoint', mode });
    this.lastCheckpoint = performance.now();
    this.onCheckpoint(r);
    return r;
  }

  /** VACUUM, then a truncating checkpoint. The caller keeps the writer idle meanwhile. */
  async vacuum(): Promise<void> {
    const r = await this.run('vacuum', { t: 'vacuum' });
    this.onCheckpoint(r);
  }

  private async run(cause: StallCause, msg: object): Promise<CheckpointResult> {
    if (this.closed) throw new Error('the store is closing');
    if (this.dead) throw new Error('the store maintenance thread is gone');
    this.running = cause;
    const start = performance.now();
    try {
      const r = await this.ask(msg);
      if (!r.ok) throw Object.assign(new Error(r.message), { code: r.code });
      return { ...(r as CheckpointResult), cause };
    } finally {
      this.running = undefined;
      this.record(cause, start);
    }
  }

  private ask(msg: object): Promise<Reply> {
    return new Promise<Reply>((resolve) => {
      this.waiting.push(resolve);
      this.worker.ref();
      this.worker.postMessage(msg);
    });
  }

  private gone(e: Error): void {
    if (!this.dead && !this.closed)
      this.log.error({ err: e }, 'store maintenance thread ended: WAL checkpoints stop');
    this.dead = true;
    for (const w of this.waiting.splice(0)) w({ ok: false, message: e.message });
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    this.walIndex.close();
    if (!this.dead) {
      // Let a running checkpoint finish; then the thread closes its connection.
      await this.ask({ t: 'close' });
    }
    await this.worker.terminate();
  }
}
