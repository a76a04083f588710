import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export type IngestMetrics = ReturnType<typeof createMetrics>;

/** What the scrape-time metrics read; set by the part once its registry exists. */
export interface DeviceMetricsSource {
  /** Devices with credentials that have never connected. */
  neverConnected(): number;
  /** Known devices in the order their series are kept (first seen first). */
  devices(): Iterable<{ id: string; lastSeen: number }>;
  /** How many that is. */
  count(): number;
  /** Most per-device series; the rest are counted, not exported. */
  maxSeries: number;
}

export function createMetrics(registry: Registry) {
  const registers = [registry];
  const source: { current?: DeviceMetricsSource } = {};
  return {
    /** Set by the part: the registry and store behind the scrape-time metrics. */
    source,
    reports: new Counter({
      name: 'edgekeeper_ingest_reports_total',
      help: 'Reports committed to the reports table.',
      labelNames: ['qos'] as const,
      registers,
    }),
    duplicates: new Counter({
      name: 'edgekeeper_ingest_duplicates_total',
      help: 'Redelivered reports (same device, seq and ts) stored only once.',
      registers,
    }),
    rejects: new Counter({
      name: 'edgekeeper_ingest_rejects_total',
      help: 'Refused connections, subscriptions and reports, per reason.',
      labelNames: ['reason'] as const,
      registers,
    }),
    rejectsUnrecorded: new Counter({
      name: 'edgekeeper_ingest_rejects_unrecorded_total',
      help: 'Rejects counted but not written to the dead-letter table (sampled out, or the write failed), per reason.',
      labelNames: ['reason'] as const,
      registers,
    }),
    batch: new Histogram({
      name: 'edgekeeper_ingest_batch_size_reports',
      help: 'Reports per write batch.',
      buckets: [1, 4, 16, 64, 256, 1024, 4096],
      registers,
    }),
    latency: new Histogram({
      name: 'edgekeeper_ingest_commit_latency_seconds',
      help: 'From a report arriving to its row being committed (the PUBACK follows at once).',
      buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1],
      registers,
    }),
    connected: new Gauge({
      name: 'edgekeeper_ingest_connected_devices',
      help: 'Device connections open on the embedded broker.',
      registers,
    }),
    devices: new Gauge({
      name: 'edgekeeper_ingest_devices',
      help: 'Known devices by state: online, offline, never (credentials, never connected).',
      labelNames: ['state'] as const,
      registers,
      collect() {
        const s = source.current;
        if (s) this.set({ state: 'never' }, s.neverConnected());
      },
    }),
    lastSeen: new Gauge({
      name: 'edgekeeper_ingest_device_last_seen_timestamp_seconds',
      help: 'When each device was last heard from (unix seconds); the first mqtt.deviceSeries devices by first contact.',
      labelNames: ['device'] as const,
      registers,
      collect() {
        this.reset();
        const s = source.current;
        if (!s) return;
        let n = 0;
        for (const d of s.devices()) {
          if (n++ >= s.maxSeries) break;
          // Device ids are validated (A-Z a-z 0-9 . _ : -, at most 64): safe label values.
          this.set({ device: d.id }, d.lastSeen / 1000);
        }
      },
    }),
    unexported: new Gauge({
      name: 'edgekeeper_ingest_devices_unexported',
      help: 'Known devices without a last-seen series because mqtt.deviceSeries is reached.',
      registers,
      collect() {
        const s = source.current;
        if (s) this.set(Math.max(0, s.count() - s.maxSeries));
      },
    }),
    held: new Gauge({
      name: 'edgekeeper_ingest_held_reports',
      help: 'Reports held unacknowledged by admission (the uplink disk budget is full, or bulk work yields to the SLO guard).',
      registers,
    }),
    retentionDeleted: new Counter({
      name: 'edgekeeper_ingest_retention_deleted_total',
      help: 'Reports deleted by retention, per reason (age, size).',
      labelNames: ['reason'] as const,
      registers,
    }),
    retentionBlocked: new Gauge({
      name: 'edgekeeper_ingest_retention_blocked_reports',
      help: 'Reports retention would delete but keeps because the uplink has not sent them yet.',
      registers,
    }),
    commands: new Counter({
      name: 'edgekeeper_ingest_commands_total',
      help: 'Downlink commands by resulting state.',
      labelNames: ['state'] as const,
      registers,
    }),
    threadRestarts: new Counter({
      name: 'edgekeeper_ingest_thread_restarts_total',
      help: 'Times the ingest thread (broker or subscriber) ended on its own and was started again.',
      registers,
    }),
    buffered: new Gauge({
      name: 'edgekeeper_ingest_buffered_bytes',
      help: 'Bytes the embedded broker holds in unfinished packets and socket buffers (bounded by mqtt.memoryBudget).',
      registers,
    }),
    pending: new Gauge({
      name: 'edgekeeper_ingest_pending_connections',
      help: 'Embedded broker connections not yet logged in (bounded by mqtt.maxPendingConnections).',
      registers,
    }),
    loginsWaiting: new Gauge({
      name: 'edgekeeper_ingest_logins_waiting',
      help: 'Log-ins waiting for a password check (mqtt.loginConcurrency run at once).',
      registers,
    }),
    writeErrors: new Counter({
      name: 'edgekeeper_ingest_write_errors_total',
      help: 'Report batches the store refused (the reports stay unacknowledged).',
      registers,
    }),
  };
}
