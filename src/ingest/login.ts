/**
 * Log-in throttling on the ingest thread, before a password reaches the main thread's scrypt
 * check (about 50 ms of a core on a Pi, and a libuv thread while it runs):
 * - every attempt takes a token from its device id's bucket and from its source address's
 *   bucket (`loginBurst` tokens, refilled at `loginRatePerSec`); a success gives them back, so
 *   only failures drain them. Without a token the attempt is refused unchecked (`throttled`,
 *   CONNACK "server unavailable");
 * - at most `loginConcurrency` checks run at once; the others wait, source addresses taking
 *   turns, so that one address's many attempts do not hold back everyone else's (a connection
 *   that closed while it waited is skipped);
 * - a device whose password already succeeded in this run skips both: its check is a cache hit
 *   on the main thread (no scrypt), so an attacker hammering its id cannot lock it out.
 * The thread only remembers a SHA-256 of the last good password per device (bounded like the
 * main thread's cache) and forgets it when the device is rotated or removed; the main thread
 * still decides every log-in against the stored hash.
 */
import { createHash } from 'node:crypto';
import type { Clock } from '../clock.js';
import { RateLimiter } from './bucket.js';
import type { PasswordCheck } from './edge.js';

export interface LoginLimits {
  loginBurst: number;
  loginRatePerSec: number;
  loginConcurrency: number;
}

// as the main thread's cache of successful checks
const KNOWN_MAX = 10_000;

export class LoginThrottle {
  private readonly byDevice: RateLimiter;
  private readonly byAddress: RateLimiter;
  private readonly known = new Map<string, string>();
  private running = 0;
  /** Checks waiting for a turn, by source address; addresses take turns (oldest first in each). */
  private readonly waiting = new Map<string, (() => void)[]>();
  private waitingCount = 0;

  constructor(
    private readonly limits: LoginLimits,
    clock: Clock,
  ) {
    this.byDevice = new RateLimiter(clock, limits.loginRatePerSec, limits.loginBurst);
    this.byAddress = new RateLimiter(clock, limits.loginRatePerSec, limits.loginBurst);
  }

  /** Checks waiting for a turn. */
  get queued(): number {
    return this.waitingCount;
  }

  /**
   * Runs `check` within the limits. Resolves 'throttled' without running it when the device id
   * or the address is out of tokens, or 'gone' when `alive()` turned false while waiting.
   */
  async attempt(
    device: string,
    address: string,
    password: Buffer,
    alive: () => boolean,
    check: () => Promise<PasswordCheck>,
  ): Promise<PasswordCheck | 'throttled' | 'gone'> {
    const digest = createHash('sha256').update(device).update('\0').update(password).digest('base64');
    if (this.known.get(device) === digest) return this.remember(device, digest, await check());
    if (!this.byDevice.take(device)) return 'throttled';
    if (!this.byAddress.take(address)) {
      this.byDevice.refund(device);
      return 'throttled';
    }
    // a finished check hands its turn straight to the next one waiting
    if (this.running < this.limits.loginConcurrency) this.running++;
    else await this.wait(address);
    try {
      if (!alive()) {
        this.byDevice.refund(device);
        this.byAddress.refund(address);
        return 'gone';
      }
      const result = await check();
      if (result === 'ok') {
        this.byDevice.refund(device);
        this.byAddress.refund(address);
      }
      return this.remember(device, digest, result);
    } finally {
      if (!this.next()) this.running--;
    }
  }

  private wait(address: string): Promise<void> {
    return new Promise((resolve) => {
      const list = this.waiting.get(address);
      if (list) list.push(resolve);
      else this.waiting.set(address, [resolve]);
      this.waitingCount++;
    });
  }

  /**
   * Hands the turn to the oldest check of the address whose turn it is, then sends that address
   * to the back: one address's many attempts wait behind everyone else's one.
   */
  private next(): boolean {
    const first = this.waiting.entries().next().value;
    if (!first) return false;
    const [address, list] = first;
    this.waiting.delete(address);
    const go = list.shift()!;
    if (list.length > 0) this.waiting.set(address, list);
    this.waitingCount--;
    go();
    return true;
  }

  /** The device was rotated or removed: its remembered password no longer skips the limits. */
  forget(device: string): void {
    this.known.delete(device);
  }

  private remember(device: string, digest: string, result: PasswordCheck): PasswordCheck {
    if (result !== 'ok') {
      if (this.known.get(device) === digest) this.known.delete(device);
      return result;
    }
    this.known.delete(device);
    this.known.set(device, digest);
    if (this.known.size > KNOWN_MAX) this.known.delete(this.known.keys().next().value as string);
    return result;
  }
}
