/**
 * The SLO guard's trade (`npm run bench -- slo`): etcd put latency while MQTT ingest runs flat
 * out, with the guard off and on, against the ingest rate each gives and the broker's own.
 *
 * Every side is its own process, as in the ingest bench (common.ts): N devices on raw sockets
 * (load.ts, QoS 1, 1,000 reports in flight in all), `edgekeeper run` on compiled JavaScript with
 * its embedded broker, and the etcd client: etcd's own Go client (the SD-card bench's loadgen,
 * test/bench/sdcard/loadgen) putting one small key 100 times a second, open loop, each put timed
 * from its scheduled moment (a stalled server shows as latency, not as fewer puts).
 *
 *   1. the broker's own rate: mosquitto alone, the same devices, a subscriber that only counts;
 *   2. per setting of `slo.guard` (false, then true), a fresh daemon: puts alone (idle p99), then
 *      puts while the devices publish flat out: put p99 and the committed reports a second;
 *   3. mosquitto again; the broker's rate is the mean of (1) and (3).
 *
 * Lines: `slo.broker_rate`, one `slo.flat_out` per setting, and `slo.trade`: put p99 over idle
 * with the guard off and on (the target is at most 2), and the ingest rate with the guard on over
 * the rate with it off and over the broker's. EDGEKEEPER_BENCH_SECONDS (default 20) is the length
 * of a flat-out phase, EDGEKEEPER_BENCH_DEVICES (default 100) the number of devices.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startMosquitto } from '../../ingest/mosquitto.js';
import { buildJs } from '../build.js';
import { buildLoadgen, missingGo, runLoadgen } from '../sdcard/loadgen.js';
import { type Daemon, firstReport, load, out, rawRate, startDaemon } from './common.js';

const here = fileURLToPath(new URL('.', import.meta.url));
const SECONDS = Number(process.env.EDGEKEEPER_BENCH_SECONDS ?? 20);
const DEVICES = Number(process.env.EDGEKEEPER_BENCH_DEVICES ?? 100);
// idle puts: enough for a p99 of a few hundred samples
const IDLE_SECONDS = 5;
// an application's steady write load, well below what either setting can serve
const PUTS_PER_SECOND = 100;

interface Puts {
  p50: number;
  p99: number;
  max: number;
  acked: number;
  errors: number;
}

/** Puts for `seconds`, started when `go` resolves (after the loadgen's connection and preload). */
async function puts(bin: string, port: number, seconds: number, go: Promise<void> = Promise.resolve()) {
  const lines = await runLoadgen(
    bin,
    [
      '-mode=mix',
      `-endpoint=127.0.0.1:${port}`,
      '-keys=1',
      '-value-bytes=128',
      `-steady-rate=${PUTS_PER_SECOND}`,
      // no bursts and no lease renewals: only the steady puts
      '-burst-every=24h',
      '-renew-every=24h',
      `-duration=${seconds}s`,
      '-timeout=10s',
      '-wait',
    ],
    async (phase) => {
      if (phase === 'preloaded') await go;
    },
  );
  const steady = lines.find((l) => l.class === 'steady') as unknown as Puts | undefined;
  if (!steady) throw new Error(`the loadgen printed no steady class: ${JSON.stringify(lines)}`);
  return steady;
}

async function setting(
  build: ReturnType<typeof buildJs>,
  bin: string,
  guard: boolean,
): Promise<{ idle: Puts; flat: Puts; rate: number }> {
  const d: Daemon = await startDaemon(build, { mode: 'embedded' }, { slo: { guard } });
  try {
    await firstReport(build, d, d.mqttPort);
    const idle = await puts(bin, d.etcdPort, IDLE_SECONDS);
    let start!: () => void;
    const go = new Promise<void>((r) => {
      start = r;
    });
    const during = puts(bin, d.etcdPort, SECONDS, go);
    let r0 = 0;
    let t0 = 0;
    let rate = 0;
    const s0 = await d.scrape();
    const res = await load(build, d.mqttPort, DEVICES, {
      seconds: SECONDS,
      watch: { daemon: d.pid },
      onStart: () => {
        r0 = d.committed();
        t0 = performance.now();
        start();
      },
      onStop: () => {
        rate = (d.committed() - r0) / ((performance.now() - t0) / 1000);
      },
    });
    const flat = await during;
    const s1 = await d.scrape();
    const delta = (name: string) => s1.value(name) - s0.value(name);
    out({
      bench: 'slo.flat_out',
      unit: 'ms',
      guard,
      devices: DEVICES,
      putsPerSecond: PUTS_PER_SECOND,
      putIdleP50: idle.p50,
      putIdleP99: idle.p99,
      putP50: flat.p50,
      putP99: flat.p99,
      putMax: flat.max,
      putErrors: idle.errors + flat.errors,
      puts: flat.acked,
      rate,
      rateUnit: 'reports/s committed while the devices publish',
      devicesAcked: res.acked,
      cpu: res.cpu,
      daemonEventLoopP99Ms: s1.value('nodejs_eventloop_lag_p99_seconds') * 1000,
      yieldingAtStart: s0.value('edgekeeper_slo_yielding'),
      yields: delta('edgekeeper_slo_yields_total'),
      // null: not limited when the devices stopped
      bulkLimitAtEnd: s1.value('edgekeeper_slo_bulk_limit_per_second'),
      bulkRefusals: delta('edgekeeper_slo_bulk_refusals_total'),
      etcdBurn5m: s1.value('edgekeeper_slo_burn_rate\\{objective="etcd_request",window="5m"\\}'),
    });
    return { idle, flat, rate };
  } finally {
    await d.stop();
  }
}

export default async function run(): Promise<void> {
  const missing = missingGo();
  if (missing.length) throw new Error(`the SLO bench needs ${missing.join(', ')}`);
  const bin = buildLoadgen();
  const build = buildJs([join(here, 'load.ts'), join(here, 'counter.ts')]);
  const m = await startMosquitto();
  try {
    const raw1 = await rawRate(build, m.port, DEVICES, 5, m.proc.pid!);
    const off = await setting(build, bin, false);
    const on = await setting(build, bin, true);
    const raw2 = await rawRate(build, m.port, DEVICES, 5, m.proc.pid!);
    const broker = (raw1.rate + raw2.rate) / 2;
    out({
      bench: 'slo.broker_rate',
      unit: 'msg/s',
      peer: 'mosquitto',
      devices: DEVICES,
      rate: [raw1.rate, raw2.rate],
    });
    out({
      bench: 'slo.trade',
      unit: 'ratio',
      devices: DEVICES,
      putP99OverIdleGuardOff: off.flat.p99 / off.idle.p99,
      putP99OverIdleGuardOn: on.flat.p99 / on.idle.p99,
      target: 2,
      rateGuardOff: off.rate,
      rateGuardOn: on.rate,
      rateOnOverOff: on.rate / off.rate,
      brokerRate: broker,
      rateOffOverBroker: off.rate / broker,
      rateOnOverBroker: on.rate / broker,
    });
  } finally {
    await m.stop();
    build.cleanup();
  }
}
