/**
 * The device mirror keeps each metric's last known value with the time it arrived (bounded by
 * mqtt.maxMetrics, oldest name dropped first) and writes a device's key at most once per
 * mqtt.mirrorInterval however often it reports; per-device last-seen series on /metrics stop at
 * mqtt.deviceSeries and the rest are counted; devices that never connected are counted; the
 * dead-letter table's sampling is counted when it leaves a reject out. Real broker, real store;
 * time of the mirror driven with ManualClock.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { ManualClock } from '../../src/clock.js';
import { createMetrics } from '../../src/ingest/metrics.js';
import { DeadLetters } from '../../src/ingest/rejects.js';
import {
  callRoute,
  device,
  endClient,
  harness,
  metricValue,
  openTestStore,
  publish,
  reportCount,
  tempDir,
  waitFor,
  watchPrefix,
} from './helpers.js';

type Doc = { metrics?: Record<string, number>; metricsAt?: Record<string, number>; reports: number };

async function addDevice(h: Awaited<ReturnType<typeof harness>>, id: string): Promise<string> {
  return ((await callRoute(h, 'POST', '/v1/devices', { id })).body as { secret: string }).secret;
}

describe('device mirror', () => {
  it('keeps every metric’s last value and time, bounded, and writes once per interval', async () => {
    const t0 = 1_800_000_000_000;
    const clock = new ManualClock(t0);
    const h = await harness({ mirrorInterval: 5000, maxMetrics: 3 }, clock);
    try {
      const secret = await addDevice(h, 'm1');
      const w = watchPrefix(h.store, '/edgekeeper/devices/m1');
      const docs = () => w.events.map((e) => JSON.parse(e.kv.value.toString()) as Doc);
      const c = await device(h.url, 'm1', secret);
      // Coming online is written at once.
      await waitFor(() => w.events.length === 1, 'online write');
      await publish(c, 'edgekeeper/v1/devices/m1/report', '{"metrics":{"t":1,"h":2}}');
      await waitFor(() => reportCount(h.store, 'm1') === 1, 'first report');
      // flush(): the thread hands its sightings over and the mirror is written now.
      await h.part.flush();
      assert.deepEqual(docs().at(-1)?.metrics, { t: 1, h: 2 });
      const afterOnline = w.events.length;
      clock.advance(1000);
      // 20 reports within the interval, the last with `t` only and one carrying `__proto__`.
      for (let i = 0; i < 19; i++)
        await publish(c, 'edgekeeper/v1/devices/m1/report', `{"metrics":{"t":${10 + i},"__proto__":7}}`);
      await publish(c, 'edgekeeper/v1/devices/m1/report', '{"metrics":{"t":3}}');
      await waitFor(() => reportCount(h.store, 'm1') === 21, '21 reports');
      await h.part.flush();
      const flushed = docs().at(-1)!;
      assert.equal(w.events.length, afterOnline + 1, '20 reports inside the interval: no write of their own');
      // JSON.parse: an object literal's `__proto__:` would set the prototype instead of a key.
      assert.deepEqual(flushed.metrics, JSON.parse('{"h":2,"__proto__":7,"t":3}'));
      assert.equal(Object.getPrototypeOf(flushed.metrics), Object.prototype, 'a plain key, not a prototype');
      assert.deepEqual(
        flushed.metricsAt,
        JSON.parse(`{"h":${t0},"__proto__":${t0 + 1000},"t":${t0 + 1000}}`),
      );
      assert.equal(flushed.reports, 21);
      // A fourth name: the oldest (h) goes, the mirror keeps mqtt.maxMetrics names.
      clock.advance(1000);
      await publish(c, 'edgekeeper/v1/devices/m1/report', '{"metrics":{"v":9}}');
      await waitFor(() => reportCount(h.store, 'm1') === 22, 'report 22');
      // The thread hands sightings over every 250 ms; the registry then has it, at t0 + 2 s.
      await new Promise((r) => setTimeout(r, 400));
      // Not due yet: the interval has not passed since the last write.
      clock.advance(1000);
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(w.events.length, afterOnline + 1, 'no write before the interval');
      clock.advance(5000);
      await waitFor(() => w.events.length === afterOnline + 2, 'the interval passed: one write');
      const last = docs().at(-1)!;
      assert.deepEqual(Object.keys(last.metrics!).sort(), ['__proto__', 't', 'v']);
      assert.equal(last.metricsAt!.v, t0 + 2000);
      // A restart keeps the values and their times.
      await endClient(c);
      await h.part.flush();
      const row = h.store
        .query<{ last: string }>("SELECT last FROM ingest_device_state WHERE id = 'm1'")
        .get()!;
      assert.deepEqual((JSON.parse(row.last) as Doc).metricsAt, last.metricsAt);
      w.cancel();
    } finally {
      await h.close();
    }
  });

  it('last-seen series stop at mqtt.deviceSeries; the rest and never-connected devices are counted', async () => {
    const h = await harness({ deviceSeries: 2 });
    const clients = [];
    try {
      const secrets = new Map<string, string>();
      for (const id of ['a1', 'a2', 'a3', 'a4']) secrets.set(id, await addDevice(h, id));
      for (const id of ['a1', 'a2', 'a3']) {
        const c = await device(h.url, id, secrets.get(id));
        clients.push(c);
        await publish(c, `edgekeeper/v1/devices/${id}/report`, '{"metrics":{"x":1}}');
      }
      await waitFor(() => reportCount(h.store) === 3, '3 reports');
      const text = await h.registry.metrics();
      const series = [
        ...text.matchAll(
          /^edgekeeper_ingest_device_last_seen_timestamp_seconds\{device="([^"]+)"\} (\S+)$/gm,
        ),
      ];
      assert.deepEqual(
        series.map((m) => m[1]),
        ['a1', 'a2'],
        'the first two devices seen',
      );
      for (const m of series) assert.ok(Math.abs(Number(m[2]) - Date.now() / 1000) < 60);
      assert.equal(await metricValue(h.registry, 'edgekeeper_ingest_devices_unexported'), 1);
      assert.equal(await metricValue(h.registry, 'edgekeeper_ingest_devices', { state: 'never' }), 1);
      assert.equal(await metricValue(h.registry, 'edgekeeper_ingest_devices', { state: 'online' }), 3);
      assert.deepEqual((h.part.status!() as { devices: unknown }).devices, {
        online: 3,
        offline: 0,
        never: 1,
      });
    } finally {
      for (const c of clients) await endClient(c, true);
      await h.close();
    }
  });
});

describe('dead letters', () => {
  it('the table is a sample: what it leaves out is counted per reason, and so are failed writes', async () => {
    const dir = tempDir();
    const clock = new ManualClock(1_800_000_000_000);
    const store = await openTestStore(dir, clock);
    const registry = new Registry();
    const metrics = createMetrics(registry);
    const dl = new DeadLetters(store, clock, metrics, pino({ level: 'silent' }), 1000);
    try {
      // One device, one reason, five times in a second: one row.
      for (let i = 0; i < 5; i++) dl.record('schema', { device: 'd1', payload: Buffer.from('{}') });
      // 60 devices in the same second: 50 rows a second overall (49 more).
      for (let i = 0; i < 60; i++) dl.record('malformed', { device: `x${i}`, payload: Buffer.from('<') });
      await dl.settle();
      assert.equal(DeadLetters.list(store, 1000).length, 50);
      assert.equal(await metricValue(registry, 'edgekeeper_ingest_rejects_total'), 65);
      assert.equal(
        await metricValue(registry, 'edgekeeper_ingest_rejects_unrecorded_total', { reason: 'schema' }),
        4,
      );
      assert.equal(
        await metricValue(registry, 'edgekeeper_ingest_rejects_unrecorded_total', { reason: 'malformed' }),
        11,
      );
      assert.deepEqual(Object.fromEntries(dl.unrecorded), { schema: 4, malformed: 11 });
      // The next second records again.
      clock.advance(1000);
      dl.record('schema', { device: 'd1', payload: Buffer.from('{}') });
      await dl.settle();
      assert.equal(DeadLetters.list(store, 1000).length, 51);
      // A write that fails (the store is gone) loses its rows: they are counted too.
      await store.close();
      clock.advance(1000);
      dl.record('too_large', { device: 'd2', size: 1e6 });
      await dl.settle();
      assert.equal(
        await metricValue(registry, 'edgekeeper_ingest_rejects_unrecorded_total', { reason: 'too_large' }),
        1,
      );
    } finally {
      await store.close().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
