/** The store's Prometheus metrics (`edgekeeper_store_*`). */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { CheckpointResult } from './maintenance.js';
import type { Store } from './types.js';
import type { DurableBatch } from './writer.js';

/** Seconds, from a tenth of a millisecond to over a second: fast disks to a stalled SD card. */
const LATENCY_BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
];

export class StoreMetrics {
  private readonly commit: Histogram;
  private readonly sync: Histogram;
  private readonly stallGauge: Gauge;
  private readonly stallMax = new Map<string, number>();
  private readonly checkpoint: Histogram;
  private readonly checkpointPages: Counter;
  private readonly walFrames: Gauge;
  private readonly group: Histogram;
  private readonly errors: Counter;
  private readonly compactedRows: Counter;
  private readonly expired: Counter;

  constructor(registry: Registry, store: Store & { pendingWrites: number }) {
    const registers = [registry];
    this.commit = new Histogram({
      name: 'edgekeeper_store_commit_seconds',
      help: 'Time to run, commit and sync one group transaction.',
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.sync = new Histogram({
      name: 'edgekeeper_store_sync_seconds',
      help: 'Time the WAL fdatasync of one group transaction took.',
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.stallGauge = new Gauge({
      name: 'edgekeeper_store_commit_stall_max_seconds',
      help: 'Longest wait of a commit since start, by cause: its WAL sync (fsync when nothing else used the disk, else checkpoint, vacuum or backup), or the writer holding its queue so the WAL can restart (wal-restart).',
      labelNames: ['cause'],
      registers,
    });
    this.checkpoint = new Histogram({
      name: 'edgekeeper_store_checkpoint_seconds',
      help: 'Time one WAL checkpoint took (on the maintenance thread; commits do not wait for it).',
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.checkpointPages = new Counter({
      name: 'edgekeeper_store_checkpoint_pages_total',
      help: 'WAL frames copied into the database by checkpoints.',
      registers,
    });
    this.walFrames = new Gauge({
      name: 'edgekeeper_store_wal_frames',
      help: 'Frames in the WAL at the last checkpoint.',
      registers,
    });
    this.group = new Histogram({
      name: 'edgekeeper_store_group_size_requests',
      help: 'Requests committed together in one transaction (group commit).',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048],
      registers,
    });
    this.errors = new Counter({
      name: 'edgekeeper_store_errors_total',
      help: 'Store requests refused or failed, by error code.',
      labelNames: ['code'],
      registers,
    });
    this.compactedRows = new Counter({
      name: 'edgekeeper_store_compacted_rows_total',
      help: 'Old revisions removed by compaction.',
      registers,
    });
    this.expired = new Counter({
      name: 'edgekeeper_store_leases_expired_total',
      help: 'Leases that expired (their keys were deleted).',
      registers,
    });
    const gauge = (name: string, help: string, read: () => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(read());
        },
      });
    let cached: ReturnType<Store['stats']> | undefined;
    let at = 0;
    // One stats() per scrape, shared by the gauges below.
    const stats = () => {
      if (!cached || Date.now() - at > 500) {
        cached = store.stats();
        at = Date.now();
      }
      return cached;
    };
    gauge('edgekeeper_store_revision', 'Current revision.', () => stats().revision);
    gauge(
      'edgekeeper_store_compact_revision',
      'Revision history is compacted to.',
      () => stats().compactRevision,
    );
    gauge('edgekeeper_store_db_bytes', 'Database file size.', () => stats().dbSize);
    gauge(
      'edgekeeper_store_db_in_use_bytes',
      'Database bytes in use (file less free pages).',
      () => stats().dbSizeInUse,
    );
    gauge('edgekeeper_store_wal_bytes', 'WAL file size.', () => stats().walSize);
    gauge('edgekeeper_store_quota_bytes', 'Database quota.', () => stats().quota);
    gauge('edgekeeper_store_no_space', '1 while the database is over its quota (writes refused).', () =>
      stats().noSpace ? 1 : 0,
    );
    gauge('edgekeeper_store_keys', 'Live keys.', () => stats().keys);
    gauge('edgekeeper_store_leases', 'Live leases.', () => stats().leases);
    gauge('edgekeeper_store_watchers', 'Open watchers.', () => stats().watchers);
    gauge(
      'edgekeeper_store_pending_writes',
      'Write requests waiting for the writer (limit 100,000).',
      () => store.pendingWrites,
    );
  }

  onBatch(b: DurableBatch, n: number, cause: string): void {
    this.commit.observe(b.commitMs / 1000);
    if (b.synced) this.sync.observe(b.syncMs / 1000);
    this.group.observe(n);
    this.stall(cause, b.syncMs);
  }

  /** A commit waited `ms` for the disk or for background work (`cause`). */
  stall(cause: string, ms: number): void {
    const s = ms / 1000;
    if (s > (this.stallMax.get(cause) ?? 0)) {
      this.stallMax.set(cause, s);
      this.stallGauge.set({ cause }, s);
    }
  }

  onCheckpoint(r: CheckpointResult): void {
    this.checkpoint.observe(r.ms / 1000);
    this.checkpointPages.inc(r.checkpointed);
    this.walFrames.set(r.log);
  }

  error(code: string): void {
    this.errors.inc({ code });
  }

  compacted(rows: number): void {
    this.compactedRows.inc(rows);
  }

  leaseExpired(): void {
    this.expired.inc();
  }
}
