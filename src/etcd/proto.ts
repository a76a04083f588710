/**
 * Loads our .proto files once and builds grpc-js service definitions whose (de)serializers call
 * protobufjs directly. We skip proto-loader's `toObject`/`fromObject` copies on purpose: a
 * decoded request is used as it comes off the wire (int64 as Long, bytes as Buffer), and a
 * response is a plain object encoded as is — the per-request cost that matters at 10k+ ops/s.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { MethodDefinition, ServiceDefinition } from '@grpc/grpc-js';
import type * as Protobuf from 'protobufjs';
import type { EtcdMetrics, GrpcType } from './metrics.js';

// protobufjs is @grpc/proto-loader's own runtime dependency; resolve it from there so we use the
// exact copy that ships with the gRPC stack we depend on.
const requireFromLoader = createRequire(createRequire(import.meta.url).resolve('@grpc/proto-loader'));
const protobuf = requireFromLoader('protobufjs') as typeof Protobuf;

/** Directory of our .proto files; works from src/ (tsx) and dist/ (the package ships src/etcd/proto). */
function protoDir(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [join(here, 'proto'), join(here, '..', '..', 'src', 'etcd', 'proto')];
  const fs = createRequire(import.meta.url)('node:fs') as typeof import('node:fs');
  for (const c of candidates) if (fs.existsSync(join(c, 'rpc.proto'))) return c;
  return candidates[0]!;
}

export const PROTO_DIR = protoDir();

let rootCache: Protobuf.Root | undefined;

export function protoRoot(): Protobuf.Root {
  if (rootCache) return rootCache;
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => join(PROTO_DIR, target.replace(/^.*\//, ''));
  root.loadSync(['kv.proto', 'rpc.proto', 'v3lock.proto', 'v3election.proto', 'health.proto'], {
    keepCase: true,
  });
  root.resolveAll();
  rootCache = root;
  return root;
}

export type Decoded = Record<string, unknown>;

/** Counts requests that could not be decoded; set by the server that owns the metrics. */
export type DecodeFailureHook = (method: string, err: unknown) => void;

/** go-grpc-prometheus's `grpc_type` of a method. */
export function grpcType(m: Protobuf.Method): GrpcType {
  if (m.requestStream) return m.responseStream ? 'bidi_stream' : 'client_stream';
  return m.responseStream ? 'server_stream' : 'unary';
}

/**
 * A grpc-js service definition for `fullName` (e.g. "etcdserverpb.KV"). Requests decode to
 * protobufjs message instances; responses are plain objects. A decode failure is reported to
 * `onDecodeFailure` and rethrown, so grpc-js answers the call with INTERNAL (as grpc-go does
 * with "grpc: error unmarshalling request"). With `metrics`, each message and its bytes are
 * counted in its method's record (the server side of the definition).
 */
export function serviceDefinition(
  fullName: string,
  opts: { metrics?: EtcdMetrics; onDecodeFailure?: DecodeFailureHook } = {},
): ServiceDefinition {
  const svc = protoRoot().lookupService(fullName);
  const def: Record<string, MethodDefinition<unknown, unknown>> = {};
  for (const m of svc.methodsArray) {
    m.resolve();
    const reqType = m.resolvedRequestType!;
    const resType = m.resolvedResponseType!;
    const path = `/${fullName}/${m.name}`;
    const stat = opts.metrics?.method(fullName, m.name, grpcType(m));
    def[m.name] = {
      path,
      requestStream: !!m.requestStream,
      responseStream: !!m.responseStream,
      requestSerialize: (v: unknown) => reqType.encode(v as Protobuf.Message).finish() as Buffer,
      requestDeserialize: (b: Buffer) => {
        try {
          checkWireTypes(b, reqType);
          const msg = reqType.decode(b) as unknown as Decoded;
          if (stat) {
            stat.received++;
            stat.bytesIn += b.length;
          }
          return msg;
        } catch (err) {
          opts.onDecodeFailure?.(m.name, err);
          throw err;
        }
      },
      responseSerialize: (v: unknown) => {
        const out = resType.encode(v as Protobuf.Message).finish() as Buffer;
        if (stat) {
          stat.sent++;
          stat.bytesOut += out.length;
        }
        return out;
      },
      responseDeserialize: (b: Buffer) => resType.decode(b) as unknown,
      originalName: m.name,
    };
  }
  return def as ServiceDefinition;
}

// --- wire types ------------------------------------------------------------------------------

/**
 * A field of a message: the wire type it must arrive with, the other one a repeated scalar may
 * use (packed), and its message type when it nests one.
 */
interface WireRule {
  wireType: number;
  packed: number;
  nested?: WireRules;
  nestedName?: string;
}
type WireRules = Map<number, WireRule>;

const rulesCache = new WeakMap<Protobuf.Type, WireRules>();

/** The wire rules of a message type, built once per type. */
function wireRules(type: Protobuf.Type): WireRules {
  const cached = rulesCache.get(type);
  if (cached) return cached;
  const rules: WireRules = new Map();
  // Set before filling: message types nest recursively (TxnRequest in RequestOp in TxnRequest).
  rulesCache.set(type, rules);
  for (const f of type.fieldsArray) {
    f.resolve();
    const basic = (protobuf.types.basic as Record<string, number | undefined>)[f.type];
    let wireType: number;
    let nested: WireRules | undefined;
    let nestedName: string | undefined;
    if (f.map) wireType = 2;
    else if (f.resolvedType instanceof protobuf.Type) {
      wireType = 2;
      nested = wireRules(f.resolvedType);
      nestedName = f.resolvedType.name;
    } else if (f.resolvedType)
      wireType = 0; // an enum
    // protobufjs's `types.basic` gives each scalar's wire type; string and bytes are 2.
    else wireType = basic ?? 2;
    const packable = f.repeated && wireType !== 2;
    rules.set(f.id, { wireType, packed: packable ? 2 : wireType, nested, nestedName });
  }
  return rules;
}

/**
 * Refuse a message where a known field arrives with another wire type than its declared type's
 * (protobufjs would read it as its declared type: field 1 of a LeaseGrant sent length-delimited
 * became a TTL of 4,294,967,295 s). etcd's generated decoders refuse it ("proto: wrong wireType =
 * 2 for field TTL") and grpc-go answers INTERNAL. Unknown fields are skipped, as everywhere in
 * protobuf. One pass over the tags, no allocation but the reader: cheap next to the decode.
 */
export function checkWireTypes(b: Uint8Array, type: Protobuf.Type): void {
  const r = protobuf.Reader.create(b);
  walk(r, b.length, wireRules(type), type.name);
}

function walk(r: Protobuf.Reader, end: number, rules: WireRules, typeName: string): void {
  while (r.pos < end) {
    const tag = r.uint32();
    const id = tag >>> 3;
    const wt = tag & 7;
    const rule = rules.get(id);
    if (rule && wt !== rule.wireType && wt !== rule.packed)
      throw new Error(`proto: wrong wireType = ${wt} for field ${id} of ${typeName}`);
    if (rule?.nested) {
      const len = r.uint32();
      const stop = r.pos + len;
      if (stop > end) throw new RangeError(`proto: field ${id} of ${typeName} runs past its message`);
      walk(r, stop, rule.nested, rule.nestedName ?? typeName);
    } else r.skipType(wt);
  }
  if (r.pos !== end) throw new RangeError(`proto: a field of ${typeName} runs past its message`);
}

// --- int64 helpers ----------------------------------------------------------------------------

/** A decoded int64: a number, or a Long-like {low, high} when long.js is present. */
type WireLong = number | { low: number; high: number; toNumber?: () => number } | null | undefined;

/** int64 from the wire as a JS number (revisions, TTLs, limits stay far below 2^53). */
export function num(v: unknown): number {
  if (typeof v === 'number') return v;
  if (v == null) return 0;
  const l = v as { low: number; high: number };
  return l.high * 4294967296 + (l.low >>> 0);
}

/** int64 from the wire as a bigint (lease IDs use all 64 bits). */
export function big(v: unknown): bigint {
  if (typeof v === 'number') return BigInt(v);
  if (v == null) return 0n;
  const l = v as { low: number; high: number };
  if (l.high === 0 && l.low >= 0) return BigInt(l.low);
  return (BigInt(l.high) << 32n) | BigInt(l.low >>> 0);
}

/** A bigint as a Long-like object protobufjs encodes without long.js parsing (int64 and uint64). */
export function long(v: bigint): WireLong {
  if (v === 0n) return 0;
  if (v > 0n && v <= 0x1fffffffffffffn) return Number(v);
  return { low: Number(BigInt.asIntN(32, v)), high: Number(BigInt.asIntN(32, v >> 32n)) };
}

/** Unsigned rendering of an int64 id (etcdctl prints lease and member IDs in hex of the uint64). */
export function hexId(v: bigint): string {
  return BigInt.asUintN(64, v).toString(16);
}

/** A bytes field from the wire as a Buffer (protobufjs yields Buffer slices on Node). */
export function buf(v: unknown): Buffer {
  if (v == null) return EMPTY;
  if (Buffer.isBuffer(v)) return v;
  return Buffer.from(v as Uint8Array);
}

export const EMPTY = Buffer.alloc(0);
