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
