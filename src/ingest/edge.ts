/**
 * The ingest thread's core. Both transports (the embedded broker, the external subscriber) hand
 * every PUBLISH here: it rate-limits, decodes and batches reports and tells the transport when
 * the acknowledgement may be sent. Everything else it learns (rejects, online/offline, who can
 * take commands, which devices reported) goes to the main thread as events, batched per turn of
 * the event loop; the main thread keeps the registry, the dead letters and the store.
 *
 * Why a thread: at the broker's full rate the in-flight reports, their packets and their
 * garbage collections cost the event loop tens of milliseconds now and then, and an etcd put
 * answered on that same loop waited for them. On its own thread the broker has its own heap and
 * collector; the main thread sees one message per batch.
 */
import { type Clock, systemClock } from '../clock.js';
import { RateLimiter } from './bucket.js';
import type { IngestOptions } from './config.js';
import { decodeReport, type RejectReason, type Report } from './payload.js';
import { HEAD_BYTES } from './rejects.js';
import { arrivalTime, type CommitBatch, ReportWriter } from './writer.js';

export type ReportOutcome = 'stored' | RejectReason;

export type PasswordCheck = 'ok' | 'unknown' | 'wrong';

/** A device's reports committed since the last sighting: how many, and the last one (with every metric they carried). */
export interface Sighting {
  device: string;
  count: number;
  report: Report;
}

export type EdgeEvent =
  | {
      t: 'reject';
      reason: RejectReason;
      device?: string;
      topic?: string;
      /** The payload's first HEAD_BYTES bytes, and its whole size. */
      head?: Uint8Array;
      size: number;
      detail?: string;
      /** Refusals of this reason and device in the same turn, folded into this one (its head and detail are the first's). */
      count: number;
    }
  | { t: 'online'; device: string; online: boolean; via: string }
  | { t: 'seen'; sightings: Sighting[] }
  /** A device connection opened (+1) or closed (-1). */
  | { t: 'conn'; delta: 1 | -1 }
  /** Embedded: the device can (no longer) receive commands. */
  | { t: 'reach'; device: string; on: boolean }
  /** External: the connection to the broker is up or down. */
  | { t: 'link'; up: boolean };

/** What the ingest thread asks of the main thread. */
export interface EdgeLink {
  commit: CommitBatch;
  checkPassword(device: string, password: Buffer): Promise<PasswordCheck>;
  events(list: EdgeEvent[]): void;
}

// Sightings are summed this long before going to the registry (at most `mirrorInterval`): the
// registry writes a device at most once per mirrorInterval anyway, and one message per report
// would bring the per-report work back to the main thread.
const SIGHTING_MS = 250;

export class IngestEdge {
  readonly writer: ReportWriter;
  private readonly limiter: RateLimiter;
  private queue: EdgeEvent[] = [];
  /** The queue's reject events by reason and device: a flood of refusals is one event per turn. */
  private rejects = new Map<string, Extract<EdgeEvent, { t: 'reject' }>>();
  private posting = false;
  private sightings = new Map<string, Sighting>();
  private sightingTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    readonly opts: IngestOptions,
    private readonly link: EdgeLink,
    private readonly clock: Clock = systemClock,
  ) {
    this.writer = new ReportWriter(link.commit, { batchMax: opts.batchMax, dedupeWindow: opts.dedupeWindow });
    this.limiter = new RateLimiter(clock, opts.ratePerSec, opts.rateBurst);
  }

  /**
   * A report from `device` (already authorised for its topic). Resolves with 'stored' after the
   * commit, or with the reject reason at once (counted and kept as a dead letter; the caller
   * acknowledges it anyway, so a device does not resend a poison message forever). Rejects only
   * when the store refused the batch: then nothing may be acknowledged.
   */
  async report(
    device: string,
    topic: string,
    payload: Buffer,
    qos: number,
    contentType?: string,
  ): Promise<ReportOutcome> {
    const t0 = arrivalTime();
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
    this.sighted(device, d.report);
    return 'stored';
  }

  reject(
    reason: RejectReason,
    info: { device?: string; topic?: string; payload?: Buffer; detail?: string },
  ): void {
    const key = `${reason}\0${info.device ?? ''}`;
    const same = this.rejects.get(key);
    if (same) {
      same.count++;
      return;
    }
    const e: Extract<EdgeEvent, { t: 'reject' }> = {
      t: 'reject',
      reason,
      device: info.device,
      topic: info.topic,
      // a copy: a view would clone the whole socket buffer it points into
      head: info.payload ? Uint8Array.prototype.slice.call(info.payload, 0, HEAD_BYTES) : undefined,
      size: info.payload?.length ?? 0,
      detail: info.detail,
      count: 1,
    };
    this.rejects.set(key, e);
    this.emit(e);
  }

  setOnline(device: string, online: boolean, via: string): void {
    // the reports before this change reach the registry before it
    this.postSightings();
    this.emit({ t: 'online', device, online, via });
  }

  connection(delta: 1 | -1): void {
    this.emit({ t: 'conn', delta });
  }

  reachable(device: string, on: boolean): void {
    this.emit({ t: 'reach', device, on });
  }

  linkUp(up: boolean): void {
    this.emit({ t: 'link', up });
  }

  checkPassword(device: string, password: Buffer): Promise<PasswordCheck> {
    return this.link.checkPassword(device, password);
  }

  private sighted(device: string, report: Report): void {
    const s = this.sightings.get(device);
    if (s) {
      s.count++;
      // The mirror keeps every metric's last value: one that only an earlier report of this
      // sighting carried must not be lost. Spread, not Object.assign: a metric named
      // `__proto__` stays a plain key.
      s.report = { ...report, metrics: { ...s.report.metrics, ...report.metrics } };
    } else this.sightings.set(device, { device, count: 1, report });
    this.sightingTimer ??= setTimeout(
      () => this.postSightings(),
      Math.min(SIGHTING_MS, this.opts.mirrorInterval),
    );
  }

  private postSightings(): void {
    if (this.sightingTimer) clearTimeout(this.sightingTimer);
    this.sightingTimer = undefined;
    if (this.sightings.size === 0) return;
    const sightings = [...this.sightings.values()];
    this.sightings.clear();
    this.emit({ t: 'seen', sightings });
  }

  private emit(e: EdgeEvent): void {
    this.queue.push(e);
    if (this.posting) return;
    this.posting = true;
    setImmediate(() => this.post());
  }

  private post(): void {
    this.posting = false;
    if (this.queue.length === 0) return;
    const list = this.queue;
    this.queue = [];
    this.rejects.clear();
    this.link.events(list);
  }

  /** Send every event now, sightings included (before a flush or stop answers the main thread). */
  flush(): void {
    this.postSightings();
    this.post();
  }
}
