import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { parseHostPort } from '../config/index.js';
import { checkBearer } from '../admin.js';
import {
  EdgeError,
  HttpBusyError,
  InternalError,
  LengthRequiredError,
  MalformedRequestError,
  MethodNotAllowedError,
  PermissionDeniedError,
  RequestTooLargeError,
  RouteNotFoundError,
  UnauthenticatedError,
} from '../errors.js';
import type { Logger } from '../log.js';
import type { HttpRoutes, ReadinessCheck, RouteHandler, RouteOptions } from '../part.js';

type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';

export interface HttpServerOptions {
  logger: Logger;
  registry: Registry;
  /** Largest request body in bytes; default 1 MiB. */
  maxBodyBytes?: number;
  /** Request body bytes (by Content-Length) of all requests being answered at once; default 8 MiB. */
  maxPendingBodyBytes?: number;
  /** Open connections; one more is answered 503 and closed; default 256. */
  maxConnections?: number;
  /** A connection on which nothing moves for this long is closed (a reader that stopped reading too); default 60 s. */
  idleTimeoutMs?: number;
  /** Wait this long for in-flight requests at close before cutting connections; default 10 s. */
  closeGraceMs?: number;
  /** Admin routes need this bearer token (see src/admin.ts); without it they are open. */
  adminToken?: { token: string; file: string };
}

interface Route {
  handler: RouteHandler;
  admin: boolean;
}

export interface Readiness {
  ready: boolean;
  /** Check name -> what is wrong, for every failing check. */
  failing: Record<string, string>;
  checks: string[];
}

/** Label value for requests that matched no route, so unknown paths cannot blow up label cardinality. */
const UNMATCHED = 'unmatched';

/**
 * The local HTTP server: exact-path routes, `/healthz`, `/readyz`, `/metrics`, JSON errors
 * `{code, message}` (EdgeError -> its status; anything else 500 without internals), bounded
 * request bodies, per-route request and error counters.
 */
export class HttpServer implements HttpRoutes {
  private readonly routes = new Map<string, Map<Method, Route>>();
  private readonly checks = new Map<string, ReadinessCheck>();
  private readonly server: Server;
  private readonly log: Logger;
  private readonly maxBody: number;
  private readonly maxPending: number;
  private readonly maxConnections: number;
  private readonly graceMs: number;
  /** Request body bytes of the requests being answered. */
  private pendingBytes = 0;
  private connections = 0;
  private readonly requests: Counter<'method' | 'route' | 'status'>;
  private readonly errors: Counter<'route' | 'code'>;
  private readonly duration: Histogram<'route'>;
  private closing = false;

  constructor(private readonly opts: HttpServerOptions) {
    this.log = opts.logger.child({ part: 'http' });
    this.maxBody = opts.maxBodyBytes ?? 1024 * 1024;
    this.maxPending = opts.maxPendingBodyBytes ?? 8 * 1024 * 1024;
    this.maxConnections = opts.maxConnections ?? 256;
    this.graceMs = opts.closeGraceMs ?? 10_000;
    this.requests = new Counter({
      name: 'edgekeeper_http_requests_total',
      help: 'HTTP requests by method, route (the registered path, or "unmatched") and status',
      labelNames: ['method', 'route', 'status'],
      registers: [opts.registry],
    });
    this.errors = new Counter({
      name: 'edgekeeper_http_errors_total',
      help: 'HTTP requests answered with an error, by route and error code',
      labelNames: ['route', 'code'],
      registers: [opts.registry],
    });
    this.duration = new Histogram({
      name: 'edgekeeper_http_request_duration_seconds',
      help: 'Time from request to the end of the response, by route',
      labelNames: ['route'],
      buckets: [0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10],
      registers: [opts.registry],
    });
    const counts = () => ({ connections: this.connections, pending: this.pendingBytes });
    new Gauge({
      name: 'edgekeeper_http_connections',
      help: 'Open HTTP connections (bounded by http.maxConnections)',
      registers: [opts.registry],
      collect() {
        this.set(counts().connections);
      },
    });
    new Gauge({
      name: 'edgekeeper_http_pending_body_bytes',
      help: 'Request body bytes of the requests being answered (bounded by http.maxPendingBodyBytes)',
      registers: [opts.registry],
      collect() {
        this.set(counts().pending);
      },
    });
    this.server = createServer((req, res) => {
      void this.dispatch(req, res);
    });
    // Tight limits: this is a local admin/metrics endpoint, never a public server.
    this.server.headersTimeout = 10_000;
    this.server.requestTimeout = 30_000;
    this.server.maxHeadersCount = 64;
    this.server.timeout = opts.idleTimeoutMs ?? 60_000;
    // connections over the limit get a 503 (below); this is the backstop for a flood of them
    this.server.maxConnections = this.maxConnections + 64;
    this.server.on('connection', (socket) => {
      this.connections++;
      socket.once('close', () => this.connections--);
      if (this.connections <= this.maxConnections) return;
      const err = new HttpBusyError(`${this.maxConnections} connections (http.maxConnections)`);
      this.errors.inc({ route: UNMATCHED, code: err.code });
      const body = JSON.stringify({ code: err.code, message: err.message });
      socket.end(
        `HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
      );
    });
    this.server.on('clientError', (err, socket) => {
      this.errors.inc({ route: UNMATCHED, code: new MalformedRequestError(err.message).code });
      this.log.debug({ err: err.message }, 'malformed HTTP request; connection closed');
      if (socket.writable)
        socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      else socket.destroy();
    });

    this.add('GET', '/healthz', (_req, res) => sendJson(res, 200, { status: 'alive' }));
    this.add('GET', '/readyz', (_req, res) => {
      const r = this.readiness();
      sendJson(
        res,
        r.ready ? 200 : 503,
        r.ready ? { status: 'ready', checks: r.checks } : { status: 'not ready', failing: r.failing },
      );
    });
    this.add('GET', '/metrics', async (_req, res) => {
      const text = await this.opts.registry.metrics();
      res.writeHead(200, { 'content-type': this.opts.registry.contentType, 'cache-control': 'no-store' });
      res.end(text);
    });
  }

  add(method: Method, path: string, handler: RouteHandler, opts: RouteOptions = {}): void {
    if (!path.startsWith('/')) throw new Error(`route path must start with "/": ${path}`);
    let byMethod = this.routes.get(path);
    if (!byMethod) {
      byMethod = new Map();
      this.routes.set(path, byMethod);
    }
    if (byMethod.has(method)) throw new Error(`route ${method} ${path} is registered twice`);
    byMethod.set(method, { handler, admin: opts.admin === true });
  }

  addReadinessCheck(name: string, check: ReadinessCheck): void {
    if (this.checks.has(name)) throw new Error(`readiness check ${name} is registered twice`);
    this.checks.set(name, check);
  }

  /** Runs every readiness check now. A check that throws counts as failing with its message. */
  readiness(): Readiness {
    const failing: Record<string, string> = {};
    if (this.closing) failing.shutdown = 'the daemon is shutting down';
    for (const [name, check] of this.checks) {
      try {
        const problem = check();
        if (problem !== undefined) failing[name] = problem;
      } catch (err) {
        failing[name] = `check failed: ${(err as Error).message}`;
      }
    }
    return { ready: Object.keys(failing).length === 0, failing, checks: [...this.checks.keys()] };
  }

  /** Listens on "HOST:PORT" (port 0 picks a free one); resolves with the bound address. */
  listen(hostPort: string): Promise<{ host: string; port: number }> {
    const hp = parseHostPort(hostPort);
    if (!hp) return Promise.reject(new Error(`not HOST:PORT: ${hostPort}`));
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.server.once('error', onError);
      this.server.listen({ host: hp.host, port: hp.port }, () => {
        this.server.off('error', onError);
        const a = this.server.address() as AddressInfo;
        resolve({ host: a.address, port: a.port });
      });
    });
  }

  /** The bound address, or undefined before listen. */
  address(): { host: string; port: number } | undefined {
    const a = this.server.address();
    return a && typeof a === 'object' ? { host: a.address, port: a.port } : undefined;
  }

  /**
   * Stops accepting connections, lets in-flight requests finish (up to the grace period), then
   * cuts what is left. Readiness fails from the first moment so a load balancer stops sending.
   */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (!this.server.listening) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => this.server.closeAllConnections(), this.graceMs);
      timer.unref();
      this.server.close(() => {
        clearTimeout(timer);
        resolve();
      });
      this.server.closeIdleConnections();
    });
  }

  private async dispatch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = performance.now();
    let route = UNMATCHED;
    res.on('finish', () => {
      this.requests.inc({ method: req.method ?? '', route, status: String(res.statusCode) });
      this.duration.observe({ route }, (performance.now() - started) / 1000);
    });
    try {
      // The host part is irrelevant (exact-path routing); a fixed base keeps hostile Host headers out.
      const url = new URL(req.url ?? '/', 'http://localhost');
      const byMethod = this.routes.get(url.pathname);
      if (!byMethod) throw new RouteNotFoundError(url.pathname);
      route = url.pathname;
      // HEAD is GET without a body; node's ServerResponse drops the body for HEAD itself.
      const method = (req.method === 'HEAD' ? 'GET' : req.method) as Method;
      const r = byMethod.get(method);
      if (!r) {
        const allow: string[] = [...byMethod.keys()];
        if (allow.includes('GET')) allow.push('HEAD');
        throw new MethodNotAllowedError(req.method ?? '', url.pathname, allow);
      }
      if (r.admin) this.checkToken(req);
      const size = this.checkBody(req);
      this.pendingBytes += size;
      res.once('close', () => (this.pendingBytes -= size));
      await r.handler(req, res, url);
    } catch (err) {
      this.fail(req, res, route, err);
    }
  }

  /**
   * Bodies are bounded before anything reads them: Content-Length over the limit is 413, and a
   * chunked body (no length to check up front) is refused with 411.
   */
  private checkBody(req: IncomingMessage): number {
    const te = req.headers['transfer-encoding'];
    if (te !== undefined) throw new LengthRequiredError();
    const cl = req.headers['content-length'];
    if (cl === undefined) return 0;
    const n = Number(cl);
    if (n > this.maxBody) throw new RequestTooLargeError(n, this.maxBody);
    // bodies being read at once share one budget, so many connections cannot each hold the most
    if (n > 0 && this.pendingBytes + n > this.maxPending)
      throw new HttpBusyError(`${this.maxPending} request body bytes in flight (http.maxPendingBodyBytes)`);
    return n;
  }

  private checkToken(req: IncomingMessage): void {
    const admin = this.opts.adminToken;
    if (!admin) return;
    const auth = req.headers.authorization;
    const r = checkBearer(Array.isArray(auth) ? auth[0] : auth, admin.token);
    if (r === 'missing') throw new UnauthenticatedError(admin.file);
    if (r === 'wrong') throw new PermissionDeniedError();
  }

  private fail(req: IncomingMessage, res: ServerResponse, route: string, err: unknown): void {
    const edge = err instanceof EdgeError ? err : undefined;
    const shown = edge ?? new InternalError();
    this.errors.inc({ route, code: shown.code });
    if (edge) {
      this.log.debug({ route, method: req.method, code: edge.code, status: edge.status }, edge.message);
    } else {
      this.log.error({ route, method: req.method, err }, 'HTTP handler failed unexpectedly; answered 500');
    }
    if (res.headersSent) {
      // Too late for a JSON error: cut the response so the client sees it is incomplete.
      res.destroy();
      return;
    }
    const headers: Record<string, string> = {};
    const body: Record<string, unknown> = { code: shown.code, message: shown.message };
    if (err instanceof MethodNotAllowedError) headers.allow = err.allow.join(', ');
    if (err instanceof UnauthenticatedError) {
      headers['www-authenticate'] = 'Bearer realm="edgekeeper"';
      // where the token is: not a secret, the file's permissions are (src/admin.ts)
      body.tokenFile = err.tokenFile;
    }
    if (err instanceof HttpBusyError) headers['retry-after'] = '1';
    // The unread body would otherwise be parsed as the next request on a kept-alive connection.
    if ([401, 403, 411, 413, 503].includes(shown.status)) headers.connection = 'close';
    sendJson(res, shown.status, body, headers);
  }
}

export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(text);
}
