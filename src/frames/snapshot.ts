import { createHash } from 'node:crypto';
import { fmtAgeCoarse, fmtBytes, fmtClock, fmtMs, isNum } from './format.js';
import { sanitize } from './text.js';
import type {
  AlertInput,
  AlertSeverity,
  AttentionReason,
  DevicesInput,
  FrameSnapshot,
  ProbeReading,
  ProbesInput,
  StoreInput,
  SystemInput,
  UplinkInput,
} from './types.js';

/** More than any layout can name; the rest is "+N more". */
export const MAX_ATTENTION = 8;
export const MAX_ALERTS = 5;
/** The sparkline covers the last 10 minutes, one bar a minute. */
export const RATE_MINUTES = 10;
/** Longest alert or error text kept (graphemes are cut again to fit the slot). */
const MAX_TEXT = 160;
/**
 * Derived alerts. Disk: nearly full is a warning, full enough that writes are about to fail is
 * critical. SoC: the Pi firmware starts throttling at 80 °C (its soft limit) and throttles hard
 * at 85 °C.
 */
export const DISK_WARN_RATIO = 0.9;
export const DISK_CRIT_RATIO = 0.97;
export const TEMP_WARN_C = 80;
export const TEMP_CRIT_C = 85;

export interface SnapshotInputs {
  node: string;
  /** ms epoch. */
  time: number;
  timeZone?: string;
  /** When the daemon started, ms epoch (for uptime). */
  startedAt?: number;
  store?: StoreInput;
  devices?: DevicesInput;
  probes?: ProbesInput;
  uplink?: UplinkInput;
  system?: SystemInput;
  alerts?: AlertInput[];
}

const fmt = (n: number) => n.toLocaleString('en-US');

/** A finite, non-negative number or undefined: NaN, Infinity and negatives are "unknown". */
function num(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : undefined;
}

const REASONS: ReadonlySet<string> = new Set(['offline', 'rejected', 'silent']);
const SEVERITY_ORDER: Record<AlertSeverity, number> = { critical: 0, warning: 1, info: 2 };
const REASON_ORDER: Record<AttentionReason, number> = { rejected: 0, offline: 1, silent: 2 };

function probe(p: ProbeReading | undefined): ProbeReading | undefined {
  if (!p) return undefined;
  const p99Ms = num(p.p99Ms);
  if (p99Ms !== undefined) return { p99Ms };
  return {
    unavailable: typeof p.unavailable === 'string' ? sanitize(p.unavailable).slice(0, MAX_TEXT) : undefined,
  };
}

/**
 * Pure: inputs in, snapshot out. Validates everything (a source may hand us garbage): numbers
 * that are not finite and non-negative become unknown, names are sanitized, lists are cut.
 */
export function buildSnapshot(inp: SnapshotInputs): FrameSnapshot {
  const time = inp.time;
  const startedAt = num(inp.startedAt);
  const snap: FrameSnapshot = {
    node: sanitize(String(inp.node ?? '')) || 'edgekeeper',
    time,
    timeZone: inp.timeZone,
    uptimeS: startedAt !== undefined && time >= startedAt ? Math.floor((time - startedAt) / 1000) : undefined,
    system: {},
    alerts: [],
    alertsTotal: 0,
  };

  const d = inp.devices;
  if (d) {
    const list = Array.isArray(d.attention) ? d.attention : [];
    const valid = list.filter((a) => a && typeof a.name === 'string' && REASONS.has(a.reason));
    // Stable sort: rejected (bad data arriving) first, then offline, then silent.
    const sorted = valid
      .map((a, i) => ({ a, i }))
      .sort((x, y) => REASON_ORDER[x.a.reason] - REASON_ORDER[y.a.reason] || x.i - y.i)
      .map((x) => x.a);
    const rates = Array.isArray(d.reportsPerMinute) ? d.reportsPerMinute.slice(-RATE_MINUTES) : [];
    const ratePerMin: (number | undefined)[] = [];
    for (let i = 0; i < RATE_MINUTES - rates.length; i++) ratePerMin.push(undefined);
    for (const r of rates) ratePerMin.push(num(r));
    snap.devices = {
      online: num(d.online),
      offline: num(d.offline),
      attention: sorted.slice(0, MAX_ATTENTION).map((a) => {
        const since = num(a.sinceMs);
        return {
          name: sanitize(a.name) || '(unnamed)',
          reason: a.reason,
          ageMs: since !== undefined && since <= time ? time - since : undefined,
        };
      }),
      attentionTotal: Math.max(valid.length, num(d.attentionTotal) ?? 0),
      ratePerMin,
    };
  }

  const s = inp.store;
  if (s) {
    snap.store = {
      revision: num(s.revision),
      commitP50Ms: num(s.commitLatencyMs?.p50),
      commitP99Ms: num(s.commitLatencyMs?.p99),
      dbSize: num(s.dbSize),
    };
  }

  if (inp.probes) snap.probes = { fsync: probe(inp.probes.fsync), runqlat: probe(inp.probes.runqlat) };

  const u = inp.uplink;
  if (u) {
    const last = num(u.lastSuccessAt);
    snap.uplink = {
      state: typeof u.state === 'string' ? sanitize(u.state).slice(0, 24) || undefined : undefined,
      backlogRecords: num(u.backlogRecords),
      oldestUnsentAgeMs: num(u.oldestUnsentAgeMs),
      lastSuccessAgeMs: last !== undefined && last <= time ? time - last : undefined,
      lastError:
        typeof u.lastError === 'string' ? sanitize(u.lastError).slice(0, MAX_TEXT) || undefined : undefined,
    };
  }

  const y = inp.system ?? {};
  const cpu = num(y.cpuPercent);
  snap.system = {
    cpuPercent: cpu === undefined ? undefined : Math.min(100, cpu),
    memUsedBytes: num(y.memUsedBytes),
    memTotalBytes: num(y.memTotalBytes),
    diskUsedBytes: num(y.diskUsedBytes),
    diskTotalBytes: num(y.diskTotalBytes),
    // Temperatures can be below zero outdoors; only reject what is not a number.
    socTempC: typeof y.socTempC === 'number' && Number.isFinite(y.socTempC) ? y.socTempC : undefined,
    throttledBits: Number.isInteger(y.throttledBits) && y.throttledBits! >= 0 ? y.throttledBits : undefined,
  };

  const alerts: AlertInput[] = [];
  for (const a of inp.alerts ?? []) {
    if (!a || typeof a.text !== 'string' || !(a.severity in SEVERITY_ORDER)) continue;
    const text = sanitize(a.text).slice(0, MAX_TEXT);
    if (text) alerts.push({ severity: a.severity, text });
  }
  // Causes the frame can see for itself, in words.
  if (s?.noSpace)
    alerts.push({
      severity: 'critical',
      text: 'database over quota: writes refused; compact or raise the quota',
    });
  const sy = snap.system;
  if (isNum(sy.diskUsedBytes) && isNum(sy.diskTotalBytes) && sy.diskTotalBytes > 0) {
    const r = sy.diskUsedBytes / sy.diskTotalBytes;
    const pct = Math.min(100, Math.round(r * 100));
    if (r >= DISK_CRIT_RATIO)
      alerts.push({ severity: 'critical', text: `disk ${pct}% full: writes are about to fail` });
    else if (r >= DISK_WARN_RATIO) alerts.push({ severity: 'warning', text: `disk ${pct}% full` });
  }
  if (isNum(sy.socTempC) && sy.socTempC >= TEMP_WARN_C) {
    const hard = sy.socTempC >= TEMP_CRIT_C;
    alerts.push({
      severity: hard ? 'critical' : 'warning',
      text: `SoC ${Math.round(sy.socTempC)} °C: the CPU throttles${hard ? ' hard' : ''}`,
    });
  }
  const bits = sy.throttledBits ?? 0;
  if ((bits & 0x1) !== 0)
    alerts.push({ severity: 'warning', text: 'under-voltage: the power supply is too weak' });
  // Throttled for heat is already said by the temperature alert.
  else if ((bits & 0x6) !== 0 && !(isNum(sy.socTempC) && sy.socTempC >= TEMP_WARN_C))
    alerts.push({ severity: 'warning', text: 'the firmware throttles the CPU' });
  // Texts put the count after a colon: the fleet's health tracker keys alerts by the words
  // before it, so a count that moves is the same alert, not a new one.
  const dv = snap.devices;
  if (dv) {
    const rejecting = num(d?.rejecting) ?? dv.attention.filter((a) => a.reason === 'rejected').length;
    if (rejecting > 0)
      alerts.push({ severity: 'warning', text: `devices sending refused reports: ${fmt(rejecting)}` });
    // Some devices offline is a warning; none left online is critical.
    if (isNum(dv.offline) && dv.offline > 0)
      alerts.push(
        dv.online === 0
          ? { severity: 'critical', text: `every device offline: ${fmt(dv.offline)}` }
          : {
              severity: 'warning',
              text: `devices offline: ${fmt(dv.offline)}${isNum(dv.online) ? ` of ${fmt(dv.online + dv.offline)}` : ''}`,
            },
      );
  }
  if (snap.uplink?.state === 'down') {
    alerts.push({
      severity: 'warning',
      text: `uplink down${snap.uplink.lastError ? `: ${snap.uplink.lastError}` : ''}`,
    });
  }
  const sortedAlerts = alerts
    .map((a, i) => ({ a, i }))
    .sort((x, y2) => SEVERITY_ORDER[x.a.severity] - SEVERITY_ORDER[y2.a.severity] || x.i - y2.i)
    .map((x) => x.a);
  snap.alerts = sortedAlerts.slice(0, MAX_ALERTS);
  snap.alertsTotal = sortedAlerts.length;
  if (!Array.isArray(inp.alerts)) snap.alertsUnknown = true;
  return snap;
}

/**
 * A hash of what the frame shows: times and ages at display precision (minutes), sizes as
 * printed, so a tick whose snapshot differs only below that precision draws nothing new.
 */
export function snapshotHash(s: FrameSnapshot): string {
  const round = (v: number | undefined, step: number) => (isNum(v) ? Math.round(v / step) : undefined);
  const view = {
    n: s.node,
    t: fmtClock(s.time, s.timeZone),
    u: isNum(s.uptimeS) ? fmtAgeCoarse(s.uptimeS * 1000) : undefined,
    d: s.devices && {
      ...s.devices,
      attention: s.devices.attention.map((a) => [a.name, a.reason, fmtAgeCoarse(a.ageMs)]),
    },
    st: s.store && {
      ...s.store,
      commitP50Ms: fmtMs(s.store.commitP50Ms),
      commitP99Ms: fmtMs(s.store.commitP99Ms),
      dbSize: fmtBytes(s.store.dbSize),
    },
    p: s.probes && [
      fmtMs(s.probes.fsync?.p99Ms),
      s.probes.fsync?.unavailable,
      fmtMs(s.probes.runqlat?.p99Ms),
      s.probes.runqlat?.unavailable,
    ],
    up: s.uplink && {
      ...s.uplink,
      oldestUnsentAgeMs: fmtAgeCoarse(s.uplink.oldestUnsentAgeMs),
      lastSuccessAgeMs: fmtAgeCoarse(s.uplink.lastSuccessAgeMs),
    },
    sy: [
      round(s.system.cpuPercent, 1),
      fmtBytes(s.system.memUsedBytes),
      fmtBytes(s.system.memTotalBytes),
      fmtBytes(s.system.diskUsedBytes),
      fmtBytes(s.system.diskTotalBytes),
      round(s.system.socTempC, 1),
      s.system.throttledBits,
    ],
    a: s.alerts,
    at: s.alertsTotal,
    ak: s.alertsUnknown,
  };
  return createHash('sha1').update(JSON.stringify(view)).digest('hex').slice(0, 20);
}
