/**
 * Test harness for the probes part: a real store (SQLite in a temp dir) with the probes
 * migrations, a prom-client registry, and a minimal local HTTP server serving the routes the part
 * registers plus /metrics, the way the daemon does.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { type Clock, systemClock } from '../../../src/clock.js';
import { silentLogger } from '../../../src/log.js';
import type { PartContext, RouteHandler } from '../../../src/part.js';
import { createProbesPart, type ProbesOptions, probesMigrations } from '../../../src/probes/index.js';
import type { ProbesPart } from '../../../src/probes/part.js';
import { openStore } from '../../../src/store/index.js';
import type { Store } from '../../../src/store/types.js';

export interface Harness {
  part: ProbesPart;
  store: Store;
  registry: Registry;
  ctx: PartContext;
  dir: string;
  /** Serve the part's routes and /metrics on 127.0.0.1:<port>. */
  listen(): Promise<number>;
  metrics(): Promise<string>;
  close(): Promise<void>;
}

export async function makeHarness(options: ProbesOptions, clock: Clock = systemClock): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), 'edgekeeper-probes-'));
  const store = await openStore({
    file: join(dir, 'edgekeeper.db'),
    migrations: probesMigrations,
    inlineWriter: true,
    clock,
    durability: 'relaxed',
  });
  const registry = new Registry();
  const routes = new Map<string, RouteHandler>();
  const ctx: PartContext = {
    store,
    logger: silentLogger(),
    registry,
    clock,
    http: { add: (method, path, handler) => routes.set(`${method} ${path}`, handler) },
    stateDir: dir,
    runtimeDir: dir,
    nodeName: 'test',
    addReadinessCheck: () => {},
  };
  // Samples are stored every second here (60 s by default): tests look for them in the table.
  const part = createProbesPart(ctx, { storeInterval: 1000, ...options });
  let server: Server | undefined;
  return {
    part,
    store,
    registry,
    ctx,
    dir,
    async listen() {
      server = createServer((req, res) => {
        const url = new URL(req.url ?? '/', 'http://x');
        if (url.pathname === '/metrics') {
          void registry.metrics().then((m) => {
            res.writeHead(200, { 'content-type': registry.contentType });
            res.end(m);
          });
          return;
        }
        const h = routes.get(`${req.method} ${url.pathname}`);
        if (!h) {
          res.writeHead(404).end();
          return;
        }
        void h(req, res, url);
      });
      await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
      return (server.address() as AddressInfo).port;
    },
    metrics: () => registry.metrics(),
    async close() {
      await part.stop();
      await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Value of one sample line in Prometheus text, e.g. metricValue(text, 'x_count', '') . */
export function metricValue(text: string, name: string, labels = ''): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const sp = line.lastIndexOf(' ');
    const key = line.slice(0, sp);
    if (key === (labels ? `${name}{${labels}}` : name)) return Number(line.slice(sp + 1));
  }
  return undefined;
}

/** Polls `fn` until it returns a truthy value; fails with `what` after `ms`. */
export async function waitFor<T>(
  what: string,
  fn: () => T | Promise<T>,
  ms = 15_000,
  explain?: () => unknown,
): Promise<NonNullable<T>> {
  const end = Date.now() + ms;
  let last: T | undefined;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last as NonNullable<T>;
    await new Promise((r) => setTimeout(r, 100));
  }
  // `explain` says what the state was, so a failure shows the numbers it waited on.
  const why = explain ? await explain() : last;
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(why)})`);
}

const ROOT = join(import.meta.dirname, '..', '..', '..');

/** Runs the stand-in daemon (test/probes/helpers/daemon-child.ts) and returns its HTTP port. */
export async function startDaemonChild(
  opts: object,
  wrap: string[] = [],
): Promise<{ child: ChildProcess; port: number }> {
  const args = ['--import', 'tsx', join(ROOT, 'test/probes/helpers/daemon-child.ts'), JSON.stringify(opts)];
  const child = wrap.length
    ? spawn(wrap[0]!, [...wrap.slice(1), process.execPath, ...args], {
        stdio: ['ignore', 'pipe', 'inherit'],
        cwd: ROOT,
      })
    : spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'], cwd: ROOT });
  const port = await new Promise<number>((resolve, reject) => {
    let buf = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (c: string) => {
      buf += c;
      const nl = buf.indexOf('\n');
      if (nl >= 0) resolve(JSON.parse(buf.slice(0, nl)).port);
    });
    child.on('exit', (code) => reject(new Error(`daemon child exited with ${code} before listening`)));
  });
  return { child, port };
}
