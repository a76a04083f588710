/**
 * Device secrets: random, shown once, stored only as a scrypt hash
 * `scrypt$<N>$<r>$<p>$<salt b64>$<hash b64>`. scrypt costs ~50 ms of CPU per check on a Pi, so a
 * successful check is remembered (keyed by the stored hash and a SHA-256 of the password) and a
 * reconnect storm of 1,000 devices does not cost a minute of CPU; rotating or removing the
 * device changes or drops the stored hash, which misses the cache.
 */
import { createHash, randomBytes, scrypt as scryptCb, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';

const scrypt = promisify(scryptCb) as (
  pw: Buffer | string,
  salt: Buffer,
  len: number,
  opts: { N: number; r: number; p: number; maxmem: number },
) => Promise<Buffer>;

// N=2^14, r=8, p=1: node's defaults, the common interactive-login setting (16 MiB of memory)
const N = 16384;
const R = 8;
const P = 1;
const KEYLEN = 32;

/** 24 random bytes as base64url: 32 characters, no shell or URL specials. */
export function newSecret(): string {
  return randomBytes(24).toString('base64url');
}

export async function hashSecret(secret: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await scrypt(secret, salt, KEYLEN, { N, r: R, p: P, maxmem: 64 * 1024 * 1024 });
  return `scrypt$${N}$${R}$${P}$${salt.toString('base64')}$${key.toString('base64')}`;
}

export async function verifySecret(password: Buffer | string, stored: string): Promise<boolean> {
  const parts = stored.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false;
  const n = Number(parts[1]);
  const r = Number(parts[2]);
  const p = Number(parts[3]);
  const salt = Buffer.from(parts[4]!, 'base64');
  const want = Buffer.from(parts[5]!, 'base64');
  if (!Number.isInteger(n) || !Number.isInteger(r) || !Number.isInteger(p) || want.length === 0) return false;
  const got = await scrypt(password, salt, want.length, { N: n, r, p, maxmem: 256 * n * r + 1024 * 1024 });
  return timingSafeEqual(got, want);
}

/** Remembers successful checks; bounded (oldest dropped) so it cannot grow with hostile input. */
export class VerifiedCache {
  private readonly map = new Map<string, string>();
  constructor(private readonly max = 10_000) {}
  private static key(stored: string, password: Buffer | string): string {
    return createHash('sha256').update(stored).update('\0').update(password).digest('base64');
  }
  has(id: string, stored: string, password: Buffer | string): boolean {
    return this.map.get(id) === VerifiedCache.key(stored, password);
  }
  add(id: string, stored: string, password: Buffer | string): void {
    this.map.delete(id);
    this.map.set(id, VerifiedCache.key(stored, password));
    if (this.map.size > this.max) this.map.delete(this.map.keys().next().value as string);
  }
  drop(id: string): void {
    this.map.delete(id);
  }
}
