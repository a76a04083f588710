/** Byte-range helpers with etcd's conventions. */

const ZERO = Buffer.from([0]);

/** A half-open key interval; `end` undefined means "to the end of the key space". */
export interface KeyInterval {
  start: Buffer;
  end: Buffer | undefined;
  /** True when the request named a single key. */
  single: boolean;
}

/**
 * etcd: an empty range_end means the single key; range_end "\0" means every key >= key;
 * key and range_end both "\0" means every key.
 */
export function interval(key: Buffer, rangeEnd?: Buffer): KeyInterval {
  if (!rangeEnd || rangeEnd.length === 0) return { start: key, end: undefined, single: true };
  if (rangeEnd.length === 1 && rangeEnd[0] === 0) return { start: key, end: undefined, single: false };
  return { start: key, end: rangeEnd, single: false };
}

export function contains(iv: KeyInterval, key: Buffer): boolean {
  if (iv.single) return key.equals(iv.start);
  if (Buffer.compare(key, iv.start) < 0) return false;
  return iv.end === undefined || Buffer.compare(key, iv.end) < 0;
}

/** The smallest key greater than every key with this prefix ("\0" when there is none). */
export function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]! += 1;
      return end.subarray(0, i + 1);
    }
  }
  return ZERO;
}

export function intervalsIntersect(a: KeyInterval, b: KeyInterval): boolean {
  const aEnd = a.single ? undefined : a.end;
  const bEnd = b.single ? undefined : b.end;
  if (a.single) return contains(b, a.start);
  if (b.single) return contains(a, b.start);
  const startsBeforeBEnds = bEnd === undefined || Buffer.compare(a.start, bEnd) < 0;
  const bStartsBeforeAEnds = aEnd === undefined || Buffer.compare(b.start, aEnd) < 0;
  return startsBeforeBEnds && bStartsBeforeAEnds;
}

/** Map key for single-key lookups (latin1 keeps every byte). */
export function keyId(key: Buffer): string {
  return key.toString('latin1');
}
