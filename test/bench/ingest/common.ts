/**
 * The ingest benchmark, shared by ingest-100 and ingest-1000. Every side is its own process on
 * compiled JavaScript under plain node, as systemd runs it: the devices (load.ts, raw sockets),
 * the brokers, the counting subscriber (counter.ts) and the daemon itself (`edgekeeper run`
 * with its default parts; probes off, because bpftrace would take CPU from everything else).
 *
 * Per mode (embedded: aedes; external: mosquitto):
 *   1. raw: the broker alone with a subscriber that only counts (MQTT.js with external mode's
 *      session options): the broker's QoS 1 delivery rate, the ceiling;
 *   2. `edgekeeper run` (embedded broker, or subscribed to mosquitto) with the same devices, first
 *      steady (each device reports once a second for 30 s: the daemon's RSS once every device
 *      has connected, and over the last 10 s, once V8 has settled), then flat out: committed
 *      reports/s, publish-to-commit p50/p99, the daemon's RSS and CPU, and the etcd API's put
 *      p99 (gRPC, one put every 5 ms) idle and during the load;
 *   3. ingest paced at half of (1): publish-to-commit p50/p99;
 *   4. raw again, the daemon stopped: the ratio is taken to the mean of (1) and (4), so
 *      background load that drifts during the run (the machine is shared) weighs on both sides.
 * Rates are counted over the window in which the devices publish (their start and stop markers).
 * The CPU each process used in each phase is printed, to show which side was the bottleneck.
 * Embedded latency is publish-to-PUBACK at the device (PUBACK follows the commit); external
 * latency is arrival-to-commit from the daemon's histogram (bucket upper bounds).
 * EDGEKEEPER_BENCH_MODES=embedded or =external runs one mode only.
 * EDGEKEEPER_BENCH_NODE_FLAGS adds node flags to the daemon (e.g. --max-semi-space-size=4).
 * EDGEKEEPER_BENCH_REPORT_TS=0 sends reports without `ts` (see load.ts).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { Etcd3 } from 'etcd3';
import { freePort, startMosquitto } from '../../ingest/mosquitto.js';
import { buildJs, type JsBuild, unitEnvironment } from '../build.js';
import { cpuMs, memoryMb } from '../proc.js';

const here = fileURLToPath(new URL('.', import.meta.url));
const SECONDS = Number(process.env.EDGEKEEPER_BENCH_SECONDS ?? 4);
// the steady phase (one report a second per device), long enough for V8's heap to settle
const STEADY_SECONDS = Number(process.env.EDGEKEEPER_BENCH_STEADY_SECONDS ?? 30);
// total reports in flight across all devices
const IN_FLIGHT = 1000;
// EDGEKEEPER_BENCH_MODES=embedded (or external) runs one mode only
const MODES = (process.env.EDGEKEEPER_BENCH_MODES ?? 'embedded,external').split(',');
const NODE_FLAGS = (process.env.EDGEKEEPER_BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean);
// Linux reports process CPU time in clock ticks of 1/100 s

interface LoadResult {
  elapsed: number;
  acked: number;
  sent: number;
  p50: number;
  p99: number;
  /** CPU seconds per second used by each watched process between the start and end markers. */
  cpu: Record<string, number>;
}

export function out(o: Record<string, unknown>): void {
  const r: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) r[k] = round(v);
  console.log(JSON.stringify(r));
}

function round(v: unknown): unknown {
  if (typeof v === 'number') return Math.round(v * 100) / 100;
  if (v && typeof v === 'object' && !Array.isArray(v))
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, round(x)]));
  return v;
}

export function spawnNode(
  build: JsBuild,
  ts: string,
  args: string[],
  flags: string[] = [],
  env: NodeJS.ProcessEnv = process.env,
): ChildProcess {
  return spawn(process.execPath, [...flags, build.js(ts), ...args], {
    stdio: ['pipe', 'pipe', 'inherit'],
    env,
  });
}

export function lines(p: ChildProcess): Interface {
  return createInterface({ input: p.stdout! });
}

export function exited(p: ChildProcess): Promise<void> {
  return p.exitCode !== null ? Promise.resolve() : new Promise((r) => p.once('exit', () => r()));
}

// Each load process counts seq from its own base, so no report repeats one of an earlier phase.
// Far more than a phase sends per device (flat out, 100 devices send ~1,000 each).
const SEQ_STRIDE = 10_000_000;
let seqBase = 0;

/**
 * Run the devices. `onStart`/`onStop` fire when they start and stop publishing (the window the
 * rates are counted over); `watch` are the processes whose CPU use over that window is reported,
 * besides the devices' own.
 */
export function load(
  build: JsBuild,
  port: number,
  n: number,
  opts: {
    rate?: number;
    seconds?: number;
    watch: Record<string, number>;
    onStart?: () => void | Promise<void>;
    onStop?: () => void | Promise<void>;
  },
): Promise<LoadResult> {
  seqBase += SEQ_STRIDE;
  const cfg = {
    port,
    n,
    seconds: opts.seconds ?? SECONDS,
    window: Math.max(1, Math.round(IN_FLIGHT / n)),
    rate: opts.rate,
    prefix: 'b',
    seqBase,
  };
  const child = spawnNode(build, join(here, 'load.ts'), [JSON.stringify(cfg)]);
  const pids = { ...opts.watch, devices: child.pid! };
  let c0: Record<string, number> = {};
  let cpu: Record<string, number> = {};
  let t0 = 0;
  let hooks = Promise.resolve();
  return new Promise((resolve, reject) => {
    lines(child).on('line', (line) => {
      const m = JSON.parse(line) as { phase: string } & LoadResult;
      if (m.phase === 'start') {
        c0 = Object.fromEntries(Object.entries(pids).map(([k, p]) => [k, cpuMs(p) / 1000]));
        t0 = performance.now();
        hooks = hooks.then(opts.onStart);
      }
      if (m.phase === 'stopped') {
        const dt = (performance.now() - t0) / 1000;
        cpu = Object.fromEntries(Object.entries(pids).map(([k, p]) => [k, (cpuMs(p) / 1000 - c0[k]!) / dt]));
        hooks = hooks.then(opts.onStop);
      }
      if (m.phase === 'end') hooks.then(() => resolve({ ...m, cpu }), reject);
    });
    child.once('exit', (code) => (code === 0 ? undefined : reject(new Error(`devices exited with ${code}`))));
  });
}

/** The broker's raw QoS 1 delivery rate to a subscriber that only counts. */
export async function rawRate(
  build: JsBuild,
  port: number,
  n: number,
  protocolVersion: 4 | 5,
  brokerPid: number,
): Promise<{ rate: number; cpu: Record<string, number> }> {
  const counter = spawnNode(build, join(here, 'counter.ts'), [
    // external mode's Receive Maximum at the default batchMax (500): 4 batches
    JSON.stringify({ url: `mqtt://127.0.0.1:${port}`, protocolVersion, receiveMaximum: 2000 }),
  ]);
  const replies = lines(counter);
  const next = () => new Promise<string>((r) => replies.once('line', r));
  await next(); // ready
  const count = async () => {
    const reply = next();
    counter.stdin!.write('count\n');
    return { n: (JSON.parse(await reply) as { count: number }).count, t: performance.now() };
  };
  let a = { n: 0, t: 0 };
  let b = { n: 0, t: 0 };
  const res = await load(build, port, n, {
    watch: { broker: brokerPid, counter: counter.pid! },
    onStart: async () => {
      a = await count();
    },
    onStop: async () => {
      b = await count();
    },
  });
  counter.stdin!.end();
  await exited(counter);
  return { rate: (b.n - a.n) / ((b.t - a.t) / 1000), cpu: res.cpu };
}

class Scrape {
  constructor(private readonly text: string) {}

  /** A histogram's buckets (le -> cumulative count); by default the ingest commit latency. */
  buckets(name = 'edgekeeper_ingest_commit_latency_seconds'): [number, number][] {
    const re = new RegExp(`^${name}_bucket\\{le="([^"]+)"\\} (\\d+)`, 'gm');
    return [...this.text.matchAll(re)].map(
      (m) => [m[1] === '+Inf' ? Number.POSITIVE_INFINITY : Number(m[1]), Number(m[2])] as [number, number],
    );
  }

  value(name: string): number {
    const m = new RegExp(`^${name} (\\S+)`, 'm').exec(this.text);
    return Number(m?.[1] ?? Number.NaN);
  }
}

export interface Daemon {
  pid: number;
  mqttPort: number;
  etcdPort: number;
  etcd: Etcd3;
  committed(): number;
  /** One read of /metrics (prom-client resets the event-loop delay histogram on every read). */
  scrape(): Promise<Scrape>;
  stop(): Promise<void>;
}

/** `edgekeeper run` on compiled JavaScript, in its own process, on free loopback ports. */
export async function startDaemon(
  build: JsBuild,
  mqtt: Record<string, unknown>,
  /** More config sections (the SLO bench sets `slo`). */
  extra: Record<string, unknown> = {},
): Promise<Daemon> {
  const dir = mkdtempSync(join(tmpdir(), 'ek-bench-ingest-'));
  const [httpPort, etcdPort, mqttPort] = [await freePort(), await freePort(), await freePort()];
  const config = {
    node: { name: 'bench', dataDir: dir },
    http: { listen: `127.0.0.1:${httpPort}` },
    etcd: { listen: `127.0.0.1:${etcdPort}` },
    // the devices connect anonymously (scrypt costs only at connect) and are not rate-limited
    mqtt: {
      listen: `127.0.0.1:${mqttPort}`,
      allowAnonymous: true,
      ratePerSec: 1e6,
      rateBurst: 1e6,
      ...mqtt,
    },
    probes: { enabled: [] },
    ...extra,
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  const proc = spawnNode(
    build,
    'src/main.ts',
    ['run', '--config', join(dir, 'config.json')],
    NODE_FLAGS,
    unitEnvironment(),
  );
  // the logs are the daemon's production output (level info); read and dropped
  lines(proc).on('line', () => undefined);
  const base = `http://127.0.0.1:${httpPort}`;
  for (const end = Date.now() + 60_000; ; ) {
    if (proc.exitCode !== null) throw new Error(`edgekeeper run exited with ${proc.exitCode}`);
    const ok = await fetch(`${base}/readyz`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) break;
    if (Date.now() > end) throw new Error('edgekeeper run did not become ready');
    await new Promise((r) => setTimeout(r, 100));
  }
  const db = new Database(join(dir, 'edgekeeper.db'), { readonly: true, fileMustExist: true });
  const maxId = db.prepare('SELECT coalesce(max(id), 0) FROM reports').pluck();
  const metrics = () => fetch(`${base}/metrics`).then((r) => r.text());
  const etcd = new Etcd3({ hosts: `http://127.0.0.1:${etcdPort}` });
  return {
    pid: proc.pid!,
    mqttPort,
    etcdPort,
    etcd,
    committed: () => maxId.get() as number,
    async scrape() {
      return new Scrape(await metrics());
    },
    async stop() {
      etcd.close();
      db.close();
      proc.kill('SIGTERM');
      await exited(proc);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** One device publishes until a report is committed: the daemon is connected end to end. */
export async function firstReport(build: JsBuild, d: Daemon, brokerPort: number): Promise<void> {
  for (let i = 0; i < 20 && d.committed() === 0; i++) {
    const child = spawnNode(build, join(here, 'load.ts'), [
      JSON.stringify({ port: brokerPort, n: 1, seconds: 0.2, window: 1, prefix: 'warm' }),
    ]);
    lines(child).on('line', () => undefined);
    await exited(child);
  }
  if (d.committed() === 0) throw new Error('no report reached the daemon');
}

/** p50/p99 of etcd API puts on one key, one every 5 ms, until `until()`. */
async function putLatency(
  etcd: Etcd3,
  until: () => boolean,
): Promise<{ p50: number; p99: number; n: number }> {
  const lat: number[] = [];
  let i = 0;
  while (!until()) {
    const t0 = performance.now();
    await etcd.put('/bench/put').value(String(i++));
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

/**
 * A phase's latency fields: embedded mode times publish-to-PUBACK at the devices (the PUBACK
 * follows the commit); external mode reads arrival-to-commit from the daemon's histogram.
 */
function latencyFields(
  peer: string,
  measured: { p50: number; p99: number },
  before: [number, number][],
  after: [number, number][],
  when: string,
): { p50: number; p99: number; latency: string } {
  if (peer === 'aedes') {
    return { ...pick(measured), latency: `publish-to-PUBACK ms (PUBACK follows the commit)${when}` };
  }
  return {
    p50: bucketQuantile(before, after, 0.5),
    p99: bucketQuantile(before, after, 0.99),
    latency: `arrival-to-commit ms${when}, histogram bucket upper bound`,
  };
}

const COMMIT = 'edgekeeper_store_commit_seconds';

const pick = ({ p50, p99 }: { p50: number; p99: number }) => ({ p50, p99 });

/** Quantile of a histogram difference, as its bucket's upper bound in ms. */
function bucketQuantile(before: [number, number][], after: [number, number][], p: number): number {
  const diff = after.map(([le, c], i) => [le, c - (before[i]?.[1] ?? 0)] as [number, number]);
  const total = diff.at(-1)?.[1] ?? 0;
  const b = diff.find(([, c]) => c >= p * total);
  // past the last finite bucket (1 s): reported as -1, "more than a second"
  return b && Number.isFinite(b[0]) ? b[0] * 1000 : -1;
}

async function mode(
  build: JsBuild,
  n: number,
  peer: 'aedes' | 'mosquitto',
  broker: { port: number; pid: number; protocolVersion: 4 | 5 },
  daemonMqtt: Record<string, unknown>,
  afterDaemon: () => Promise<void> = async () => undefined,
): Promise<void> {
  const raw1 = await rawRate(build, broker.port, n, broker.protocolVersion, broker.pid);
  out({ bench: 'ingest.raw_delivery', unit: 'msg/s', peer, devices: n, rate: raw1.rate, cpu: raw1.cpu });

  const d = await startDaemon(build, daemonMqtt);
  let flat: Record<string, unknown>;
  let flatRate: number;
  try {
    const port = peer === 'aedes' ? d.mqttPort : broker.port;
    await firstReport(build, d, port);
    const watch: Record<string, number> =
      peer === 'aedes' ? { daemon: d.pid } : { broker: broker.pid, daemon: d.pid };
    const idleEnd = performance.now() + 1500;
    const idle = await putLatency(d.etcd, () => performance.now() > idleEnd);

    // steady: every device reports once a second; RSS over the last third, once V8 has settled
    let steadyRss = 0;
    let firstConnectRss = 0;
    let steadyFrom = Number.POSITIVE_INFINITY;
    const steadySampler = setInterval(() => {
      if (performance.now() >= steadyFrom) steadyRss = Math.max(steadyRss, memoryMb(d.pid).rss);
    }, 200);
    await load(build, port, n, {
      rate: n,
      seconds: STEADY_SECONDS,
      watch,
      onStart: () => {
        // every device connected for the first time, none reporting yet
        firstConnectRss = memoryMb(d.pid).rss;
        steadyFrom = performance.now() + (STEADY_SECONDS * 2000) / 3;
      },
    });
    clearInterval(steadySampler);

    // flat out
    let r0 = 0;
    let t0 = 0;
    let loading = true;
    let rssMax = 0;
    let rssConnected = 0;
    let during: ReturnType<typeof putLatency> | undefined;
    const sampler = setInterval(() => {
      rssMax = Math.max(rssMax, memoryMb(d.pid).rss);
    }, 200);
    const s0 = await d.scrape();
    const res = await load(build, port, n, {
      watch,
      onStart: () => {
        r0 = d.committed();
        t0 = performance.now();
        // every device connected, none publishing yet
        rssConnected = memoryMb(d.pid).rss;
        during = putLatency(d.etcd, () => !loading);
      },
      onStop: () => {
        loading = false;
        flatRate = (d.committed() - r0) / ((performance.now() - t0) / 1000);
      },
    });
    clearInterval(sampler);
    const s1 = await d.scrape();
    const put = await during!;
    flat = {
      bench: peer === 'aedes' ? 'ingest.embedded' : 'ingest.external',
      unit: 'reports/s',
      peer,
      devices: n,
      ...latencyFields(peer, res, s0.buckets(), s1.buckets(), ''),
      cpu: res.cpu,
      daemonRssFirstConnectMB: firstConnectRss,
      daemonRssConnectedMB: rssConnected,
      daemonRssSteadyMB: steadyRss,
      daemonRssMB: rssMax,
      daemonPeakRssMB: memoryMb(d.pid).hwm,
      daemonEventLoopP99Ms: s1.value('nodejs_eventloop_lag_p99_seconds') * 1000,
      daemonEventLoopMaxMs: s1.value('nodejs_eventloop_lag_max_seconds') * 1000,
      meanBatchReports:
        (s1.value('edgekeeper_ingest_batch_size_reports_sum') -
          s0.value('edgekeeper_ingest_batch_size_reports_sum')) /
        (s1.value('edgekeeper_ingest_batch_size_reports_count') -
          s0.value('edgekeeper_ingest_batch_size_reports_count')),
      // reports taken for redeliveries (the rate counts stored rows): none are, see below
      duplicates:
        s1.value('edgekeeper_ingest_duplicates_total') - s0.value('edgekeeper_ingest_duplicates_total'),
      storeCommitP99Ms: bucketQuantile(s0.buckets(COMMIT), s1.buckets(COMMIT), 0.99),
      storeCommitMaxMs: bucketQuantile(s0.buckets(COMMIT), s1.buckets(COMMIT), 1),
      putIdleP99: idle.p99,
      putDuringP99: put.p99,
      putRatio: put.p99 / Math.max(0.001, idle.p99),
    };

    if (flat.duplicates !== 0)
      throw new Error(`${flat.duplicates} reports were taken for redeliveries: the rate would undercount`);

    // half the ceiling, paced
    const h0 = await d.scrape();
    const hh0 = h0.buckets();
    let halfRss = 0;
    const halfSampler = setInterval(() => {
      halfRss = Math.max(halfRss, memoryMb(d.pid).rss);
    }, 200);
    const half = await load(build, port, n, { rate: raw1.rate / 2, watch });
    clearInterval(halfSampler);
    const h1 = await d.scrape();
    const hh1 = h1.buckets();
    out({
      bench: peer === 'aedes' ? 'ingest.embedded_half_rate' : 'ingest.external_half_rate',
      unit: 'ms',
      peer,
      devices: n,
      rate: half.acked / half.elapsed,
      ...latencyFields(peer, half, hh0, hh1, ' at half the raw rate'),
      // the disk's share of the latency: a report waits for its batch's commit
      storeCommitP99Ms: bucketQuantile(h0.buckets(COMMIT), h1.buckets(COMMIT), 0.99),
      cpu: half.cpu,
      daemonRssMB: halfRss,
    });
  } finally {
    await d.stop();
  }
  await afterDaemon();

  // the ceiling again, so background load that drifted during the run weighs on both sides
  const raw2 = await rawRate(build, broker.port, n, broker.protocolVersion, broker.pid);
  out({ bench: 'ingest.raw_delivery', unit: 'msg/s', peer, devices: n, rate: raw2.rate, cpu: raw2.cpu });
  const ceiling = (raw1.rate + raw2.rate) / 2;
  out({ ...flat, rate: flatRate!, raw: [raw1.rate, raw2.rate], ratio: flatRate! / ceiling });
}

/** Remove the daemon's persistent session so the broker stops queueing reports for it. */
async function dropSession(url: string, clientId: string): Promise<void> {
  const { default: mqtt } = await import('mqtt');
  const c = mqtt.connect(url, {
    clientId,
    clean: true,
    protocolVersion: 5,
    reconnectPeriod: 0,
    properties: { sessionExpiryInterval: 0 },
  });
  await new Promise<void>((r, j) => {
    c.once('connect', () => r());
    c.once('error', j);
  });
  await new Promise<void>((r) => c.end(false, {}, () => r()));
}

export async function runIngestBench(n: number): Promise<void> {
  const build = buildJs([join(here, 'load.ts'), join(here, 'counter.ts'), join(here, 'aedes-raw.ts')]);
  try {
    // embedded: aedes alone vs the daemon's embedded broker
    if (MODES.includes('embedded')) {
      const aedes = spawnNode(build, join(here, 'aedes-raw.ts'), []);
      try {
        const port = await new Promise<number>((r) =>
          lines(aedes).once('line', (l) => r((JSON.parse(l) as { port: number }).port)),
        );
        await mode(build, n, 'aedes', { port, pid: aedes.pid!, protocolVersion: 4 }, { mode: 'embedded' });
      } finally {
        aedes.kill('SIGTERM');
        await exited(aedes);
      }
    }
    if (!MODES.includes('external')) return;

    // external: mosquitto alone vs the daemon subscribed to it (external mode's defaults: MQTT 5)
    const m = await startMosquitto();
    try {
      await mode(
        build,
        n,
        'mosquitto',
        { port: m.port, pid: m.proc.pid!, protocolVersion: 5 },
        { mode: 'external', url: m.url, clientId: 'edgekeeper-bench' },
        () => dropSession(m.url, 'edgekeeper-bench'),
      );
    } finally {
      await m.stop();
    }
  } finally {
    build.cleanup();
  }
}
