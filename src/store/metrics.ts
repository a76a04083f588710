/** The store's Prometheus metrics (`edgekeeper_store_*`). */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { BatchResult } from './engine.js';
import type { Store } from './types.js';

export class StoreMetrics {
  private readonly commit: Histogram;
  private readonly group: Histogram;
  private readonly errors: Counter;
  private readonly compactedRows: Counter;
  private readonly expired: Counter;

  constructor(registry: Registry, store: Store & { pendingWrites: number }) {
    const registers = [registry];
    this.commit = new Histogram({
      name: 'edgekeeper_store_commit_seconds',
      help: 'Time to run and commit one group transaction.',
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
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

  onBatch(b: BatchResult, n: number): void {
    this.commit.observe(b.commitMs / 1000);
    this.group.observe(n);
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
