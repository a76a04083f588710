/**
 * Fuzz target of the etcd API's request decoding (src/etcd/proto.ts, what grpc-js calls for
 * every request before a handler runs): for every method of every service we serve, random
 * bytes, random valid messages of the method's request type (any field, nested messages,
 * 64-bit integers at their edges) and mutations of them. Each decodes to a message, or fails with an Error reported once to the decode-failure hook (the server
 * answers that call INTERNAL, as grpc-go does); the int64 and bytes helpers the handlers use
 * accept whatever decoded.
 */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import type * as Protobuf from 'protobufjs';
import { big, buf, num, protoRoot, serviceDefinition } from '../../src/etcd/proto.js';
import type { FuzzTarget } from '../fuzz.js';

const SERVICES = [
  'etcdserverpb.KV',
  'etcdserverpb.Watch',
  'etcdserverpb.Lease',
  'etcdserverpb.Cluster',
  'etcdserverpb.Maintenance',
  'etcdserverpb.Auth',
  'v3lockpb.Lock',
  'v3electionpb.Election',
  'grpc.health.v1.Health',
];

const INT64_EDGES = [0n, 1n, -1n, 2n ** 53n, 2n ** 63n - 1n, -(2n ** 63n), 2n ** 64n - 1n];

/** Random plain objects of a protobufjs message type (depth-limited: messages nest recursively). */
function messageArb(type: Protobuf.Type, depth = 0): fc.Arbitrary<Record<string, unknown>> {
  const fields: Record<string, fc.Arbitrary<unknown>> = {};
  for (const f of type.fieldsArray) {
    f.resolve();
    let a: fc.Arbitrary<unknown>;
    if (f.resolvedType && 'fieldsArray' in f.resolvedType) {
      if (depth >= 3) continue;
      a = messageArb(f.resolvedType as Protobuf.Type, depth + 1);
    } else if (f.resolvedType) {
      a = fc.constantFrom(...Object.values((f.resolvedType as Protobuf.Enum).values), 99, -1);
    } else {
      a = scalar(f.type);
    }
    fields[f.name] = f.repeated ? fc.array(a, { maxLength: 5 }) : a;
  }
  return fc.record(fields, { requiredKeys: [] });
}

function scalar(t: string): fc.Arbitrary<unknown> {
  switch (t) {
    case 'int64':
    case 'uint64':
    case 'sint64':
    case 'fixed64':
    case 'sfixed64':
      return fc
        .oneof(fc.constantFrom(...INT64_EDGES), fc.bigInt({ min: -(2n ** 63n), max: 2n ** 64n - 1n }))
        .map((v) => {
          const u = BigInt.asUintN(64, v);
          return {
            low: Number(BigInt.asIntN(32, u)),
            high: Number(BigInt.asIntN(32, u >> 32n)),
            unsigned: t === 'uint64',
          };
        });
    case 'int32':
    case 'sint32':
    case 'sfixed32':
      return fc.integer();
    case 'uint32':
    case 'fixed32':
      return fc.nat();
    case 'bool':
      return fc.boolean();
    case 'string':
      return fc.string({ maxLength: 64 });
    case 'bytes':
      return fc.uint8Array({ maxLength: 64 });
    case 'double':
    case 'float':
      return fc.double();
    default:
      return fc.constant(undefined);
  }
}

export const protoTarget: FuzzTarget = {
  name: 'etcd.request_decode',
  async setup() {
    const root = protoRoot();
    const methods: { name: string; type: Protobuf.Type; decode: (b: Buffer) => unknown }[] = [];
    let failures: string[] = [];
    for (const svc of SERVICES) {
      const def = serviceDefinition(svc, { onDecodeFailure: (m) => failures.push(m) });
      for (const m of root.lookupService(svc).methodsArray) {
        m.resolve();
        methods.push({
          name: m.name,
          type: m.resolvedRequestType!,
          decode: def[m.name]!.requestDeserialize as (b: Buffer) => unknown,
        });
      }
    }
    const input = fc.nat({ max: methods.length - 1 }).chain((i) => {
      const m = methods[i]!;
      const valid = messageArb(m.type).map((o) => Buffer.from(m.type.encode(m.type.fromObject(o)).finish()));
      return fc.tuple(
        fc.constant(i),
        fc.oneof(
          fc.uint8Array({ maxLength: 512 }).map((b) => Buffer.from(b)),
          valid,
          fc
            .tuple(
              valid,
              fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }),
              fc.nat(),
            )
            .map(([b, flips, cut]) => {
              const out = Buffer.from(b);
              for (const [k, v] of flips) if (out.length) out[k % out.length] = v;
              return out.subarray(0, cut % (out.length + 1));
            }),
        ),
      );
    });
    return {
      property: fc.property(input, ([i, bytes]) => {
        const m = methods[i]!;
        failures = [];
        let msg: Record<string | symbol, unknown>;
        try {
          msg = m.decode(bytes) as Record<string | symbol, unknown>;
        } catch (err) {
          assert.ok(err instanceof Error, `${m.name}: threw a non-Error`);
          assert.deepEqual(failures, [m.name], 'the failure is reported once');
          return;
        }
        assert.deepEqual(failures, []);
        // what the handlers do with decoded fields must not throw on any of them
        for (const f of m.type.fieldsArray) {
          const v = msg[f.name];
          if (f.repeated) continue;
          if (/int64|fixed64/.test(f.type)) {
            assert.ok(Number.isFinite(num(v)));
            assert.equal(typeof big(v), 'bigint');
          }
          if (f.type === 'bytes') assert.ok(Buffer.isBuffer(buf(v)));
        }
      }),
      close: async () => undefined,
    };
  },
};

export const etcdTargets = [protoTarget];
