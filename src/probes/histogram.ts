/**
 * The histogram model. bpftrace's `hist()` uses power-of-two buckets: index 0 holds the value 0,
 * index i >= 1 holds [2^(i-1), 2^i - 1]. The probes measure integer microseconds truncated from
 * a continuous latency, so bucket i stands for the real interval [2^(i-1), 2^i) us, and its
 * upper bound 2^i us is a correct Prometheus `le` (inclusive) for every value in it.
 *
 * Each bpftrace print is one interval's delta (the programs clear their maps after printing).
 * `Log2Histogram` holds counts; `add` merges a delta; `percentile` estimates a quantile by linear
 * interpolation inside the bucket that holds it (so the error is bounded by the bucket's width,
 * a factor of two at worst).
 */
import type { RawBucket } from './parser.js';

/** 2^40 us is 12 days: no latency worth measuring falls beyond. */
export const MAX_INDEX = 41;

/** Index of the bucket a raw bpftrace bucket belongs to (by its lower bound). */
export function bucketIndex(min: number): number {
  if (min <= 0) return 0;
  const i = Math.floor(Math.log2(min)) + 1;
  return Math.min(i, MAX_INDEX);
}

/** Lower bound (inclusive) of bucket i, in the probe's unit. */
export function bucketLow(i: number): number {
  return i === 0 ? 0 : 2 ** (i - 1);
}

/** Upper bound (exclusive for the real value) of bucket i, in the probe's unit. */
export function bucketHigh(i: number): number {
  return 2 ** i;
}

export interface Percentiles {
  p50: number;
  p90: number;
  p99: number;
}

export class Log2Histogram {
  readonly counts: number[] = new Array(MAX_INDEX + 1).fill(0);
  total = 0;

  /** Merge raw bpftrace buckets (a `hist` line). Non-log2 buckets (lhist) land by their minimum. */
  addRaw(buckets: readonly RawBucket[]): void {
    for (const b of buckets) {
      if (b.count <= 0) continue;
      const i = bucketIndex(b.min);
      this.counts[i] = (this.counts[i] ?? 0) + b.count;
      this.total += b.count;
    }
  }

  add(other: Log2Histogram): void {
    for (let i = 0; i <= MAX_INDEX; i++) this.counts[i] = (this.counts[i] ?? 0) + (other.counts[i] ?? 0);
    this.total += other.total;
  }

  static fromRaw(buckets: readonly RawBucket[]): Log2Histogram {
    const h = new Log2Histogram();
    h.addRaw(buckets);
    return h;
  }

  /** Estimated q-quantile (0 < q <= 1), in the probe's unit; undefined when empty. */
  percentile(q: number): number | undefined {
    if (this.total === 0) return undefined;
    const rank = q * this.total;
    let seen = 0;
    for (let i = 0; i <= MAX_INDEX; i++) {
      const c = this.counts[i] ?? 0;
      if (c === 0) continue;
      if (seen + c >= rank) {
        const frac = (rank - seen) / c;
        const lo = bucketLow(i);
        return lo + frac * (bucketHigh(i) - lo);
      }
      seen += c;
    }
    return bucketHigh(MAX_INDEX);
  }

  percentiles(): Percentiles | undefined {
    if (this.total === 0) return undefined;
    return { p50: this.percentile(0.5)!, p90: this.percentile(0.9)!, p99: this.percentile(0.99)! };
  }

  /**
   * Estimated sum: each bucket's count at its midpoint. bpftrace's hist() keeps no sum; this is
   * what Prometheus' `_sum` gets (documented as an estimate).
   */
  sumEstimate(): number {
    let s = 0;
    for (let i = 0; i <= MAX_INDEX; i++) {
      const c = this.counts[i] ?? 0;
      if (c) s += c * (i === 0 ? 0.5 : (bucketLow(i) + bucketHigh(i)) / 2);
    }
    return s;
  }

  /** Compact form for storage: [[index, count], ...] of the non-empty buckets. */
  toPairs(): [number, number][] {
    const out: [number, number][] = [];
    for (let i = 0; i <= MAX_INDEX; i++) {
      const c = this.counts[i] ?? 0;
      if (c) out.push([i, c]);
    }
    return out;
  }
}
