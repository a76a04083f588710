/**
 * Secrets stored as scrypt hashes, `scrypt$<N>$<r>$<p>$<salt b64>$<hash b64>`: device secrets
 * (MQTT ingest) and etcd users' passwords. N=2^14, r=8, p=1 (16 MiB, tens of ms of CPU on a Pi):
 * the usual interactive-login setting, of the order of etcd's bcrypt cost 10. Because a check
 * costs that much, callers remember successful ones in a `VerifiedCache`.
 */
import { createHash, randomBytes, scrypt as scryptCb, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';

const scrypt = promisify(scryptCb) as (
  pw: Buffer | string,
  salt: Buffer,
  len: number,
  opts: { N: number; r: number; p: number; maxmem: number },
) => Promise<Buffer>;

const N = 16384;
const R = 8;
const P = 1;
const KEYLEN = 32;

export async function hashSecret(secret: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await scrypt(secret, salt, KEYLEN, { N, r: R, p: P, maxmem: 64 * 1024 * 1024 });
  return `scrypt$${N}$${R}$${P}$${salt.toString('base64')}$${key.toString('base64')}`;
}

/** Whether `password` matches `stored`; false for anything that is not a hash of ours. */
export async function verifySecret(password: Buffer | string, stored: string): Promise<boolean> {
  const f = stored.split('$');
  if (f.length !== 6 || f[0] !== 'scrypt') return false;
  const [n, r, p] = [Number(f[1]), Number(f[2]), Number(f[3])];
  const want = Buffer.from(f[5]!, 'base64');
  // Bounded, so a damaged row cannot make a check take the machine's memory.
  if (![n, r, p].every(Number.isInteger) || n > 1 << 20 || r > 32 || p > 16 || want.length === 0)
    return false;
  const got = await scrypt(password, Buffer.from(f[4]!, 'base64'), want.length, {
    N: n,
    r,
    p,
    maxmem: 256 * n * r + 1024 * 1024,
  });
  return timingSafeEqual(got, want);
}

/**
 * Successful checks, remembered per id as a SHA-256 of the stored hash and the password: a new
 * secret or a removed id misses (the stored hash changes or is gone). Bounded (oldest dropped) so
 * it cannot grow with hostile input.
 */
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
