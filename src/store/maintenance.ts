/**
 * When and how the WAL is checkpointed. SQLite's automatic checkpoint runs inside the commit
 * that crosses its threshold, so every client waiting on that commit waits while pages are
 * copied and the database is synced at the card's speed. Here the writer connection never
 * checkpoints; a thread of our own does (maintenance-worker.ts), passively (it never blocks a
 * writer), small and often: when the writer has been idle since the last commit, or at the
 * latest `FORCE_MS` after the first commit it has not checkpointed.
 *
 * The WAL restarts (is overwritten from its start, in place) only when a writer begins while
 * every frame has been copied. Under steady writes a passive checkpoint never catches up, so
 * the WAL would grow for ever, and every fdatasync of a growing file also writes the file
 * system's metadata (its size) through the journal: measured here, 9 ms per sequential put
 * instead of under 1 ms. So once the WAL holds `RESTART_BYTES`, after a passive checkpoint has
 * copied most of it, the writer holds its queue for one more checkpoint of the few frames
 * committed meanwhile; its next batch restarts the WAL. That hold is the one time background
 * work makes commits wait: a small copy and the database's sync, once per `RESTART_BYTES` of
 * WAL. A WAL reused in place is overwritten block by block, and syncing it writes no metadata.
 *
 * What the card costs the commits is measured, not assumed: the store asks `causeDuring()`
 * which background work overlapped each sync, and keeps the longest sync per cause (metrics).
 */
import type { Worker } from 'node:worker_threads';
import type { Logger } from '../log.js';
import { startThread } from '../thread.js';
import { WAL_LIMIT_BYTES } from './engine.js';

/** How often the policy looks at the writer. */
const TICK_MS = 100;
/** An idle writer gets its WAL checkpointed this long after its last commit at the earliest. */
const IDLE_MS = 200;
/** Under steady load, checkpoint at least this often (each one then stays small). */
const FORCE_MS = 1000;
/** A WAL this large is restarted (see above): half of what the file is kept at. */
const RESTART_BYTES = WAL_LIMIT_BYTES / 2;

export interface CheckpointResult {
  /** Frames in the WAL, and how many of them are now in the database. */
  log: number;
  checkpointed: number;
  busy: number;
  ms: number;
  /** Bytes one WAL frame takes (page size + 24-byte header). */
  frameBytes: number;
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
  /** Monotonic time of the first commit not yet checkpointed (0: none). */
  private dirtySince = 0;
  private lastCommit = 0;
  private closed = false;

  constructor(
    file: string,
    private readonly log: Logger,
    /** True while the writer executes or syncs a batch. */
    private readonly writerBusy: () => boolean,
    private readonly onCheckpoint: (r: CheckpointResult) => void,
    /** Run `fn` while the writer holds its queue (Writer.runExclusive). */
    private readonly holdWriter: (fn: () => Promise<void>) => Promise<void>,
  ) {
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

  /** A batch committed. */
  noteCommit(): void {
    this.lastCommit = performance.now();
    if (this.dirtySince === 0) this.dirtySince = this.lastCommit;
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
    if (this.running || this.dirtySince === 0 || this.closed) return;
    const now = performance.now();
    const idle = !this.writerBusy() && now - this.lastCommit >= IDLE_MS;
    if (!idle && now - this.dirtySince < FORCE_MS) return;
    this.background().catch((e) =>
      this.log.warn({ err: e }, 'WAL checkpoint failed; it is retried, and commits are not affected'),
    );
  }

  /** A passive checkpoint, and the held one that lets a large WAL restart (see above). */
  private async background(): Promise<void> {
    const r = await this.checkpoint('PASSIVE');
    // `log` is the WAL's length when this checkpoint began; whatever was committed while it
    // copied keeps the WAL from restarting, however complete the copy.
    if (r.log * r.frameBytes >= RESTART_BYTES && !this.closed)
      await this.holdWriter(async () => {
        await this.run('wal-restart', { t: 'checkpoint', mode: 'PASSIVE' }).then((x) => this.onCheckpoint(x));
      });
  }

  /** Copy the WAL into the database (TRUNCATE also empties the WAL file, waiting for readers). */
  async checkpoint(mode: 'PASSIVE' | 'TRUNCATE'): Promise<CheckpointResult> {
    const startedDirty = this.dirtySince;
    this.dirtySince = 0;
    const r = await this.run('checkpoint', { t: 'checkpoint', mode });
    // Commits made while it ran may not be in it: look again soon.
    if (r.checkpointed < r.log && this.dirtySince === 0) this.dirtySince = startedDirty || performance.now();
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
    if (!this.dead) {
      // Let a running checkpoint finish; then the thread closes its connection.
      await this.ask({ t: 'close' });
    }
    await this.worker.terminate();
  }
}
