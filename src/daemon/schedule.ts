/**
 * A cron schedule on the injected clock that a wall-clock step cannot confuse. node-cron's runner
 * plans its next slot once: after the clock steps back it waits for that slot (a year later if
 * the step was a year), and after a step forward it walks every slot in between. This one looks
 * at the wall clock at each boundary of its unit (a minute; a second for node-cron's 6-field form
 * with seconds), never more than a unit of monotonic time apart, and runs when the current one
 * matches: after a step forward the job runs at most once (at the next matching slot of the new
 * time, no catch-up of missed slots); after a step back it runs at the next matching slot of the
 * new time, and never twice within a unit of monotonic time. A run still going when the next
 * one is due skips that one.
 */
import cron from 'node-cron';
import type { Clock, Timer } from '../clock.js';

export class CronSchedule {
  private readonly matcher: ReturnType<typeof cron.createTask>;
  private timer: Timer | undefined;
  /** A minute, or a second when the expression has a seconds field. */
  private readonly unit: number;
  private lastSlot = Number.NaN;
  private lastRun = Number.NEGATIVE_INFINITY; // monotonic
  private running: Promise<unknown> | undefined;

  constructor(
    expr: string,
    private readonly clock: Clock,
    private readonly job: () => Promise<unknown>,
  ) {
    // a task that is never started: only its matcher is used
    this.matcher = cron.createTask(expr, () => {});
    this.unit = expr.trim().split(/\s+/).length === 6 ? 1000 : 60_000;
  }

  start(): void {
    this.lastSlot = Math.floor(this.clock.now() / this.unit);
    this.arm();
  }

  /** Stops the schedule; resolves when a run in progress has finished. */
  async stop(): Promise<void> {
    this.timer?.cancel();
    this.timer = undefined;
    await this.running;
  }

  private arm(): void {
    // 10 ms past the boundary, so the look falls inside the new minute
    const wait = this.unit - (this.clock.now() % this.unit) + 10;
    this.timer = this.clock.setTimeout(() => this.look(), Math.min(this.unit, wait));
  }

  private look(): void {
    const slot = Math.floor(this.clock.now() / this.unit);
    const mono = this.clock.monotonic();
    if (
      slot !== this.lastSlot &&
      !this.running &&
      mono - this.lastRun >= this.unit &&
      this.matcher.match(new Date(slot * this.unit))
    ) {
      this.lastRun = mono;
      this.running = this.job()
        .catch(() => {})
        .finally(() => {
          this.running = undefined;
        });
    }
    this.lastSlot = slot;
    if (this.timer) this.arm();
  }
}
