/**
 * The etcd v3 gRPC server over a Store: every service registered on one grpc-js Server bound to
 * a TCP address and (optionally) a unix socket. Non-loopback TCP needs TLS; that is checked
 * before anything is bound, with an error that says what to set.
 */
import { readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { Server as HttpServer } from 'node:http';
import { isIP, Server as NetServer } from 'node:net';
import type { TlsOptions } from 'node:tls';
import type { Http2Server } from 'node:http2';
import {
  type Metadata,
  type sendUnaryData,
  Server,
  ServerCredentials,
  type ServerUnaryCall,
  type ServiceDefinition,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import type { Registry } from 'prom-client';
import { ConfigError } from '../errors.js';
import { type Logger, silentLogger } from '../log.js';
import type { Store } from '../store/types.js';
import { Alarms } from './alarms.js';
import { Auth, authMethods, DEFAULT_TOKEN_TTL_MS, guardServices } from './auth/index.js';
import { type EtcdContext, makeHeaderFactory } from './context.js';
import { kvMethods } from './kv.js';
import { leaseMethods } from './lease.js';
import { clusterMethods, healthMethods, maintenanceMethods } from './maintenance.js';
import { Gateway } from './gateway.js';
import { CONNECTION_KEY, DEFAULT_LIMITS, type EtcdLimits, StreamGuard } from './limits.js';
import { SharedListener } from './listener.js';
import { registerView } from '../metrics.js';
import { EtcdMetrics, registerEtcdServerMetrics } from './metrics.js';
import { serviceDefinition } from './proto.js';
import { electionMethods, lockMethods } from './recipes.js';
import {
  type Methods,
  type Msg,
  runUnary,
  type StreamCall,
  type StreamHandler,
  trackStream,
  type Unary,
} from './rpc.js';
import { watchMethods } from './watch.js';

/** Reported by Maintenance.Status: clients enable progress requests from etcd 3.5.13 on. */
export const ETCD_COMPAT_VERSION = '3.5.13';
/** etcd's default --max-request-bytes. */
export const DEFAULT_MAX_REQUEST_BYTES = 1.5 * 1024 * 1024;
/** etcd allows this much gRPC framing on top of max-request-bytes (grpcOverheadBytes). */
const GRPC_OVERHEAD_BYTES = 512 * 1024;
/** etcd's default --experimental-watch-progress-notify-interval. */
export const DEFAULT_PROGRESS_NOTIFY_MS = 10 * 60 * 1000;

export interface EtcdTlsOptions {
  /** PEM certificate chain (contents or a file path). */
  cert: string | Buffer;
  /** PEM private key (contents or a file path). */
  key: string | Buffer;
  /** PEM CA bundle to verify client certificates with. */
  clientCa?: string | Buffer;
  /** Require a client certificate signed by `clientCa` (etcd's --client-cert-auth). */
  clientCertAuth?: boolean;
}

export interface EtcdServerOptions {
  /** "host:port"; port 0 picks a free port. Default 127.0.0.1:2379. Empty string: no TCP listener. */
  listen?: string;
  /** Path of a unix socket to serve on as well (removed first if stale). */
  socketPath?: string;
  tls?: EtcdTlsOptions;
  nodeName?: string;
  logger?: Logger;
  registry?: Registry;
  progressNotifyMs?: number;
  maxRequestBytes?: number;
  /** Where Snapshot stages its temporary copy (default: the OS temp dir). */
  stateDir?: string;
  /** Bounds on connections, streams, watchers and pending bytes (limits.ts); unset ones default. */
  limits?: Partial<EtcdLimits>;
  /** How long an auth token lives after its last use (etcd's --auth-token-ttl; default 300 s). */
  authTokenTtlMs?: number;
  /** Hears every unary RPC's latency but Lock's and Campaign's, which wait by design (the SLO guard). */
  onUnary?: (seconds: number) => void;
}

export interface EtcdServer {
  /** The bound TCP port (0 when there is no TCP listener). */
  port: number;
  host: string;
  socketPath?: string;
  metrics: EtcdMetrics;
  clientUrls(): string[];
  close(): Promise<void>;
}

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  if (h === 'localhost') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) return h === '::1';
  return false;
}

export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(listen.trim());
  if (!m)
    throw new ConfigError([
      `Expected \`etcd.listen\` to be HOST:PORT (e.g. 127.0.0.1:2379), got ${JSON.stringify(listen)}`,
    ]);
  const port = Number(m[2]);
  if (port > 65535)
    throw new ConfigError([`Expected the port of \`etcd.listen\` to be 0..65535, got ${port}`]);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

function pem(v: string | Buffer): Buffer {
  if (Buffer.isBuffer(v)) return v;
  return v.includes('-----BEGIN') ? Buffer.from(v) : readFileSync(v);
}

/** Node TLS options for the TCP listener (grpc-js's createSsl semantics: a CA alone does not require certificates). */
function tlsOptions(tls: EtcdTlsOptions | undefined): TlsOptions | undefined {
  if (!tls) return undefined;
  const ca = tls.clientCa ? pem(tls.clientCa) : undefined;
  if (tls.clientCertAuth && !ca) {
    throw new ConfigError([
      '`etcd.clientCertAuth` needs `etcd.tlsClientCa` (the CA that signs client certificates)',
    ]);
  }
  return {
    cert: pem(tls.cert),
    key: pem(tls.key),
    ca,
    requestCert: !!tls.clientCertAuth,
    rejectUnauthorized: !!tls.clientCertAuth,
  };
}

/** Serve the etcd API for `store`. Resolves once every listener is bound. */
export async function startEtcdServer(store: Store, opts: EtcdServerOptions = {}): Promise<EtcdServer> {
  const listen = opts.listen ?? '127.0.0.1:2379';
  const tcp = listen === '' ? undefined : parseListen(listen);
  if (tcp && !isLoopbackHost(tcp.host) && !opts.tls) {
    throw new ConfigError([
      `\`etcd.listen\` is ${listen}, which is not a loopback address: without TLS, passwords and tokens (etcd auth) would cross the network in clear, so ` +
        'edgekeeper serves it beyond this machine only over TLS. Set `etcd.tlsCert` and `etcd.tlsKey` ' +
        '(and `etcd.tlsClientCa` with `etcd.clientCertAuth: true` to require client certificates), or listen on 127.0.0.1.',
    ]);
  }
  const tls = tlsOptions(opts.tls);
  const logger = (opts.logger ?? silentLogger()).child({ part: 'etcd' });
  const metrics = new EtcdMetrics(opts.registry);
  const maxRequestBytes = opts.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES;
  const limits: EtcdLimits = { ...DEFAULT_LIMITS, ...opts.limits };
  const guard = new StreamGuard(limits, maxRequestBytes + GRPC_OVERHEAD_BYTES, (kind) =>
    metrics.badInput.inc({ kind }),
  );
  const scheme = opts.tls ? 'https' : 'http';
  let port = 0;
  const { hdr, memberId, clusterId } = makeHeaderFactory(store);
  const clientUrls = () => {
    const urls: string[] = [];
    if (tcp) urls.push(`${scheme}://${tcp.host.includes(':') ? `[${tcp.host}]` : tcp.host}:${port}`);
    if (opts.socketPath) urls.push(`unix://${opts.socketPath}`);
    return urls;
  };
  const ctx: EtcdContext = {
    store,
    logger,
    metrics,
    alarms: new Alarms(store, memberId, logger),
    auth: new Auth(store, logger, {
      tokenTtlMs: opts.authTokenTtlMs ?? DEFAULT_TOKEN_TTL_MS,
      clientCertAuth: !!opts.tls?.clientCertAuth,
    }),
    nodeName: opts.nodeName ?? 'edgekeeper',
    clientUrls,
    memberId,
    clusterId,
    hdr,
    progressNotifyMs: opts.progressNotifyMs ?? DEFAULT_PROGRESS_NOTIFY_MS,
    maxRequestBytes,
    version: ETCD_COMPAT_VERSION,
    stateDir: opts.stateDir ?? '',
    watchStreams: new Set(),
    guard,
    onUnary: opts.onUnary,
  };

  const server = new Server({
    'grpc.max_receive_message_length': maxRequestBytes + GRPC_OVERHEAD_BYTES,
    'grpc.max_send_message_length': -1,
    // etcd's defaults: ping an idle client every 2 h, drop it after 20 s without an answer.
    'grpc.keepalive_time_ms': 2 * 60 * 60 * 1000,
    'grpc.keepalive_timeout_ms': 20_000,
    'grpc.max_concurrent_streams': limits.maxStreamsPerConnection,
  });
  const onDecodeFailure = (method: string, err: unknown) => {
    metrics.badInput.inc({ kind: 'undecodable' });
    logger.debug({ method, err: String(err) }, 'rejected an etcd request that is not valid protobuf');
  };
  const services = etcdServices(ctx);
  for (const [name, methods] of services) {
    const def = serviceDefinition(name, { metrics, onDecodeFailure });
    server.addService(def, grpcHandlers(ctx, name, def, methods));
  }

  // One listener per address for gRPC and the JSON gateway (listener.ts). TLS, when configured,
  // is ended in the listener, so grpc-js gets plain HTTP/2 either way.
  const injector = server.createConnectionInjector(ServerCredentials.createInsecure());
  guard.attach(injectorHttp2Server(server));
  const gateway = new Gateway({
    ctx,
    services: new Map(services),
    maxMessageBytes: maxRequestBytes + GRPC_OVERHEAD_BYTES,
    registry: opts.registry,
  });
  const stopCommitMetrics = registerEtcdServerMetrics(ctx, gateway.health, opts.registry);
  const http = new HttpServer(
    {
      // Keep idle client connections as long as a client pool usually does (Go's server keeps
      // them forever); a stream is not limited in time, as in etcd.
      keepAliveTimeout: 120_000,
      requestTimeout: 0,
    },
    gateway.handle,
  );
  // This server never listens itself (the shared listener hands it connections), but its
  // connection list and header timeout start on 'listening'.
  http.emit('listening');
  const listener = new SharedListener(
    {
      grpc: (s) => injector.injectConnection(s),
      http: (s) => http.emit('connection', s),
      dropped: (reason) =>
        metrics.badInput.inc({
          kind: reason === 'tls' ? 'tls_handshake' : reason === 'timeout' ? 'silent_connection' : reason,
        }),
    },
    { maxConnections: limits.maxConnections },
  );
  if (opts.registry) registerLimitGauges(opts.registry, guard, listener);

  try {
    if (tcp) port = await listener.listenTcp(tcp.host, tcp.port, tls);
    if (opts.socketPath) {
      await rm(opts.socketPath, { force: true });
      // The unix socket is reachable only through filesystem permissions: no TLS needed there.
      await listener.listenUnix(opts.socketPath);
    }
  } catch (err) {
    await listener.close();
    stopCommitMetrics();
    server.forceShutdown();
    throw err;
  }
  logger.info(
    { listen: tcp ? `${tcp.host}:${port}` : undefined, socket: opts.socketPath, tls: !!opts.tls },
    'etcd API listening',
  );

  let closing: Promise<void> | undefined;
  return {
    port,
    host: tcp?.host ?? '',
    socketPath: opts.socketPath,
    metrics,
    clientUrls,
    close() {
      closing ??= (async () => {
        // Stop accepting now; the listeners report closed once their connections are gone,
        // which the shutdown below brings about.
        const listenersClosed = listener.close();
        for (const s of ctx.watchStreams) s.close(true);
        ctx.watchStreams.clear();
        // Idle keep-alive connections go now; one still answering gets the grace gRPC gets.
        // (close() reports that the server was not listening: it never was.)
        http.close(() => {});
        await new Promise<void>((resolve) => {
          const t = setTimeout(() => {
            server.forceShutdown();
            resolve();
          }, 2000);
          t.unref();
          server.tryShutdown(() => {
            clearTimeout(t);
            resolve();
          });
        });
        injector.destroy();
        stopCommitMetrics();
        // A connection grpc-js no longer tracks (its session gone, the client idle) would keep the
        // listener open for ever: every connection ends here.
        listener.destroyAll();
        await listenersClosed;
        if (opts.socketPath) await rm(opts.socketPath, { force: true });
      })();
      return closing;
    },
  };
}

/**
 * The HTTP/2 server behind grpc-js's connection injector, for the stream guard. grpc-js keeps it
 * in a private map (1.10+); checked at start so an upgrade that moves it fails every test.
 */
function injectorHttp2Server(server: Server): Http2Server {
  const servers = (server as unknown as { http2Servers?: Map<unknown, unknown> }).http2Servers;
  const found = servers ? [...servers.keys()].find((s) => s instanceof NetServer) : undefined;
  if (!found) throw new Error('grpc-js no longer exposes its HTTP/2 server; the stream guard needs it');
  return found as Http2Server;
}

function registerLimitGauges(registry: Registry, guard: StreamGuard, listener: SharedListener): void {
  const gauge = (name: string, help: string, read: () => number) =>
    registerView(registry, name, help, 'gauge', () => [{ value: read() }]);
  gauge(
    'edgekeeper_etcd_connections',
    'Open connections on the etcd port (gRPC and JSON)',
    () => listener.openCount,
  );
  gauge('edgekeeper_etcd_streams', 'Open gRPC streams', () => guard.streams);
  gauge('edgekeeper_etcd_watchers', 'Open watchers (gRPC and JSON)', () => guard.watchers);
  gauge(
    'edgekeeper_etcd_pending_request_bytes',
    'Bytes of gRPC request messages received but not complete yet',
    () => guard.pendingBytes,
  );
}

/** Every service edgekeeper serves, with its methods. */
function etcdServices(ctx: EtcdContext): [string, Methods][] {
  return guardServices(ctx.auth, ctx.store, [
    ['etcdserverpb.KV', kvMethods(ctx)],
    ['etcdserverpb.Watch', watchMethods(ctx)],
    ['etcdserverpb.Lease', leaseMethods(ctx)],
    ['etcdserverpb.Maintenance', maintenanceMethods(ctx)],
    ['etcdserverpb.Cluster', clusterMethods(ctx)],
    ['etcdserverpb.Auth', authMethods(ctx, ctx.auth)],
    ['v3lockpb.Lock', lockMethods(ctx)],
    ['v3electionpb.Election', electionMethods(ctx)],
    ['grpc.health.v1.Health', healthMethods()],
  ]);
}

/** grpc-js handlers for a service's methods; a method without an implementation is left to grpc-js (UNIMPLEMENTED). */
function grpcHandlers(
  ctx: EtcdContext,
  service: string,
  def: ServiceDefinition,
  methods: Methods,
): UntypedServiceImplementation {
  const out: UntypedServiceImplementation = {};
  for (const [name, d] of Object.entries(def)) {
    const impl = methods[name];
    if (!impl) continue;
    const type = d.requestStream
      ? d.responseStream
        ? 'bidi_stream'
        : 'client_stream'
      : d.responseStream
        ? 'server_stream'
        : 'unary';
    const stat = ctx.metrics.method(service, name, type);
    if (d.requestStream || d.responseStream) {
      // grpc-js's server streams provide everything StreamCall names.
      out[name] = ((call: StreamCall & { metadata: Metadata }) => {
        call.connection = call.metadata.get(CONNECTION_KEY)[0] as string | undefined;
        trackStream(stat, call);
        (impl as StreamHandler)(call);
      }) as unknown as UntypedServiceImplementation[string];
    } else {
      const unary = impl as Unary;
      out[name] = (call: ServerUnaryCall<Msg, object>, cb: sendUnaryData<object>) => {
        let signal: AbortSignal | undefined;
        if (unary.waits) {
          const ac = new AbortController();
          call.on('cancelled', () => ac.abort());
          signal = ac.signal;
        }
        runUnary(
          ctx,
          stat,
          unary,
          call.request,
          signal,
          cb as (err: Error | null, res?: object) => void,
          call,
        );
      };
    }
  }
  return out;
}
