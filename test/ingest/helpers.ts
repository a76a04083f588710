/** Shared set-up for the ingest tests: a real store in a temp dir, a part context, MQTT.js devices. */
import { mkdtempSync, rmSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { Registry } from 'prom-client';
import { type Clock, systemClock } from '../../src/clock.js';
import {
  createIngestPart,
  type IngestOptions,
  type IngestPart,
  ingestDefaults,
  ingestMigrations,
} from '../../src/ingest/index.js';
import { ReportWriter } from '../../src/ingest/writer.js';
import { silentLogger } from '../../src/log.js';
import type { LoadGuard, PartContext, RouteHandler } from '../../src/part.js';
import { openStore } from '../../src/store/index.js';
import type { Store, WatchEvent } from '../../src/store/types.js';

export interface Harness {
  dir: string;
  store: Store;
  registry: Registry;
  part: IngestPart;
  ctx: PartContext;
  routes: Map<string, RouteHandler>;
  port: number;
  url: string;
  close(): Promise<void>;
}

export function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'ek-ingest-'));
}

export async function openTestStore(dir: string, clock: Clock = systemClock): Promise<Store> {
  return openStore({
    file: join(dir, 'edgekeeper.db'),
    migrations: ingestMigrations,
    clock,
    durability: 'relaxed',
  });
}

/** Stop the part and start a fresh one on the same store (a restart of the ingest). */
export async function restartPart(h: Harness, opts: Partial<IngestOptions> = {}): Promise<void> {
  await h.part.stop();
  h.registry = new Registry();
  h.ctx = { ...h.ctx, registry: h.registry };
  h.part = createIngestPart(h.ctx, ingestDefaults({ listen: `127.0.0.1:${h.port}`, ...opts }));
  await h.part.start();
  await h.part.ready();
}

export async function harness(
  opts: Partial<IngestOptions> = {},
  clock: Clock = systemClock,
  existing?: { dir: string },
  /** The SLO guard the part sees (PartContext.slo). */
  slo?: LoadGuard,
): Promise<Harness> {
  const dir = existing?.dir ?? tempDir();
  const store = await openTestStore(dir, clock);
  const registry = new Registry();
  const routes = new Map<string, RouteHandler>();
  const ctx: PartContext = {
    store,
    logger: silentLogger(),
    registry,
    clock,
    http: { add: (m, p, h) => routes.set(`${m} ${p}`, h) },
    stateDir: dir,
    runtimeDir: dir,
    nodeName: 'test',
    addReadinessCheck: () => undefined,
    slo,
  };
  const part = createIngestPart(ctx, ingestDefaults({ listen: '127.0.0.1:0', ...opts }));
  await part.start();
  await part.ready();
  const port = part.addresses()[0]?.port ?? 0;
  const h: Harness = {
    dir,
    store,
    registry,
    part,
    ctx,
    routes,
    port,
    url: `mqtt://127.0.0.1:${port}`,
    async close() {
      // h.part: restartPart replaces the part
      await h.part.stop();
      await store.close();
      if (!existing) rmSync(dir, { recursive: true, force: true });
    },
  };
  return h;
}

/** Call a registered route with a JSON body; returns status and parsed body. */
export async function callRoute(
  h: Harness,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; body: unknown }> {
  const handler = h.routes.get(`${method} ${path.split('?')[0]}`);
  if (!handler) throw new Error(`no route ${method} ${path}`);
  const { Readable } = await import('node:stream');
  const req = Readable.from(
    body === undefined ? [] : [Buffer.from(JSON.stringify(body))],
  ) as unknown as IncomingMessage;
  (req as { method?: string }).method = method;
  let status = 0;
  let text = '';
  const res = {
    writeHead(s: number) {
      status = s;
      return res;
    },
    end(t: string) {
      text = t;
    },
  } as unknown as ServerResponse;
  await handler(req, res, new URL(`http://x${path}`));
  return { status, body: JSON.parse(text) };
}

export async function device(
  url: string,
  id: string,
  password: string | undefined,
  extra: IClientOptions = {},
): Promise<MqttClient> {
  const c = mqtt.connect(url, {
    clientId: id,
    username: id,
    password,
    reconnectPeriod: 0,
    connectTimeout: 5000,
    ...extra,
  });
  await new Promise<void>((resolve, reject) => {
    c.once('connect', () => resolve());
    c.once('error', reject);
    c.once('close', () => reject(new Error('closed before connect')));
  });
  return c;
}

/** Connect expecting a refusal; resolves with the error (CONNACK code in `.code`). */
export async function refused(url: string, opts: IClientOptions): Promise<Error & { code?: number }> {
  const c = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5000, ...opts });
  try {
    return await new Promise((resolve, reject) => {
      c.once('connect', () => reject(new Error('connected but should have been refused')));
      c.once('error', (e) => resolve(e as Error & { code?: number }));
      c.once('close', () => resolve(Object.assign(new Error('closed'), { code: -1 })));
    });
  } finally {
    c.end(true);
  }
}

export function publish(
  c: MqttClient,
  topic: string,
  payload: string | Buffer,
  qos: 0 | 1 = 1,
  extra: Record<string, unknown> = {},
): Promise<void> {
  return new Promise((resolve, reject) =>
    c.publish(topic, payload, { qos, ...extra }, (err) => (err ? reject(err) : resolve())),
  );
}

export function endClient(c: MqttClient, force = false): Promise<void> {
  return new Promise((r) => c.end(force, {}, () => r()));
}

export function reportCount(store: Store, device?: string): number {
  const q =
    device === undefined
      ? store.query<{ n: number }>('SELECT count(*) AS n FROM reports').get()
      : store.query<{ n: number }>('SELECT count(*) AS n FROM reports WHERE device = ?').get(device);
  return q?.n ?? 0;
}

export async function waitFor<T>(fn: () => T | undefined | false, what: string, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Collect watch events under a prefix. */
export function watchPrefix(store: Store, prefix: string): { events: WatchEvent[]; cancel(): void } {
  const key = Buffer.from(prefix);
  const end = Buffer.from(prefix);
  end[end.length - 1]!++;
  const events: WatchEvent[] = [];
  const h = store.watch(
    { key, rangeEnd: end },
    { onEvents: (ev) => events.push(...ev), onCancel: () => undefined },
  );
  return { events, cancel: () => h.cancel() };
}

export async function metricValue(
  registry: Registry,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const m = await registry.getSingleMetric(name)?.get();
  if (!m) return 0;
  let sum = 0;
  for (const v of m.values) {
    if (Object.entries(labels).every(([k, x]) => String((v.labels as Record<string, unknown>)[k]) === x)) {
      if (
        (v as { metricName?: string }).metricName &&
        !(v as { metricName?: string }).metricName!.endsWith('_count') &&
        String(m.type) === 'histogram'
      )
        continue;
      sum += v.value;
    }
  }
  return sum;
}

/** A report writer straight on `store` (no committer, no metrics), de-duplicating over an hour. */
export function writerOn(store: Store, batchMax = 500): ReportWriter {
  return new ReportWriter((b) => store.write({ sql: [b.op] }).then((r) => r.sql[0]?.changes ?? 0), {
    batchMax,
    dedupeWindow: 3_600_000,
  });
}
