/**
 * The device registry under a burst of state changes: the online count stays exact and the log
 * gets a few lines a second plus one summary, not a line per device.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { Writable } from 'node:stream';
import test from 'node:test';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { ManualClock } from '../../src/clock.js';
import { createMetrics } from '../../src/ingest/metrics.js';
import { DeviceRegistry } from '../../src/ingest/registry.js';
import { openTestStore, tempDir } from './helpers.js';

test('a burst of 300 devices changing state logs 10 lines a second and a summary', async () => {
  const dir = tempDir();
  const clock = new ManualClock(1_700_000_000_000);
  const store = await openTestStore(dir, clock);
  const lines: { msg: string; online?: number; offline?: number; devicesOnline?: number }[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(JSON.parse(String(chunk)));
      cb();
    },
  });
  const registry = new Registry();
  const metrics = createMetrics(registry);
  const reg = new DeviceRegistry(store, clock, metrics, pino(sink), {
    mirrorInterval: 1000,
    silenceTimeout: 60_000,
    maxMetrics: 256,
  });
  try {
    for (let i = 0; i < 300; i++) reg.setOnline(`d${i}`, true, 'connect');
    for (let i = 0; i < 50; i++) reg.setOnline(`d${i}`, false, 'disconnect');
    assert.deepEqual(reg.counts(), { online: 250, offline: 50 });
    const gauge = await metrics.devices.get();
    assert.deepEqual(gauge.values.map((v) => [v.labels.state, v.value]).sort(), [
      ['offline', 50],
      ['online', 250],
    ]);
    assert.equal(lines.filter((l) => l.msg === 'device online' || l.msg === 'device offline').length, 10);
    // the next second's first change brings the summary of this one
    clock.advance(1000);
    reg.setOnline('d0', true, 'connect');
    const summary = lines.filter((l) => l.online !== undefined);
    assert.equal(summary.length, 1);
    assert.deepEqual([summary[0]!.online, summary[0]!.offline], [290, 50]);
    assert.equal(lines.at(-1)!.msg, 'device online');
  } finally {
    await reg.stop();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('1,000 devices reporting every second: 10 mirror transactions per interval, not 1,000', async () => {
  const dir = tempDir();
  const clock = new ManualClock(1_700_000_000_000);
  const store = await openTestStore(dir, clock);
  const reg = new DeviceRegistry(store, clock, createMetrics(new Registry()), pino({ level: 'silent' }), {
    mirrorInterval: 5000,
    silenceTimeout: 60_000,
    maxMetrics: 256,
  });
  const report = (i: number, s: number) => ({ seq: s, ts: clock.now(), metrics: { t: i + s } });
  try {
    reg.start();
    for (let i = 0; i < 1000; i++) reg.report(`d${i}`, report(i, 0));
    // Coming online is written at once: 1,000 devices in chunks of 100.
    await reg.kick();
    await new Promise((r) => setImmediate(r));
    await reg.kick();
    const start = store.revision();
    // Ten seconds of one report per device per second: two intervals.
    for (let s = 1; s <= 10; s++) {
      clock.advance(1000);
      for (let i = 0; i < 1000; i++) reg.report(`d${i}`, report(i, s));
      await reg.kick();
    }
    const revisions = store.revision() - start;
    assert.ok(revisions <= 20 && revisions >= 10, `${revisions} transactions for 10,000 reports`);
    const doc = JSON.parse(
      store.range({ key: Buffer.from('/edgekeeper/devices/d7') }).kvs[0]!.value.toString(),
    ) as { metrics: Record<string, number> };
    assert.ok(doc.metrics.t! >= 7 + 5, 'the mirror moved on within the interval');
  } finally {
    await reg.stop();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
