/**
 * The etcd part's metrics. Per-RPC counts are plain numbers in one record per method (a call
 * costs a few increments, no label hashing) and become Prometheus series only when scraped,
 * under two sets of names: ours (`edgekeeper_etcd_*`) and the ones etcd's dashboards and alert
 * rules query (`grpc_server_*` as go-grpc-prometheus labels them, `etcd_*` as etcd exports them).
 * A prom-client Counter costs ~0.2 µs per increment here; the old path paid two per request.
 */
import { Counter, type Registry } from 'prom-client';
import { registerView, type Sample } from '../metrics.js';
import { pendingWrites } from '../store/index.js';
import type { StoreStats } from '../store/types.js';
import type { EtcdContext } from './context.js';
import { CODE_NAMES } from './errors.js';

/** gRPC code names as grpc-go spells them (go-grpc-prometheus's `grpc_code` label), by code. */
export const GRPC_CODE_LABELS = [
  'OK',
  'Canceled',
  'Unknown',
  'InvalidArgument',
  'DeadlineExceeded',
  'NotFound',
  'AlreadyExists',
  'PermissionDenied',
  'ResourceExhausted',
  'FailedPrecondition',
  'Aborted',
  'OutOfRange',
  'Unimplemented',
  'Internal',
  'Unavailable',
  'DataLoss',
  'Unauthenticated',
] as const;
const CODES = GRPC_CODE_LABELS.length;

/** Our latency buckets (edgekeeper_etcd_request_duration_seconds): a cached read to a slow SD card. */
const OUR_BOUNDS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];
/** go-grpc-prometheus's grpc_server_handling_seconds buckets (prometheus.DefBuckets). */
const GRPC_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** Both sets in one array of counts, so a call is observed once and both histograms derive from it. */
const BOUNDS = [...new Set([...OUR_BOUNDS, ...GRPC_BOUNDS])].sort((a, b) => a - b);
/** etcd's disk histograms: prometheus.ExponentialBuckets(0.001, 2, 14), 1 ms .. 8.192 s. */
export const DISK_BOUNDS = [
  0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192,
];

export type GrpcType = 'unary' | 'client_stream' | 'server_stream' | 'bidi_stream';

/** Counts of one RPC method since start, whichever transport (gRPC or the JSON gateway) carried it. */
export class MethodStat {
  started = 0;
  /** Messages received and sent (go-grpc-prometheus's msg_received / msg_sent). */
  received = 0;
  sent = 0;
  /** Protobuf bytes received and sent over gRPC (etcd_network_client_grpc_*_bytes_total). */
  bytesIn = 0;
  bytesOut = 0;
  /** Finished RPCs by gRPC code. */
  readonly handled = new Float64Array(CODES);
  /** Stream messages by the code of their answer (edgekeeper_etcd_requests_total of streams). */
  readonly messages = new Float64Array(CODES);
  /** Unary latency: counts per BOUNDS bucket (the last is +Inf), sum in seconds. */
  readonly buckets = new Float64Array(BOUNDS.length + 1);
  latencySum = 0;
  latencyCount = 0;

  constructor(
    readonly service: string,
    readonly method: string,
    readonly type: GrpcType,
    /** Our `method` label (health's methods are prefixed: `HealthCheck`). */
    readonly label: string,
  ) {}

  /** A streaming call ended with `code`. */
  ended(code: number): void {
    this.handled[code < CODES ? code : 2]!++;
  }

  /** A unary call answered with `code` after `seconds`. */
  done(code: number, seconds: number): void {
    this.handled[code < CODES ? code : 2]!++;
    let i = 0;
    while (i < BOUNDS.length && seconds > BOUNDS[i]!) i++;
    this.buckets[i]!++;
    this.latencySum += seconds;
    this.latencyCount++;
  }
}

/** A histogram of plain counts over fixed bounds, exported at scrape time. */
export class BucketCounts {
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  constructor(readonly bounds: readonly number[]) {
    this.counts = new Float64Array(bounds.length + 1);
  }
  observe(v: number): void {
    let i = 0;
    while (i < this.bounds.length && v > this.bounds[i]!) i++;
    this.counts[i]!++;
    this.sum += v;
    this.count++;
  }
}

/** Cumulative `_bucket`, `_sum` and `_count` samples of one histogram series. */
function histogramSamples(
  name: string,
  labels: Record<string, string>,
  bounds: readonly number[],
  cumulativeAt: (i: number) => number,
  sum: number,
  count: number,
): Sample[] {
  const out: Sample[] = [];
  for (let i = 0; i < bounds.length; i++)
    out.push({ metricName: `${name}_bucket`, labels: { ...labels, le: bounds[i]! }, value: cumulativeAt(i) });
  out.push({ metricName: `${name}_bucket`, labels: { ...labels, le: '+Inf' }, value: count });
  out.push({ metricName: `${name}_sum`, labels, value: sum });
  out.push({ metricName: `${name}_count`, labels, value: count });
  return out;
}

/** Cumulative count of `stat`'s latencies at or below `bound` (one of BOUNDS). */
function cumulative(stat: MethodStat, bound: number): number {
  let n = 0;
  for (let i = 0; i < BOUNDS.length && BOUNDS[i]! <= bound; i++) n += stat.buckets[i]!;
  return n;
}

export class EtcdMetrics {
  readonly badInput: Counter<'kind'>;
  readonly watchCancels: Counter<'reason'>;
  /** Every method of every service, keyed by `/service/method`. */
  readonly methods = new Map<string, MethodStat>();
  private readonly byLabel = new Map<string, MethodStat>();
  /** Requests the store could not carry out (storage failure, full queue, closed): etcd's failed proposals. */
  proposalsFailed = 0;

  constructor(registry?: Registry) {
    const registers = registry ? [registry] : [];
    this.badInput = new Counter({
      name: 'edgekeeper_etcd_bad_input_total',
      help: 'etcd requests rejected before reaching the store (undecodable gRPC, malformed gateway JSON, oversized bodies, ...)',
      labelNames: ['kind'],
      registers,
    });
    this.watchCancels = new Counter({
      name: 'edgekeeper_etcd_watch_cancels_total',
      help: 'Watchers cancelled by the server (compacted start revision, slow consumer, shutdown)',
      labelNames: ['reason'],
      registers,
    });
    if (!registry) return;
    registerView(
      registry,
      'edgekeeper_etcd_requests_total',
      'etcd requests by method and gRPC status code, over gRPC and the JSON gateway (streams count each message)',
      'counter',
      () => {
        const out: Sample[] = [];
        for (const s of this.methods.values()) {
          const counts = s.type === 'unary' ? s.handled : s.messages;
          for (let c = 0; c < CODES; c++)
            if (counts[c]! > 0)
              out.push({ labels: { method: s.label, code: CODE_NAMES[c] ?? String(c) }, value: counts[c]! });
        }
        return out;
      },
    );
    registerView(
      registry,
      'edgekeeper_etcd_request_duration_seconds',
      'etcd unary request latency, from decoded request to reply handed to the transport',
      'histogram',
      () => {
        const out: Sample[] = [];
        for (const s of this.methods.values()) {
          if (s.latencyCount === 0) continue;
          out.push(
            ...histogramSamples(
              'edgekeeper_etcd_request_duration_seconds',
              { method: s.label },
              OUR_BOUNDS,
              (i) => cumulative(s, OUR_BOUNDS[i]!),
              s.latencySum,
              s.latencyCount,
            ),
          );
        }
        return out;
      },
    );
    this.registerGrpcViews(registry);
  }

  /** The record of one method; created (and exported with zero counts) on first use. */
  method(service: string, method: string, type: GrpcType): MethodStat {
    const key = `/${service}/${method}`;
    let s = this.methods.get(key);
    if (!s) {
      const label = service === 'grpc.health.v1.Health' ? `Health${method}` : method;
      s = new MethodStat(service, method, type, label);
      this.methods.set(key, s);
      this.byLabel.set(label, s);
    }
    return s;
  }

  /** One message of a stream (`label` as in edgekeeper_etcd_requests_total) answered with `code`. */
  count(label: string, code: number): void {
    const s = this.byLabel.get(label);
    if (s) s.messages[code < CODES ? code : 2]!++;
  }

  /** Bytes received and sent over gRPC, all methods. */
  bytes(): { received: number; sent: number } {
    let received = 0;
    let sent = 0;
    for (const s of this.methods.values()) {
      received += s.bytesIn;
      sent += s.bytesOut;
    }
    return { received, sent };
  }

  /**
   * go-grpc-prometheus's server metrics. Like etcd (which calls grpc_prometheus.Register on its
   * server), every method is exported from the start, with every code, at zero.
   */
  private registerGrpcViews(registry: Registry): void {
    const labels = (s: MethodStat) => ({
      grpc_method: s.method,
      grpc_service: s.service,
      grpc_type: s.type,
    });
    const perMethod = (name: string, help: string, read: (s: MethodStat) => number) =>
      registerView(registry, name, help, 'counter', () =>
        [...this.methods.values()].map((s) => ({ labels: labels(s), value: read(s) })),
      );
    perMethod('grpc_server_started_total', 'Total number of RPCs started on the server.', (s) => s.started);
    perMethod(
      'grpc_server_msg_received_total',
      'Total number of RPC stream messages received on the server.',
      (s) => s.received,
    );
    perMethod(
      'grpc_server_msg_sent_total',
      'Total number of gRPC stream messages sent by the server.',
      (s) => s.sent,
    );
    registerView(
      registry,
      'grpc_server_handled_total',
      'Total number of RPCs completed on the server, regardless of success or failure.',
      'counter',
      () => {
        const out: Sample[] = [];
        for (const s of this.methods.values())
          for (let c = 0; c < CODES; c++)
            out.push({ labels: { grpc_code: GRPC_CODE_LABELS[c]!, ...labels(s) }, value: s.handled[c]! });
        return out;
      },
    );
    registerView(
      registry,
      'grpc_server_handling_seconds',
      'Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.',
      'histogram',
      () => {
        const out: Sample[] = [];
        for (const s of this.methods.values()) {
          if (s.type !== 'unary') continue;
          out.push(
            ...histogramSamples(
              'grpc_server_handling_seconds',
              labels(s),
              GRPC_BOUNDS,
              (i) => cumulative(s, GRPC_BOUNDS[i]!),
              s.latencySum,
              s.latencyCount,
            ),
          );
        }
        return out;
      },
    );
  }
}

function registerHistogram(registry: Registry, name: string, help: string, counts: BucketCounts): void {
  registerView(registry, name, help, 'histogram', () => {
    let cum = 0;
    const cumAt: number[] = [];
    for (let i = 0; i < counts.bounds.length; i++) {
      cum += counts.counts[i]!;
      cumAt.push(cum);
    }
    return histogramSamples(name, {}, counts.bounds, (i) => cumAt[i]!, counts.sum, counts.count);
  });
}

/**
 * etcd's own metric names, for what a single-member store has (so etcd's dashboards and alert
 * rules work): leadership is constant (this member always leads, and led from the start: one
 * leader change, as etcd counts its first election), proposals are revisions (one per write
 * transaction), the database, quota and key gauges come from the store, the disk histograms
 * from its commits. Help texts are etcd's. Returns the function that stops observing commits.
 */
export function registerEtcdServerMetrics(
  ctx: EtcdContext,
  health: { success: number; failures: number },
  registry: Registry | undefined,
): () => void {
  if (!registry) return () => {};
  const { store, metrics } = ctx;
  let cached: StoreStats | undefined;
  let at = 0;
  // One stats() per scrape, shared by the gauges below.
  const stats = () => {
    if (!cached || Date.now() - at > 500) {
      cached = store.stats();
      at = Date.now();
    }
    return cached;
  };
  const one = (
    name: string,
    help: string,
    type: 'counter' | 'gauge',
    read: () => number,
    labels?: Record<string, string>,
  ) => registerView(registry, name, help, type, () => [{ labels, value: read() }]);
  one(
    'etcd_server_has_leader',
    'Whether or not a leader exists. 1 is existence, 0 is not.',
    'gauge',
    () => 1,
  );
  one(
    'etcd_server_is_leader',
    'Whether or not this member is a leader. 1 if is, 0 otherwise.',
    'gauge',
    () => 1,
  );
  one(
    'etcd_server_is_learner',
    'Whether or not this member is a learner. 1 if is, 0 otherwise.',
    'gauge',
    () => 0,
  );
  one('etcd_server_leader_changes_seen_total', 'The number of leader changes seen.', 'counter', () => 1);
  one(
    'etcd_server_id',
    "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
    'gauge',
    () => 1,
    { server_id: ctx.memberId.toString(16) },
  );
  one(
    'etcd_server_version',
    "Which version is running. 1 for 'server_version' label with current version.",
    'gauge',
    () => 1,
    { server_version: ctx.version },
  );
  one(
    'etcd_cluster_version',
    "Which version is running. 1 for 'cluster_version' label with current cluster version",
    'gauge',
    () => 1,
    { cluster_version: ctx.version.split('.').slice(0, 2).join('.') },
  );
  one(
    'etcd_server_proposals_committed_total',
    'The total number of consensus proposals committed.',
    'gauge',
    () => stats().revision,
  );
  one(
    'etcd_server_proposals_applied_total',
    'The total number of consensus proposals applied.',
    'gauge',
    () => stats().revision,
  );
  one('etcd_server_proposals_pending', 'The current number of pending proposals to commit.', 'gauge', () =>
    pendingWrites(store),
  );
  one(
    'etcd_server_proposals_failed_total',
    'The total number of failed proposals seen.',
    'counter',
    () => metrics.proposalsFailed,
  );
  one(
    'etcd_server_quota_backend_bytes',
    'Current backend storage quota size in bytes.',
    'gauge',
    () => stats().quota,
  );
  one(
    'etcd_server_health_success',
    'The total number of successful health checks',
    'counter',
    () => health.success,
  );
  one(
    'etcd_server_health_failures',
    'The total number of failed health checks',
    'counter',
    () => health.failures,
  );
  const dbSize = 'Total size of the underlying database physically allocated in bytes.';
  one('etcd_mvcc_db_total_size_in_bytes', dbSize, 'gauge', () => stats().dbSize);
  one('etcd_debugging_mvcc_db_total_size_in_bytes', dbSize, 'gauge', () => stats().dbSize);
  one(
    'etcd_mvcc_db_total_size_in_use_in_bytes',
    'Total size of the underlying database logically in use in bytes.',
    'gauge',
    () => stats().dbSizeInUse,
  );
  one('etcd_debugging_mvcc_keys_total', 'Total number of keys.', 'gauge', () => stats().keys);
  one(
    'etcd_debugging_mvcc_current_revision',
    'The current revision of store.',
    'gauge',
    () => stats().revision,
  );
  one(
    'etcd_debugging_mvcc_compact_revision',
    'The revision of the last compaction in store.',
    'gauge',
    () => stats().compactRevision,
  );
  one('etcd_debugging_mvcc_watcher_total', 'Total number of watchers.', 'gauge', () => stats().watchers);
  one(
    'etcd_debugging_mvcc_watch_stream_total',
    'Total number of watch streams.',
    'gauge',
    () => ctx.watchStreams.size,
  );
  one(
    'etcd_network_client_grpc_received_bytes_total',
    'The total number of bytes received from grpc clients.',
    'counter',
    () => metrics.bytes().received,
  );
  one(
    'etcd_network_client_grpc_sent_bytes_total',
    'The total number of bytes sent to grpc clients.',
    'counter',
    () => metrics.bytes().sent,
  );
  const commit = new BucketCounts(DISK_BOUNDS);
  const fsync = new BucketCounts(DISK_BOUNDS);
  const stop = store.onCommit?.((c) => {
    commit.observe(c.commitSeconds);
    if (c.fsyncSeconds !== undefined) fsync.observe(c.fsyncSeconds);
  });
  registerHistogram(
    registry,
    'etcd_disk_backend_commit_duration_seconds',
    'The latency distributions of commit called by backend.',
    commit,
  );
  // The WAL sync of commits that synced (durability fsync, and something written).
  registerHistogram(
    registry,
    'etcd_disk_wal_fsync_duration_seconds',
    'The latency distributions of fsync called by WAL.',
    fsync,
  );
  return stop ?? (() => {});
}
