/**
 * The device registry: first seen, last seen, report count, last values and liveness per device,
 * kept in memory, persisted in `ingest_device_state` and mirrored as JSON to
 * `/edgekeeper/devices/<id>` so local applications can `etcdctl watch --prefix
 * /edgekeeper/devices/`.
 *
 * Mirror rate: a device's key is rewritten at most once per `mirrorInterval`, except that an
 * online/offline change is written at once (with a `device.online`/`device.offline` row in the
 * `events` table in the same transaction). Each write carries up to 100 devices (one revision
 * per chunk), so 1,000 chatty devices cost 10 transactions per interval (2 a second at the
 * default 5 s), not one per report.
 *
 * Metrics: the mirror keeps each metric's last known value and when it arrived, not only the
 * last report's, up to `maxMetrics` names per device (the oldest name is dropped past it).
 *
 * Silence: our own sweep on the injected Clock rather than a store lease per device. A store
 * lease deletes its keys when it expires, so a silent device would vanish from
 * /edgekeeper/devices/ instead of turning `online: false`, and every report would have to touch
 * the lease. The sweep costs nothing per report and tests drive it with ManualClock.
 */
import type { Clock, Timer } from '../clock.js';
import type { Logger } from '../log.js';
import type { RequestOp, Store } from '../store/types.js';
import { DEVICES_PREFIX } from './ids.js';
import type { IngestMetrics } from './metrics.js';
import type { Report } from './payload.js';

// etcd's default --max-txn-ops is 128; stay below it with room for nothing else
const PUTS_PER_TXN = 100;
// Online/offline changes logged one line each per second; more (a broker restart brings back
// every device at once) are summed into one line: the watch and the events table have each.
const CHANGE_LINES_PER_SECOND = 10;
/** A device whose reports were refused this recently needs attention. */
const REJECT_ATTENTION_MS = 10 * 60_000;

/** A device worth naming on the status frame. */
export interface Attention {
  id: string;
  reason: 'offline' | 'silent' | 'rejected';
  /** Offline since, or the last refused report (ms epoch). */
  since: number;
}

/** The JSON under /edgekeeper/devices/<id>. */
export interface DeviceDoc {
  id: string;
  online: boolean;
  /** When `online` last changed. */
  since: number;
  /** Why the device is offline: disconnect, will, keepalive, silence, restart, status. */
  reason?: string;
  firstSeen: number;
  lastSeen: number;
  reports: number;
  lastSeq: number | null;
  lastTs: number | null;
  /** Each metric's last known value (from whichever report last carried it). */
  metrics?: Record<string, number>;
  /** When the report that last carried each metric was received (ms epoch). */
  metricsAt?: Record<string, number>;
  state?: Record<string, unknown>;
  tags?: Record<string, string>;
  /** Reports refused since the daemon started. */
  rejects: number;
  /** When the last of them was refused (ms epoch). */
  lastRejectAt?: number;
}

/** A device as the registry tracks it: its document plus bookkeeping for the mirror. */
export interface DeviceState extends Omit<DeviceDoc, 'metrics' | 'metricsAt'> {
  /** Metric name -> last value and when it arrived (a Map: any valid name is a plain key). */
  values: Map<string, { v: number; at: number }>;
  mirroredAt: number;
  dirty: boolean;
  urgent: boolean;
  pendingEvent?: { kind: 'device.online' | 'device.offline'; ts: number; reason: string };
}

const UPSERT_STATE = `INSERT INTO ingest_device_state(id, first_seen, last_seen, reports, online, last)
VALUES (@id, @firstSeen, @lastSeen, @reports, @online, @last)
ON CONFLICT(id) DO UPDATE SET first_seen = excluded.first_seen, last_seen = excluded.last_seen,
  reports = excluded.reports, online = excluded.online, last = excluded.last`;
const INSERT_EVENT = 'INSERT INTO events(ts, kind, subject, data) VALUES (@ts, @kind, @subject, @data)';

export class DeviceRegistry {
  readonly devices = new Map<string, DeviceState>();
  private tickTimer: Timer | undefined;
  private sweepTimer: Timer | undefined;
  private flushing: Promise<void> | undefined;
  private again = false;
  private immediate = false;
  private stopped = false;
  /** Devices online now (kept as they change: a full count per change was O(devices²) in a burst). */
  private online = 0;
  /** This second's change lines, and the changes not logged one by one. */
  private changeLog = { second: 0, lines: 0, online: 0, offline: 0 };

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly metrics: IngestMetrics,
    private readonly log: Logger,
    private readonly opts: { mirrorInterval: number; silenceTimeout: number; maxMetrics: number },
  ) {}

  /** Load the persisted registry. `resetOnline`: connections did not survive the restart (embedded). */
  load(resetOnline: boolean): void {
    const rows = this.store
      .query<{
        id: string;
        first_seen: number;
        last_seen: number;
        reports: number;
        online: number;
        last: string | null;
      }>(
        'SELECT id, first_seen, last_seen, reports, online, last FROM ingest_device_state ORDER BY first_seen, id',
      )
      .all();
    const now = this.clock.now();
    for (const r of rows) {
      let last: Partial<DeviceDoc> = {};
      try {
        last = r.last ? (JSON.parse(r.last) as Partial<DeviceDoc>) : {};
      } catch {
        last = {};
      }
      const d: DeviceState = {
        id: r.id,
        firstSeen: r.first_seen,
        lastSeen: r.last_seen,
        reports: r.reports,
        online: r.online === 1,
        since: last.since ?? r.last_seen,
        reason: last.reason,
        lastSeq: last.lastSeq ?? null,
        lastTs: last.lastTs ?? null,
        values: loadValues(last, r.last_seen),
        state: last.state,
        tags: last.tags,
        rejects: 0,
        mirroredAt: 0,
        dirty: false,
        urgent: false,
      };
      this.devices.set(r.id, d);
      if (d.online) this.online++;
      if (d.online && resetOnline) this.setOnline(r.id, false, 'restart', now);
    }
    this.updateGauges();
  }

  start(): void {
    const tick = Math.min(1000, Math.max(100, Math.floor(this.opts.mirrorInterval / 2) || 100));
    const loop = () => {
      if (this.stopped) return;
      this.rollChangeLog(this.clock.now());
      void this.kick();
      this.tickTimer = this.clock.setTimeout(loop, tick);
    };
    this.tickTimer = this.clock.setTimeout(loop, tick);
    const sweepEvery = Math.max(250, Math.min(5000, Math.floor(this.opts.silenceTimeout / 4)));
    const sweep = () => {
      if (this.stopped) return;
      this.sweepSilence();
      this.sweepTimer = this.clock.setTimeout(sweep, sweepEvery);
    };
    this.sweepTimer = this.clock.setTimeout(sweep, sweepEvery);
  }

  private get(id: string, now: number): DeviceState {
    let d = this.devices.get(id);
    if (!d) {
      d = {
        id,
        firstSeen: now,
        lastSeen: now,
        reports: 0,
        online: false,
        since: now,
        lastSeq: null,
        lastTs: null,
        values: new Map(),
        rejects: 0,
        mirroredAt: 0,
        dirty: true,
        urgent: false,
      };
      this.devices.set(id, d);
    }
    return d;
  }

  /** `count` reports of this device were committed, `r` the last of them. */
  report(id: string, r: Report, now = this.clock.now(), count = 1): void {
    const d = this.get(id, now);
    d.lastSeen = now;
    d.reports += count;
    d.lastSeq = r.seq;
    d.lastTs = r.ts;
    for (const [name, v] of Object.entries(r.metrics)) {
      d.values.delete(name); // re-inserted last: the Map stays in arrival order, oldest first
      d.values.set(name, { v, at: now });
    }
    for (const name of d.values.keys()) {
      if (d.values.size <= this.opts.maxMetrics) break;
      d.values.delete(name);
    }
    if (r.state) d.state = r.state;
    if (r.tags) d.tags = r.tags;
    d.dirty = true;
    if (!d.online) this.setOnline(id, true, 'report', now);
  }

  /** Any sign of life that is not a report (connect, status "online"). */
  touch(id: string, now = this.clock.now()): void {
    const d = this.get(id, now);
    d.lastSeen = now;
    d.dirty = true;
  }

  rejected(id: string, now = this.clock.now()): void {
    const d = this.devices.get(id);
    if (d) {
      d.rejects++;
      d.lastRejectAt = now;
      d.dirty = true;
    }
  }

  setOnline(id: string, online: boolean, reason: string, now = this.clock.now()): void {
    const d = this.get(id, now);
    if (online) d.lastSeen = now;
    if (d.online === online) return;
    d.online = online;
    this.online += online ? 1 : -1;
    d.since = now;
    d.reason = online ? undefined : reason;
    d.dirty = true;
    d.urgent = true;
    d.pendingEvent = { kind: online ? 'device.online' : 'device.offline', ts: now, reason };
    this.logChange(id, online, reason, now);
    this.updateGauges();
    if (!this.immediate) {
      this.immediate = true;
      setImmediate(() => {
        this.immediate = false;
        void this.kick();
      });
    }
  }

  private logChange(id: string, online: boolean, reason: string, now: number): void {
    this.rollChangeLog(now);
    if (this.changeLog.lines < CHANGE_LINES_PER_SECOND) {
      this.changeLog.lines++;
      this.log.info({ device: id, reason }, online ? 'device online' : 'device offline');
    } else if (online) this.changeLog.online++;
    else this.changeLog.offline++;
  }

  private rollChangeLog(now: number): void {
    const second = Math.floor(now / 1000);
    if (second !== this.changeLog.second) this.flushChangeLog(second);
  }

  /** Log the changes of the past second that were not logged one by one, and start `second`. */
  private flushChangeLog(second: number): void {
    const { online, offline } = this.changeLog;
    if (online + offline > 0)
      this.log.info(
        { online, offline, devicesOnline: this.online },
        'more devices changed state than are logged one by one; each change is under /edgekeeper/devices/ and in the events table',
      );
    this.changeLog = { second, lines: 0, online: 0, offline: 0 };
  }

  forget(id: string): void {
    const d = this.devices.get(id);
    if (d?.online) this.online--;
    this.devices.delete(id);
    this.updateGauges();
  }

  private updateGauges(): void {
    this.metrics.devices.set({ state: 'online' }, this.online);
    this.metrics.devices.set({ state: 'offline' }, this.devices.size - this.online);
  }

  sweepSilence(now = this.clock.now()): void {
    for (const d of this.devices.values()) {
      if (d.online && now - d.lastSeen > this.opts.silenceTimeout)
        this.setOnline(d.id, false, 'silence', now);
    }
  }

  static doc(d: DeviceState): DeviceDoc {
    const doc: DeviceDoc = {
      id: d.id,
      online: d.online,
      since: d.since,
      firstSeen: d.firstSeen,
      lastSeen: d.lastSeen,
      reports: d.reports,
      lastSeq: d.lastSeq,
      lastTs: d.lastTs,
      rejects: d.rejects,
    };
    if (d.lastRejectAt !== undefined) doc.lastRejectAt = d.lastRejectAt;
    if (d.reason) doc.reason = d.reason;
    if (d.values.size > 0) {
      // fromEntries defines each name as an own key (a metric may be called `__proto__`).
      doc.metrics = Object.fromEntries([...d.values].map(([k, x]) => [k, x.v]));
      doc.metricsAt = Object.fromEntries([...d.values].map(([k, x]) => [k, x.at]));
    }
    if (d.state) doc.state = d.state;
    if (d.tags) doc.tags = d.tags;
    return doc;
  }

  /** Write what is due; concurrent calls coalesce. */
  kick(): Promise<void> {
    if (this.flushing) {
      this.again = true;
      return this.flushing;
    }
    this.flushing = this.flush().finally(() => {
      this.flushing = undefined;
      if (this.again) {
        this.again = false;
        void this.kick();
      }
    });
    return this.flushing;
  }

  /** Write every dirty device now (shutdown, tests). */
  async flushAll(): Promise<void> {
    for (const d of this.devices.values()) if (d.dirty) d.urgent = true;
    await this.kick();
    if (this.flushing) await this.flushing;
  }

  private async flush(): Promise<void> {
    const now = this.clock.now();
    const due: DeviceState[] = [];
    for (const d of this.devices.values()) {
      if (d.dirty && (d.urgent || now - d.mirroredAt >= this.opts.mirrorInterval)) due.push(d);
    }
    for (let i = 0; i < due.length; i += PUTS_PER_TXN) {
      const chunk = due.slice(i, i + PUTS_PER_TXN);
      const states: Record<string, unknown>[] = [];
      const events: Record<string, unknown>[] = [];
      const puts: RequestOp[] = [];
      for (const d of chunk) {
        const doc = DeviceRegistry.doc(d);
        const json = JSON.stringify(doc);
        puts.push({ put: { key: Buffer.from(DEVICES_PREFIX + d.id), value: Buffer.from(json) } });
        states.push({
          id: d.id,
          firstSeen: d.firstSeen,
          lastSeen: d.lastSeen,
          reports: d.reports,
          online: d.online ? 1 : 0,
          last: json,
        });
        if (d.pendingEvent) {
          events.push({
            ts: d.pendingEvent.ts,
            kind: d.pendingEvent.kind,
            subject: d.id,
            data: JSON.stringify({ reason: d.pendingEvent.reason }),
          });
        }
        d.dirty = false;
        d.urgent = false;
        d.mirroredAt = now;
      }
      const taken = chunk.map((d) => d.pendingEvent);
      for (const d of chunk) d.pendingEvent = undefined;
      const sql = [{ sql: UPSERT_STATE, rows: states }];
      if (events.length) sql.push({ sql: INSERT_EVENT, rows: events });
      try {
        await this.store.write({ sql, txn: { success: puts } });
      } catch (err) {
        // keep them dirty so the next tick retries; events too
        chunk.forEach((d, j) => {
          d.dirty = true;
          d.pendingEvent ??= taken[j];
        });
        if (!this.stopped)
          this.log.warn(
            { err, devices: chunk.length },
            'mirroring devices to /edgekeeper/devices/ failed; retrying on the next tick',
          );
        return;
      }
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.tickTimer?.cancel();
    this.sweepTimer?.cancel();
    this.flushChangeLog(0);
    await this.flushAll();
  }

  counts(): { online: number; offline: number } {
    return { online: this.online, offline: this.devices.size - this.online };
  }

  /**
   * Devices that need attention, worst first: reports refused in the last 10 minutes (newest
   * first), then offline ones (most recently gone first). `limit` of them, and how many in all.
   */
  attention(limit: number, now = this.clock.now()): { list: Attention[]; total: number; rejecting: number } {
    const rejected: Attention[] = [];
    const offline: Attention[] = [];
    for (const d of this.devices.values()) {
      if (d.lastRejectAt !== undefined && now - d.lastRejectAt <= REJECT_ATTENTION_MS)
        rejected.push({ id: d.id, reason: 'rejected', since: d.lastRejectAt });
      else if (!d.online)
        offline.push({ id: d.id, reason: d.reason === 'silence' ? 'silent' : 'offline', since: d.since });
    }
    const newest = (a: Attention, b: Attention) => b.since - a.since || (a.id < b.id ? -1 : 1);
    rejected.sort(newest);
    offline.sort(newest);
    const list = [...rejected, ...offline];
    return { list: list.slice(0, limit), total: list.length, rejecting: rejected.length };
  }
}

/** The values of a persisted document; documents from before `metricsAt` carry no times. */
function loadValues(doc: Partial<DeviceDoc>, lastSeen: number): Map<string, { v: number; at: number }> {
  const out = new Map<string, { v: number; at: number }>();
  const at = doc.metricsAt ?? {};
  const entries = Object.entries(doc.metrics ?? {})
    .filter(([, v]) => typeof v === 'number')
    .map(([k, v]) => [k, { v, at: typeof at[k] === 'number' ? at[k] : lastSeen }] as const)
    .sort((a, b) => a[1].at - b[1].at);
  for (const [k, x] of entries) out.set(k, x);
  return out;
}
