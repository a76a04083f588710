/**
 * What crosses between the main thread and the writer thread. Structured clone turns Buffers
 * into plain Uint8Arrays and errors into plain objects; these helpers turn them back.
 */
import * as E from '../errors.js';
import type { WireError } from './engine.js';

/** Replace every non-Buffer Uint8Array inside `v` by a Buffer over the same memory. */
export function revive<T>(v: T): T {
  if (v instanceof Uint8Array) {
    return (Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength)) as T;
  }
  // other typed arrays (a BlobColumn's ends) hold numbers only
  if (ArrayBuffer.isView(v)) return v;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) v[i] = revive(v[i]);
    return v;
  }
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    for (const k in o) {
      const x = o[k];
      if (x !== null && typeof x === 'object') o[k] = revive(x);
    }
  }
  return v;
}

/** Rebuild the EdgeError subclass a writer error was made from. */
export function fromWireError(w: WireError): E.EdgeError {
  const d = w.data ?? {};
  switch (w.code) {
    case 'EDGE_ERR_COMPACTED':
      return new E.CompactedError(d.compactRevision as number);
    case 'EDGE_ERR_FUTURE_REV':
      return new E.FutureRevisionError(d.requested as number, d.current as number);
    case 'EDGE_ERR_LEASE_NOT_FOUND':
      return new E.LeaseNotFoundError(d.leaseId as bigint);
    case 'EDGE_ERR_LEASE_EXISTS':
      return new E.LeaseExistsError(d.leaseId as bigint);
    case 'EDGE_ERR_KEY_NOT_FOUND':
      return new E.KeyNotFoundError();
    case 'EDGE_ERR_NO_SPACE': {
      const e = new E.NoSpaceError(0, 0);
      return Object.assign(e, { message: w.message });
    }
    case 'EDGE_ERR_CORRUPT':
      return Object.assign(new E.CorruptDatabaseError('', ''), { message: w.message });
    case 'EDGE_ERR_INVALID_ARGUMENT':
      return new E.InvalidArgumentError(w.message);
    default: {
      const e = new E.StorageError(w.message);
      return Object.assign(e, { message: w.message });
    }
  }
}
