/**
 * Shared pieces of the sync tests: a node store with the source tables (schemas as the common
 * brief states them, created here because ingest and probes are separate parts), a PartContext
 * without the daemon, record writers that go through store.write as ingest would, a fault
 * injecting HTTP proxy, and polling.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, request, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { type Clock, systemClock } from '../../src/clock.js';
import { silentLogger } from '../../src/log.js';
import type { PartContext, RouteHandler } from '../../src/part.js';
import { openStore } from '../../src/store/index.js';
import type { Migration, Store } from '../../src/store/types.js';
import { encodeCbor } from '../../src/sync/codec.js';
import { syncMigrations } from '../../src/sync/index.js';

export const SOURCE_MIGRATIONS: Migration[] = [
  {
    part: 'test-ingest',
    version: 1,
    sql: `CREATE TABLE IF NOT EXISTS reports(id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL,
      received_at INTEGER NOT NULL, ts INTEGER, seq INTEGER, body BLOB NOT NULL)`,
  },
  {
    part: 'test-probes',
    version: 1,
    sql: `CREATE TABLE IF NOT EXISTS probe_samples(id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL,
      probe TEXT NOT NULL, metric TEXT NOT NULL, data BLOB NOT NULL)`,
  },
];

export function tempDir(prefix = 'ek-sync-'): { dir: string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

export async function openNodeStore(
  dir: string,
  opts: { samples?: boolean; clock?: Clock } = {},
): Promise<Store> {
  return openStore({
    file: join(dir, 'edgekeeper.db'),
    durability: 'relaxed',
    migrations: [
      ...syncMigrations,
      SOURCE_MIGRATIONS[0]!,
      ...(opts.samples === false ? [] : [SOURCE_MIGRATIONS[1]!]),
    ],
    clock: opts.clock,
  });
}

export interface TestContext extends PartContext {
  routes: Map<string, RouteHandler>;
  /** The readiness checks parts registered, by name. */
  checks: Map<string, () => string | undefined>;
}

export function makeContext(
  store: Store,
  nodeName: string,
  dir: string,
  clock: Clock = systemClock,
): TestContext {
  const routes = new Map<string, RouteHandler>();
  const readiness = new Map<string, () => string | undefined>();
  return {
    store,
    logger: silentLogger(),
    registry: new Registry(),
    clock,
    http: { add: (method, path, h) => routes.set(`${method} ${path}`, h) },
    stateDir: dir,
    runtimeDir: dir,
    nodeName,
    addReadinessCheck: (name, check) => readiness.set(name, check),
    routes,
    checks: readiness,
  };
}

let deviceSeq = 0;
/** Insert n reports (8 numeric metrics each) as ingest would; returns their ids. */
export async function insertReports(store: Store, n: number, now = Date.now()): Promise<number[]> {
  const rows: unknown[][] = [];
  for (let i = 0; i < n; i++) {
    deviceSeq++;
    const metrics = {
      temp: 20 + (deviceSeq % 100) / 10,
      hum: 40 + (deviceSeq % 13),
      press: 1013.2,
      volt: 3.3,
      count: deviceSeq,
      rpm: 1200,
      load: deviceSeq % 7,
      mode: 1,
    };
    rows.push([
      `dev-${deviceSeq % 5}`,
      now,
      now - 10,
      deviceSeq,
      encodeCbor({ metrics, ...(i % 10 === 0 ? { tags: { site: 'a' } } : {}) }),
    ]);
  }
  const res = await store.write({
    sql: [{ sql: 'INSERT INTO reports (device, received_at, ts, seq, body) VALUES (?, ?, ?, ?, ?)', rows }],
  });
  const last = res.sql[0]!.lastInsertRowid;
  return Array.from({ length: n }, (_, i) => last - n + 1 + i);
}

export async function insertSamples(store: Store, n: number, now = Date.now()): Promise<void> {
  const rows: unknown[][] = [];
  for (let i = 0; i < n; i++)
    rows.push([now, 'fsync', 'latency_us', encodeCbor({ p50: 120 + i, p99: 900, count: 10 })]);
  await store.write({
    sql: [{ sql: 'INSERT INTO probe_samples (ts, probe, metric, data) VALUES (?, ?, ?, ?)', rows }],
  });
}

export async function insertEvents(store: Store, n: number, now = Date.now()): Promise<void> {
  const rows: unknown[][] = [];
  for (let i = 0; i < n; i++)
    rows.push([now, i % 2 ? 'device.online' : 'device.offline', `dev-${i}`, JSON.stringify({ i })]);
  await store.write({
    sql: [{ sql: 'INSERT INTO events (ts, kind, subject, data) VALUES (?, ?, ?, ?)', rows }],
  });
}

export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 60_000,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export type FaultMode =
  | 'pass'
  /** Answer without forwarding. */
  | '500'
  | '429'
  /** Forward, let the receiver store it, then answer 500: the node must resend and get "duplicate". */
  | 'pass-then-500'
  /** Forward half the body, then cut both connections. */
  | 'cut-mid-upload'
  /** Forward, let the receiver store it, then cut the connection to the node. */
  | 'cut-after-store'
  /** Forward, then hold the answer past the node's timeout. */
  | 'delay'
  /** Refuse the connection outright. */
  | 'down';

export interface FaultProxy {
  url: string;
  port: number;
  mode: (req: IncomingMessage) => FaultMode;
  /** Retry-After sent with injected 429s. */
  retryAfter: string;
  counts: Map<FaultMode, number>;
  close(): Promise<void>;
}

/** An HTTP proxy in front of the receiver that injects the faults a real network produces. */
export async function startFaultProxy(upstream: string, delayMs = 2000): Promise<FaultProxy> {
  const target = new URL(upstream);
  const sockets = new Set<Socket>();
  const proxy: FaultProxy = {
    url: '',
    port: 0,
    mode: () => 'pass',
    retryAfter: '0',
    counts: new Map(),
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  const forward = (
    req: IncomingMessage,
    body: Buffer,
    onDone: (status: number, headers: Record<string, unknown>, data: Buffer) => void,
    onErr: () => void,
    cutAfter?: number,
  ) => {
    const up = request(
      {
        host: target.hostname,
        port: target.port,
        method: req.method,
        path: req.url,
        headers: { ...req.headers, host: target.host },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          onDone(res.statusCode ?? 502, res.headers as Record<string, unknown>, Buffer.concat(chunks)),
        );
        res.on('error', onErr);
      },
    );
    up.on('error', onErr);
    if (cutAfter !== undefined) {
      up.write(body.subarray(0, cutAfter));
      setTimeout(() => up.destroy(), 20);
    } else up.end(body);
  };
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const m = proxy.mode(req);
      proxy.counts.set(m, (proxy.counts.get(m) ?? 0) + 1);
      const fail = () => res.destroy();
      switch (m) {
        case 'down':
          req.socket.destroy();
          return;
        case '500':
          res.writeHead(500, { 'Content-Type': 'text/plain' }).end('injected failure');
          return;
        case '429':
          res
            .writeHead(429, { 'Retry-After': proxy.retryAfter, 'Content-Type': 'application/json' })
            .end('{"code":"SLOW_DOWN"}');
          return;
        case 'cut-mid-upload':
          forward(
            req,
            body,
            () => {},
            () => {},
            Math.floor(body.length / 2),
          );
          setTimeout(() => req.socket.destroy(), 10);
          return;
        case 'pass-then-500':
          forward(req, body, () => res.writeHead(500).end('lost answer'), fail);
          return;
        case 'cut-after-store':
          forward(req, body, () => req.socket.destroy(), fail);
          return;
        case 'delay':
          forward(
            req,
            body,
            (s, h, d) =>
              setTimeout(() => {
                if (!res.destroyed) res.writeHead(s, h as Record<string, string>).end(d);
              }, delayMs),
            fail,
          );
          return;
        default:
          forward(req, body, (s, h, d) => res.writeHead(s, h as Record<string, string>).end(d), fail);
      }
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  proxy.port = (server.address() as AddressInfo).port;
  proxy.url = `http://127.0.0.1:${proxy.port}`;
  return proxy;
}
