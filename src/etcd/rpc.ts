/**
 * The etcd services as transport-independent functions. A unary RPC is a function from a decoded
 * request to a response object (or a promise of one); a streaming RPC is a handler that drives a
 * StreamCall. The grpc-js server and the JSON gateway both run them through `runUnary` and
 * `trackStream`, so etcd's semantics live in one place and both transports are counted alike.
 */
import type { EventEmitter } from 'node:events';
import { BusyError, NoSpaceError, StorageError, StoreClosedError } from '../errors.js';
import type { EtcdContext } from './context.js';
import { type GrpcStatusError, toGrpcError } from './errors.js';
import type { MethodStat } from './metrics.js';
import type { Decoded } from './proto.js';

// A decoded wire message: fields by their proto names (keepCase), absent ones read as defaults.
// biome-ignore lint/suspicious/noExplicitAny: decoded wire messages are dynamically shaped
export type Msg = Decoded & Record<string, any>;

/**
 * Where a call came from, read only by auth and only while it is enabled (so that plain traffic
 * pays nothing for it): grpc-js's calls give their metadata and TLS peer, the gateway's calls their
 * HTTP request headers.
 */
export interface CallOrigin {
  metadata?: { get(key: string): unknown[] };
  getAuthContext?(): { sslPeerCertificate?: { subject?: { CN?: string | string[] } } };
  headers?: Record<string, string | string[] | undefined>;
}

/** Mark a unary RPC that computes a password hash (slow on purpose). */
export function hashes(fn: Unary): Unary {
  fn.hashes = true;
  return fn;
}

/**
 * A unary RPC. `signal` is given to RPCs marked `waits` (Lock, Campaign): it aborts when the
 * client leaves. `origin` tells auth who calls.
 */
export interface Unary {
  (req: Msg, signal?: AbortSignal, origin?: CallOrigin): object | Promise<object>;
  waits?: boolean;
  /** Slow by design (a password hash): kept out of the latency objective, as `waits` RPCs are. */
  hashes?: boolean;
}

/**
 * What a streaming handler may use of its call: the subset of grpc-js's server stream that the
 * JSON gateway also provides. Events: 'data' (a request), 'end', 'cancelled', 'close', 'drain',
 * 'finish'. `writableLength` counts queued messages; `emit('error', e)` ends the call with e's
 * status.
 */
export interface StreamCall extends EventEmitter, CallOrigin {
  /** The request of a server-streaming call. */
  readonly request: Msg;
  readonly writableLength: number;
  /** The gRPC connection the call came on (limits.ts); undefined over the JSON gateway. */
  connection?: string;
  write(msg: object, cb?: () => void): boolean;
  end(): void;
  pause(): unknown;
  resume(): unknown;
}

export type StreamHandler = (call: StreamCall) => void;

/** A service's methods by name (as in the .proto). */
export type Methods = Record<string, Unary | StreamHandler>;

/** Mark a unary RPC that waits (and so needs to know when its client leaves). */
export function waits(fn: (req: Msg, signal?: AbortSignal, origin?: CallOrigin) => Promise<object>): Unary {
  const u: Unary = fn;
  u.waits = true;
  return u;
}

/**
 * Run a unary RPC: errors become etcd statuses, the call is counted and timed in `stat`. A store
 * refusal for space raises etcd's NOSPACE alarm, as etcd's quota does.
 */
export function runUnary(
  ctx: EtcdContext,
  stat: MethodStat,
  impl: Unary,
  req: Msg,
  signal: AbortSignal | undefined,
  done: (err: GrpcStatusError | null, res?: object) => void,
  origin?: CallOrigin,
): void {
  const start = performance.now();
  stat.started++;
  // Lock and Campaign wait for others by design: their time says nothing about our latency.
  const hear = impl.waits || impl.hashes ? undefined : ctx.onUnary;
  const timed = (code: number) => {
    const seconds = (performance.now() - start) / 1000;
    stat.done(code, seconds);
    hear?.(seconds);
  };
  const fail = (err: unknown) => {
    const e = toGrpcError(err);
    if (err instanceof NoSpaceError) ctx.alarms.quotaExceeded();
    else if (err instanceof StorageError || err instanceof BusyError || err instanceof StoreClosedError)
      ctx.metrics.proposalsFailed++;
    timed(e.code);
    done(e);
  };
  let out: object | Promise<object>;
  try {
    out = impl(req, signal, origin);
  } catch (err) {
    fail(err);
    return;
  }
  if (out instanceof Promise) {
    out.then((res) => {
      timed(0);
      done(null, res);
    }, fail);
  } else {
    timed(0);
    done(null, out);
  }
}

/** Count a streaming call in `stat`: started now, handled once it finishes, fails or is cancelled. */
export function trackStream(stat: MethodStat, call: StreamCall): void {
  stat.started++;
  let ended = false;
  const end = (code: number) => {
    if (ended) return;
    ended = true;
    stat.ended(code);
  };
  call.on('error', (e: { code?: unknown }) => end(typeof e.code === 'number' ? e.code : 2));
  call.on('cancelled', () => end(1));
  call.on('finish', () => end(0));
}
