/**
 * Snapshot building (validation of whatever the sources hand us, derived alerts, unknowns) and
 * the change hash at display precision.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { buildSnapshot, overallStatus, type SnapshotInputs, snapshotHash } from '../../src/frames/index.js';
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

test('devices, disk, heat and the firmware become alerts; the header word is always the worst alert', () => {
  const failing = buildSnapshot(inputs.failing!);
  const texts = failing.alerts.map((a) => `${a.severity} ${a.text}`);
  assert.ok(texts.includes('critical every device offline: 12'), texts.join(' | '));
  assert.ok(texts.includes('critical disk 99% full: writes are about to fail'), texts.join(' | '));
  assert.ok(texts.includes('warning under-voltage: the power supply is too weak'), texts.join(' | '));
  assert.equal(failing.devices?.attentionTotal, 12, 'the source says 12 need attention, 3 are named');
  const some = buildSnapshot(inputs.offline!);
  assert.ok(some.alerts.some((a) => a.severity === 'warning' && a.text === 'devices offline: 13 of 42'));
  assert.ok(
    some.alerts.some((a) => a.severity === 'warning' && a.text === 'devices sending refused reports: 1'),
  );
  const hot = buildSnapshot({ ...inputs.healthy!, system: { socTempC: 86, throttledBits: 0x4 } });
  assert.deepEqual(
    hot.alerts.map((a) => [a.severity, a.text]),
    [['critical', 'SoC 86 °C: the CPU throttles hard']],
    'throttled for heat is said once',
  );
  const capped = buildSnapshot({ ...inputs.healthy!, system: { throttledBits: 0x2 } });
  assert.deepEqual(
    capped.alerts.map((a) => a.text),
    ['the firmware throttles the CPU'],
  );
  const past = buildSnapshot({ ...inputs.healthy!, system: { throttledBits: 0x50000 } });
  assert.deepEqual(past.alerts, [], 'what happened since boot is a metric, not an alert');
  for (const [name, inp] of Object.entries(inputs)) {
    const snap = buildSnapshot(inp);
    const word = overallStatus(snap).word;
    const worst = snap.alerts[0]?.severity;
    assert.equal(
      word,
      worst === 'critical' ? 'ALERT' : worst === 'warning' ? 'WARN' : name === 'unknown' ? '?' : 'OK',
      name,
    );
  }
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
