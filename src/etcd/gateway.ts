/**
 * etcd's JSON gateway on the client port: the routes etcd 3.4 serves (its grpc-gateway, `/v3/...`
 * and the same under `/v3beta/...`), `/version`, `/health` and `/metrics`. Each route calls the
 * same method implementation gRPC calls (rpc.ts); only the encoding differs (json.ts).
 *
 * What a client sees follows etcd 3.4 as Debian builds it (grpc-gateway 1.6): every response
 * carries etcd's CORS headers and OPTIONS answers 200; a unary answer is one JSON object; an
 * error is `{"error": m, "message": m, "code": grpcCode}` with grpc-gateway's HTTP status for
 * the code; a stream is one `{"result": {...}}` line per message, its headers sent with the
 * first one; an error in a stream is a last `{"error": {...}}` object. A bad request body is
 * INVALID_ARGUMENT (400) with Go's own error text; a bad first message of a bidirectional
 * stream is 500 (etcd's gateway reports it without a gRPC code); a bad later message stops
 * reading the body, as if it had ended there. Unknown /v3 paths answer "Not Found", other
 * unknown paths "404 page not found", a route with the wrong method "Method Not Allowed".
 *
 * Bounds: one request message is at most `maxBodyBytes` of JSON (larger: 429, counted); all
 * request bodies being read at once share `maxBodyBytes * 8`; a stream's client that stops
 * reading is handled by the services' own stream bounds (a watcher then falls behind and is
 * cancelled with a reason).
 */
import { EventEmitter } from 'node:events';
import { type IncomingMessage, STATUS_CODES, type ServerResponse } from 'node:http';
import { Counter, type Registry } from 'prom-client';
import type * as Protobuf from 'protobufjs';
import { ALARM_NAMES } from './alarms.js';
import type { EtcdContext } from './context.js';
import { Code, type GrpcStatusError, grpcError, toGrpcError } from './errors.js';
import { goString, JsonEofError, JsonInputError, messageJson, readJson, toMessage } from './json.js';
import type { MethodStat } from './metrics.js';
import { grpcType, protoRoot } from './proto.js';
import {
  type Methods,
  type Msg,
  runUnary,
  type StreamCall,
  type StreamHandler,
  trackStream,
  type Unary,
} from './rpc.js';

/** etcd 3.4's gateway routes (after `/v3/`) and the RPC each one calls. */
const ROUTES = new Map<string, [string, string]>(
  Object.entries({
    'kv/range': ['etcdserverpb.KV', 'Range'],
    'kv/put': ['etcdserverpb.KV', 'Put'],
    'kv/deleterange': ['etcdserverpb.KV', 'DeleteRange'],
    'kv/txn': ['etcdserverpb.KV', 'Txn'],
    'kv/compaction': ['etcdserverpb.KV', 'Compact'],
    watch: ['etcdserverpb.Watch', 'Watch'],
    'lease/grant': ['etcdserverpb.Lease', 'LeaseGrant'],
    'lease/revoke': ['etcdserverpb.Lease', 'LeaseRevoke'],
    'kv/lease/revoke': ['etcdserverpb.Lease', 'LeaseRevoke'],
    'lease/keepalive': ['etcdserverpb.Lease', 'LeaseKeepAlive'],
    'lease/timetolive': ['etcdserverpb.Lease', 'LeaseTimeToLive'],
    'kv/lease/timetolive': ['etcdserverpb.Lease', 'LeaseTimeToLive'],
    'lease/leases': ['etcdserverpb.Lease', 'LeaseLeases'],
    'kv/lease/leases': ['etcdserverpb.Lease', 'LeaseLeases'],
    'cluster/member/add': ['etcdserverpb.Cluster', 'MemberAdd'],
    'cluster/member/remove': ['etcdserverpb.Cluster', 'MemberRemove'],
    'cluster/member/update': ['etcdserverpb.Cluster', 'MemberUpdate'],
    'cluster/member/list': ['etcdserverpb.Cluster', 'MemberList'],
    'cluster/member/promote': ['etcdserverpb.Cluster', 'MemberPromote'],
    'maintenance/alarm': ['etcdserverpb.Maintenance', 'Alarm'],
    'maintenance/status': ['etcdserverpb.Maintenance', 'Status'],
    'maintenance/defragment': ['etcdserverpb.Maintenance', 'Defragment'],
    // Hash and HashKV share this path in etcd's gateway; the first registered, Hash, answers.
    'maintenance/hash': ['etcdserverpb.Maintenance', 'Hash'],
    'maintenance/snapshot': ['etcdserverpb.Maintenance', 'Snapshot'],
    'maintenance/transfer-leadership': ['etcdserverpb.Maintenance', 'MoveLeader'],
    'auth/enable': ['etcdserverpb.Auth', 'AuthEnable'],
    'auth/disable': ['etcdserverpb.Auth', 'AuthDisable'],
    'auth/authenticate': ['etcdserverpb.Auth', 'Authenticate'],
    'auth/user/add': ['etcdserverpb.Auth', 'UserAdd'],
    'auth/user/get': ['etcdserverpb.Auth', 'UserGet'],
    'auth/user/list': ['etcdserverpb.Auth', 'UserList'],
    'auth/user/delete': ['etcdserverpb.Auth', 'UserDelete'],
    'auth/user/changepw': ['etcdserverpb.Auth', 'UserChangePassword'],
    'auth/user/grant': ['etcdserverpb.Auth', 'UserGrantRole'],
    'auth/user/revoke': ['etcdserverpb.Auth', 'UserRevokeRole'],
    'auth/role/add': ['etcdserverpb.Auth', 'RoleAdd'],
    'auth/role/get': ['etcdserverpb.Auth', 'RoleGet'],
    'auth/role/list': ['etcdserverpb.Auth', 'RoleList'],
    'auth/role/delete': ['etcdserverpb.Auth', 'RoleDelete'],
    'auth/role/grant': ['etcdserverpb.Auth', 'RoleGrantPermission'],
    'auth/role/revoke': ['etcdserverpb.Auth', 'RoleRevokePermission'],
    'lock/lock': ['v3lockpb.Lock', 'Lock'],
    'lock/unlock': ['v3lockpb.Lock', 'Unlock'],
    'election/campaign': ['v3electionpb.Election', 'Campaign'],
    'election/proclaim': ['v3electionpb.Election', 'Proclaim'],
    'election/leader': ['v3electionpb.Election', 'Leader'],
    'election/observe': ['v3electionpb.Election', 'Observe'],
    'election/resign': ['v3electionpb.Election', 'Resign'],
  }) as [string, [string, string]][],
);

/** grpc-gateway 1.6's HTTP status for each gRPC code (FAILED_PRECONDITION is 412 there). */
const HTTP_STATUS = [200, 408, 500, 400, 504, 404, 409, 403, 429, 412, 409, 400, 501, 500, 503, 500, 401];

const CORS = {
  'Access-Control-Allow-Methods': 'POST, GET, OPTIONS, PUT, DELETE',
  'Access-Control-Allow-Origin': '*',
  'Access-Control-Allow-Headers': 'accept, content-type, authorization',
};

/** How many bodies of the largest size may be read at once, all requests together. */
const BODY_BUDGET_FACTOR = 8;

export interface GatewayOptions {
  ctx: EtcdContext;
  /** The methods of every service, as the gRPC server registered them. */
  services: Map<string, Methods>;
  /** Largest request message the gRPC server takes (etcd's max-request-bytes plus gRPC's overhead). */
  maxMessageBytes: number;
  /** The daemon's registry, served at /metrics. */
  registry?: Registry;
}

interface Route {
  service: string;
  name: string;
  method: Protobuf.Method;
  impl: Unary | StreamHandler | undefined;
  stat: MethodStat;
}

export class Gateway {
  private readonly routes = new Map<string, Route>();
  private readonly maxBodyBytes: number;
  private bodyBytes = 0;
  private readonly requests: Counter<'path' | 'status'>;
  /** /health answers (etcd_server_health_success / _failures). */
  readonly health = { success: 0, failures: 0 };

  constructor(private readonly opts: GatewayOptions) {
    // A JSON body carries bytes in base64 (4/3) plus field names; twice the message limit
    // leaves room for that, and anything larger could not fit the message limit anyway.
    this.maxBodyBytes = opts.maxMessageBytes * 2;
    this.requests = new Counter({
      name: 'edgekeeper_etcd_gateway_requests_total',
      help: 'HTTP requests on the etcd client port (JSON gateway, /version, /health, /metrics) by route and HTTP status',
      labelNames: ['path', 'status'],
      registers: opts.registry ? [opts.registry] : [],
    });
  }

  /** The HTTP/1 server's request handler; nothing a request does may throw out of it. */
  handle = (req: IncomingMessage, res: ServerResponse): void => {
    this.guard(req, res, () => this.serve(req, res));
  };

  /** Run `fn`; an unexpected exception ends this request (500, logged), never the process. */
  private guard(req: IncomingMessage, res: ServerResponse, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.opts.ctx.logger.error({ err, url: req.url }, 'etcd gateway request failed');
      if (!res.headersSent)
        jsonError(res, grpcError(Code.INTERNAL, 'edgekeeper: internal error; the log has the details'));
      else res.destroy();
    }
  }

  private serve(req: IncomingMessage, res: ServerResponse): void {
    let path = (req.url ?? '/').split('?')[0]!;
    try {
      path = decodeURIComponent(path);
    } catch {
      // Go keeps an undecodable path as it is; it then matches no route.
    }
    if (path.startsWith('/v3beta/')) path = `/v3/${path.slice(8)}`;
    for (const [k, v] of Object.entries(CORS)) res.setHeader(k, v);
    let counted = 'unmatched';
    res.on('close', () => this.requests.inc({ path: counted, status: String(res.statusCode) }));
    if (req.method === 'OPTIONS') {
      res.writeHead(200, { 'Content-Length': '0' }).end();
      return;
    }
    const clean = cleanPath(path);
    if (clean !== path) {
      // Go's ServeMux redirects to the clean path.
      res.writeHead(301, { Location: clean }).end();
      return;
    }
    if (path === '/version' || path === '/health' || path === '/metrics') {
      counted = path;
      if (path === '/metrics') {
        this.metrics(res);
        return;
      }
      if (req.method !== 'GET') {
        res.setHeader('Allow', 'GET');
        plainError(res, 405, 'Method Not Allowed');
        return;
      }
      if (path === '/version') this.version(res);
      else this.healthCheck(res, new URL(req.url ?? '/', 'http://x').searchParams.getAll('exclude'));
      return;
    }
    if (path === '/v3') {
      res.writeHead(301, { Location: '/v3/' }).end();
      return;
    }
    if (!path.startsWith('/v3/')) {
      plainError(res, 404, '404 page not found');
      return;
    }
    const route = this.route(path.slice(4));
    if (!route) {
      plainError(res, 404, 'Not Found');
      return;
    }
    counted = path;
    if (req.method !== 'POST') {
      plainError(res, 405, 'Method Not Allowed');
      return;
    }
    if (!route.impl) {
      jsonError(
        res,
        grpcError(
          Code.UNIMPLEMENTED,
          `The server does not implement the method /${route.service}/${route.name}`,
        ),
      );
      return;
    }
    if (route.method.requestStream) this.bidi(route, req, res);
    else this.withBody(req, res, (body) => this.single(route, req, res, body));
  }

  /** The route for a path after `/v3/` (only etcd's routes are looked up and cached). */
  private route(rest: string): Route | null {
    const target = ROUTES.get(rest);
    if (!target) return null;
    const cached = this.routes.get(rest);
    if (cached) return cached;
    const [service, name] = target;
    const method = protoRoot().lookupService(service).methods[name];
    method?.resolve();
    const r: Route = method
      ? {
          service,
          name,
          method,
          impl: this.opts.services.get(service)?.[name],
          stat: this.opts.ctx.metrics.method(service, name, grpcType(method)),
        }
      : // A route of etcd's whose RPC our protos do not declare: answered UNIMPLEMENTED.
        { service, name, method: undefined as never, impl: undefined, stat: undefined as never };
    this.routes.set(rest, r);
    return r;
  }

  /** Read a whole request body within the bounds, then `then(body)`. */
  private withBody(req: IncomingMessage, res: ServerResponse, then: (body: Buffer) => void): void {
    const chunks: Buffer[] = [];
    let size = 0;
    let refused = false;
    const release = () => {
      this.bodyBytes -= size;
      size = 0;
    };
    req.on('data', (c: Buffer) => {
      if (refused) return;
      size += c.length;
      this.bodyBytes += c.length;
      if (size > this.maxBodyBytes || this.bodyBytes > this.maxBodyBytes * BODY_BUDGET_FACTOR) {
        refused = true;
        const tooBig = size > this.maxBodyBytes;
        release();
        chunks.length = 0;
        this.opts.ctx.metrics.badInput.inc({ kind: tooBig ? 'gateway_body_too_large' : 'gateway_busy' });
        jsonError(
          res,
          grpcError(
            Code.RESOURCE_EXHAUSTED,
            tooBig
              ? `edgekeeper: request body larger than ${this.maxBodyBytes} bytes`
              : 'etcdserver: too many requests',
          ),
        );
        // Read the rest and throw it away, so the answer reaches a client still sending.
        req.resume();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      if (refused) return;
      const body = Buffer.concat(chunks);
      release();
      this.guard(req, res, () => then(body));
    });
    req.on('close', () => {
      if (size) release();
    });
  }

  /** Decode one request message; an error is INVALID_ARGUMENT with Go's text, as etcd's gateway says. */
  private decode(route: Route, body: Buffer): Msg {
    try {
      const r = readJson(body, 0, 'stream');
      return toMessage(route.method.resolvedRequestType!, r ? r.node : null) as Msg;
    } catch (e) {
      if (e instanceof JsonInputError) {
        this.opts.ctx.metrics.badInput.inc({ kind: 'gateway_json' });
        throw grpcError(Code.INVALID_ARGUMENT, e.message);
      }
      throw e;
    }
  }

  /** gRPC's own limit on a request message (etcd's gateway forwards the body over gRPC). */
  private checkSize(route: Route, msg: Msg): void {
    const size = route.method.resolvedRequestType!.encode(msg as unknown as Protobuf.Message).finish().length;
    if (size > this.opts.maxMessageBytes) {
      this.opts.ctx.metrics.badInput.inc({ kind: 'gateway_message_too_large' });
      throw grpcError(
        Code.RESOURCE_EXHAUSTED,
        `grpc: received message larger than max (${size} vs. ${this.opts.maxMessageBytes})`,
      );
    }
  }

  /** A unary or server-streaming call: one request message in the body. */
  private single(route: Route, req: IncomingMessage, res: ServerResponse, body: Buffer): void {
    let msg: Msg;
    try {
      msg = this.decode(route, body);
      this.checkSize(route, msg);
    } catch (e) {
      jsonError(res, toGrpcError(e));
      return;
    }
    route.stat.received++;
    const resType = route.method.resolvedResponseType!;
    if (route.method.responseStream) {
      const call = new GatewayStream(req, res, resType, route.stat, msg);
      trackStream(route.stat, call);
      (route.impl as StreamHandler)(call);
      return;
    }
    const impl = route.impl as Unary;
    let signal: AbortSignal | undefined;
    if (impl.waits) {
      const ac = new AbortController();
      res.on('close', () => {
        if (!res.writableEnded) ac.abort();
      });
      signal = ac.signal;
    }
    runUnary(
      this.opts.ctx,
      route.stat,
      impl,
      msg,
      signal,
      (err, out) => this.guard(req, res, () => this.answer(res, resType, route.stat, err, out)),
      // Only the headers: etcd's gateway never passes the HTTP client's certificate on as a user.
      { headers: req.headers },
    );
  }

  private answer(
    res: ServerResponse,
    resType: Protobuf.Type,
    stat: MethodStat,
    err: GrpcStatusError | null,
    out: object | undefined,
  ): void {
    if (res.destroyed) return;
    if (err) {
      jsonError(res, err);
      return;
    }
    stat.sent++;
    const json = messageJson(resType, out as Record<string, unknown>);
    res.writeHead(200, {
      'Content-Type': 'application/json',
      'Grpc-Metadata-Content-Type': 'application/grpc',
      'Content-Length': Buffer.byteLength(json),
    });
    res.end(json);
  }

  /** A bidirectional stream (Watch, LeaseKeepAlive): the body is a stream of request objects. */
  private bidi(route: Route, req: IncomingMessage, res: ServerResponse): void {
    let buf: Buffer = Buffer.alloc(0);
    let call: GatewayStream | undefined;
    let reading = true;
    const stopReading = () => {
      reading = false;
      buf = Buffer.alloc(0);
      // The client's side of the stream ends here, as when etcd's gateway stops forwarding.
      if (call) call.emit('end');
      else {
        // No request came at all: the call runs with no message (a keep-alive stream then ends).
        call = this.startBidi(route, req, res);
        call.emit('end');
      }
    };
    const bad = (e: unknown) => {
      this.opts.ctx.metrics.badInput.inc({ kind: 'gateway_json' });
      if (!call) {
        // The first message: etcd's gateway answers before any stream exists, without a gRPC code.
        reading = false;
        jsonError(res, grpcError(Code.UNKNOWN, e instanceof Error ? e.message : String(e)));
        req.resume();
        return;
      }
      stopReading();
    };
    const pump = (ended: boolean) => {
      while (reading) {
        let r: ReturnType<typeof readJson>;
        try {
          r = readJson(buf, 0, 'stream');
        } catch (e) {
          if (e instanceof JsonEofError && !ended) {
            if (buf.length > this.maxBodyBytes)
              bad(new Error(`edgekeeper: request message larger than ${this.maxBodyBytes} bytes`));
            return;
          }
          bad(e);
          return;
        }
        if (!r) {
          buf = Buffer.alloc(0);
          if (ended) stopReading();
          return;
        }
        buf = buf.subarray(r.end);
        let msg: Msg;
        try {
          msg = toMessage(route.method.resolvedRequestType!, r.node) as Msg;
        } catch (e) {
          bad(e);
          return;
        }
        if (!call) call = this.startBidi(route, req, res);
        route.stat.received++;
        call.emit('data', msg);
      }
    };
    req.on('data', (c: Buffer) => {
      if (!reading) return;
      buf = buf.length ? Buffer.concat([buf, c]) : c;
      this.guard(req, res, () => pump(false));
    });
    req.on('end', () => {
      if (reading) this.guard(req, res, () => pump(true));
    });
  }

  private startBidi(route: Route, req: IncomingMessage, res: ServerResponse): GatewayStream {
    const call = new GatewayStream(req, res, route.method.resolvedResponseType!, route.stat, {} as Msg);
    trackStream(route.stat, call);
    (route.impl as StreamHandler)(call);
    return call;
  }

  private version(res: ServerResponse): void {
    const [major, minor] = this.opts.ctx.version.split('.');
    const body = JSON.stringify({ etcdserver: this.opts.ctx.version, etcdcluster: `${major}.${minor}.0` });
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  }

  /** etcd's /health: false while an alarm not in `exclude` is raised or the store cannot be read. */
  private healthCheck(res: ServerResponse, exclude: string[]): void {
    const { alarms, store } = this.opts.ctx;
    const answer = (ok: boolean) => {
      const body = JSON.stringify({ health: String(ok) });
      if (ok) {
        this.health.success++;
        res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': body.length });
        res.end(body);
      } else {
        this.health.failures++;
        plainError(res, 503, body);
      }
    };
    alarms.sync().then(
      () => {
        for (const a of alarms.list())
          if (!exclude.includes(ALARM_NAMES[a.alarm] ?? String(a.alarm))) return answer(false);
        try {
          store.range({ key: Buffer.from('health') });
        } catch {
          return answer(false);
        }
        answer(true);
      },
      () => answer(false),
    );
  }

  private metrics(res: ServerResponse): void {
    const registry = this.opts.registry;
    if (!registry) {
      plainError(res, 404, '404 page not found');
      return;
    }
    registry.metrics().then(
      (text) => {
        res.writeHead(200, { 'Content-Type': registry.contentType });
        res.end(text);
      },
      (err: unknown) => plainError(res, 500, String(err)),
    );
  }
}

/** Go's http.Error: the text and a newline, as text/plain. */
function plainError(res: ServerResponse, status: number, text: string): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  const body = `${text}\n`;
  res.writeHead(status, {
    'Content-Type': 'text/plain; charset=utf-8',
    'X-Content-Type-Options': 'nosniff',
    'Content-Length': Buffer.byteLength(body),
  });
  res.end(body);
}

/** grpc-gateway's error body and HTTP status for a gRPC status. */
function jsonError(res: ServerResponse, e: GrpcStatusError): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  const status = HTTP_STATUS[e.code] ?? 500;
  const msg = e.details ? `"error":${goString(e.details)},"message":${goString(e.details)}` : '';
  const body = `{${msg}${msg && e.code ? ',' : ''}${e.code ? `"code":${e.code}` : ''}}`;
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

/** A stream's final error object (grpc-gateway's StreamError). */
function errorChunk(e: GrpcStatusError): string {
  const http = HTTP_STATUS[e.code] ?? 500;
  const message = e.details ? `,"message":${goString(e.details)}` : '';
  return `{"error":{"grpc_code":${e.code},"http_code":${http}${message},"http_status":${goString(STATUS_CODES[http] ?? '')}}}`;
}

/** Go's path.Clean for a URL path, keeping a trailing slash (what ServeMux redirects to). */
function cleanPath(p: string): string {
  if (!p.includes('//') && !p.includes('/.')) return p;
  const out: string[] = [];
  for (const part of p.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') out.pop();
    else out.push(part);
  }
  let clean = `/${out.join('/')}`;
  if (p.endsWith('/') && clean !== '/') clean += '/';
  return clean;
}

/**
 * A streaming call over an HTTP response: what the services' stream handlers use of a grpc-js
 * call (StreamCall). `writableLength` counts messages written and not yet flushed to the
 * socket, so the services' stream bounds hold as they do over gRPC.
 */
class GatewayStream extends EventEmitter implements StreamCall {
  private queued = 0;
  private done = false;

  constructor(
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
    private readonly resType: Protobuf.Type,
    private readonly stat: MethodStat,
    readonly request: Msg,
  ) {
    super();
    this.on('error', (e: Error) => this.fail(e));
    res.on('drain', () => this.emit('drain'));
    res.on('close', () => {
      if (!this.done) {
        this.done = true;
        this.emit('cancelled');
      }
      this.emit('close');
    });
  }

  get writableLength(): number {
    return this.queued;
  }

  /** The request's headers (auth reads `Authorization`). */
  get headers(): IncomingMessage['headers'] {
    return this.req.headers;
  }

  write(msg: object, cb?: () => void): boolean {
    if (this.done) return false;
    this.head();
    this.stat.sent++;
    this.queued++;
    return this.res.write(`{"result":${messageJson(this.resType, msg as Record<string, unknown>)}}\n`, () => {
      this.queued--;
      cb?.();
    });
  }

  end(): void {
    if (this.done) return;
    this.done = true;
    // A stream that ends without a message has no gRPC headers to forward (etcd's gateway).
    if (!this.res.headersSent) this.res.writeHead(200, { 'Content-Type': 'application/json' });
    this.res.end();
    this.emit('finish');
  }

  pause(): void {
    this.req.pause();
  }

  resume(): void {
    this.req.resume();
  }

  private head(): void {
    if (this.res.headersSent) return;
    this.res.writeHead(200, {
      'Content-Type': 'application/json',
      'Grpc-Metadata-Content-Type': 'application/grpc',
    });
  }

  private fail(e: Error): void {
    if (this.done) return;
    this.done = true;
    const err = toGrpcError(e);
    if (!this.res.headersSent)
      this.res.writeHead(HTTP_STATUS[err.code] ?? 500, { 'Content-Type': 'application/json' });
    this.res.end(errorChunk(err));
  }
}
