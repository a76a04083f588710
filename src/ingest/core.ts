/**
 * One code path after the socket: both the embedded broker and the external subscriber hand
 * every PUBLISH to `IngestCore`, which checks, rate-limits, decodes, batches and commits, and
 * tells the caller when the acknowledgement may be sent.
 */
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import type { Store } from '../store/types.js';
import { RateLimiter } from './bucket.js';
import type { IngestOptions } from './config.js';
import type { IngestMetrics } from './metrics.js';
import { decodeReport, type RejectReason } from './payload.js';
import { DeviceRegistry } from './registry.js';
import { DeadLetters } from './rejects.js';
import { ReportWriter } from './writer.js';

export type ReportOutcome = 'stored' | RejectReason;

export class IngestCore {
  readonly writer: ReportWriter;
  readonly registry: DeviceRegistry;
  readonly rejects: DeadLetters;
  private readonly limiter: RateLimiter;
  /** Reports committed per minute, the last 10 minutes (index = minute % 10). */
  private readonly perMinute = new Array<number>(10).fill(0);
  private readonly minuteOf = new Array<number>(10).fill(-1);

  constructor(
    readonly store: Store,
    readonly clock: Clock,
    readonly metrics: IngestMetrics,
    readonly log: Logger,
    readonly opts: IngestOptions,
  ) {
    this.writer = new ReportWriter(store, clock, metrics, log, {
      batchMax: opts.batchMax,
      dedupeWindow: opts.dedupeWindow,
      admit: opts.admit,
    });
    this.writer.onCommitted = (n) => this.countRate(n);
    this.registry = new DeviceRegistry(store, clock, metrics, log, {
      mirrorInterval: opts.mirrorInterval,
      silenceTimeout: opts.silenceTimeout,
    });
    this.rejects = new DeadLetters(store, clock, metrics, log, opts.rejectsMax);
    this.limiter = new RateLimiter(clock, opts.ratePerSec, opts.rateBurst);
  }

  reject(
    reason: RejectReason,
    info: { device?: string; topic?: string; payload?: Buffer; detail?: string },
  ): void {
    this.rejects.record(reason, info);
    if (info.device) this.registry.rejected(info.device);
  }

  /**
   * A report from `device` (already authorised for its topic). Resolves with 'stored' after the
   * commit, or with the reject reason at once (recorded and counted; the caller acknowledges it
   * anyway, so a device does not resend a poison message forever). Rejects only when the store
   * refused the batch: then nothing may be acknowledged.
   */
  async report(
    device: string,
    topic: string,
    payload: Buffer,
    qos: number,
    contentType?: string,
  ): Promise<ReportOutcome> {
    const t0 = this.clock.monotonic();
    if (!this.limiter.take(device)) {
      this.reject('rate', {
        device,
        topic,
        payload,
        detail: `over ${this.opts.ratePerSec}/s (burst ${this.opts.rateBurst})`,
      });
      return 'rate';
    }
    const d = decodeReport(payload, this.opts, contentType);
    if (!d.ok) {
      this.reject(d.reason, { device, topic, payload, detail: d.detail });
      return d.reason;
    }
    const receivedAt = this.clock.now();
    await this.writer.add({ device, receivedAt, ts: d.report.ts, seq: d.report.seq, body: d.body }, qos, t0);
    this.registry.report(device, d.report, receivedAt);
    return 'stored';
  }

  private countRate(n: number): void {
    const minute = Math.floor(this.clock.now() / 60_000);
    const i = minute % 10;
    if (this.minuteOf[i] !== minute) {
      this.minuteOf[i] = minute;
      this.perMinute[i] = 0;
    }
    this.perMinute[i]! += n;
  }

  /** Reports per minute, oldest first, the current (partial) minute last. */
  ratePerMinute(): number[] {
    const minute = Math.floor(this.clock.now() / 60_000);
    const out: number[] = [];
    for (let m = minute - 9; m <= minute; m++) {
      const i = ((m % 10) + 10) % 10;
      out.push(this.minuteOf[i] === m ? this.perMinute[i]! : 0);
    }
    return out;
  }
}
