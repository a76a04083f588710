/**
 * A cron schedule on the injected clock that a wall-clock step cannot confuse. node-cron's runner
 * plans its next slot once: after the clock steps back it waits for that slot (a year later if
 * the step was a year), and after a step forward it walks every slot in between. This one looks
 * at the wall clock at each minute boundary (never more than a minute of monotonic time apart)
 * and runs when the current minute matches: after a step forward the job runs at most once (at
 * the next matching minute of the new time, no catch-up of missed slots); after a step back it
 * runs at the next matching minute of the new time, and never twice within a minute of monotonic
 * time. A run still going when the next one is due skips that one.
 */
import cron from 'node-cron';
import type { Clock, Timer } from '../clock.js';

const MINUTE = 60_000;

export class CronSchedule {
  private readonly matcher: ReturnType<typeof cron.createTask>;
  private timer: Timer | undefined;
  private lastMinute = Number.NaN;
  private lastRun = Number.NEGATIVE_INFINITY; // monotonic
  private running: Promise<unknown> | undefined;

  constructor(
    expr: string,
    private readonly clock: Clock,
    private readonly job: () => Promise<unknown>,
  ) {
    // a task that is never started: only its matcher is used
    this.matcher = cron.createTask(expr, () => {});
  }

  start(): void {
    this.lastMinute = Math.floor(this.clock.now() / MINUTE);
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
    const wait = MINUTE - (this.clock.now() % MINUTE) + 10;
    this.timer = this.clock.setTimeout(() => this.look(), Math.min(MINUTE, wait));
  }

  private look(): void {
    const minute = Math.floor(this.clock.now() / MINUTE);
    const mono = this.clock.monotonic();
    if (
      minute !== this.lastMinute &&
      !this.running &&
      mono - this.lastRun >= MINUTE &&
      this.matcher.match(new Date(minute * MINUTE))
    ) {
      this.lastRun = mono;
      this.running = this.job()
        .catch(() => {})
        .finally(() => {
          this.running = undefined;
        });
    }
    this.lastMinute = minute;
    if (this.timer) this.arm();
  }
}
