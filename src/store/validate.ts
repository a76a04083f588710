/**
 * Request checks made before a request reaches the writer, with etcd's rules, so a bad request
 * costs the writer nothing.
 */
import {
  DuplicateKeyError,
  EmptyKeyError,
  InvalidArgumentError,
  RequestTooLargeError,
  TooManyOpsError,
} from '../errors.js';
import { contains, interval, type KeyInterval, keyId } from './keys.js';
import type { RequestOp, TxnRequest } from './types.js';

export interface Limits {
  maxRequestBytes: number;
  maxTxnOps: number;
}

/** Bytes a request carries (keys, values, range ends), for the request size limit. */
function opBytes(op: RequestOp): number {
  if ('put' in op) return op.put.key.length + (op.put.value?.length ?? 0);
  if ('range' in op) return op.range.key.length + (op.range.rangeEnd?.length ?? 0);
  if ('deleteRange' in op) return op.deleteRange.key.length + (op.deleteRange.rangeEnd?.length ?? 0);
  return txnBytes(op.txn);
}

function txnBytes(t: TxnRequest): number {
  let n = 0;
  for (const c of t.compare ?? []) n += c.key.length + (c.rangeEnd?.length ?? 0) + (c.value?.length ?? 0);
  for (const op of t.success ?? []) n += opBytes(op);
  for (const op of t.failure ?? []) n += opBytes(op);
  return n;
}

export function checkSize(bytes: number, limits: Limits): void {
  if (bytes > limits.maxRequestBytes) throw new RequestTooLargeError(bytes, limits.maxRequestBytes);
}

export function checkKey(key: Buffer | undefined): void {
  if (!key || key.length === 0) throw new EmptyKeyError();
}

export function checkRevisionArg(name: string, v: number | undefined): void {
  if (v !== undefined && (!Number.isSafeInteger(v) || v < 0))
    throw new InvalidArgumentError(`${name} must be a non-negative integer`);
}

/** etcd's checkTxnRequest + checkIntervals. */
export function checkTxn(t: TxnRequest, limits: Limits): void {
  checkSize(txnBytes(t), limits);
  checkOps(t, limits.maxTxnOps);
  intervals(t.success ?? []);
  intervals(t.failure ?? []);
}

function checkOps(t: TxnRequest, max: number): void {
  const n = Math.max(t.compare?.length ?? 0, t.success?.length ?? 0, t.failure?.length ?? 0);
  if (n > max) throw new TooManyOpsError(n, max);
  for (const c of t.compare ?? []) checkKey(c.key);
  for (const op of [...(t.success ?? []), ...(t.failure ?? [])]) {
    if ('put' in op) checkKey(op.put.key);
    else if ('range' in op) checkKey(op.range.key);
    else if ('deleteRange' in op) checkKey(op.deleteRange.key);
    else checkOps(op.txn, max);
  }
}

/**
 * A branch may not put one key twice, nor put a key that a delete in the same branch (or an
 * enclosing one) covers. Puts in the two branches of a nested txn may overlap: only one runs.
 */
function intervals(ops: RequestOp[]): { puts: Set<string>; dels: KeyInterval[] } {
  const dels: KeyInterval[] = [];
  for (const op of ops)
    if ('deleteRange' in op) dels.push(interval(op.deleteRange.key, op.deleteRange.rangeEnd));
  const covered = (k: string) => dels.some((iv) => contains(iv, Buffer.from(k, 'latin1')));
  const puts = new Set<string>();
  for (const op of ops) {
    if (!('txn' in op)) continue;
    const then = intervals(op.txn.success ?? []);
    const other = intervals(op.txn.failure ?? []);
    for (const k of then.puts) {
      if (puts.has(k) || covered(k)) throw new DuplicateKeyError();
      puts.add(k);
    }
    for (const k of other.puts) {
      if ((puts.has(k) && !then.puts.has(k)) || covered(k)) throw new DuplicateKeyError();
      puts.add(k);
    }
    dels.push(...then.dels, ...other.dels);
  }
  for (const op of ops) {
    if (!('put' in op)) continue;
    const k = keyId(op.put.key);
    if (puts.has(k) || covered(k)) throw new DuplicateKeyError();
    puts.add(k);
  }
  return { puts, dels };
}
