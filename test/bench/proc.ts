/**
 * What benches read about another process from /proc: its CPU time and its memory. Both return
 * NaN once the process is gone.
 */
import { readFileSync } from 'node:fs';

/** Linux reports utime and stime in clock ticks of 1/100 s (USER_HZ) on every architecture. */
const USER_HZ = 100;

/** CPU time (user + system, all threads) the process has used so far, in ms. */
export function cpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // utime and stime are fields 14 and 15; the command name before them may contain spaces.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / USER_HZ;
  } catch {
    return Number.NaN;
  }
}

/** Resident memory (VmRSS) and its peak (VmHWM), in MB. */
export function memoryMb(pid: number): { rss: number; hwm: number } {
  let s = '';
  try {
    s = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    // gone: NaN below
  }
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(s)?.[1] ?? Number.NaN);
  return { rss: kb('VmRSS') / 1024, hwm: kb('VmHWM') / 1024 };
}
