/**
 * The machine the node runs on: CPU, memory, the state directory's file system, the SoC
 * temperature and, on a Raspberry Pi, the firmware's throttling flags. Read from /proc and /sys
 * (both roots injectable, so tests use fixture directories); anything unreadable is undefined,
 * never 0. The status frames and the daemon's /metrics share this reader.
 */
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync, statfsSync } from 'node:fs';
import { join } from 'node:path';

/** Thermal zone types that are the SoC/CPU on Raspberry Pi and common ARM/x86 boards. */
const SOC_ZONE = /cpu|soc|x86_pkg|k10temp|coretemp/i;
/** CPU % over less than this is noise; reuse the last value instead of sampling again. */
const MIN_CPU_SAMPLE_MS = 500;
/** /proc/stat counts in USER_HZ, which Linux fixes at 100 on every architecture it exports it. */
const USER_HZ = 100;
/** The Raspberry Pi firmware driver's file (bits as hex); newer kernels may not have it. */
const THROTTLED_FILE = join('devices', 'platform', 'soc', 'soc:firmware', 'get_throttled');
/** vcgencmd (the fallback) is a process: asked at most this often. */
const VCGENCMD_EVERY_MS = 10_000;

/** The CPU time modes of /proc/stat's first line, in its order (guest time is inside user). */
export const CPU_MODES = ['user', 'nice', 'system', 'idle', 'iowait', 'irq', 'softirq', 'steal'] as const;
export type CpuMode = (typeof CPU_MODES)[number];

/**
 * The firmware's throttling conditions: bit n is "active now", bit n+16 "has occurred since
 * boot" (`vcgencmd get_throttled`).
 */
export const THROTTLE_CONDITIONS = {
  under_voltage: 0,
  freq_capped: 1,
  throttled: 2,
  soft_temp_limit: 3,
} as const;
export type ThrottleCondition = keyof typeof THROTTLE_CONDITIONS;

export interface HostReading {
  /** CPU busy over the last sampling interval, 0..100. */
  cpuPercent?: number;
  memUsedBytes?: number;
  memTotalBytes?: number;
  /** File system holding the state directory; used as `df` counts it (total less free). */
  diskUsedBytes?: number;
  diskTotalBytes?: number;
  /** SoC temperature, °C. */
  socTempC?: number;
  /** The firmware's get_throttled bits; undefined where the machine has no such firmware. */
  throttledBits?: number;
}

export interface DiskSpace {
  sizeBytes: number;
  /** Free blocks, root's reserve included. */
  freeBytes: number;
  /** What an unprivileged writer can still use. */
  availBytes: number;
}

export interface HostReaderOptions {
  procRoot?: string;
  sysRoot?: string;
  /** A path on the file system to report (the state directory). */
  diskPath?: string;
  now?: () => number;
  /** The vcgencmd binary asked when sysfs has no get_throttled; false: never. */
  vcgencmd?: string | false;
}

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** "50005", "0x50005" or "throttled=0x50005" -> bits; anything else undefined. */
export function parseThrottled(text: string | undefined): number | undefined {
  const m = /^(?:throttled=)?(?:0x)?([0-9a-f]{1,8})$/i.exec((text ?? '').trim());
  return m ? Number.parseInt(m[1]!, 16) : undefined;
}

export class HostReader {
  private prevCpu: { idle: number; total: number; at: number } | undefined;
  private lastCpuPct: number | undefined;
  private thermalPath: string | undefined | null = null;
  private vcgencmd: { bits?: number; at: number; running: boolean } | undefined;
  private vcgencmdGone = false;
  private pending: Promise<void> | undefined;

  constructor(private readonly opts: HostReaderOptions = {}) {}

  private get proc(): string {
    return this.opts.procRoot ?? '/proc';
  }

  private get sys(): string {
    return this.opts.sysRoot ?? '/sys';
  }

  /** Everything the status frame shows. */
  read(): HostReading {
    const out: HostReading = {};
    const cpu = this.cpuPercent();
    if (cpu !== undefined) out.cpuPercent = cpu;
    const mem = this.memory();
    if (mem) {
      out.memUsedBytes = mem.totalBytes - mem.availableBytes;
      out.memTotalBytes = mem.totalBytes;
    }
    const disk = this.disk();
    if (disk) {
      out.diskUsedBytes = disk.sizeBytes - disk.freeBytes;
      out.diskTotalBytes = disk.sizeBytes;
    }
    const t = this.temperature();
    if (t !== undefined) out.socTempC = t;
    const bits = this.throttled();
    if (bits !== undefined) out.throttledBits = bits;
    return out;
  }

  /** Cumulative CPU seconds per mode (all CPUs together), and the number of CPUs. */
  cpuTimes(): { seconds: Record<CpuMode, number>; cpus: number } | undefined {
    const text = readText(join(this.proc, 'stat'));
    const line = text?.split('\n', 1)[0];
    if (!line?.startsWith('cpu ')) return undefined;
    const f = line
      .trim()
      .split(/\s+/)
      .slice(1, 1 + CPU_MODES.length)
      .map(Number);
    if (f.length < 4 || f.some((x) => !Number.isFinite(x) || x < 0)) return undefined;
    const seconds = {} as Record<CpuMode, number>;
    CPU_MODES.forEach((m, i) => {
      seconds[m] = (f[i] ?? 0) / USER_HZ;
    });
    const cpus = (text!.match(/^cpu\d+ /gm) ?? []).length;
    return { seconds, cpus };
  }

  /** Busy share of all CPUs since the previous call (the first call has no base: unknown). */
  private cpuPercent(): number | undefined {
    const now = (this.opts.now ?? Date.now)();
    if (this.prevCpu && now - this.prevCpu.at < MIN_CPU_SAMPLE_MS) return this.lastCpuPct;
    const t = this.cpuTimes()?.seconds;
    if (!t) return undefined;
    const idle = t.idle + t.iowait;
    const total = CPU_MODES.reduce((a, m) => a + t[m], 0);
    const prev = this.prevCpu;
    this.prevCpu = { idle, total, at: now };
    if (!prev || total <= prev.total) return this.lastCpuPct;
    this.lastCpuPct = Math.max(0, Math.min(100, (1 - (idle - prev.idle) / (total - prev.total)) * 100));
    return this.lastCpuPct;
  }

  memory(): { totalBytes: number; availableBytes: number } | undefined {
    const text = readText(join(this.proc, 'meminfo'));
    if (!text) return undefined;
    const kb = (key: string) => {
      const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text);
      return m ? Number(m[1]) * 1024 : undefined;
    };
    const total = kb('MemTotal');
    const avail = kb('MemAvailable');
    if (total === undefined || avail === undefined || avail > total) return undefined;
    return { totalBytes: total, availableBytes: avail };
  }

  disk(): DiskSpace | undefined {
    if (!this.opts.diskPath) return undefined;
    try {
      const s = statfsSync(this.opts.diskPath);
      return { sizeBytes: s.blocks * s.bsize, freeBytes: s.bfree * s.bsize, availBytes: s.bavail * s.bsize };
    } catch {
      return undefined;
    }
  }

  /** The SoC zone found once (by type), else the first zone; millidegrees in sysfs. */
  temperature(): number | undefined {
    if (this.thermalPath === null) this.thermalPath = this.findThermal();
    if (!this.thermalPath) return undefined;
    const raw = readText(this.thermalPath)?.trim();
    const v = Number(raw);
    if (!raw || !Number.isFinite(v)) return undefined;
    return v / 1000;
  }

  /**
   * The firmware's throttling bits: from sysfs when the kernel has the file, else the last
   * answer of `vcgencmd get_throttled`, asked in the background at most every 10 s (so a read
   * never waits for a process). Undefined on machines with neither.
   */
  throttled(): number | undefined {
    const text = readText(join(this.sys, THROTTLED_FILE));
    if (text !== undefined) return parseThrottled(text);
    if (this.opts.vcgencmd === false || this.vcgencmdGone) return undefined;
    const now = (this.opts.now ?? Date.now)();
    const v = this.vcgencmd;
    if (!v || (!v.running && now - v.at >= VCGENCMD_EVERY_MS)) this.askVcgencmd(now);
    return v?.bits;
  }

  /** Resolves once the vcgencmd answer in flight (if any) has arrived (tests). */
  settled(): Promise<void> {
    return this.pending ?? Promise.resolve();
  }

  private askVcgencmd(now: number): void {
    const state = this.vcgencmd ?? { at: now, running: true };
    state.at = now;
    state.running = true;
    this.vcgencmd = state;
    this.pending = new Promise((resolve) => {
      execFile(
        this.opts.vcgencmd || 'vcgencmd',
        ['get_throttled'],
        { timeout: 2000, encoding: 'utf8' },
        (err, stdout) => {
          state.running = false;
          // Not installed: this is no Raspberry Pi (or its tools are missing); stop asking.
          if ((err as NodeJS.ErrnoException | null)?.code === 'ENOENT') this.vcgencmdGone = true;
          state.bits = err ? undefined : parseThrottled(stdout);
          resolve();
        },
      );
    });
  }

  private findThermal(): string | undefined {
    const base = join(this.sys, 'class', 'thermal');
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
