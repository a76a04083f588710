/** Number and time formatting for the frame: short, fixed units, "unknown" for missing. */

export const UNKNOWN = 'unknown';

const isNum = (v: number | undefined): v is number => typeof v === 'number' && Number.isFinite(v);

/**
 * 1234567 -> "1,234,567"; undefined -> "unknown". By hand, not toLocaleString: that pulls ICU's
 * number and locale data into memory, ~6 MB of the daemon's RSS for a comma.
 */
export function fmtInt(v: number | undefined): string {
  if (!isNum(v)) return UNKNOWN;
  const n = Math.round(v);
  const digits = String(Math.abs(n));
  // past 1e21 String() switches to exponent notation; nothing on a frame gets there
  if (digits.includes('e')) return String(n);
  let out = '';
  for (let i = 0; i < digits.length; i++) {
    if (i > 0 && (digits.length - i) % 3 === 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? `-${out}` : out;
}

/** 1234 -> "1.2k", 2_500_000 -> "2.5M": for narrow slots. */
export function fmtCount(v: number | undefined): string {
  if (!isNum(v)) return UNKNOWN;
  const a = Math.abs(v);
  if (a < 1000) return String(Math.round(v));
  if (a < 1e6) return `${(v / 1e3).toFixed(a < 1e4 ? 1 : 0)}k`;
  if (a < 1e9) return `${(v / 1e6).toFixed(a < 1e7 ? 1 : 0)}M`;
  return `${(v / 1e9).toFixed(1)}G`;
}

/** Bytes in binary units: "812 KB", "12.3 MB", "3.7 GB" (KB = 1024 bytes, as `df -h`). */
export function fmtBytes(v: number | undefined): string {
  if (!isNum(v)) return UNKNOWN;
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let x = v;
  let i = 0;
  while (x >= 1024 && i < units.length - 1) {
    x /= 1024;
    i++;
  }
  return `${i === 0 || x >= 100 ? Math.round(x) : x.toFixed(1)} ${units[i]}`;
}

/** Milliseconds of latency: "850 µs", "4.8 ms", "120 ms", "2.3 s". */
export function fmtMs(v: number | undefined): string {
  if (!isNum(v)) return UNKNOWN;
  if (v < 1) return `${Math.round(v * 1000)} µs`;
  if (v < 10) return `${v.toFixed(1)} ms`;
  if (v < 1000) return `${Math.round(v)} ms`;
  return `${(v / 1000).toFixed(1)} s`;
}

/** An age or uptime: "45s", "12m", "3h 5m", "4d 2h". */
export function fmtAge(ms: number | undefined): string {
  if (!isNum(ms)) return UNKNOWN;
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h ${m % 60}m`;
  const d = Math.floor(h / 24);
  return `${d}d ${h % 24}h`;
}

/** Like fmtAge but coarse to the minute, so the frame does not change every second. */
export function fmtAgeCoarse(ms: number | undefined): string {
  if (!isNum(ms)) return UNKNOWN;
  if (ms < 60_000) return '<1m';
  return fmtAge(ms);
}

export function fmtPercent(v: number | undefined): string {
  if (!isNum(v)) return UNKNOWN;
  return `${Math.round(v)}%`;
}

export function fmtTemp(v: number | undefined): string {
  if (!isNum(v)) return UNKNOWN;
  return `${Math.round(v)} °C`;
}

const clockFormats = new Map<string, Intl.DateTimeFormat>();

/**
 * "14:05" in `timeZone`, or in the process's zone. Intl only for a configured zone: its
 * formatter loads ICU data (~2 MB of RSS) that the process's own zone does not need.
 */
export function fmtClock(ms: number, timeZone?: string): string {
  if (!timeZone) {
    const d = new Date(ms);
    return `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
  }
  let f = clockFormats.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-GB', { hour: '2-digit', minute: '2-digit', hour12: false, timeZone });
    clockFormats.set(timeZone, f);
  }
  return f.format(ms);
}

export { isNum };
