/**
 * Model-based test: seeded random sequences of put / delete / txn / compact / lease operations,
 * with watchers opened at random revisions, run against the SQLite store (writer thread, group
 * commit with several requests in flight) and the in-memory reference in ./model.ts. Every
 * response and every watch stream must match.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'node:test';
import { openStore } from '../../src/store/index.js';
import type {
  KeyValue,
  RangeRequest,
  RequestOp,
  Store,
  TxnRequest,
  WatchEvent,
} from '../../src/store/types.js';
import { Model } from './model.js';

function rng(seed: number) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const b = (s: string) => Buffer.from(s);

function norm(v: unknown): unknown {
  if (Buffer.isBuffer(v)) return `0x${v.toString('hex')}`;
  if (typeof v === 'bigint') return `${v}n`;
  if (Array.isArray(v)) return v.map(norm);
  if (v && typeof v === 'object') {
    const o: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (x !== undefined) o[k] = norm(x);
    return o;
  }
  return v;
}

async function outcome<T>(f: () => T | Promise<T>): Promise<unknown> {
  try {
    return { ok: norm(await f()) };
  } catch (e) {
    return { err: (e as { code?: string }).code ?? (e as Error).message };
  }
}

function runModel<T>(f: () => T): unknown {
  try {
    return { ok: norm(f()) };
  } catch (e) {
    return { err: (e as Error).message };
  }
}

async function scenario(seed: number, steps: number, s: Store) {
  const r = rng(seed);
  const m = new Model();
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const keys = ['a', 'a/1', 'a/2', 'a/3', 'b', 'b/1', 'c', 'c/x/y', 'd'];
  const key = () => b(pick(keys));
  const rangeOf = (): { key: Buffer; rangeEnd?: Buffer } => {
    const k = r();
    if (k < 0.4) return { key: key() };
    if (k < 0.7) return { key: b('a/'), rangeEnd: b('a0') };
    if (k < 0.85) return { key: b('b'), rangeEnd: b('\0') };
    return { key: b('\0'), rangeEnd: b('\0') };
  };
  const leases: bigint[] = [];
  const cancels: string[] = [];
  const watchers: { start: number; key: Buffer; rangeEnd?: Buffer; prevKv: boolean; got: WatchEvent[] }[] =
    [];

  const randomRange = (): RangeRequest => ({
    ...rangeOf(),
    limit: r() < 0.3 ? 1 + Math.floor(r() * 3) : undefined,
    revision: r() < 0.3 ? Math.max(1, Math.floor(r() * (m.rev + 2))) : undefined,
    keysOnly: r() < 0.2,
    countOnly: r() < 0.1,
    sortOrder: r() < 0.4 ? pick(['NONE', 'ASCEND', 'DESCEND'] as const) : undefined,
    sortTarget: r() < 0.4 ? pick(['KEY', 'VERSION', 'CREATE', 'MOD', 'VALUE'] as const) : undefined,
    minModRevision: r() < 0.1 ? Math.floor(r() * m.rev) : undefined,
    maxCreateRevision: r() < 0.1 ? Math.floor(r() * m.rev) : undefined,
  });
  const randomOp = (depth: number): RequestOp => {
    const k = r();
    if (k < 0.45) return { put: { key: key(), value: b(`v${Math.floor(r() * 5)}`), prevKv: r() < 0.5 } };
    if (k < 0.65) return { deleteRange: { ...rangeOf(), prevKv: r() < 0.5 } };
    if (k < 0.9 || depth > 1) return { range: { ...randomRange(), revision: undefined } };
    return { txn: randomTxn(depth + 1) };
  };
  const randomTxn = (depth: number): TxnRequest => ({
    compare: Array.from({ length: Math.floor(r() * 3) }, () => ({
      key: key(),
      rangeEnd: r() < 0.2 ? b('a0') : undefined,
      target: pick(['VERSION', 'CREATE', 'MOD', 'VALUE'] as const),
      result: pick(['EQUAL', 'GREATER', 'LESS', 'NOT_EQUAL'] as const),
      version: Math.floor(r() * 3),
      createRevision: Math.floor(r() * m.rev),
      modRevision: Math.floor(r() * m.rev),
      value: b(`v${Math.floor(r() * 5)}`),
    })),
    success: Array.from({ length: Math.floor(r() * 3) }, () => randomOp(depth)),
    failure: Array.from({ length: Math.floor(r() * 3) }, () => randomOp(depth)),
  });

  // Writes issued together share a group commit; the writer keeps their order.
  let inFlight: { store: Promise<unknown>; model: unknown; what: string }[] = [];
  const settle = async () => {
    for (const f of inFlight) assert.deepEqual(await f.store, f.model, `seed ${seed}: ${f.what}`);
    inFlight = [];
  };

  for (let i = 0; i < steps; i++) {
    const k = r();
    if (k < 0.3) {
      const req = {
        key: key(),
        value: b(`v${Math.floor(r() * 5)}`),
        prevKv: r() < 0.5,
        lease: leases.length && r() < 0.2 ? pick(leases) : undefined,
      };
      inFlight.push({
        store: outcome(() => s.put(req)),
        model: runModel(() => {
          const t = m.txn({ success: [{ put: req }] });
          return {
            header: t.header,
            ...((t.responses[0] as { put: { prevKv?: KeyValue } }).put.prevKv
              ? { prevKv: (t.responses[0] as { put: { prevKv?: KeyValue } }).put.prevKv }
              : {}),
          };
        }),
        what: `put ${req.key}`,
      });
    } else if (k < 0.4) {
      const req = { ...rangeOf(), prevKv: r() < 0.5 };
      inFlight.push({
        store: outcome(() => s.deleteRange(req)),
        model: runModel(() => {
          const t = m.txn({ success: [{ deleteRange: req }] });
          const d = (t.responses[0] as { deleteRange: { deleted: number; prevKvs: KeyValue[] } }).deleteRange;
          return { header: t.header, deleted: d.deleted, prevKvs: d.prevKvs };
        }),
        what: `delete ${req.key}`,
      });
    } else if (k < 0.6) {
      const req = randomTxn(0);
      inFlight.push({
        store: outcome(() => s.txn(req)),
        model: runModel(() => m.txn(req)),
        what: `txn ${JSON.stringify(norm(req))}`,
      });
    } else {
      await settle();
      if (k < 0.8) {
        const req = randomRange();
        assert.deepEqual(
          await outcome(() => s.range(req)),
          runModel(() => m.range(req)),
          `seed ${seed}: range ${JSON.stringify(norm(req))}`,
        );
      } else if (k < 0.85) {
        const g = await s.leaseGrant(3600);
        leases.push(g.id);
        m.leases.add(g.id);
      } else if (k < 0.88 && leases.length) {
        const id = pick(leases);
        assert.deepEqual(
          await outcome(async () => (await s.leaseRevoke(id)).revision),
          runModel(() => m.revoke(id)),
          `seed ${seed}: revoke`,
        );
      } else if (k < 0.91) {
        const rev = Math.floor(r() * (m.rev + 1));
        assert.deepEqual(
          await outcome(async () => (await s.compact(rev, r() < 0.5)).header.revision),
          runModel(() => {
            m.compact(rev);
            return m.rev;
          }),
          `seed ${seed}: compact ${rev}`,
        );
      } else {
        const start = Math.max(m.compactRev, 1 + Math.floor(r() * (m.rev + 2)));
        const w = { start, ...rangeOf(), prevKv: r() < 0.5, got: [] as WatchEvent[] };
        s.watch(
          { key: w.key, rangeEnd: w.rangeEnd, startRevision: start, prevKv: w.prevKv },
          {
            onEvents: (evs) => w.got.push(...evs),
            onCancel: (e) => cancels.push(e.message),
          },
        );
        watchers.push(w);
      }
    }
  }
  await settle();
  await new Promise((res) => setTimeout(res, 100));
  assert.deepEqual(cancels, [], `seed ${seed}: watchers were cancelled`);
  for (const w of watchers) {
    const want = m.events(w.start, w.key, w.rangeEnd, w.prevKv).map((e, i) => {
      // History below the compaction point may no longer hold a previous value (etcd alike).
      const got = w.got[i];
      return got && !got.prevKv && e.prevKv && e.kv.modRevision <= m.compactRev
        ? { type: e.type, kv: e.kv }
        : e;
    });
    assert.deepEqual(norm(w.got), norm(want), `seed ${seed}: watch from ${w.start} on ${w.key}`);
  }
  assert.equal(s.revision(), m.rev);
  return { rev: m.rev, watchers: watchers.length };
}

test('random operation sequences match the reference model, responses and watch streams', async () => {
  for (const seed of [1, 2, 3, 4, 5, 6]) {
    const dir = mkdtempSync(join(tmpdir(), 'ek-model-'));
    const s = await openStore({ file: join(dir, 'm.db'), durability: 'relaxed', maxTxnOps: 128 });
    try {
      const res = await scenario(seed, 400, s);
      assert.ok(res.rev > 50, `seed ${seed} made too few revisions (${res.rev}) to mean anything`);
    } finally {
      await s.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }
});
