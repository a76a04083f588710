/**
 * Scheduled jobs (compaction, backup) report through one recorder: every run is logged with
 * its result and counted in `edgekeeper_daemon_jobs_total{job,result}`, with its duration and
 * the time of its last success, so a silently failing schedule shows up in /metrics.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';

export type JobResult = 'ok' | 'skipped' | 'error';

export class JobRecorder {
  private readonly runs: Counter<'job' | 'result'>;
  private readonly duration: Histogram<'job'>;
  private readonly lastSuccess: Gauge<'job'>;

  constructor(
    registry: Registry,
    private readonly log: Logger,
    private readonly clock: Clock,
  ) {
    this.runs = new Counter({
      name: 'edgekeeper_daemon_jobs_total',
      help: 'Scheduled job runs by job and result (ok, skipped, error)',
      labelNames: ['job', 'result'],
      registers: [registry],
    });
    this.duration = new Histogram({
      name: 'edgekeeper_daemon_job_duration_seconds',
      help: 'Scheduled job run time',
      labelNames: ['job'],
      buckets: [0.01, 0.1, 1, 10, 60, 600],
      registers: [registry],
    });
    this.lastSuccess = new Gauge({
      name: 'edgekeeper_daemon_job_last_success_timestamp_seconds',
      help: 'When each job last succeeded (unix seconds)',
      labelNames: ['job'],
      registers: [registry],
    });
  }

  /** Runs `fn`, logs and counts its outcome; never throws (a failed run waits for the next tick). */
  async run(
    job: string,
    fn: () => Promise<{ result: 'ok' | 'skipped'; detail?: Record<string, unknown> }>,
  ): Promise<JobResult> {
    const started = this.clock.monotonic();
    try {
      const { result, detail } = await fn();
      const ms = this.clock.monotonic() - started;
      this.runs.inc({ job, result });
      this.duration.observe({ job }, ms / 1000);
      if (result === 'ok') this.lastSuccess.set({ job }, this.clock.now() / 1000);
      this.log.info(
        { job, result, ms: Math.round(ms), ...detail },
        `${job} job ${result === 'ok' ? 'finished' : 'had nothing to do'}`,
      );
      return result;
    } catch (err) {
      const ms = this.clock.monotonic() - started;
      this.runs.inc({ job, result: 'error' });
      this.duration.observe({ job }, ms / 1000);
      this.log.error({ job, err, ms: Math.round(ms) }, `${job} job failed; it runs again at its next time`);
      return 'error';
    }
  }
}
