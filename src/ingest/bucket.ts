import type { Clock } from '../clock.js';

/**
 * Per-device token buckets on the injected clock: `rate` tokens per second up to `burst`.
 * Buckets of devices not seen for a while are dropped so the map stays bounded by the active set.
 */
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private lastSweep: number;
  constructor(
    private readonly clock: Clock,
    private readonly rate: number,
    private readonly burst: number,
  ) {
    this.lastSweep = clock.monotonic();
  }

  /** Take one token; false when the device is over its rate. */
  take(id: string): boolean {
    const now = this.clock.monotonic();
    let b = this.buckets.get(id);
    if (!b) {
      b = { tokens: this.burst, at: now };
      this.buckets.set(id, b);
    } else {
      b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.rate);
      b.at = now;
    }
    if (now - this.lastSweep > 60_000) this.sweep(now);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  /** Give back a token taken by `take` (the attempt it paid for turned out fine). */
  refund(id: string): void {
    const b = this.buckets.get(id);
    if (b) b.tokens = Math.min(this.burst, b.tokens + 1);
  }

  private sweep(now: number): void {
    this.lastSweep = now;
    // a bucket that has refilled completely carries no state worth keeping
    const full = (this.burst / this.rate) * 1000;
    for (const [id, b] of this.buckets) if (now - b.at > full) this.buckets.delete(id);
  }
}
