/**
 * Device secrets: random, shown once, stored only as a scrypt hash (src/secret.ts). A successful
 * check is remembered (`VerifiedCache`), so a reconnect storm of 1,000 devices does not cost a
 * minute of CPU; rotating or removing the device changes or drops the stored hash, which misses.
 */
import { randomBytes } from 'node:crypto';

export { hashSecret, VerifiedCache, verifySecret } from '../secret.js';

/** 24 random bytes as base64url: 32 characters, no shell or URL specials. */
export function newSecret(): string {
  return randomBytes(24).toString('base64url');
}
