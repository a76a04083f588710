import { readdirSync, readFileSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import type { SystemInput } from './types.js';

/** Thermal zone types that are the SoC/CPU on Raspberry Pi and common ARM/x86 boards. */
const SOC_ZONE = /cpu|soc|x86_pkg|k10temp|coretemp/i;
/** CPU % over less than this is noise; reuse the last value instead of sampling again. */
const MIN_CPU_SAMPLE_MS = 500;

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/**
 * Reads CPU, memory, disk and SoC temperature. `procRoot`/`sysRoot` default to /proc and /sys and
 * point at fixtures in tests. Every value it cannot read is left undefined (drawn as unknown).
 */
export class SystemReader {
  private prevCpu: { idle: number; total: number; at: number } | undefined;
  private lastCpuPct: number | undefined;
  private thermalPath: string | undefined | null = null;

  constructor(
    private readonly opts: {
      procRoot?: string;
      sysRoot?: string;
      diskPath?: string;
      now?: () => number;
    } = {},
  ) {}

  read(): SystemInput {
    const out: SystemInput = {};
    const cpu = this.cpu();
    if (cpu !== undefined) out.cpuPercent = cpu;
    const mem = this.memory();
    if (mem) {
      out.memUsedBytes = mem.used;
      out.memTotalBytes = mem.total;
    }
    const disk = this.disk();
    if (disk) {
      out.diskUsedBytes = disk.used;
      out.diskTotalBytes = disk.total;
    }
    const t = this.temperature();
    if (t !== undefined) out.socTempC = t;
    return out;
  }

  /** Busy share of all CPUs since the previous call (the first call has no base: unknown). */
  private cpu(): number | undefined {
    const now = (this.opts.now ?? Date.now)();
    if (this.prevCpu && now - this.prevCpu.at < MIN_CPU_SAMPLE_MS) return this.lastCpuPct;
    const text = readText(join(this.opts.procRoot ?? '/proc', 'stat'));
    const line = text?.split('\n', 1)[0];
    if (!line?.startsWith('cpu ')) return undefined;
    // user nice system idle iowait irq softirq steal (guest is already counted in user).
    const f = line.trim().split(/\s+/).slice(1, 9).map(Number);
    if (f.length < 4 || f.some((x) => !Number.isFinite(x))) return undefined;
    const idle = (f[3] ?? 0) + (f[4] ?? 0);
    const total = f.reduce((a, b) => a + b, 0);
    const prev = this.prevCpu;
    this.prevCpu = { idle, total, at: now };
    if (!prev || total <= prev.total) return this.lastCpuPct;
    this.lastCpuPct = Math.max(0, Math.min(100, (1 - (idle - prev.idle) / (total - prev.total)) * 100));
    return this.lastCpuPct;
  }

  private memory(): { used: number; total: number } | undefined {
    const text = readText(join(this.opts.procRoot ?? '/proc', 'meminfo'));
    if (!text) return undefined;
    const kb = (key: string) => {
      const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text);
      return m ? Number(m[1]) * 1024 : undefined;
    };
    const total = kb('MemTotal');
    const avail = kb('MemAvailable');
    if (total === undefined || avail === undefined || avail > total) return undefined;
    return { used: total - avail, total };
  }

  private disk(): { used: number; total: number } | undefined {
    if (!this.opts.diskPath) return undefined;
    try {
      const s = statfsSync(this.opts.diskPath);
      const total = s.blocks * s.bsize;
      // Used as `df` counts it: total less free (including root-reserved blocks).
      return { used: total - s.bfree * s.bsize, total };
    } catch {
      return undefined;
    }
  }

  /** The SoC zone found once (by type), else the first zone; millidegrees in sysfs. */
  private temperature(): number | undefined {
    if (this.thermalPath === null) this.thermalPath = this.findThermal();
    if (!this.thermalPath) return undefined;
    const raw = readText(this.thermalPath)?.trim();
    const v = Number(raw);
    if (!raw || !Number.isFinite(v)) return undefined;
    return v / 1000;
  }

  private findThermal(): string | undefined {
    const base = join(this.opts.sysRoot ?? '/sys', 'class', 'thermal');
    let zones: string[];
    try {
      zones = readdirSync(base)
        .filter((z) => z.startsWith('thermal_zone'))
        .sort((a, b) => Number(a.slice(12)) - Number(b.slice(12)));
    } catch {
      return undefined;
    }
    let first: string | undefined;
    for (const z of zones) {
      const temp = join(base, z, 'temp');
      if (readText(temp) === undefined) continue;
      first ??= temp;
      if (SOC_ZONE.test(readText(join(base, z, 'type')) ?? '')) return temp;
    }
    return first;
  }
}
