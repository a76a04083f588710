/**
 * etcd's KV service (Range, Put, DeleteRange, Txn, Compact) over the store, and the conversions
 * between wire messages and the store's types that Watch, Lease and the recipes reuse.
 */
import type {
  Compare,
  CompareResult,
  CompareTarget,
  DeleteRangeRequest,
  DeleteRangeResponse,
  KeyValue,
  PutRequest,
  PutResponse,
  RangeRequest,
  RangeResponse,
  RequestOp,
  ResponseOp,
  SortOrder,
  SortTarget,
  TxnRequest,
  TxnResponse,
} from '../store/types.js';
import { EmptyKeyError } from '../errors.js';
import type { EtcdContext, Header } from './context.js';
import { Code, grpcError } from './errors.js';
import { big, buf, long, num } from './proto.js';
import type { Methods, Msg as M } from './rpc.js';

const SORT_ORDERS: SortOrder[] = ['NONE', 'ASCEND', 'DESCEND'];
const SORT_TARGETS: SortTarget[] = ['KEY', 'VERSION', 'CREATE', 'MOD', 'VALUE'];
const CMP_RESULTS: CompareResult[] = ['EQUAL', 'GREATER', 'LESS', 'NOT_EQUAL'];
const CMP_TARGETS: CompareTarget[] = ['VERSION', 'CREATE', 'MOD', 'VALUE', 'LEASE'];

/** etcd's ErrGRPCInvalidSortOption for enum values outside the declared ones. */
function invalidSort(): Error {
  return grpcError(Code.INVALID_ARGUMENT, 'etcdserver: invalid sort option');
}

export function rangeIn(m: M): RangeRequest {
  const order = SORT_ORDERS[m.sort_order as number];
  const target = SORT_TARGETS[m.sort_target as number];
  if (order === undefined || target === undefined) throw invalidSort();
  const rangeEnd = buf(m.range_end);
  const req: RangeRequest = { key: buf(m.key), sortOrder: order, sortTarget: target };
  if (rangeEnd.length) req.rangeEnd = rangeEnd;
  const limit = num(m.limit);
  if (limit) req.limit = limit;
  const revision = num(m.revision);
  if (revision) req.revision = revision;
  if (m.keys_only) req.keysOnly = true;
  if (m.count_only) req.countOnly = true;
  const minMod = num(m.min_mod_revision);
  if (minMod) req.minModRevision = minMod;
  const maxMod = num(m.max_mod_revision);
  if (maxMod) req.maxModRevision = maxMod;
  const minCreate = num(m.min_create_revision);
  if (minCreate) req.minCreateRevision = minCreate;
  const maxCreate = num(m.max_create_revision);
  if (maxCreate) req.maxCreateRevision = maxCreate;
  return req;
}

export function putIn(m: M): PutRequest {
  const value = buf(m.value);
  const lease = big(m.lease);
  // etcd's checkPutRequest: ignore_value/ignore_lease exclude a value/lease in the same request.
  if (m.ignore_value && value.length) throw grpcError(Code.INVALID_ARGUMENT, 'etcdserver: value is provided');
  if (m.ignore_lease && lease !== 0n) throw grpcError(Code.INVALID_ARGUMENT, 'etcdserver: lease is provided');
  const req: PutRequest = { key: buf(m.key), value };
  if (lease !== 0n) req.lease = lease;
  if (m.prev_kv) req.prevKv = true;
  if (m.ignore_value) req.ignoreValue = true;
  if (m.ignore_lease) req.ignoreLease = true;
  return req;
}

export function deleteIn(m: M): DeleteRangeRequest {
  const rangeEnd = buf(m.range_end);
  const req: DeleteRangeRequest = { key: buf(m.key) };
  if (rangeEnd.length) req.rangeEnd = rangeEnd;
  if (m.prev_kv) req.prevKv = true;
  return req;
}

function compareIn(c: M): Compare {
  const result = CMP_RESULTS[c.result as number];
  const target = CMP_TARGETS[c.target as number];
  if (result === undefined || target === undefined) {
    throw grpcError(Code.INVALID_ARGUMENT, 'edgekeeper: unknown compare result or target');
  }
  const out: Compare = { key: buf(c.key), target, result };
  const rangeEnd = buf(c.range_end);
  if (rangeEnd.length) out.rangeEnd = rangeEnd;
  switch (target) {
    case 'VERSION':
      out.version = num(c.version);
      break;
    case 'CREATE':
      out.createRevision = num(c.create_revision);
      break;
    case 'MOD':
      out.modRevision = num(c.mod_revision);
      break;
    case 'VALUE':
      out.value = buf(c.value);
      break;
    case 'LEASE':
      out.lease = big(c.lease);
      break;
  }
  return out;
}

function opIn(op: M): RequestOp {
  if (op.request_range) return { range: rangeIn(op.request_range) };
  if (op.request_put) return { put: putIn(op.request_put) };
  if (op.request_delete_range) return { deleteRange: deleteIn(op.request_delete_range) };
  if (op.request_txn) return { txn: txnIn(op.request_txn) };
  // etcd silently answers an empty op with an empty ResponseOp; we refuse it by name instead of
  // inventing a response shape (a deliberate difference; no real client sends one).
  throw grpcError(Code.INVALID_ARGUMENT, 'edgekeeper: txn request op has no request set');
}

export function txnIn(m: M): TxnRequest {
  const compare = m.compare as M[];
  const success = m.success as M[];
  const failure = m.failure as M[];
  return {
    compare: compare.length ? compare.map(compareIn) : [],
    success: success.length ? success.map(opIn) : [],
    failure: failure.length ? failure.map(opIn) : [],
  };
}

// --- responses --------------------------------------------------------------------------------

export interface WireKv {
  key: Buffer;
  create_revision: number | undefined;
  mod_revision: number | undefined;
  version: number | undefined;
  value: Buffer | undefined;
  lease: unknown;
}

/**
 * proto3 as etcd (Go) writes it: zero values are left out (undefined is skipped by the encoder),
 * so clients that distinguish "absent" from "zero" (JSON output, toObject) see what etcd sends.
 */
export function kvOut(kv: KeyValue): WireKv {
  return {
    key: kv.key,
    create_revision: kv.createRevision || undefined,
    mod_revision: kv.modRevision || undefined,
    version: kv.version || undefined,
    value: kv.value.length ? kv.value : undefined,
    lease: kv.lease === 0n ? undefined : long(kv.lease),
  };
}

function kvsOut(kvs: KeyValue[]): WireKv[] {
  const out = new Array<WireKv>(kvs.length);
  for (let i = 0; i < kvs.length; i++) out[i] = kvOut(kvs[i]!);
  return out;
}

/** A response header for `revision` (the full one, or a txn op's, which carries only the revision). */
type HeaderOf = (revision: number) => Header | { revision: number | undefined };

export function rangeOut(h: HeaderOf, r: RangeResponse): object {
  return {
    header: h(r.header.revision),
    kvs: kvsOut(r.kvs),
    more: r.more || undefined,
    count: r.count || undefined,
  };
}

export function putOut(h: HeaderOf, r: PutResponse): object {
  return r.prevKv
    ? { header: h(r.header.revision), prev_kv: kvOut(r.prevKv) }
    : { header: h(r.header.revision) };
}

export function deleteOut(h: HeaderOf, r: DeleteRangeResponse): object {
  return { header: h(r.header.revision), deleted: r.deleted || undefined, prev_kvs: kvsOut(r.prevKvs) };
}

// etcd's applier: a txn's op responses carry only the revision in their header, and a nested
// txn's own header stays empty (only the outermost txn gets the full header).
const opHeader = (revision: number) => ({ revision: revision || undefined });
const emptyHeader = () => ({ revision: undefined });

function opOut(op: ResponseOp): object {
  if ('range' in op) return { response_range: rangeOut(opHeader, op.range) };
  if ('put' in op) return { response_put: putOut(opHeader, op.put) };
  if ('deleteRange' in op) return { response_delete_range: deleteOut(opHeader, op.deleteRange) };
  return { response_txn: txnOut(emptyHeader, op.txn) };
}

export function txnOut(h: HeaderOf, r: TxnResponse): object {
  const responses = new Array<object>(r.responses.length);
  for (let i = 0; i < r.responses.length; i++) responses[i] = opOut(r.responses[i]!);
  return { header: h(r.header.revision), succeeded: r.succeeded || undefined, responses };
}

/**
 * etcd's applier, for a limited range with sort order NONE and a target other than KEY: it
 * fetches the first limit+1 keys in key order, sorts those ascending by the target and then
 * truncates to the limit — so the answer is not the global minimum. Clients (and our
 * differential test) see exactly that, so the etcd boundary reproduces it. (etcd v3 apply.go)
 */
function limitThenSort(ctx: EtcdContext, req: RangeRequest): RangeResponse {
  const limit = req.limit!;
  const target = req.sortTarget!;
  const r = ctx.store.range({
    ...req,
    sortOrder: 'NONE',
    sortTarget: 'KEY',
    limit: limit + 1,
    keysOnly: target === 'VALUE' ? false : req.keysOnly,
  });
  const kvs = r.kvs.slice();
  const key = (kv: KeyValue): number =>
    target === 'MOD' ? kv.modRevision : target === 'CREATE' ? kv.createRevision : kv.version;
  // Array.prototype.sort is stable: ties keep key order, as Go's insertion sort does for small n.
  kvs.sort(target === 'VALUE' ? (a, b) => Buffer.compare(a.value, b.value) : (a, b) => key(a) - key(b));
  const out = kvs.slice(0, limit);
  if (req.keysOnly && target === 'VALUE')
    for (let i = 0; i < out.length; i++) out[i] = { ...out[i]!, value: Buffer.alloc(0) };
  return { header: r.header, kvs: out, more: kvs.length > limit, count: r.count };
}

function needsLimitThenSort(req: RangeRequest): boolean {
  return (
    !!req.limit &&
    req.sortOrder === 'NONE' &&
    req.sortTarget !== 'KEY' &&
    !req.countOnly &&
    !req.minModRevision &&
    !req.maxModRevision &&
    !req.minCreateRevision &&
    !req.maxCreateRevision
  );
}

export function kvMethods(ctx: EtcdContext): Methods {
  const { store, hdr, alarms } = ctx;
  return {
    Range: (m: M) => {
      const req = rangeIn(m);
      return rangeOut(hdr, needsLimitThenSort(req) ? limitThenSort(ctx, req) : store.range(req));
    },
    Put: (m: M) => {
      const req = putIn(m);
      // etcd checks the request before its applier refuses it for an alarm.
      if (alarms.restricting) {
        if (req.key.length === 0) throw new EmptyKeyError();
        alarms.checkPut();
      }
      return store.put(req).then((r) => putOut(hdr, r));
    },
    DeleteRange: (m: M) => {
      const req = deleteIn(m);
      if (alarms.restricting) {
        if (req.key.length === 0) throw new EmptyKeyError();
        alarms.checkDelete();
      }
      return store.deleteRange(req).then((r) => deleteOut(hdr, r));
    },
    Txn: (m: M) => {
      const req = txnIn(m);
      if (alarms.restricting) alarms.checkTxn(m);
      return store.txn(req).then((r) => txnOut(hdr, r));
    },
    Compact: (m: M) => {
      if (alarms.restricting) alarms.checkDelete();
      return store.compact(num(m.revision), !!m.physical).then((r) => ({ header: hdr(r.header.revision) }));
    },
  };
}
