/**
 * The host on /metrics: CPU time, memory, the state directory's file system, the SoC
 * temperature and the Raspberry Pi firmware's throttling flags, read at scrape time through the
 * reader the status frames use. A value the machine does not expose has no sample (never 0).
 * Every label value comes from a fixed set (CPU modes, throttling conditions).
 */
import type { Registry } from 'prom-client';
import { CPU_MODES, type HostReader, THROTTLE_CONDITIONS } from '../host.js';
import { registerView, type Sample } from '../metrics.js';

const one = (v: number | undefined): Sample[] => (v === undefined ? [] : [{ value: v }]);

export function registerHostMetrics(registry: Registry, host: HostReader): void {
  const add = (name: string, help: string, samples: () => Sample[], type: 'gauge' | 'counter' = 'gauge') =>
    registerView(registry, `edgekeeper_host_${name}`, help, type, samples);

  add(
    'cpu_seconds_total',
    'CPU time of all CPUs together since boot, by mode (/proc/stat)',
    () => {
      const t = host.cpuTimes();
      return t ? CPU_MODES.map((mode) => ({ labels: { mode }, value: t.seconds[mode] })) : [];
    },
    'counter',
  );
  add('cpus', 'CPUs the kernel counts in /proc/stat', () => one(host.cpuTimes()?.cpus));
  add('memory_total_bytes', 'MemTotal of /proc/meminfo', () => one(host.memory()?.totalBytes));
  add('memory_available_bytes', 'MemAvailable of /proc/meminfo: what can be used without swapping', () =>
    one(host.memory()?.availableBytes),
  );
  add('disk_size_bytes', "Size of the state directory's file system", () => one(host.disk()?.sizeBytes));
  add('disk_free_bytes', "Free bytes on the state directory's file system, root's reserve included", () =>
    one(host.disk()?.freeBytes),
  );
  add(
    'disk_avail_bytes',
    "Bytes on the state directory's file system an unprivileged writer can still use",
    () => one(host.disk()?.availBytes),
  );
  add('soc_temperature_celsius', 'SoC temperature (the cpu/soc thermal zone, else the first one)', () =>
    one(host.temperature()),
  );
  const throttle = (shift: number) => () => {
    const bits = host.throttled();
    if (bits === undefined) return [];
    return Object.entries(THROTTLE_CONDITIONS).map(([condition, bit]) => ({
      labels: { condition },
      value: (bits >>> (bit + shift)) & 1,
    }));
  };
  add(
    'throttle_active',
    'Raspberry Pi firmware: 1 while the condition holds (under_voltage, freq_capped, throttled, soft_temp_limit)',
    throttle(0),
  );
  add('throttle_occurred', 'Raspberry Pi firmware: 1 when the condition has held since boot', throttle(16));
}
