/**
 * Fuzz targets of the fleet sync's batches:
 * - the codec: random bytes, random valid batches (encodeBatch), their mutations, and valid
 *   batches with one field swapped for a hostile value, into decodeBatch: a batch, or a
 *   SyncBadBatchError naming what is wrong, nothing else;
 * - the reference receiver's POST route against a real PostgreSQL: the same bodies, plain and
 *   gzip, with the node's token: stored (200) or refused with a 4xx JSON error, never a 500, and
 *   the receiver still stores a good batch afterwards.
 */
import assert from 'node:assert/strict';
import { gzipSync } from 'node:zlib';
import fc from 'fast-check';
import { SyncBadBatchError } from '../../src/errors.js';
import { type Batch, decodeBatch, decodeCbor, encodeBatch, encodeCbor } from '../../src/sync/codec.js';
import { type FleetServer, startFleetServer } from '../../src/sync/receiver/server.js';
import type { FuzzTarget } from '../fuzz.js';
import { startPostgres, type TestPostgres } from './pg.js';

const ts = fc.integer({ min: 0, max: 2 ** 44 });
/** Increasing ids from random gaps. */
const ids = (n: number) =>
  fc.array(fc.integer({ min: 1, max: 1000 }), { minLength: n, maxLength: n }).map((gaps) => {
    let at = 0;
    return gaps.map((g) => (at += g));
  });

const body = fc.oneof(
  fc.record({ metrics: fc.dictionary(fc.stringMatching(/^[a-z]{1,6}$/), fc.double(), { maxKeys: 6 }) }),
  fc.record({
    metrics: fc.dictionary(fc.string({ maxLength: 6 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4 }),
    state: fc.jsonValue({ maxDepth: 2 }),
  }),
  fc.anything({ maxDepth: 2 }),
);

const batch: fc.Arbitrary<Batch> = fc
  .tuple(fc.nat({ max: 6 }), fc.nat({ max: 12 }), fc.nat({ max: 6 }))
  .chain(([ne, nr, ns]) =>
    fc.record({
      node: fc.constant('a'),
      stream: fc.stringMatching(/^[0-9a-f]{1,32}$/),
      seq: fc.integer({ min: 1, max: 2 ** 40 }),
      sentAt: ts,
      applied: fc.option(fc.string({ maxLength: 20 }), { nil: null }),
      backlog: fc.record({ events: fc.nat(), reports: fc.nat(), samples: fc.nat() }),
      events: ids(ne).chain((is) =>
        fc.tuple(
          ...is.map((id) =>
            fc.record({
              id: fc.constant(id),
              ts,
              kind: fc.string({ maxLength: 20 }),
              subject: fc.option(fc.string({ maxLength: 20 }), { nil: null }),
              data: fc.option(fc.string({ maxLength: 40 }), { nil: null }),
            }),
          ),
        ),
      ),
      reports: ids(nr).chain((is) =>
        fc.tuple(
          ...is.map((id) =>
            fc.record({
              id: fc.constant(id),
              device: fc.constantFrom('d1', 'd2', 'pump-1', '\u0000', ''),
              received_at: ts,
              ts: fc.option(ts, { nil: null }),
              seq: fc.option(fc.nat(), { nil: null }),
              body: body.map((b) => encodeCbor(b)),
            }),
          ),
        ),
      ),
      samples: ids(ns).chain((is) =>
        fc.tuple(
          ...is.map((id) =>
            fc.record({
              id: fc.constant(id),
              ts,
              probe: fc.string({ maxLength: 10 }),
              metric: fc.string({ maxLength: 10 }),
              data: fc.anything({ maxDepth: 1 }).map((d) => encodeCbor(d)),
            }),
          ),
        ),
      ),
    }),
  )
  .map((b) => b as unknown as Batch);

const hostile = fc.oneof(
  fc.anything({ maxDepth: 3 }),
  fc.constantFrom(-1, 2 ** 60, Number.NaN, Number.POSITIVE_INFINITY, '', '__proto__', null, [], {}),
  fc.uint8Array({ maxLength: 64 }),
);

/** Batch bodies (CBOR, uncompressed) of every kind the targets send. */
export const batchBytes: fc.Arbitrary<Buffer> = fc.oneof(
  fc.uint8Array({ maxLength: 1024 }).map((b) => Buffer.from(b)),
  batch.map((b) => encodeBatch(b)),
  fc.anything({ maxDepth: 3 }).map((v) => encodeCbor(v)),
  // a valid batch with one field (top level or inside a section) made hostile
  fc.tuple(batch, fc.nat(), fc.nat(), hostile).map(([b, i, j, v]) => {
    const raw = decodeCbor(encodeBatch(b)) as Record<string, unknown>;
    const keys = Object.keys(raw);
    const k = keys[i % keys.length]!;
    const inner = raw[k];
    if (inner && typeof inner === 'object' && !(inner instanceof Uint8Array) && j % 2 === 0) {
      const ik = Object.keys(inner);
      if (ik.length) (inner as Record<string, unknown>)[ik[j % ik.length]!] = v;
    } else raw[k] = v;
    return encodeCbor(raw);
  }),
  fc
    .tuple(
      batch,
      fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }),
      fc.nat(),
    )
    .map(([b, flips, cut]) => {
      const out = Buffer.from(encodeBatch(b));
      for (const [k, v] of flips) out[k % out.length] = v;
      return out.subarray(0, cut % (out.length + 1));
    }),
);

export const codecTarget: FuzzTarget = {
  name: 'sync.batch_decode',
  async setup() {
    return {
      property: fc.property(batchBytes, (bytes) => {
        try {
          const d = decodeBatch(bytes);
          assert.equal(d.reports.ids.length, d.reports.n);
        } catch (err) {
          assert.ok(err instanceof SyncBadBatchError, `not a SyncBadBatchError: ${(err as Error)?.stack}`);
        }
      }),
      close: async () => undefined,
    };
  },
};

export const receiverTarget: FuzzTarget = {
  name: 'sync.receiver_batches',
  async setup() {
    const pg: TestPostgres = await startPostgres();
    let srv: FleetServer;
    try {
      srv = await startFleetServer({
        database: pg.url,
        port: 0,
        nodes: { a: 'tok-a' },
        maxBatchBytes: 256 * 1024,
        maxDecodedBytes: 1024 * 1024,
      });
    } catch (err) {
      await pg.stop();
      throw err;
    }
    const post = (b: Buffer, gzip: boolean) =>
      fetch(`${srv.url}/v1/nodes/a/batches`, {
        method: 'POST',
        body: gzip ? gzipSync(b) : b,
        headers: {
          'content-type': 'application/cbor',
          authorization: 'Bearer tok-a',
          ...(gzip ? { 'content-encoding': 'gzip' } : {}),
        },
      });
    return {
      property: fc.asyncProperty(batchBytes, fc.boolean(), async (b, gzip) => {
        const r = await post(b, gzip);
        const j = (await r.json()) as { code?: string };
        if (r.status === 200) return;
        assert.ok(r.status >= 400 && r.status < 500, `status ${r.status}: ${JSON.stringify(j)}`);
        assert.match(j.code ?? '', /^EDGE_ERR_/);
      }),
      async after() {
        const good = encodeBatch({
          node: 'a',
          stream: 'f00d',
          seq: 1,
          sentAt: Date.now(),
          applied: null,
          backlog: { events: 0, reports: 0, samples: 0 },
          events: [{ id: 1, ts: Date.now(), kind: 'fuzz.done', subject: null, data: null }],
          reports: [],
          samples: [],
        });
        assert.equal((await post(good, true)).status, 200);
      },
      async close() {
        await srv.close();
        await pg.stop();
      },
    };
  },
};

export const syncTargets = [codecTarget, receiverTarget];
