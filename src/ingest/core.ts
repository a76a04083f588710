/**
 * The main thread's side of ingest: commits the ingest thread's report batches, keeps the
 * device registry and the dead letters from its events, and checks device passwords for it.
 */
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import type { LoadGuard } from '../part.js';
import type { Store } from '../store/types.js';
import { VerifiedCache, verifySecret } from './auth.js';
import { ReportCommitter } from './commit.js';
import type { IngestOptions } from './config.js';
import { secretHashOf } from './devices.js';
import type { EdgeEvent, PasswordCheck } from './edge.js';
import type { IngestMetrics } from './metrics.js';
import { DeviceRegistry } from './registry.js';
import { DeadLetters } from './rejects.js';

/**
 * While bulk work yields, a batch is stored in transactions of this many reports (see commit.ts):
 * at about 10 µs of main-thread time per report, well under a millisecond each.
 */
const YIELD_CHUNK_REPORTS = 64;

export class IngestCore {
  readonly committer: ReportCommitter;
  readonly registry: DeviceRegistry;
  readonly rejects: DeadLetters;
  private readonly verified = new VerifiedCache();
  /** Reports committed per minute, the last 10 minutes (index = minute % 10). */
  private readonly perMinute = new Array<number>(10).fill(0);
  private readonly minuteOf = new Array<number>(10).fill(-1);
  /** Embedded: devices subscribed to their command topic. External: whether the broker link is up. */
  readonly reachable = new Set<string>();
  linkUp = false;
  connections = 0;

  constructor(
    readonly store: Store,
    readonly clock: Clock,
    readonly metrics: IngestMetrics,
    readonly log: Logger,
    readonly opts: IngestOptions,
    /** The SLO guard: reports are written only as fast as it admits them (after the sync's budget). */
    guard?: Pick<LoadGuard, 'admitBulk' | 'yielding'>,
  ) {
    const admit = opts.admit;
    this.committer = new ReportCommitter(
      store,
      clock,
      metrics,
      log,
      admit || guard ? (n) => (admit?.() ?? true) && (guard?.admitBulk(n) ?? true) : undefined,
      guard ? () => (guard.yielding() ? YIELD_CHUNK_REPORTS : undefined) : undefined,
    );
    this.committer.onCommitted = (n) => this.countRate(n);
    this.registry = new DeviceRegistry(store, clock, metrics, log, {
      mirrorInterval: opts.mirrorInterval,
      silenceTimeout: opts.silenceTimeout,
      maxMetrics: opts.maxMetrics,
    });
    this.rejects = new DeadLetters(store, clock, metrics, log, opts.rejectsMax);
  }

  /** Apply the ingest thread's events, in order. `onReachable` hears devices that can take commands. */
  apply(events: EdgeEvent[], onReachable: (device: string) => void): void {
    for (const e of events) {
      switch (e.t) {
        case 'seen': {
          const now = this.clock.now();
          for (const s of e.sightings) this.registry.report(s.device, s.report, now, s.count);
          break;
        }
        case 'reject':
          this.rejects.record(e.reason, {
            device: e.device,
            topic: e.topic,
            payload: e.head,
            size: e.size,
            detail: e.detail,
            count: e.count,
          });
          if (e.device) for (let i = 0; i < e.count; i++) this.registry.rejected(e.device);
          break;
        case 'online':
          this.registry.setOnline(e.device, e.online, e.via);
          break;
        case 'conn':
          this.connections += e.delta;
          this.metrics.connected.set(this.connections);
          break;
        case 'reach':
          if (!e.on) this.reachable.delete(e.device);
          else {
            this.reachable.add(e.device);
            onReachable(e.device);
          }
          break;
        case 'link':
          this.linkUp = e.up;
          break;
      }
    }
  }

  /**
   * The ingest thread ended: its connections and link went with it. Embedded devices were
   * connected to it, so they are offline (reason `restart`) until they reconnect.
   */
  threadGone(embedded: boolean): void {
    this.connections = 0;
    this.metrics.connected.set(0);
    this.reachable.clear();
    this.linkUp = false;
    if (!embedded) return;
    for (const d of this.registry.devices.values())
      if (d.online) this.registry.setOnline(d.id, false, 'restart');
  }

  /** A device's password against the scrypt hash in the store (successes are cached). */
  async checkPassword(device: string, password: Buffer): Promise<PasswordCheck> {
    const stored = secretHashOf(this.store, device);
    if (stored === undefined) return 'unknown';
    if (this.verified.has(device, stored, password)) return 'ok';
    if (!(await verifySecret(password, stored))) return 'wrong';
    this.verified.add(device, stored, password);
    return 'ok';
  }

  /** Forget the device's cached password check (after remove or rotate). */
  forgetPassword(device: string): void {
    this.verified.drop(device);
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
