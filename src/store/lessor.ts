/**
 * Lease expiry, in memory. Keepalives only move an in-memory deadline (no disk write, as etcd);
 * the lease itself and its TTL are in the database. After a restart every lease gets its full
 * TTL again, as etcd does when a new leader takes over: a lease never expires because the node
 * was down.
 */
import type { Clock, Timer } from '../clock.js';
import { LeaseNotFoundError } from '../errors.js';

/** How often deadlines are checked; a lease expires at most this late. */
const TICK_MS = 250;

interface LeaseState {
  ttl: number;
  deadline: number;
  revoking: boolean;
}

export class Lessor {
  private readonly leases = new Map<bigint, LeaseState>();
  private timer?: Timer;

  constructor(
    private readonly clock: Clock,
    private readonly onExpire: (id: bigint) => void,
  ) {}

  start(): void {
    const tick = () => {
      const now = this.clock.monotonic();
      for (const [id, l] of this.leases) {
        if (!l.revoking && l.deadline <= now) {
          l.revoking = true;
          this.onExpire(id);
        }
      }
      this.timer = this.clock.setTimeout(tick, TICK_MS);
    };
    this.timer = this.clock.setTimeout(tick, TICK_MS);
  }

  stop(): void {
    this.timer?.cancel();
  }

  add(id: bigint, ttl: number): void {
    this.leases.set(id, { ttl, deadline: this.clock.monotonic() + ttl * 1000, revoking: false });
  }

  remove(id: bigint): void {
    this.leases.delete(id);
  }

  /** An expiry revoke failed (for example, the disk was full): try again at the next tick. */
  retry(id: bigint): void {
    const l = this.leases.get(id);
    if (l) l.revoking = false;
  }

  has(id: bigint): boolean {
    const l = this.leases.get(id);
    return !!l && !l.revoking;
  }

  keepAlive(id: bigint): number {
    const l = this.leases.get(id);
    if (!l || l.revoking) throw new LeaseNotFoundError(id);
    l.deadline = this.clock.monotonic() + l.ttl * 1000;
    return l.ttl;
  }

  /** Remaining whole seconds (rounded down, as etcd) and the granted TTL. */
  timeToLive(id: bigint): { ttl: number; granted: number } {
    const l = this.leases.get(id);
    if (!l || l.revoking) throw new LeaseNotFoundError(id);
    return { ttl: Math.max(0, Math.floor((l.deadline - this.clock.monotonic()) / 1000)), granted: l.ttl };
  }

  list(): bigint[] {
    return [...this.leases].filter(([, l]) => !l.revoking).map(([id]) => id);
  }

  get size(): number {
    return this.leases.size;
  }
}
