/**
 * The host reader (src/host.ts) on fixture /proc and /sys trees (a Raspberry Pi's thermal zone
 * and firmware throttling file, which this machine does not have), on this machine's real /proc,
 * and through the daemon's /metrics collectors: every value unknown stays absent, never 0.
 */
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Registry } from 'prom-client';
import { registerHostMetrics } from '../src/daemon/host.js';
import { HostReader, parseThrottled } from '../src/host.js';

const tmp = mkdtempSync(join(tmpdir(), 'ek-host-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** A /proc and /sys of a Raspberry Pi 4: two thermal zones, the firmware's get_throttled. */
function piFixture(name: string, throttled?: string): { proc: string; sys: string } {
  const proc = join(tmp, name, 'proc');
  const sys = join(tmp, name, 'sys');
  mkdirSync(proc, { recursive: true });
  for (const [zone, type, temp] of [
    ['thermal_zone0', 'acpitz', '27800'],
    ['thermal_zone1', 'cpu-thermal', '61234'],
  ]) {
    mkdirSync(join(sys, 'class', 'thermal', zone!), { recursive: true });
    writeFileSync(join(sys, 'class', 'thermal', zone!, 'type'), `${type}\n`);
    writeFileSync(join(sys, 'class', 'thermal', zone!, 'temp'), `${temp}\n`);
  }
  if (throttled !== undefined) {
    const fw = join(sys, 'devices', 'platform', 'soc', 'soc:firmware');
    mkdirSync(fw, { recursive: true });
    writeFileSync(join(fw, 'get_throttled'), throttled);
  }
  writeFileSync(
    join(proc, 'meminfo'),
    'MemTotal:        4000000 kB\nMemFree:  100 kB\nMemAvailable:    3000000 kB\n',
  );
  writeFileSync(
    join(proc, 'stat'),
    'cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0 0 0 0 0 0\ncpu1 50 0 50 400 0 0 0 0 0 0\nintr 1\n',
  );
  return { proc, sys };
}

async function scrape(reg: Registry): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const m of (await reg.metrics()).matchAll(/^(edgekeeper_host_\S+) (\S+)$/gm))
    out.set(m[1]!, Number(m[2]));
  return out;
}

test('reads CPU, memory, disk, the SoC zone and throttling from a Pi fixture', () => {
  const { proc, sys } = piFixture('pi', '50005\n');
  let now = 0;
  const r = new HostReader({ procRoot: proc, sysRoot: sys, diskPath: tmp, now: () => now, vcgencmd: false });
  const first = r.read();
  assert.equal(first.cpuPercent, undefined, 'no base sample yet: unknown, not 0');
  assert.equal(first.memTotalBytes, 4_000_000 * 1024);
  assert.equal(first.memUsedBytes, 1_000_000 * 1024);
  assert.equal(first.socTempC, 61.234, 'the cpu zone, not the first one');
  assert.equal(first.throttledBits, 0x50005);
  assert.ok((first.diskTotalBytes ?? 0) > 0 && (first.diskUsedBytes ?? -1) >= 0);
  assert.deepEqual(r.cpuTimes(), {
    seconds: { user: 1, nice: 0, system: 1, idle: 8, iowait: 0, irq: 0, softirq: 0, steal: 0 },
    cpus: 2,
  });
  // +300 busy, +100 idle jiffies -> 75%.
  writeFileSync(join(proc, 'stat'), 'cpu  300 0 200 900 0 0 0 0 0 0\n');
  now = 1000;
  assert.equal(r.read().cpuPercent, 75);
  // Broken files: unknown, no throw.
  writeFileSync(join(proc, 'stat'), 'garbage');
  writeFileSync(join(proc, 'meminfo'), 'nothing here');
  writeFileSync(join(sys, 'class', 'thermal', 'thermal_zone1', 'temp'), 'hot\n');
  writeFileSync(join(sys, 'devices', 'platform', 'soc', 'soc:firmware', 'get_throttled'), 'zzz');
  now = 3000;
  const broken = r.read();
  assert.equal(broken.memTotalBytes, undefined);
  assert.equal(broken.socTempC, undefined);
  assert.equal(broken.throttledBits, undefined);
  assert.equal(r.cpuTimes(), undefined);
  const none = new HostReader({
    procRoot: join(tmp, 'nope'),
    sysRoot: join(tmp, 'nope'),
    vcgencmd: false,
  }).read();
  assert.deepEqual(none, {});
});

test('get_throttled in every form the firmware and vcgencmd print it', () => {
  assert.equal(parseThrottled('0\n'), 0);
  assert.equal(parseThrottled('50005'), 0x50005);
  assert.equal(parseThrottled('0x80008\n'), 0x80008);
  assert.equal(parseThrottled('throttled=0xe0000\n'), 0xe0000);
  for (const bad of ['', 'throttled=', '0x', 'x50005', '123456789', '-1', '5 0'])
    assert.equal(parseThrottled(bad), undefined, JSON.stringify(bad));
});

test('without the sysfs file, vcgencmd is asked in the background, at most every 10 s', async () => {
  const { proc, sys } = piFixture('pi5');
  const bin = join(tmp, 'vcgencmd');
  const calls = join(tmp, 'vcgencmd.calls');
  writeFileSync(bin, `#!/bin/sh\necho "$1" >> '${calls}'\necho throttled=0x50005\n`);
  chmodSync(bin, 0o755);
  let now = 0;
  const r = new HostReader({ procRoot: proc, sysRoot: sys, now: () => now, vcgencmd: bin });
  assert.equal(r.throttled(), undefined, 'the first read does not wait for the process');
  await r.settled();
  assert.equal(r.throttled(), 0x50005);
  now = 5000;
  assert.equal(r.throttled(), 0x50005);
  await r.settled();
  now = 10_000;
  r.throttled();
  await r.settled();
  assert.deepEqual(readFileSync(calls, 'utf8').trim().split('\n'), ['get_throttled', 'get_throttled']);
  // No vcgencmd at all (not a Pi): asked once, then never again.
  const gone = new HostReader({
    procRoot: proc,
    sysRoot: sys,
    now: () => now,
    vcgencmd: join(tmp, 'missing'),
  });
  const inFlight = (h: HostReader) => (h as unknown as { pending?: Promise<void> }).pending;
  assert.equal(gone.throttled(), undefined);
  const asked = inFlight(gone);
  assert.ok(asked);
  await gone.settled();
  now = 60_000;
  assert.equal(gone.throttled(), undefined);
  assert.equal(inFlight(gone), asked, 'not asked again');
});

test('/metrics: host gauges from a Pi fixture, with fixed label values only', async () => {
  const { proc, sys } = piFixture('pim', '50005\n');
  const reg = new Registry();
  registerHostMetrics(reg, new HostReader({ procRoot: proc, sysRoot: sys, diskPath: tmp, vcgencmd: false }));
  const m = await scrape(reg);
  assert.equal(m.get('edgekeeper_host_cpu_seconds_total{mode="idle"}'), 8);
  assert.equal(m.get('edgekeeper_host_cpu_seconds_total{mode="user"}'), 1);
  assert.equal(m.get('edgekeeper_host_cpus'), 2);
  assert.equal(m.get('edgekeeper_host_memory_total_bytes'), 4_000_000 * 1024);
  assert.equal(m.get('edgekeeper_host_memory_available_bytes'), 3_000_000 * 1024);
  assert.equal(m.get('edgekeeper_host_soc_temperature_celsius'), 61.234);
  assert.ok((m.get('edgekeeper_host_disk_size_bytes') ?? 0) > 0);
  assert.ok(
    (m.get('edgekeeper_host_disk_avail_bytes') ?? -1) <= (m.get('edgekeeper_host_disk_free_bytes') ?? -2),
  );
  // 0x50005: under-voltage and throttled now; both have also occurred since boot.
  assert.equal(m.get('edgekeeper_host_throttle_active{condition="under_voltage"}'), 1);
  assert.equal(m.get('edgekeeper_host_throttle_active{condition="throttled"}'), 1);
  assert.equal(m.get('edgekeeper_host_throttle_active{condition="freq_capped"}'), 0);
  assert.equal(m.get('edgekeeper_host_throttle_occurred{condition="under_voltage"}'), 1);
  assert.equal(m.get('edgekeeper_host_throttle_occurred{condition="soft_temp_limit"}'), 0);
  const text = await reg.metrics();
  for (const l of text.matchAll(/\{([^}]*)\}/g))
    assert.match(
      l[1]!,
      /^(mode="(user|nice|system|idle|iowait|irq|softirq|steal)"|condition="(under_voltage|freq_capped|throttled|soft_temp_limit)")$/,
    );
});

test("/metrics on this machine's real /proc: values present, no throttling series off a Pi", async () => {
  const reg = new Registry();
  registerHostMetrics(reg, new HostReader({ diskPath: tmp, vcgencmd: join(tmp, 'no-vcgencmd') }));
  const m = await scrape(reg);
  assert.ok((m.get('edgekeeper_host_cpu_seconds_total{mode="user"}') ?? 0) > 0);
  assert.ok((m.get('edgekeeper_host_cpus') ?? 0) >= 1);
  assert.ok(
    (m.get('edgekeeper_host_memory_total_bytes') ?? 0) >
      (m.get('edgekeeper_host_memory_available_bytes') ?? 0),
  );
  assert.ok((m.get('edgekeeper_host_disk_size_bytes') ?? 0) > 0);
  assert.ok(![...m.keys()].some((k) => k.startsWith('edgekeeper_host_throttle')), 'no Pi firmware here');
  const none = new Registry();
  registerHostMetrics(
    none,
    new HostReader({ procRoot: join(tmp, 'nope'), sysRoot: join(tmp, 'nope'), vcgencmd: false }),
  );
  assert.equal((await scrape(none)).size, 0, 'nothing readable: no samples at all, never zeros');
});
