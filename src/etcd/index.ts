/**
 * The etcd part's public face: etcd's v3 gRPC API over the store, so etcdctl, etcd client
 * libraries and Kubernetes-style users work unchanged, plus the `kv`, `lease`, `lock`, `elect`
 * and `status` CLI commands that talk to it.
 */
import { join } from 'node:path';
import type { ConfigSection } from '../config/types.js';
import { ConfigError } from '../errors.js';
import type { Part, PartContext } from '../part.js';
import { etcdCliCommands } from './cli.js';
import { DEFAULT_LIMITS, type EtcdLimits } from './limits.js';
import {
  DEFAULT_MAX_REQUEST_BYTES,
  DEFAULT_PROGRESS_NOTIFY_MS,
  type EtcdServer,
  type EtcdServerOptions,
  startEtcdServer,
} from './server.js';

export { etcdCliCommands, startEtcdServer };
import type { Migration } from '../store/types.js';
import { alarmsMigration } from './alarms.js';
import { authMigration, DEFAULT_TOKEN_TTL_MS } from './auth/index.js';

/** The etcd part's schema: its alarms (1) and auth (2) tables. */
export const etcdMigrations: Migration[] = [alarmsMigration, authMigration];
export type { EtcdServer, EtcdServerOptions };
export { ETCD_COMPAT_VERSION, isLoopbackHost } from './server.js';
export {
  appendSha256,
  type EtcdSnapshot,
  openEtcdSnapshot,
  type SnapshotMember,
  verifyEtcdSnapshot,
  writeEtcdSnapshot,
} from './snapshot/index.js';

/** The `etcd` config section's values (see etcdConfigSection for each field's meaning). */
export interface EtcdOptions {
  listen?: string;
  unixSocket?: boolean;
  tlsCert?: string;
  tlsKey?: string;
  tlsClientCa?: string;
  clientCertAuth?: boolean;
  /** Milliseconds. */
  progressNotifyInterval?: number;
  /** Bytes; keep equal to the store's maxRequestBytes. */
  maxRequestBytes?: number;
  maxConnections?: number;
  maxStreamsPerConnection?: number;
  maxStreams?: number;
  maxWatchersPerConnection?: number;
  maxWatchers?: number;
  /** Bytes. */
  maxPendingBytes?: number;
  /** Milliseconds. */
  authTokenTtl?: number;
}

const LIMIT_KEYS = [
  'maxConnections',
  'maxStreamsPerConnection',
  'maxStreams',
  'maxWatchersPerConnection',
  'maxWatchers',
  'maxPendingBytes',
] as const satisfies readonly (keyof EtcdLimits)[];

export const etcdConfigSection: ConfigSection = {
  name: 'etcd',
  doc: "etcd's v3 gRPC API (etcdctl, etcd client libraries) over the store",
  fields: {
    listen: {
      type: 'string',
      default: '127.0.0.1:2379',
      doc: 'TCP HOST:PORT of the etcd API (--etcd-listen). Anything but loopback requires tlsCert and tlsKey.',
    },
    unixSocket: {
      type: 'boolean',
      default: true,
      doc: 'Also serve the API on the unix socket <stateDir>/etcd.sock',
    },
    tlsCert: {
      type: 'string',
      optional: true,
      doc: 'PEM server certificate chain file; enables TLS on the TCP listener',
    },
    tlsKey: { type: 'string', optional: true, doc: 'PEM private key file of tlsCert' },
    tlsClientCa: { type: 'string', optional: true, doc: 'PEM CA bundle that signs client certificates' },
    clientCertAuth: {
      type: 'boolean',
      default: false,
      doc: "Require a client certificate signed by tlsClientCa (etcd's --client-cert-auth)",
    },
    progressNotifyInterval: {
      type: 'duration',
      default: DEFAULT_PROGRESS_NOTIFY_MS,
      min: 100,
      doc: 'How often idle watchers that asked for progress_notify get an empty progress response (etcd: 10m)',
    },
    maxRequestBytes: {
      type: 'bytes',
      default: DEFAULT_MAX_REQUEST_BYTES,
      min: 1024,
      max: 64 * 1024 * 1024,
      doc: "Largest request the API accepts (etcd's --max-request-bytes); keep it equal to the store's limit",
    },
    maxConnections: {
      type: 'integer',
      default: DEFAULT_LIMITS.maxConnections,
      min: 1,
      doc: 'Open connections on the etcd port (gRPC and JSON, TCP and unix socket); more are closed at accept',
    },
    maxStreamsPerConnection: {
      type: 'integer',
      default: DEFAULT_LIMITS.maxStreamsPerConnection,
      min: 1,
      doc: "Concurrent gRPC streams per connection, announced in HTTP/2's settings (etcd's --max-concurrent-streams): clients queue calls beyond it",
    },
    maxStreams: {
      type: 'integer',
      default: DEFAULT_LIMITS.maxStreams,
      min: 1,
      doc: "Concurrent gRPC streams over all connections; one more is reset with REFUSED_STREAM, unless it is among its connection's first 8",
    },
    maxWatchersPerConnection: {
      type: 'integer',
      default: DEFAULT_LIMITS.maxWatchersPerConnection,
      min: 1,
      doc: 'Watchers on the watch streams of one gRPC connection; one more is refused with a cancel_reason',
    },
    maxWatchers: {
      type: 'integer',
      default: DEFAULT_LIMITS.maxWatchers,
      min: 1,
      doc: 'Watchers over all connections (gRPC and JSON); one more is refused with a cancel_reason',
    },
    maxPendingBytes: {
      type: 'bytes',
      default: DEFAULT_LIMITS.maxPendingBytes,
      min: 64 * 1024,
      doc: 'Bytes of gRPC requests received but not complete yet, over all streams; the stream that would pass it is reset (RESOURCE_EXHAUSTED)',
    },
    authTokenTtl: {
      type: 'duration',
      default: DEFAULT_TOKEN_TTL_MS,
      min: 1000,
      max: 24 * 60 * 60 * 1000,
      doc: "How long an etcd auth token lives after its last use (etcd's --auth-token-ttl, 300s)",
    },
  },
};

export function createEtcdPart(ctx: PartContext, options: EtcdOptions = {}): Part {
  const log = ctx.logger.child({ part: 'etcd' });
  let server: EtcdServer | undefined;
  let stopped = false;
  ctx.addReadinessCheck('etcd', () => (server ? undefined : 'etcd API is not listening yet'));
  const tls =
    options.tlsCert || options.tlsKey
      ? {
          cert: options.tlsCert ?? '',
          key: options.tlsKey ?? '',
          clientCa: options.tlsClientCa,
          clientCertAuth: !!options.clientCertAuth,
        }
      : undefined;
  const serverOptions: EtcdServerOptions = {
    listen: options.listen ?? '127.0.0.1:2379',
    socketPath: options.unixSocket === false ? undefined : join(ctx.stateDir, 'etcd.sock'),
    tls,
    nodeName: ctx.nodeName,
    logger: ctx.logger,
    registry: ctx.registry,
    progressNotifyMs: options.progressNotifyInterval ?? DEFAULT_PROGRESS_NOTIFY_MS,
    maxRequestBytes: options.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES,
    stateDir: ctx.stateDir,
    limits: Object.fromEntries(
      LIMIT_KEYS.filter((k) => options[k] !== undefined).map((k) => [k, options[k]]),
    ),
    authTokenTtlMs: options.authTokenTtl ?? DEFAULT_TOKEN_TTL_MS,
    onUnary: ctx.slo ? (seconds) => ctx.slo?.observeRequest(seconds) : undefined,
  };
  return {
    name: 'etcd',
    async start() {
      if (server || stopped) return;
      if (tls && (!tls.cert || !tls.key)) {
        throw new ConfigError(['`etcd.tlsCert` and `etcd.tlsKey` must be set together']);
      }
      server = await startEtcdServer(ctx.store, serverOptions);
      log.info({ urls: server.clientUrls() }, 'point etcdctl here with --endpoints');
    },
    async stop() {
      stopped = true;
      const s = server;
      server = undefined;
      await s?.close();
    },
    status() {
      return {
        listening: !!server,
        clientUrls: server ? server.clientUrls() : [],
        tls: !!tls,
      };
    },
  };
}
