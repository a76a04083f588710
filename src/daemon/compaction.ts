/**
 * Automatic compaction, as etcd's --auto-compaction-mode / --auto-compaction-retention:
 * - periodic: every retention/10, compact to the revision that was current `retention` ago
 *   (known from a small ring of (time, revision) samples taken at each tick);
 * - revision: every 5 minutes, compact to (current revision - retention).
 * Samples are taken on the monotonic clock: a step of the wall clock neither compacts away the
 * whole history at once (forward) nor stops compaction for the length of the step (back).
 * The interval is derived from a duration, which a cron expression cannot express in general
 * ("every 42 s"), so this job runs on the injected clock; that also lets tests drive it.
 */
import type { Clock, Timer } from '../clock.js';
import { CompactedError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Store } from '../store/types.js';
import type { JobRecorder } from './jobs.js';

/** etcd's revision-mode period. */
export const REVISION_MODE_INTERVAL_MS = 5 * 60_000;
/** Never tick faster than this, whatever the retention (a tiny retention must not spin). */
const MIN_INTERVAL_MS = 1000;

export interface CompactorOptions {
  store: Pick<Store, 'revision' | 'compactRevision' | 'compact'>;
  clock: Clock;
  logger: Logger;
  mode: 'periodic' | 'revision';
  /** periodic: milliseconds of history to keep; revision: revisions to keep. 0: off. */
  retention: number;
  jobs?: JobRecorder;
}

export class Compactor {
  private readonly samples: { at: number; revision: number }[] = [];
  private readonly capacity: number;
  private readonly intervalMs: number;
  private timer: Timer | undefined;
  private running: Promise<void> | undefined;
  private stopped = true;

  constructor(private readonly o: CompactorOptions) {
    this.intervalMs =
      o.mode === 'periodic'
        ? Math.max(MIN_INTERVAL_MS, Math.floor(o.retention / 10))
        : REVISION_MODE_INTERVAL_MS;
    // Enough samples to reach back `retention`, plus slack for a late tick.
    this.capacity = o.mode === 'periodic' ? Math.ceil(o.retention / this.intervalMs) + 3 : 0;
  }

  get enabled(): boolean {
    return this.o.retention > 0;
  }

  get interval(): number {
    return this.intervalMs;
  }

  start(): void {
    if (!this.enabled) {
      this.o.logger.info({ mode: this.o.mode }, 'automatic compaction is off (retention 0)');
      return;
    }
    this.stopped = false;
    this.sample();
    this.schedule();
    this.o.logger.info(
      { mode: this.o.mode, retention: this.o.retention, intervalMs: this.intervalMs },
      'automatic compaction scheduled',
    );
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.timer?.cancel();
    await this.running;
  }

  /** Resolves when no scheduled pass is running (tests drive the clock, then wait here). */
  async whenIdle(): Promise<void> {
    await this.running;
  }

  /** One compaction pass now; resolves with the revision compacted to, or undefined when nothing was due. */
  async runOnce(): Promise<number | undefined> {
    const target = this.target();
    const current = this.o.store.compactRevision();
    if (target === undefined || target <= current) return undefined;
    try {
      await this.o.store.compact(target);
      return target;
    } catch (err) {
      // Someone (etcdctl compact) got there first: nothing to do.
      if (err instanceof CompactedError) return undefined;
      throw err;
    }
  }

  private target(): number | undefined {
    if (this.o.mode === 'revision') {
      const t = this.o.store.revision() - this.o.retention;
      return t > 1 ? t : undefined;
    }
    const cutoff = this.o.clock.monotonic() - this.o.retention;
    let best: number | undefined;
    for (const s of this.samples) if (s.at <= cutoff) best = s.revision;
    return best;
  }

  private sample(): void {
    this.samples.push({ at: this.o.clock.monotonic(), revision: this.o.store.revision() });
    while (this.samples.length > this.capacity) this.samples.shift();
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = this.o.clock.setTimeout(() => {
      if (this.o.mode === 'periodic') this.sample();
      this.running = this.pass().finally(() => {
        this.running = undefined;
        this.schedule();
      });
    }, this.intervalMs);
  }

  private async pass(): Promise<void> {
    const run = async () => {
      const rev = await this.runOnce();
      if (rev === undefined)
        return { result: 'skipped' as const, detail: { reason: 'nothing to compact yet' } };
      return { result: 'ok' as const, detail: { revision: rev } };
    };
    if (this.o.jobs) await this.o.jobs.run('compaction', run);
    else await run();
  }
}
