/**
 * What every service shares: the store, the response-header factory, metrics and alarms.
 */
import type { Logger } from '../log.js';
import type { Store } from '../store/types.js';
import type { Alarms } from './alarms.js';
import type { StreamGuard } from './limits.js';
import type { Auth } from './auth/index.js';
import type { EtcdMetrics } from './metrics.js';
import { long } from './proto.js';

export interface Header {
  cluster_id: unknown;
  member_id: unknown;
  revision: number | undefined;
  raft_term: number;
}

export interface EtcdContext {
  store: Store;
  logger: Logger;
  metrics: EtcdMetrics;
  alarms: Alarms;
  auth: Auth;
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
  /** Open watch streams (gRPC and gateway); closed with the server. */
  watchStreams: Set<{ close(end: boolean): void }>;
  /** Bounds on streams and watchers (limits.ts). */
  guard: StreamGuard;
  /** Hears the latency of every unary RPC that does not wait by design (see EtcdServerOptions). */
  onUnary?: (seconds: number) => void;
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
