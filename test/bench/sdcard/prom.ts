/** Reading the servers' Prometheus text: samples, and histogram quantiles between two scrapes. */

export interface Sample {
  /** Metric name with its labels, as printed (`name{a="b"}`). */
  series: string;
  name: string;
  value: number;
}

export function samples(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m) out.push({ series: m[1]! + (m[2] ?? ''), name: m[1]!, value: Number(m[3]) });
  }
  return out;
}

/** Sum of every series of `name` (all label sets). */
export function total(text: string, name: string): number {
  return samples(text)
    .filter((s) => s.name === name)
    .reduce((a, s) => a + s.value, 0);
}

/** A histogram's cumulative buckets (le -> count), summed over label sets. */
function buckets(text: string, name: string): Map<number, number> {
  const out = new Map<number, number>();
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}_bucket{`)) continue;
    const m = /le="([^"]+)"\}\s+(\S+)/.exec(line);
    if (!m) continue;
    const le = m[1] === '+Inf' ? Number.POSITIVE_INFINITY : Number(m[1]);
    out.set(le, (out.get(le) ?? 0) + Number(m[2]));
  }
  return out;
}

export interface HistogramWindow {
  /** Observations between the two scrapes. */
  n: number;
  meanMs: number | null;
  /** Quantiles as the upper bound of their bucket, in ms; null when beyond the last finite bucket. */
  p50Ms: number | null;
  p99Ms: number | null;
  maxMs: number | null;
  /** Observations beyond the last finite bucket, and that bucket's bound in ms. */
  beyondLastBucket: number;
  lastBucketMs: number;
}

/** What a histogram (in seconds) recorded between scrape `a` and scrape `b`. */
export function histogramWindow(a: string, b: string, name: string): HistogramWindow | null {
  const before = buckets(a, name);
  const after = buckets(b, name);
  if (after.size === 0) return null;
  const les = [...after.keys()].sort((x, y) => x - y);
  const diff = les.map((le) => [le, after.get(le)! - (before.get(le) ?? 0)] as const);
  const n = diff.at(-1)![1];
  const q = (p: number) => {
    const hit = diff.find(([, c]) => c >= Math.max(1, p * n));
    return hit && Number.isFinite(hit[0]) ? hit[0] * 1000 : null;
  };
  const finite = les.filter(Number.isFinite);
  const lastFinite = finite.at(-1) ?? 0;
  const sum = total(b, `${name}_sum`) - total(a, `${name}_sum`);
  return {
    n,
    meanMs: n > 0 ? (sum / n) * 1000 : null,
    p50Ms: n > 0 ? q(0.5) : null,
    p99Ms: n > 0 ? q(0.99) : null,
    maxMs: n > 0 ? q(1) : null,
    beyondLastBucket: n - (diff.find(([le]) => le === lastFinite)?.[1] ?? 0),
    lastBucketMs: lastFinite * 1000,
  };
}

/** Every series whose name starts with one of `prefixes`: its value after, and its change. */
export function matching(
  a: string,
  b: string,
  prefixes: string[],
): Record<string, { value: number; delta: number }> {
  const before = new Map(samples(a).map((s) => [s.series, s.value]));
  const out: Record<string, { value: number; delta: number }> = {};
  for (const s of samples(b)) {
    if (!prefixes.some((p) => s.name.startsWith(p))) continue;
    out[s.series] = { value: s.value, delta: s.value - (before.get(s.series) ?? 0) };
  }
  return out;
}
