/**
 * Mutex and leader election on the store's primitives, with the key layout and behaviour of
 * etcd's client-side `concurrency` package, so edgekeeper's Lock/Election services, etcdctl's
 * `lock`/`elect` and other etcd clients all agree:
 * - a contender's key is `<name>/<lease ID in lower-case hex>`, attached to its lease;
 * - the holder is the key with the lowest create revision under `<name>/`;
 * - a waiter watches only the key created just before its own (no thundering herd).
 */
import { LeaseNotFoundError, NotLeaderError } from '../errors.js';
import { prefixEnd } from './keys.js';
import type { KeyValue, LeaderKey, ResponseHeader, Store, TxnResponse } from './types.js';

const EMPTY = Buffer.alloc(0);

type Host = Pick<Store, 'range' | 'txn' | 'deleteRange' | 'watch'>;

export class Recipes {
  constructor(private readonly store: Host) {}

  private keys(name: Buffer, lease: bigint) {
    const pfx = Buffer.concat([name, Buffer.from('/')]);
    return { pfx, end: prefixEnd(pfx), key: Buffer.concat([pfx, Buffer.from(lease.toString(16))]) };
  }

  /** Create our key unless it exists; returns its create revision and the txn response. */
  private async enter(
    key: Buffer,
    value: Buffer,
    lease: bigint,
  ): Promise<{ rev: number; txn: TxnResponse; existing?: KeyValue }> {
    const txn = await this.store.txn({
      compare: [{ key, target: 'CREATE', result: 'EQUAL', createRevision: 0 }],
      success: [{ put: { key, value, lease } }],
      failure: [{ range: { key } }],
    });
    if (txn.succeeded) return { rev: txn.header.revision, txn };
    const existing = (txn.responses[0] as { range: { kvs: KeyValue[] } }).range.kvs[0]!;
    return { rev: existing.createRevision, txn, existing };
  }

  /** Wait until no key under the prefix has a create revision <= maxCreateRev. */
  private async waitDeletes(
    pfx: Buffer,
    end: Buffer,
    maxCreateRev: number,
    signal?: AbortSignal,
  ): Promise<void> {
    for (;;) {
      signal?.throwIfAborted();
      const r = this.store.range({
        key: pfx,
        rangeEnd: end,
        maxCreateRevision: maxCreateRev,
        sortTarget: 'CREATE',
        sortOrder: 'DESCEND',
        limit: 1,
      });
      const last = r.kvs[0];
      if (!last) return;
      await this.waitDelete(last.key, r.header.revision, signal);
    }
  }

  private waitDelete(key: Buffer, fromRev: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        h.cancel();
        reject(signal!.reason);
      };
      const h = this.store.watch(
        { key, startRevision: fromRev, noPut: true },
        {
          onEvents: () => {
            h.cancel();
            signal?.removeEventListener('abort', onAbort);
            resolve();
          },
          onCancel: (e) => {
            signal?.removeEventListener('abort', onAbort);
            reject(e);
          },
        },
      );
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  async lock(
    name: Buffer,
    lease: bigint,
    signal?: AbortSignal,
  ): Promise<{ header: ResponseHeader; key: Buffer }> {
    const { pfx, end, key } = this.keys(name, lease);
    const { rev } = await this.enter(key, EMPTY, lease);
    try {
      await this.waitDeletes(pfx, end, rev - 1, signal);
    } catch (e) {
      await this.store.deleteRange({ key });
      throw e;
    }
    // Our key must still be there: the lease may have expired while we waited.
    const mine = this.store.range({ key });
    if (mine.kvs.length === 0) throw new LeaseNotFoundError(lease);
    return { header: mine.header, key };
  }

  async unlock(key: Buffer): Promise<ResponseHeader> {
    return (await this.store.deleteRange({ key })).header;
  }

  async campaign(
    name: Buffer,
    lease: bigint,
    value: Buffer,
    signal?: AbortSignal,
  ): Promise<{ header: ResponseHeader; leader: LeaderKey }> {
    const { pfx, end, key } = this.keys(name, lease);
    const { rev, existing } = await this.enter(key, value, lease);
    const leader: LeaderKey = { name, key, rev, lease };
    if (existing && !existing.value.equals(value)) await this.proclaim(leader, value);
    try {
      await this.waitDeletes(pfx, end, rev - 1, signal);
    } catch (e) {
      await this.resign(leader);
      throw e;
    }
    const mine = this.store.range({ key });
    if (mine.kvs.length === 0) throw new LeaseNotFoundError(lease);
    return { header: mine.header, leader };
  }

  async proclaim(leader: LeaderKey, value: Buffer): Promise<ResponseHeader> {
    const txn = await this.store.txn({
      compare: [{ key: leader.key, target: 'CREATE', result: 'EQUAL', createRevision: leader.rev }],
      success: [{ put: { key: leader.key, value, lease: leader.lease } }],
    });
    if (!txn.succeeded) throw new NotLeaderError();
    return txn.header;
  }

  leader(name: Buffer): KeyValue | undefined {
    const pfx = Buffer.concat([name, Buffer.from('/')]);
    return this.store.range({
      key: pfx,
      rangeEnd: prefixEnd(pfx),
      sortTarget: 'CREATE',
      sortOrder: 'ASCEND',
      limit: 1,
    }).kvs[0];
  }

  async resign(leader: LeaderKey): Promise<ResponseHeader> {
    const txn = await this.store.txn({
      compare: [{ key: leader.key, target: 'CREATE', result: 'EQUAL', createRevision: leader.rev }],
      success: [{ deleteRange: { key: leader.key } }],
    });
    return txn.header;
  }
}
