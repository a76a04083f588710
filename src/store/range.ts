/**
 * etcd's Range over the in-memory key index and the revision log: which keys a request names,
 * at which revision, counted, filtered, sorted and limited with etcd's rules. Values are read
 * from the log only for the keys that are returned.
 */
import { CompactedError, FutureRevisionError } from '../errors.js';
import { interval, keyId } from './keys.js';
import type { KeySpace } from './keyspace.js';
import type { LogReader, Version } from './sql/log.js';
import type { KeyValue, RangeRequest, SortTarget } from './types.js';

const EMPTY = Buffer.alloc(0);

export interface RangeResult {
  kvs: KeyValue[];
  more: boolean;
  count: number;
}

interface Hit {
  k: string;
  v: Version;
  value?: Buffer;
}

const FIELD: Record<Exclude<SortTarget, 'VALUE'>, (h: Hit) => number | string> = {
  KEY: (h) => h.k,
  VERSION: (h) => h.v.version,
  CREATE: (h) => h.v.createRevision,
  MOD: (h) => h.v.rev,
};

function compareHits(target: SortTarget): (a: Hit, b: Hit) => number {
  if (target === 'VALUE') return (a, b) => Buffer.compare(a.value!, b.value!);
  const f = FIELD[target];
  return (a, b) => {
    const x = f(a);
    const y = f(b);
    return x < y ? -1 : x > y ? 1 : 0;
  };
}

/** Ties break by key, ascending, whatever the order (etcd's rule). */
function sortHits(hits: Hit[], target: SortTarget, descending: boolean): void {
  const cmp = compareHits(target);
  hits.sort((a, b) => {
    const c = descending ? -cmp(a, b) : cmp(a, b);
    return c !== 0 ? c : a.k < b.k ? -1 : a.k > b.k ? 1 : 0;
  });
}

/**
 * Range at revision `current` or at `req.revision` when set. `current` is the newest revision
 * the caller may see (the durable one for clients, the writer's own inside a txn); `compacted`
 * the compaction point.
 */
export function rangeAt(
  space: KeySpace,
  log: LogReader,
  req: RangeRequest,
  current: number,
  compacted: number,
): RangeResult {
  const rev = req.revision && req.revision > 0 ? req.revision : current;
  if (rev > current) throw new FutureRevisionError(rev, current);
  if (rev < compacted) throw new CompactedError(compacted);
  const iv = interval(req.key, req.rangeEnd);
  let target: SortTarget = req.sortTarget ?? 'KEY';
  let order = req.sortOrder ?? 'NONE';
  const limit = req.limit && req.limit > 0 ? req.limit : 0;
  const filtered = !!(
    req.minModRevision ||
    req.maxModRevision ||
    req.minCreateRevision ||
    req.maxCreateRevision
  );
  // etcd 3.4 quirk, kept for compatibility: with order NONE, a non-KEY target, a limit and no
  // filters, etcd takes the first limit+1 keys in key order and only then sorts them.
  const quirk = target !== 'KEY' && order === 'NONE' && limit > 0 && !filtered && !req.countOnly;
  if (!quirk) {
    // etcd: a target other than KEY with order NONE sorts ascending.
    if (target !== 'KEY' && order === 'NONE') order = 'ASCEND';
    if (order === 'NONE') {
      target = 'KEY';
      order = 'ASCEND';
    }
  }
  const descending = order === 'DESCEND';

  let hits: Hit[] = [];
  const end = iv.end === undefined ? undefined : keyId(iv.end);
  // Key order comes from the scan itself; a descending KEY sort just scans backwards.
  for (const e of space.scan(keyId(iv.start), end, iv.single, target === 'KEY' && descending)) {
    const v = log.at(e, rev);
    if (v) hits.push({ k: e.k, v });
  }
  const count = hits.length;
  if (req.countOnly || count === 0) return { kvs: [], more: false, count };

  if (filtered) {
    const within = (x: number, min?: number, max?: number) => (!min || x >= min) && (!max || x <= max);
    hits = hits.filter(
      (h) =>
        within(h.v.rev, req.minModRevision, req.maxModRevision) &&
        within(h.v.createRevision, req.minCreateRevision, req.maxCreateRevision),
    );
  }
  let more = false;
  if (quirk) {
    if (hits.length > limit + 1) hits.length = limit + 1;
    if (target === 'VALUE') withValues(log, hits);
    sortHits(hits, target, false);
    more = hits.length > limit;
    if (more) hits.length = limit;
  } else {
    if (target === 'VALUE') withValues(log, hits);
    if (target !== 'KEY') sortHits(hits, target, descending);
    more = limit > 0 && hits.length > limit;
    if (more) hits.length = limit;
  }
  if (!req.keysOnly) withValues(log, hits);
  const kvs = hits.map((h) => ({
    key: Buffer.from(h.k, 'latin1'),
    createRevision: h.v.createRevision,
    modRevision: h.v.rev,
    version: h.v.version,
    value: req.keysOnly ? EMPTY : (h.value ?? EMPTY),
    lease: h.v.lease,
  }));
  return { kvs, more, count };
}

function withValues(log: LogReader, hits: Hit[]): void {
  const missing = hits.filter((h) => h.value === undefined).map((h) => h.v.id);
  if (missing.length === 0) return;
  const values = log.values(missing);
  for (const h of hits) if (h.value === undefined) h.value = values.get(h.v.id) ?? EMPTY;
}
