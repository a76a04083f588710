/** Fixed snapshots for the golden images and layout tests: all times relative to T0, zone UTC. */
import { buildSnapshot, type FrameSnapshot, type SnapshotInputs } from '../../src/frames/index.js';

export const T0 = Date.UTC(2026, 10, 26, 14, 5, 30);
const MIN = 60_000;
const GiB = 1024 ** 3;

const system = {
  cpuPercent: 23.4,
  memUsedBytes: 1.4 * GiB,
  memTotalBytes: 3.7 * GiB,
  diskUsedBytes: 11.2 * GiB,
  diskTotalBytes: 58 * GiB,
  socTempC: 51.6,
};

const healthyInputs: SnapshotInputs = {
  node: 'line-3-cabinet-a',
  time: T0,
  timeZone: 'UTC',
  startedAt: T0 - (3 * 24 * 60 + 4 * 60 + 17) * MIN,
  store: { revision: 1_284_331, commitLatencyMs: { p50: 1.2, p99: 4.8 }, dbSize: 48.6 * 1024 * 1024 },
  devices: {
    online: 42,
    offline: 0,
    attention: [],
    reportsPerMinute: [812, 790, 845, 901, 877, 760, 820, 845, 830, 856],
  },
  probes: { fsync: { p99Ms: 3.1 }, runqlat: { p99Ms: 0.42 } },
  uplink: { state: 'ok', backlogRecords: 120, oldestUnsentAgeMs: 8_000, lastSuccessAt: T0 - 2 * MIN },
  system,
  alerts: [],
};

export const inputs: Record<string, SnapshotInputs> = {
  healthy: healthyInputs,
  offline: {
    ...healthyInputs,
    devices: {
      online: 29,
      offline: 13,
      attention: [
        { name: 'press-07-vibration', reason: 'offline', sinceMs: T0 - 14 * MIN },
        {
          name: 'Überwachung Förderband Nord — Halle 2, Station 14',
          reason: 'offline',
          sinceMs: T0 - 9 * MIN,
        },
        { name: 'oven-2-temp', reason: 'rejected', sinceMs: T0 - 3 * MIN },
        { name: 'flow-meter-11', reason: 'silent', sinceMs: T0 - 31 * MIN },
        { name: 'press-08-vibration', reason: 'offline', sinceMs: T0 - 14 * MIN },
        { name: 'press-09-vibration', reason: 'offline', sinceMs: T0 - 13 * MIN },
        { name: 'press-10-vibration', reason: 'offline', sinceMs: T0 - 12 * MIN },
        { name: 'press-11-vibration', reason: 'offline', sinceMs: T0 - 12 * MIN },
        { name: 'press-12-vibration', reason: 'offline', sinceMs: T0 - 12 * MIN },
        { name: 'press-13-vibration', reason: 'offline', sinceMs: T0 - 11 * MIN },
        { name: 'press-14-vibration', reason: 'offline', sinceMs: T0 - 11 * MIN },
        { name: 'press-15-vibration', reason: 'offline', sinceMs: T0 - 10 * MIN },
        { name: 'press-16-vibration', reason: 'offline', sinceMs: T0 - 10 * MIN },
        { name: 'press-17-vibration', reason: 'offline', sinceMs: T0 - 10 * MIN },
      ],
      reportsPerMinute: [850, 840, 861, 790, 610, 420, 400, 395, 402, 388],
    },
    alerts: [
      {
        severity: 'critical',
        text: 'oven-2-temp sends reports that fail validation: metrics.t is not a number',
      },
    ],
  },
  // Everything that must be red at once: no device online, a full disk, writes not committing;
  // and an under-voltage warning from the Pi firmware.
  failing: {
    ...healthyInputs,
    devices: {
      online: 0,
      offline: 12,
      attention: [
        { name: 'press-07-vibration', reason: 'offline', sinceMs: T0 - 47 * MIN },
        { name: 'flow-meter-11', reason: 'silent', sinceMs: T0 - 2 * 60 * MIN },
        { name: 'press-08-vibration', reason: 'offline', sinceMs: T0 - 3 * 24 * 60 * MIN },
      ],
      attentionTotal: 12,
      reportsPerMinute: [320, 300, 280, 0, 0, 0, 0, 0, 0, 0],
    },
    system: { ...system, diskUsedBytes: 57.2 * GiB, throttledBits: 0x50005 },
    alerts: [{ severity: 'critical', text: 'not ready: store has not committed a write for 7021 ms' }],
  },
  noprobes: {
    ...healthyInputs,
    probes: { fsync: { unavailable: 'no root' }, runqlat: { unavailable: 'bpftrace not found' } },
  },
  uplinkdown: {
    ...healthyInputs,
    uplink: {
      state: 'down',
      backlogRecords: 184_220,
      oldestUnsentAgeMs: 3 * 60 * MIN + 12 * MIN,
      lastSuccessAt: T0 - (3 * 60 + 12) * MIN,
      lastError: 'connect ECONNREFUSED 10.0.0.5:443',
    },
    system: { ...system, diskUsedBytes: 53.9 * GiB, socTempC: 82.3 },
  },
  unknown: { node: 'line-3-cabinet-a', time: T0, timeZone: 'UTC' },
};

export const snapshots: Record<string, FrameSnapshot> = Object.fromEntries(
  Object.entries(inputs).map(([k, v]) => [k, buildSnapshot(v)]),
);
