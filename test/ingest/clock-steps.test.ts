/**
 * Ingest across wall-clock steps (a Pi without a real-time clock: NTP steps it by up to years
 * either way). The clock is a ManualClock whose wall reading steps while monotonic time runs on.
 * De-duplication of redelivered reports holds across a step of a year either way, inside one
 * process and across a restart, and an old copy stops matching once the window has passed.
 * A device's silence and the age retention deletes by are elapsed time, not differences of
 * wall-clock stamps.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import test, { after, before, describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { ManualClock } from '../../src/clock.js';
import { Downlink } from '../../src/ingest/downlink.js';
import { createMetrics } from '../../src/ingest/metrics.js';
import { DeviceRegistry } from '../../src/ingest/registry.js';
import { Retention } from '../../src/ingest/retention.js';
import { ReportWriter } from '../../src/ingest/writer.js';
import { silentLogger } from '../../src/log.js';
import type { Store } from '../../src/store/types.js';
import { openTestStore, tempDir } from './helpers.js';

const HOUR = 3_600_000;
const YEAR = 365 * 86_400_000;

describe('report de-duplication across clock steps', () => {
  let dir: string;
  let store: Store;
  before(async () => {
    dir = tempDir();
    store = await openTestStore(dir);
  });
  after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const writer = (clock: ManualClock, lastStamp?: number) =>
    new ReportWriter(
      (b) => store.write({ sql: [b.op] }).then((r) => r.sql[0]?.changes ?? 0),
      { batchMax: 100, dedupeWindow: HOUR },
      clock,
      lastStamp,
    );
  const count = (device: string) =>
    store.query<{ n: number }>('SELECT count(*) AS n FROM reports WHERE device = ?').get(device)!.n;
  const report = (clock: ManualClock, device: string) => ({
    device,
    receivedAt: clock.now(),
    ts: 42,
    seq: 7,
    body: Buffer.from('{}'),
  });

  for (const [name, step] of [
    ['forward', YEAR],
    ['back', -YEAR],
  ] as const) {
    it(`a redelivery after the clock stepped ${name} a year is stored once; after the window, again`, async () => {
      const clock = new ManualClock();
      const w = writer(clock);
      const device = `step-${name}`;
      await w.add(report(clock, device), 1, 0);
      clock.advance(60_000);
      clock.step(step);
      await w.add(report(clock, device), 1, 0);
      assert.equal(count(device), 1, 'the redelivery was stored twice');
      // the window is monotonic time: an hour later the old copy no longer matches
      clock.advance(HOUR + 1000);
      await w.add(report(clock, device), 1, 0);
      assert.equal(count(device), 2, 'an old copy kept matching for the length of the step');
    });

    it(`a redelivery after a restart with the clock stepped ${name} a year is stored once`, async () => {
      const clock = new ManualClock();
      const device = `restart-${name}`;
      await writer(clock).add(report(clock, device), 1, 0);
      const last = clock.now();
      clock.advance(30_000);
      clock.step(step);
      const w2 = writer(clock, last);
      await w2.add(report(clock, device), 1, 0);
      assert.equal(count(device), 1, 'the redelivery after the restart was stored twice');
      clock.advance(HOUR + 1000);
      await w2.add(report(clock, device), 1, 0);
      assert.equal(count(device), 2);
    });
  }
});

test('silence is elapsed time: a step of a year neither marks every device offline nor keeps a silent one online', async () => {
  const dir = tempDir();
  const clock = new ManualClock();
  const store = await openTestStore(dir, clock);
  const reg = new DeviceRegistry(store, clock, createMetrics(new Registry()), silentLogger(), {
    mirrorInterval: 1000,
    silenceTimeout: 60_000,
    maxMetrics: 16,
  });
  try {
    reg.setOnline('a', true, 'connect');
    reg.setOnline('b', true, 'connect');
    clock.advance(10_000);
    clock.step(YEAR);
    reg.sweepSilence();
    assert.deepEqual(reg.counts(), { online: 2, offline: 0 }, 'a step forward marked devices offline');
    clock.step(-2 * YEAR);
    reg.report('a', { seq: 1, ts: null, metrics: {} });
    clock.advance(55_000);
    reg.sweepSilence();
    assert.equal(reg.devices.get('b')!.online, false, 'a silent device stayed online after a step back');
    assert.equal(reg.devices.get('a')!.online, true);
  } finally {
    await reg.stop();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

for (const [name, step] of [
  ['forward', YEAR],
  ['back', -YEAR],
] as const) {
  test(`retention by age counts elapsed time across a step ${name} of a year`, async () => {
    const dir = tempDir();
    const clock = new ManualClock();
    const store = await openTestStore(dir, clock);
    const retention = new Retention(store, clock, createMetrics(new Registry()), silentLogger(), {
      retentionAge: HOUR,
      retentionBytes: 1e9,
    });
    const w = new ReportWriter(
      (b) => store.write({ sql: [b.op] }).then((r) => r.sql[0]?.changes ?? 0),
      { batchMax: 100, dedupeWindow: HOUR },
      clock,
    );
    const add = (seq: number) =>
      w.add({ device: 'r', receivedAt: clock.now(), ts: null, seq, body: Buffer.from('{}') }, 1, 0);
    try {
      for (let i = 0; i < 5; i++) await add(i);
      await retention.run();
      clock.advance(10 * 60_000);
      await add(5); // still in the old frame
      clock.step(step);
      await add(6);
      assert.equal((await retention.run()).deletedAge, 0, 'the step deleted reports early');
      clock.advance(55 * 60_000); // the first five are 65 minutes old, the last two 55
      assert.equal((await retention.run()).deletedAge, 5, 'reports older than retentionAge were kept');
      clock.advance(10 * 60_000);
      assert.equal((await retention.run()).deletedAge, 2);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('a queued command expires one commandTtl after it was put, whatever the clock steps', async () => {
  const dir = tempDir();
  const clock = new ManualClock();
  const store = await openTestStore(dir, clock);
  // a device that never connects: its commands wait, then expire
  const away = { reachable: () => false, send: () => Promise.reject(new Error('unreachable')) };
  const state = (name: string) =>
    JSON.parse(
      store.range({ key: Buffer.from(`/edgekeeper/commands/dev/${name}/state`) }).kvs[0]!.value.toString(),
    ).state as string;
  const settle = async () => {
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    await store.write({});
  };
  const d = new Downlink(store, clock, away, createMetrics(new Registry()), silentLogger(), HOUR);
  try {
    d.start();
    await store.put({ key: Buffer.from('/edgekeeper/commands/dev/a'), value: Buffer.from('{}') });
    await settle();
    clock.step(YEAR);
    clock.advance(20_000);
    await settle();
    assert.equal(state('a'), 'pending', 'a step forward expired a queued command');
    await store.put({ key: Buffer.from('/edgekeeper/commands/dev/b'), value: Buffer.from('{}') });
    clock.step(-2 * YEAR);
    clock.advance(HOUR);
    await settle();
    assert.equal(state('a'), 'expired', 'a step back kept a command past its TTL');
    assert.equal(state('b'), 'pending');
  } finally {
    d.stop();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
