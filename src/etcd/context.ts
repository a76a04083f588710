/**
 * What every service handler shares: the store, the response-header factory, metrics and the
 * unary-call wrapper that turns thrown EdgeErrors into etcd's statuses and counts them.
 */
import type { sendUnaryData, ServerUnaryCall } from '@grpc/grpc-js';
import { Counter, Histogram, type Registry } from 'prom-client';
import type { Logger } from '../log.js';
import type { Store } from '../store/types.js';
import { CODE_NAMES, toGrpcError } from './errors.js';
import { long } from './proto.js';

export interface Header {
  cluster_id: unknown;
  member_id: unknown;
  revision: number | undefined;
  raft_term: number;
}

/** prom-client children cached per label set, so a request costs a Map lookup, not a label hash. */
export class EtcdMetrics {
  readonly requests: Counter<'method' | 'code'>;
  readonly latency: Histogram<'method'>;
  readonly badInput: Counter<'kind'>;
  readonly watchCancels: Counter<'reason'>;
  private readonly counterChildren = new Map<string, { inc(n?: number): void }>();
  private readonly histChildren = new Map<string, { observe(v: number): void }>();

  constructor(registry?: Registry) {
    const registers = registry ? [registry] : [];
    this.requests = new Counter({
      name: 'edgekeeper_etcd_requests_total',
      help: 'etcd gRPC requests by method and gRPC status code (streams count each message)',
      labelNames: ['method', 'code'],
      registers,
    });
    this.latency = new Histogram({
      name: 'edgekeeper_etcd_request_duration_seconds',
      help: 'etcd gRPC unary request latency, from decoded request to reply handed to gRPC',
      labelNames: ['method'],
      // From a cached read (~50 us) to a slow fsync on an SD card (~1 s).
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    this.badInput = new Counter({
      name: 'edgekeeper_etcd_bad_input_total',
      help: 'etcd gRPC messages rejected before reaching the store (undecodable, invalid)',
      labelNames: ['kind'],
      registers,
    });
    this.watchCancels = new Counter({
      name: 'edgekeeper_etcd_watch_cancels_total',
      help: 'Watchers cancelled by the server (compacted start revision, slow consumer, shutdown)',
      labelNames: ['reason'],
      registers,
    });
  }

  count(method: string, code: number): void {
    const k = method + '|' + code;
    let c = this.counterChildren.get(k);
    if (!c) {
      c = this.requests.labels(method, CODE_NAMES[code] ?? String(code));
      this.counterChildren.set(k, c);
    }
    c.inc();
  }

  observe(method: string, seconds: number): void {
    let h = this.histChildren.get(method);
    if (!h) {
      h = this.latency.labels(method);
      this.histChildren.set(method, h);
    }
    h.observe(seconds);
  }
}

export interface EtcdContext {
  store: Store;
  logger: Logger;
  metrics: EtcdMetrics;
  nodeName: string;
  /** Client URLs this server answers on (for MemberList). */
  clientUrls(): string[];
  memberId: bigint;
  clusterId: bigint;
  /** etcd's response header for `revision`. */
  hdr(revision: number): Header;
  /** Interval of progress_notify responses to idle watchers (etcd: 10 minutes). */
  progressNotifyMs: number;
  maxRequestBytes: number;
  /** Version string reported by Maintenance.Status. */
  version: string;
  stateDir: string;
}

export function makeHeaderFactory(store: Store): {
  hdr: (rev: number) => Header;
  memberId: bigint;
  clusterId: bigint;
} {
  const { clusterId, memberId } = store.identity();
  const cid = long(clusterId);
  const mid = long(memberId);
  return {
    clusterId,
    memberId,
    hdr: (revision: number) => ({
      cluster_id: cid,
      member_id: mid,
      revision: revision || undefined,
      raft_term: 1,
    }),
  };
}

type UnaryImpl<Req, Res> = (req: Req) => Res | Promise<Res>;

/**
 * Wrap a unary implementation: errors become etcd statuses, every call is counted and timed.
 * The wrapper is built once per method; a call allocates only the promise callbacks.
 */
export function unary<Req, Res>(
  ctx: EtcdContext,
  method: string,
  impl: UnaryImpl<Req, Res>,
): (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>) => void {
  const { metrics } = ctx;
  return (call, cb) => {
    const start = performance.now();
    const fail = (err: unknown) => {
      const e = toGrpcError(err);
      metrics.count(method, e.code);
      metrics.observe(method, (performance.now() - start) / 1000);
      cb(e as never);
    };
    let out: Res | Promise<Res>;
    try {
      out = impl(call.request);
    } catch (err) {
      fail(err);
      return;
    }
    if (out instanceof Promise) {
      out.then((res) => {
        metrics.count(method, 0);
        metrics.observe(method, (performance.now() - start) / 1000);
        cb(null, res);
      }, fail);
    } else {
      metrics.count(method, 0);
      metrics.observe(method, (performance.now() - start) / 1000);
      cb(null, out);
    }
  };
}
