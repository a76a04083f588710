/**
 * The ingest benchmark, shared by ingest-100 and ingest-1000: N devices (a child process)
 * publish QoS 1 reports as fast as their in-flight window allows.
 *   1. aedes alone with a subscriber that only counts: the raw delivery rate (the ceiling);
 *   2. edgekeeper's embedded broker (aedes + ack after commit): committed reports/s, the ratio
 *      to (1), publish-to-PUBACK (= publish-to-commit) p50/p99, event-loop delay, RSS;
 *   3. the same at half the ceiling (paced): publish-to-commit p50/p99 and the store's put p99
 *      compared with idle;
 *   4. mosquitto with a counting subscriber: its raw delivery rate;
 *   5. edgekeeper in external mode on that mosquitto: committed reports/s and the ratio to (4).
 * Devices connect anonymously; durability is the store's default (fsync).
 */
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import mqtt from 'mqtt';
import { Registry } from 'prom-client';
import { systemClock } from '../../../src/clock.js';
import {
  createIngestPart,
  ingestDefaults,
  type IngestOptions,
  ingestMigrations,
} from '../../../src/ingest/index.js';
import { silentLogger } from '../../../src/log.js';
import { openStore } from '../../../src/store/index.js';
import type { Store } from '../../../src/store/types.js';
import { tempDir } from '../../ingest/helpers.js';
import { startMosquitto } from '../../ingest/mosquitto.js';

const SECONDS = 4;
// total reports in flight across all devices
const IN_FLIGHT = 1000;
const TOPIC = 'edgekeeper/v1/devices/+/report';

interface LoadResult {
  elapsed: number;
  acked: number;
  sent: number;
  p50: number;
  p99: number;
}

/** Run the device child; `onStart`/`onEnd` fire at its phase markers. */
export function load(
  url: string,
  n: number,
  opts: { rate?: number; onStart?: () => void; onEnd?: () => void },
): Promise<LoadResult> {
  const cfg = {
    url,
    n,
    seconds: SECONDS,
    window: Math.max(1, Math.round(IN_FLIGHT / n)),
    rate: opts.rate,
    prefix: 'b',
  };
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', new URL('./load.ts', import.meta.url).pathname, JSON.stringify(cfg)],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  return new Promise((resolve, reject) => {
    const rl = createInterface({ input: child.stdout! });
    rl.on('line', (line) => {
      const m = JSON.parse(line) as { phase: string } & LoadResult;
      if (m.phase === 'start') opts.onStart?.();
      if (m.phase === 'end') {
        opts.onEnd?.();
        resolve(m);
      }
    });
    child.once('exit', (code) =>
      code === 0 ? undefined : reject(new Error(`load child exited with ${code}`)),
    );
  });
}

async function countingSubscriber(url: string): Promise<{ count: () => number; close: () => Promise<void> }> {
  const c = mqtt.connect(url, { clientId: `counter-${process.pid}`, reconnectPeriod: 0 });
  let n = 0;
  c.on('message', () => n++);
  await new Promise<void>((r, j) => {
    c.once('connect', () => c.subscribe(TOPIC, { qos: 1 }, (e) => (e ? j(e) : r())));
    c.once('error', j);
  });
  return { count: () => n, close: () => new Promise((r) => c.end(true, {}, () => r())) };
}

async function rawRate(url: string, n: number): Promise<number> {
  const sub = await countingSubscriber(url);
  let a = 0;
  let b = 0;
  let t0 = 0;
  let t1 = 0;
  await load(url, n, {
    onStart: () => {
      a = sub.count();
      t0 = performance.now();
    },
    onEnd: () => {
      b = sub.count();
      t1 = performance.now();
    },
  });
  await sub.close();
  return (b - a) / ((t1 - t0) / 1000);
}

interface Node {
  store: Store;
  registry: Registry;
  part: ReturnType<typeof createIngestPart>;
  dir: string;
  close(): Promise<void>;
}

export async function node(opts: Partial<IngestOptions>): Promise<Node> {
  const dir = tempDir();
  const store = await openStore({ file: join(dir, 'edgekeeper.db'), migrations: ingestMigrations });
  const registry = new Registry();
  const part = createIngestPart(
    {
      store,
      logger: silentLogger(),
      registry,
      clock: systemClock,
      http: { add: () => undefined },
      stateDir: dir,
      nodeName: 'bench',
      addReadinessCheck: () => undefined,
    },
    ingestDefaults({
      listen: '127.0.0.1:0',
      allowAnonymous: true,
      ratePerSec: 1e6,
      rateBurst: 1e6,
      maxConnections: 5000,
      ...opts,
    }),
  );
  await part.start();
  await part.ready();
  return {
    store,
    registry,
    part,
    dir,
    async close() {
      await part.stop();
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const rows = (s: Store) => s.query<{ n: number }>('SELECT count(*) AS n FROM reports').get()!.n;

/** p50/p99 of store.put on one key while `during` runs (or for `ms` when idle). */
async function putLatency(
  store: Store,
  until: () => boolean,
): Promise<{ p50: number; p99: number; n: number }> {
  const lat: number[] = [];
  let i = 0;
  while (!until()) {
    const t0 = performance.now();
    await store.put({ key: Buffer.from('/bench/put'), value: Buffer.from(String(i++)) });
    lat.push(performance.now() - t0);
    await new Promise((r) => setTimeout(r, 5));
  }
  lat.sort((a, b) => a - b);
  return {
    p50: lat[Math.floor(lat.length * 0.5)] ?? 0,
    p99: lat[Math.floor(lat.length * 0.99)] ?? 0,
    n: lat.length,
  };
}

function out(o: Record<string, unknown>): void {
  const r: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) r[k] = typeof v === 'number' ? Math.round(v * 100) / 100 : v;
  console.log(JSON.stringify(r));
}

export async function runIngestBench(n: number): Promise<void> {
  // 1. aedes alone
  const { Aedes } = await import('aedes');
  // aedes routes through mqemitter, which works its queue recursively once `concurrency` (100)
  // deliveries are pending: with 1,000 publishers the queue grew to thousands and the stack
  // overflowed. A concurrency above the number of publishers keeps the queue empty.
  // (edgekeeper's embedded broker routes reports to no one, so its queue stays empty.)
  const broker = await Aedes.createBroker({ concurrency: 10_000 });
  const server = net.createServer(broker.handle as (s: net.Socket) => void);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const rawAedes = await rawRate(`mqtt://127.0.0.1:${(server.address() as net.AddressInfo).port}`, n);
  await new Promise<void>((r) => broker.close(() => r()));
  await new Promise<void>((r) => server.close(() => r()));
  out({ bench: 'ingest.raw_delivery', unit: 'msg/s', peer: 'aedes', devices: n, rate: rawAedes });

  // 2. embedded ingest, flat out
  {
    // EK_BATCH overrides mqtt.batchMax to compare batch sizes
    const nd = await node({
      mode: 'embedded',
      ...(process.env.EK_BATCH ? { batchMax: Number(process.env.EK_BATCH) } : {}),
    });
    const url = `mqtt://127.0.0.1:${nd.part.addresses()[0]!.port}`;
    const eld = monitorEventLoopDelay({ resolution: 10 });
    let r0 = 0;
    let r1 = 0;
    let t0 = 0;
    let t1 = 0;
    let rss = 0;
    let loading = true;
    const idle = await putLatency(
      nd.store,
      (() => {
        const end = performance.now() + 1000;
        return () => performance.now() > end;
      })(),
    );
    const during = putLatency(nd.store, () => !loading);
    const res = await load(url, n, {
      onStart: () => {
        r0 = rows(nd.store);
        t0 = performance.now();
        rss = process.memoryUsage().rss;
        eld.enable();
      },
      onEnd: () => {
        r1 = rows(nd.store);
        t1 = performance.now();
        eld.disable();
        loading = false;
      },
    });
    const put = await during;
    const rate = (r1 - r0) / ((t1 - t0) / 1000);
    out({
      bench: 'ingest.embedded',
      unit: 'reports/s',
      peer: 'aedes',
      devices: n,
      rate,
      ratio: rate / rawAedes,
      p50: res.p50,
      p99: res.p99,
      latency: 'publish-to-PUBACK ms (PUBACK follows the commit)',
      eventLoopDelayP99Ms: eld.percentile(99) / 1e6,
      rssMB: rss / 1024 / 1024,
      putIdleP99: idle.p99,
      putDuringP99: put.p99,
      putRatio: put.p99 / Math.max(0.001, idle.p99),
    });

    // 3. half the ceiling, paced
    const half = await load(url, n, { rate: rawAedes / 2 });
    out({
      bench: 'ingest.embedded_half_rate',
      unit: 'ms',
      peer: 'aedes',
      devices: n,
      rate: half.acked / half.elapsed,
      p50: half.p50,
      p99: half.p99,
      latency: 'publish-to-commit (PUBACK) at half the raw rate',
    });
    await nd.close();
  }

  // 4. mosquitto alone, 5. external ingest on it
  const m = await startMosquitto();
  try {
    const rawMosq = await rawRate(m.url, n);
    out({ bench: 'ingest.raw_delivery', unit: 'msg/s', peer: 'mosquitto', devices: n, rate: rawMosq });
    const nd = await node({ mode: 'external', url: m.url, clientId: 'edgekeeper-bench', protocolVersion: 5 });
    let r0 = 0;
    let t0 = 0;
    await load(m.url, n, {
      onStart: () => {
        r0 = rows(nd.store);
        t0 = performance.now();
      },
    });
    // the broker may still be delivering: count what was committed within the load window
    const r1 = rows(nd.store);
    const rate = (r1 - r0) / ((performance.now() - t0) / 1000);
    const h =
      (await nd.registry.getSingleMetric('edgekeeper_ingest_commit_latency_seconds')?.get())?.values ?? [];
    const buckets = h.filter((v) => (v as { metricName?: string }).metricName?.endsWith('_bucket'));
    const total = buckets.at(-1)?.value ?? 0;
    const q = (p: number) => {
      const b = buckets.find((v) => v.value >= p * total);
      return b ? Number((b.labels as { le: string | number }).le) * 1000 : Number.NaN;
    };
    out({
      bench: 'ingest.external',
      unit: 'reports/s',
      peer: 'mosquitto',
      devices: n,
      rate,
      ratio: rate / rawMosq,
      p50: q(0.5),
      p99: q(0.99),
      latency: 'arrival-to-commit ms, histogram bucket upper bound',
    });
    await nd.close();
  } finally {
    await m.stop();
  }
}
