/**
 * A plain in-memory reference of etcd's KV semantics, for the model-based test. It keeps every
 * revision's events and derives historical state by replaying them: slow, obvious, and
 * independent of the SQLite store's design.
 */
import type {
  Compare,
  KeyValue,
  RangeRequest,
  RangeResponse,
  RequestOp,
  ResponseOp,
  TxnRequest,
  TxnResponse,
  WatchEvent,
} from '../../src/store/types.js';

const EMPTY = Buffer.alloc(0);

function inRange(key: Buffer, start: Buffer, end?: Buffer): boolean {
  if (!end || end.length === 0) return key.equals(start);
  if (Buffer.compare(key, start) < 0) return false;
  if (end.length === 1 && end[0] === 0) return true;
  return Buffer.compare(key, end) < 0;
}

export class Model {
  rev = 1;
  compactRev = 0;
  state = new Map<string, KeyValue>();
  history: { rev: number; events: WatchEvent[] }[] = [];
  leases = new Set<bigint>();

  private stateAt(rev: number): Map<string, KeyValue> {
    const m = new Map<string, KeyValue>();
    for (const h of this.history) {
      if (h.rev > rev) break;
      for (const e of h.events) {
        if (e.type === 'PUT') m.set(e.kv.key.toString('latin1'), e.kv);
        else m.delete(e.kv.key.toString('latin1'));
      }
    }
    return m;
  }

  range(req: RangeRequest, view = this.rev, viewState = this.state): RangeResponse {
    const rev = req.revision && req.revision > 0 ? req.revision : view;
    if (rev > view) throw new Error('EDGE_ERR_FUTURE_REV');
    if (rev < this.compactRev) throw new Error('EDGE_ERR_COMPACTED');
    const st = rev === view ? viewState : this.stateAt(rev);
    let kvs = [...st.values()].filter((kv) => inRange(kv.key, req.key, req.rangeEnd));
    kvs.sort((a, b) => Buffer.compare(a.key, b.key));
    const count = kvs.length;
    if (req.countOnly) return { header: { revision: view }, kvs: [], more: false, count };
    const ok = (v: number, min?: number, max?: number) => (!min || v >= min) && (!max || v <= max);
    kvs = kvs.filter(
      (kv) =>
        ok(kv.modRevision, req.minModRevision, req.maxModRevision) &&
        ok(kv.createRevision, req.minCreateRevision, req.maxCreateRevision),
    );
    let target = req.sortTarget ?? 'KEY';
    let order = req.sortOrder ?? 'NONE';
    const filtered = !!(
      req.minModRevision ||
      req.maxModRevision ||
      req.minCreateRevision ||
      req.maxCreateRevision
    );
    // etcd 3.4: order NONE + non-KEY target + limit, unfiltered: first limit+1 keys, then sort.
    if (target !== 'KEY' && order === 'NONE' && req.limit && req.limit > 0 && !filtered)
      kvs = kvs.slice(0, req.limit + 1);
    if (target !== 'KEY' && order === 'NONE') order = 'ASCEND';
    if (order === 'NONE') target = 'KEY';
    if (order !== 'NONE') {
      const f = (kv: KeyValue): number | Buffer =>
        target === 'KEY'
          ? kv.key
          : target === 'VERSION'
            ? kv.version
            : target === 'CREATE'
              ? kv.createRevision
              : target === 'MOD'
                ? kv.modRevision
                : kv.value;
      kvs.sort((a, b) => {
        const fa = f(a);
        const fb = f(b);
        let c = typeof fa === 'number' ? fa - (fb as number) : Buffer.compare(fa, fb as Buffer);
        if (order === 'DESCEND') c = -c;
        return c || Buffer.compare(a.key, b.key);
      });
    }
    const limit = req.limit && req.limit > 0 ? req.limit : 0;
    const more = limit > 0 && kvs.length > limit;
    if (more) kvs = kvs.slice(0, limit);
    if (req.keysOnly) kvs = kvs.map((kv) => ({ ...kv, value: EMPTY }));
    return { header: { revision: view }, kvs, more, count };
  }

  /** etcd refuses a branch that puts a key twice or puts a key a delete of the branch covers. */
  private dups(ops: RequestOp[]): { puts: string[]; dels: { key: Buffer; rangeEnd?: Buffer }[] } {
    const dels = ops.flatMap((o) => ('deleteRange' in o ? [o.deleteRange] : []));
    const puts: string[] = [];
    const hit = (k: string) => dels.some((d) => inRange(Buffer.from(k, 'latin1'), d.key, d.rangeEnd));
    for (const o of ops) {
      if (!('txn' in o)) continue;
      const a = this.dups(o.txn.success ?? []);
      const c = this.dups(o.txn.failure ?? []);
      for (const k of a.puts) {
        if (puts.includes(k) || hit(k)) throw new Error('EDGE_ERR_DUPLICATE_KEY');
        puts.push(k);
      }
      for (const k of c.puts) {
        if ((puts.includes(k) && !a.puts.includes(k)) || hit(k)) throw new Error('EDGE_ERR_DUPLICATE_KEY');
        puts.push(k);
      }
      dels.push(...a.dels, ...c.dels);
    }
    for (const o of ops) {
      if (!('put' in o)) continue;
      const k = o.put.key.toString('latin1');
      if (puts.includes(k) || hit(k)) throw new Error('EDGE_ERR_DUPLICATE_KEY');
      puts.push(k);
    }
    return { puts, dels };
  }

  txn(req: TxnRequest): TxnResponse {
    this.dups(req.success ?? []);
    this.dups(req.failure ?? []);
    const next = this.rev + 1;
    const staged = new Map(this.state);
    const events: WatchEvent[] = [];
    const ctx = { wrote: false };
    const run = (t: TxnRequest): TxnResponse => {
      const ok = (t.compare ?? []).every((c) => this.compare(c, staged));
      const responses: ResponseOp[] = [];
      for (const op of (ok ? t.success : t.failure) ?? [])
        responses.push(this.op(op, next, staged, events, ctx, run));
      return { header: { revision: 0 }, succeeded: ok, responses };
    };
    const res = run(req);
    if (ctx.wrote) {
      for (const e of events)
        if (e.type === 'PUT' && e.kv.lease !== 0n && !this.leases.has(e.kv.lease))
          throw new Error('EDGE_ERR_LEASE_NOT_FOUND');
      this.rev = next;
      this.state = staged;
      this.history.push({ rev: next, events });
    }
    res.header.revision = this.rev;
    return res;
  }

  private op(
    op: RequestOp,
    next: number,
    st: Map<string, KeyValue>,
    events: WatchEvent[],
    ctx: { wrote: boolean },
    run: (t: TxnRequest) => TxnResponse,
  ): ResponseOp {
    if ('range' in op) {
      const view = ctx.wrote ? next : next - 1;
      return { range: this.range(op.range, view, st) };
    }
    if ('put' in op) {
      const k = op.put.key.toString('latin1');
      const cur = st.get(k);
      if ((op.put.ignoreValue || op.put.ignoreLease) && !cur) throw new Error('EDGE_ERR_KEY_NOT_FOUND');
      const lease = op.put.ignoreLease ? cur!.lease : (op.put.lease ?? 0n);
      if (lease !== 0n && !this.leases.has(lease)) throw new Error('EDGE_ERR_LEASE_NOT_FOUND');
      const kv: KeyValue = {
        key: op.put.key,
        createRevision: cur ? cur.createRevision : next,
        modRevision: next,
        version: cur ? cur.version + 1 : 1,
        value: op.put.ignoreValue ? cur!.value : (op.put.value ?? EMPTY),
        lease,
      };
      st.set(k, kv);
      events.push({ type: 'PUT', kv, ...(cur ? { prevKv: cur } : {}) });
      ctx.wrote = true;
      return { put: { header: { revision: next }, ...(op.put.prevKv && cur ? { prevKv: cur } : {}) } };
    }
    if ('deleteRange' in op) {
      const gone = [...st.values()]
        .filter((kv) => inRange(kv.key, op.deleteRange.key, op.deleteRange.rangeEnd))
        .sort((a, b) => Buffer.compare(a.key, b.key));
      for (const kv of gone) {
        st.delete(kv.key.toString('latin1'));
        events.push({
          type: 'DELETE',
          kv: { key: kv.key, createRevision: 0, modRevision: next, version: 0, value: EMPTY, lease: 0n },
          prevKv: kv,
        });
      }
      if (gone.length) ctx.wrote = true;
      return {
        deleteRange: {
          header: { revision: ctx.wrote ? next : next - 1 },
          deleted: gone.length,
          prevKvs: op.deleteRange.prevKv ? gone : [],
        },
      };
    }
    const inner = run(op.txn);
    inner.header.revision = ctx.wrote ? next : next - 1;
    return { txn: inner };
  }

  private compare(c: Compare, st: Map<string, KeyValue>): boolean {
    const kvs = [...st.values()].filter((kv) => inRange(kv.key, c.key, c.rangeEnd));
    const zero: KeyValue = {
      key: c.key,
      createRevision: 0,
      modRevision: 0,
      version: 0,
      value: EMPTY,
      lease: 0n,
    };
    if (kvs.length === 0 && c.target === 'VALUE') return false;
    return (kvs.length ? kvs : [zero]).every((kv) => {
      const d =
        c.target === 'VERSION'
          ? kv.version - (c.version ?? 0)
          : c.target === 'CREATE'
            ? kv.createRevision - (c.createRevision ?? 0)
            : c.target === 'MOD'
              ? kv.modRevision - (c.modRevision ?? 0)
              : c.target === 'VALUE'
                ? Buffer.compare(kv.value, c.value ?? EMPTY)
                : Number(kv.lease - (c.lease ?? 0n));
      return c.result === 'EQUAL'
        ? d === 0
        : c.result === 'GREATER'
          ? d > 0
          : c.result === 'LESS'
            ? d < 0
            : d !== 0;
    });
  }

  revoke(id: bigint): number {
    if (!this.leases.has(id)) throw new Error('EDGE_ERR_LEASE_NOT_FOUND');
    this.leases.delete(id);
    const keys = [...this.state.values()].filter((kv) => kv.lease === id).map((kv) => kv.key);
    if (keys.length > 0) {
      const success = keys.map((key) => ({ deleteRange: { key } }));
      this.leases.add(id); // keep the lease valid for the delete txn itself
      this.txn({ success });
      this.leases.delete(id);
    }
    return this.rev;
  }

  compact(rev: number): void {
    if (rev <= this.compactRev) throw new Error('EDGE_ERR_COMPACTED');
    if (rev > this.rev) throw new Error('EDGE_ERR_FUTURE_REV');
    this.compactRev = rev;
  }

  /** Every event from `start` (inclusive) in the interval, as a watcher must see them. */
  events(start: number, key: Buffer, end: Buffer | undefined, prevKv: boolean): WatchEvent[] {
    const out: WatchEvent[] = [];
    for (const h of this.history) {
      if (h.rev < start) continue;
      for (const e of h.events) {
        if (!inRange(e.kv.key, key, end)) continue;
        out.push(prevKv && e.prevKv ? e : { type: e.type, kv: e.kv });
      }
    }
    return out;
  }
}
