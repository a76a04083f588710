/**
 * Snapshot building (validation of whatever the sources hand us, derived alerts, unknowns),
 * the change hash at display precision, and the /proc + /sys/class/thermal reader on fixtures.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { buildSnapshot, type SnapshotInputs, SystemReader, snapshotHash } from '../../src/frames/index.js';
import { inputs, T0 } from './fixtures.js';

const tmp = mkdtempSync(join(tmpdir(), 'ek-snap-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

test('garbage from a source becomes unknown, never zero or a crash', () => {
  const s = buildSnapshot({
    node: 'n\u0000\u202eode',
    time: T0,
    devices: {
      online: Number.NaN,
      offline: -3,
      attention: [
        { name: 'ok-dev', reason: 'silent' },
        { name: 42 as unknown as string, reason: 'offline' },
        { name: 'x', reason: 'bogus' as 'offline' },
        null as unknown as { name: string; reason: 'offline' },
      ],
      reportsPerMinute: [Number.POSITIVE_INFINITY, 5, 'x' as unknown as number],
    },
    store: { revision: Number.POSITIVE_INFINITY, commitLatencyMs: { p50: -1, p99: 3 }, dbSize: 10 },
    probes: { fsync: { p99Ms: Number.NaN, unavailable: 'no\nroot' }, runqlat: {} },
    uplink: { state: 5 as unknown as string, lastSuccessAt: T0 + 60_000 },
    system: { cpuPercent: 250, socTempC: -12.5 },
    alerts: [
      { severity: 'panic' as 'critical', text: 'x' },
      { severity: 'info', text: '  ' },
      { severity: 'warning', text: 'y'.repeat(10_000) },
    ],
  });
  assert.equal(s.node, 'n ode', 'control -> space, bidi override dropped');
  assert.equal(s.devices?.online, undefined);
  assert.equal(s.devices?.offline, undefined);
  assert.deepEqual(s.devices?.attention, [{ name: 'ok-dev', reason: 'silent', ageMs: undefined }]);
  assert.equal(s.devices?.ratePerMin.length, 10);
  assert.deepEqual(s.devices?.ratePerMin.slice(7), [undefined, 5, undefined]);
  assert.equal(s.store?.revision, undefined);
  assert.equal(s.store?.commitP50Ms, undefined);
  assert.equal(s.store?.commitP99Ms, 3);
  assert.deepEqual(s.probes?.fsync, { unavailable: 'no root' });
  assert.equal(s.uplink?.state, undefined);
  assert.equal(s.uplink?.lastSuccessAgeMs, undefined, 'a time in the future is not an age');
  assert.equal(s.system.cpuPercent, 100);
  assert.equal(s.system.socTempC, -12.5, 'below zero is a real temperature');
  assert.equal(s.alerts.length, 1);
  assert.ok(s.alerts[0]!.text.length <= 160);
});

test('derived alerts: quota, disk, temperature, uplink down; most severe first', () => {
  const s = buildSnapshot({
    ...inputs.uplinkdown!,
    store: { noSpace: true },
    alerts: [{ severity: 'info', text: 'hello' }],
  });
  assert.deepEqual(
    s.alerts.map((a) => a.severity),
    ['critical', 'warning', 'warning', 'warning', 'info'],
  );
  assert.match(s.alerts[0]!.text, /over quota/);
  assert.ok(s.alerts.some((a) => /disk 93% full/.test(a.text)));
  assert.ok(s.alerts.some((a) => /uplink down: connect ECONNREFUSED/.test(a.text)));
  assert.equal(s.alertsUnknown, undefined);
  assert.equal(buildSnapshot({ node: 'x', time: T0 }).alertsUnknown, true);
});

test('the hash changes with what is shown, not with seconds', () => {
  const base: SnapshotInputs = inputs.healthy!;
  const h = snapshotHash(buildSnapshot(base));
  assert.equal(snapshotHash(buildSnapshot({ ...base, time: T0 + 20_000 })), h, 'same minute on the clock');
  assert.notEqual(snapshotHash(buildSnapshot({ ...base, time: T0 + 40_000 })), h, 'the clock turned 14:06');
  assert.equal(
    snapshotHash(
      buildSnapshot({
        ...base,
        system: { ...base.system, memUsedBytes: (base.system!.memUsedBytes ?? 0) + 1000 },
      }),
    ),
    h,
    'a kilobyte of memory does not show',
  );
  assert.notEqual(snapshotHash(buildSnapshot({ ...base, devices: { ...base.devices, online: 41 } })), h);
  assert.notEqual(snapshotHash(buildSnapshot({ ...base, alerts: [{ severity: 'info', text: 'x' }] })), h);
});

test('SystemReader reads /proc/stat, /proc/meminfo and the SoC thermal zone from fixtures', () => {
  const proc = join(tmp, 'proc');
  const sys = join(tmp, 'sys');
  mkdirSync(proc, { recursive: true });
  for (const [zone, type, temp] of [
    ['thermal_zone0', 'acpitz', '27800'],
    ['thermal_zone1', 'cpu-thermal', '61234'],
  ]) {
    mkdirSync(join(sys, 'class', 'thermal', zone!), { recursive: true });
    writeFileSync(join(sys, 'class', 'thermal', zone!, 'type'), `${type}\n`);
    writeFileSync(join(sys, 'class', 'thermal', zone!, 'temp'), `${temp}\n`);
  }
  writeFileSync(
    join(proc, 'meminfo'),
    'MemTotal:        4000000 kB\nMemFree:  100 kB\nMemAvailable:    3000000 kB\n',
  );
  writeFileSync(join(proc, 'stat'), 'cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3\n');
  let now = 0;
  const r = new SystemReader({ procRoot: proc, sysRoot: sys, diskPath: tmp, now: () => now });
  const first = r.read();
  assert.equal(first.cpuPercent, undefined, 'no base sample yet: unknown, not 0');
  assert.equal(first.memTotalBytes, 4_000_000 * 1024);
  assert.equal(first.memUsedBytes, 1_000_000 * 1024);
  assert.equal(first.socTempC, 61.234, 'the cpu zone, not the first one');
  assert.ok((first.diskTotalBytes ?? 0) > 0 && (first.diskUsedBytes ?? -1) >= 0);
  // +300 busy, +100 idle jiffies -> 75%.
  writeFileSync(join(proc, 'stat'), 'cpu  300 0 200 900 0 0 0 0 0 0\n');
  now = 1000;
  assert.equal(r.read().cpuPercent, 75);
  // Broken files: unknown, no throw.
  writeFileSync(join(proc, 'stat'), 'garbage');
  writeFileSync(join(proc, 'meminfo'), 'nothing here');
  writeFileSync(join(sys, 'class', 'thermal', 'thermal_zone1', 'temp'), 'hot\n');
  now = 3000;
  const broken = r.read();
  assert.equal(broken.memTotalBytes, undefined);
  assert.equal(broken.socTempC, undefined);
  const none = new SystemReader({ procRoot: join(tmp, 'nope'), sysRoot: join(tmp, 'nope') }).read();
  assert.deepEqual(none, {});
});
