/**
 * The etcd boundary for errors: every EdgeError becomes etcd's gRPC status code and its exact
 * message text (etcd's api/v3rpc/rpctypes), because clients match on the text — clientv3 turns
 * the message back into `rpctypes.ErrCompacted` and friends, and etcdctl prints it verbatim.
 */
import { status as Code, Metadata, type ServiceError } from '@grpc/grpc-js';
import {
  BusyError,
  CompactedError,
  CorruptDatabaseError,
  DuplicateKeyError,
  EdgeError,
  EmptyKeyError,
  EtcdAuthError,
  FutureRevisionError,
  InvalidArgumentError,
  KeyNotFoundError,
  LeaseExistsError,
  LeaseNotFoundError,
  LeaseTtlTooLargeError,
  NoSpaceError,
  RequestTooLargeError,
  StorageError,
  StoreClosedError,
  TooManyOpsError,
  UnsupportedError,
  WatchOverflowError,
} from '../errors.js';

export { Code };

/** etcd's message strings (rpctypes/error.go), verbatim. */
export const ETCD_MESSAGES = {
  emptyKey: 'etcdserver: key is not provided',
  keyNotFound: 'etcdserver: key not found',
  tooManyOps: 'etcdserver: too many operations in txn request',
  duplicateKey: 'etcdserver: duplicate key given in txn request',
  compacted: 'etcdserver: mvcc: required revision has been compacted',
  futureRev: 'etcdserver: mvcc: required revision is a future revision',
  noSpace: 'etcdserver: mvcc: database space exceeded',
  leaseNotFound: 'etcdserver: requested lease not found',
  leaseExist: 'etcdserver: lease already exists',
  leaseTtlTooLarge: 'etcdserver: too large lease TTL',
  requestTooLarge: 'etcdserver: request is too large',
  stopped: 'etcdserver: server stopped',
  corrupt: 'etcdserver: corrupt cluster',
  notCapable: 'etcdserver: not capable',
  canceled: 'etcdserver: request canceled',
  tooManyRequests: 'etcdserver: too many requests',
  // concurrency package errors, passed through by etcd's v3election server as code UNKNOWN.
  electionNoLeader: 'election: no leader',
  electionNotLeader: 'election: not leader',
  missingLeaderKey: '"leader" field must be provided',
} as const;

/** A gRPC error with etcd's code and text, as grpc-js sends it to the client. */
export class GrpcStatusError extends Error implements Partial<ServiceError> {
  readonly code: number;
  readonly details: string;
  readonly metadata = new Metadata();
  constructor(code: number, details: string) {
    super(details);
    this.code = code;
    this.details = details;
  }
}

export function grpcError(code: number, details: string): GrpcStatusError {
  return new GrpcStatusError(code, details);
}

/** Translate anything thrown by the store (or by us) into the status etcd would send. */
export function toGrpcError(err: unknown): GrpcStatusError {
  if (err instanceof GrpcStatusError) return err;
  if (err instanceof EdgeError) {
    if (err instanceof EtcdAuthError) return grpcError(err.grpcCode, err.message);
    if (err instanceof CompactedError) return grpcError(Code.OUT_OF_RANGE, ETCD_MESSAGES.compacted);
    if (err instanceof FutureRevisionError) return grpcError(Code.OUT_OF_RANGE, ETCD_MESSAGES.futureRev);
    if (err instanceof LeaseNotFoundError) return grpcError(Code.NOT_FOUND, ETCD_MESSAGES.leaseNotFound);
    if (err instanceof LeaseExistsError) return grpcError(Code.FAILED_PRECONDITION, ETCD_MESSAGES.leaseExist);
    if (err instanceof LeaseTtlTooLargeError)
      return grpcError(Code.OUT_OF_RANGE, ETCD_MESSAGES.leaseTtlTooLarge);
    if (err instanceof RequestTooLargeError)
      return grpcError(Code.INVALID_ARGUMENT, ETCD_MESSAGES.requestTooLarge);
    if (err instanceof TooManyOpsError) return grpcError(Code.INVALID_ARGUMENT, ETCD_MESSAGES.tooManyOps);
    if (err instanceof EmptyKeyError) return grpcError(Code.INVALID_ARGUMENT, ETCD_MESSAGES.emptyKey);
    if (err instanceof DuplicateKeyError) return grpcError(Code.INVALID_ARGUMENT, ETCD_MESSAGES.duplicateKey);
    if (err instanceof KeyNotFoundError) return grpcError(Code.INVALID_ARGUMENT, ETCD_MESSAGES.keyNotFound);
    if (err instanceof NoSpaceError) return grpcError(Code.RESOURCE_EXHAUSTED, ETCD_MESSAGES.noSpace);
    if (err instanceof StoreClosedError) return grpcError(Code.UNAVAILABLE, ETCD_MESSAGES.stopped);
    if (err instanceof CorruptDatabaseError) return grpcError(Code.DATA_LOSS, ETCD_MESSAGES.corrupt);
    if (err instanceof BusyError) return grpcError(Code.RESOURCE_EXHAUSTED, ETCD_MESSAGES.tooManyRequests);
    if (err instanceof StorageError) return grpcError(Code.UNAVAILABLE, `edgekeeper: ${err.message}`);
    if (err instanceof InvalidArgumentError)
      return grpcError(Code.INVALID_ARGUMENT, `edgekeeper: ${err.message}`);
    if (err instanceof UnsupportedError) return grpcError(Code.UNIMPLEMENTED, `edgekeeper: ${err.message}`);
    if (err instanceof WatchOverflowError)
      return grpcError(Code.RESOURCE_EXHAUSTED, `edgekeeper: ${err.message}`);
    // Recipe errors from the store (election not leader, ...) keep their text; etcd sends them as UNKNOWN.
    return grpcError(Code.UNKNOWN, err.message);
  }
  if (err instanceof Error && err.name === 'AbortError')
    return grpcError(Code.CANCELLED, ETCD_MESSAGES.canceled);
  const message = err instanceof Error ? err.message : String(err);
  return grpcError(Code.UNKNOWN, message);
}

/** The gRPC code name for metrics labels ("OK", "OUT_OF_RANGE", ...). */
export const CODE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(Code)
    .filter(([, v]) => typeof v === 'number')
    .map(([k, v]) => [v as number, k]),
);
