/**
 * etcd's key-range permission test. A permission is a single key (no range_end), a range
 * [key, range_end), or everything from key on (range_end "\0"). Keys compare as bytes, except that
 * an empty key compares above every other key (etcd's "affine" byte comparison), which is what
 * makes an empty range end mean "to the end of the key space".
 * - A single key is allowed when some permission contains it.
 * - A range is allowed only when the user's permissions, merged, cover all of it without a gap.
 */

export const READ = 0;
export const WRITE = 1;
export const READWRITE = 2;

export interface Permission {
  permType: number;
  key: Buffer;
  rangeEnd: Buffer;
}

/** etcd's affine comparison: the empty key is +infinity. */
function cmp(a: Buffer, b: Buffer): number {
  if (a.length === 0) return b.length === 0 ? 0 : 1;
  if (b.length === 0) return -1;
  return Buffer.compare(a, b);
}

interface Interval {
  begin: Buffer;
  end: Buffer;
}

/** The interval a permission grants ([key, key+"\0") for a single key). */
function permInterval(p: Permission): Interval {
  if (p.rangeEnd.length === 0) return { begin: p.key, end: Buffer.concat([p.key, Buffer.from([0])]) };
  const fromKey = p.rangeEnd.length === 1 && p.rangeEnd[0] === 0;
  return { begin: p.key, end: fromKey ? Buffer.alloc(0) : p.rangeEnd };
}

/** A user's merged permissions of one kind (read or write). */
export class RangeSet {
  private readonly ivs: Interval[] = [];

  add(p: Permission): void {
    this.ivs.push(permInterval(p));
  }

  /** Does some interval contain `key`? */
  hasKey(key: Buffer): boolean {
    for (const iv of this.ivs) if (cmp(iv.begin, key) <= 0 && cmp(key, iv.end) < 0) return true;
    return false;
  }

  /** Do the intervals that meet [begin, end) cover it without a gap? ("\0" as end: to the end.) */
  covers(begin: Buffer, end: Buffer): boolean {
    const qEnd = end.length === 1 && end[0] === 0 ? Buffer.alloc(0) : end;
    const meeting = this.ivs
      .filter((iv) => cmp(iv.begin, qEnd) < 0 && cmp(begin, iv.end) < 0)
      .sort((a, b) => cmp(a.begin, b.begin));
    if (meeting.length === 0) return false;
    let minBegin = meeting[0]!.begin;
    let maxEnd = meeting[0]!.end;
    for (const iv of meeting.slice(1)) {
      if (cmp(maxEnd, iv.begin) < 0) return false;
      if (cmp(iv.end, maxEnd) > 0) maxEnd = iv.end;
      if (cmp(iv.begin, minBegin) < 0) minBegin = iv.begin;
    }
    return cmp(maxEnd, qEnd) >= 0 && cmp(minBegin, begin) <= 0;
  }
}

/** Read and write sets of a user's roles' permissions. */
export interface UserPerms {
  read: RangeSet;
  write: RangeSet;
}

export function mergePerms(perms: Iterable<Permission>): UserPerms {
  const read = new RangeSet();
  const write = new RangeSet();
  for (const p of perms) {
    if (p.permType === READ || p.permType === READWRITE) read.add(p);
    if (p.permType === WRITE || p.permType === READWRITE) write.add(p);
  }
  return { read, write };
}

/** Is [key, rangeEnd) (a single key when rangeEnd is empty) allowed by `set`? */
export function allowed(set: RangeSet, key: Buffer, rangeEnd: Buffer): boolean {
  return rangeEnd.length === 0 ? set.hasKey(key) : set.covers(key, rangeEnd);
}
