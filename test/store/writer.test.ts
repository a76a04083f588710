/**
 * The group-commit writer's scheduling: interactive writes go before bulk appends, bulk rows per
 * transaction are bounded, and both classes keep their own order. Observed through the batches
 * the writer hands to its onBatch callback (one per SQLite transaction).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'node:test';
import type { EngineRequest } from '../../src/store/engine.js';
import { Writer } from '../../src/store/writer.js';

const MIGRATION = { part: 'test', version: 1, sql: 'CREATE TABLE rows_t(id INTEGER PRIMARY KEY, v INTEGER)' };

function bulk(n: number, tag: number): EngineRequest {
  return {
    t: 'txn',
    sql: [{ sql: 'INSERT INTO rows_t(v) VALUES (?)', rows: Array.from({ length: n }, () => [tag]) }],
  };
}

function put(key: string): EngineRequest {
  return {
    t: 'txn',
    txn: { compare: [], success: [{ put: { key: Buffer.from(key), value: Buffer.from('v') } }], failure: [] },
  };
}

/** Describe a request: "put:/a" or "bulk:<rows>#<tag>". */
function describe(r: EngineRequest): string {
  if (r.t !== 'txn') return r.t;
  if (r.txn) return `put:${(r.txn.success![0] as { put: { key: Buffer } }).put.key.toString()}`;
  const op = r.sql![0]!;
  const rows = 'rows' in op ? (op.rows as number[][]) : [];
  return `bulk:${rows.length}#${rows[0]![0]}`;
}

async function withWriter(
  bulkRowsPerBatch: number,
  fn: (w: Writer, batches: string[][]) => Promise<void>,
  opts: { onBatch?: () => void } = {},
): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ek-writer-'));
  const batches: string[][] = [];
  const w = new Writer(
    {
      file: join(dir, 'w.db'),
      durability: 'relaxed',
      quotaBytes: 1 << 30,
      migrations: [MIGRATION],
      maxPending: 10_000,
      maxBatch: 100,
      bulkRowsPerBatch,
    },
    (_b, reqs) => {
      batches.push(reqs.map(describe));
      opts.onBatch?.();
    },
    () => false,
    (e) => {
      throw e;
    },
  );
  w.open();
  try {
    await fn(w, batches);
  } finally {
    await w.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

test('interactive writes commit before bulk appends queued ahead of them', async () => {
  await withWriter(100, async (w, batches) => {
    const all = [w.submit(bulk(500, 1)), w.submit(bulk(500, 2)), w.submit(put('/a')), w.submit(put('/b'))];
    const results = await Promise.all(all);
    assert.ok(results.every((r) => r.ok));
    // Each bulk request is over the 100-row budget: neither joins the puts' transaction, and
    // each runs alone, in the order they were submitted.
    assert.deepEqual(batches, [['put:/a', 'put:/b'], ['bulk:500#1'], ['bulk:500#2']]);
  });
});

test('bulk requests share a transaction up to the row budget, next to puts only a quarter of it', async () => {
  await withWriter(100, async (w, batches) => {
    const reqs = [bulk(40, 1), bulk(20, 2), bulk(40, 3), put('/p'), bulk(40, 4), bulk(40, 5), bulk(40, 6)];
    const results = await Promise.all(reqs.map((r) => w.submit(r)));
    assert.ok(results.every((r) => r.ok));
    // Next to the put a 40-row request is over a quarter of the budget (25): the put commits
    // alone; then bulk fills whole budgets in order.
    assert.deepEqual(batches, [
      ['put:/p'],
      ['bulk:40#1', 'bulk:20#2', 'bulk:40#3'],
      ['bulk:40#4', 'bulk:40#5'],
      ['bulk:40#6'],
    ]);
  });
});

test('small bulk requests join a put within a quarter of the budget', async () => {
  await withWriter(100, async (w, batches) => {
    const reqs = [bulk(10, 1), bulk(10, 2), bulk(10, 3), put('/p')];
    const results = await Promise.all(reqs.map((r) => w.submit(r)));
    assert.ok(results.every((r) => r.ok));
    assert.deepEqual(batches, [['put:/p', 'bulk:10#1', 'bulk:10#2'], ['bulk:10#3']]);
  });
});

test('a steady stream of puts does not starve bulk appends', async () => {
  await withWriter(100, async (w, batches) => {
    // every committed transaction brings a new put, so interactive work is always queued
    const more: Promise<unknown>[] = [];
    let i = 0;
    const feed = () => {
      if (i < 6) more.push(w.submit(put(`/k${i++}`)).then(feed));
    };
    const first = [w.submit(bulk(500, 1)), w.submit(bulk(500, 2)), w.submit(put('/a'))];
    feed();
    await Promise.all(first);
    while (more.length < 6) await new Promise((r) => setImmediate(r));
    await Promise.all(more);
    const at = (tag: string) => batches.findIndex((b) => b.includes(tag));
    // each oversized bulk request commits at most one transaction after one that skipped it
    assert.ok(at('bulk:500#1') <= 1, batches.map((b) => b.join(',')).join(' | '));
    assert.ok(at('bulk:500#2') <= at('bulk:500#1') + 2, batches.map((b) => b.join(',')).join(' | '));
    // and is the only bulk request in its transaction (the budget is 100 rows)
    assert.deepEqual(
      batches[at('bulk:500#1')]!.filter((d) => d.startsWith('bulk:')),
      ['bulk:500#1'],
    );
  });
});

test('every queued request commits exactly once under a mix of classes', async () => {
  await withWriter(64, async (w, batches) => {
    const reqs: EngineRequest[] = [];
    for (let i = 0; i < 200; i++) reqs.push(i % 3 === 0 ? put(`/k${i}`) : bulk(1 + (i % 50), i));
    const results = await Promise.all(reqs.map((r) => w.submit(r)));
    assert.ok(results.every((r) => r.ok));
    const seen = batches.flat();
    assert.equal(seen.length, reqs.length);
    assert.deepEqual([...seen].sort(), reqs.map(describe).sort());
    // Within each class the commit order is the submit order.
    for (const cls of ['put:', 'bulk:']) {
      const order = seen.filter((s) => s.startsWith(cls));
      assert.deepEqual(
        order,
        reqs.map(describe).filter((s) => s.startsWith(cls)),
      );
    }
    // No transaction holds more bulk rows than the budget, unless it is a single oversized request.
    for (const b of batches) {
      const rows = b.filter((s) => s.startsWith('bulk:')).map((s) => Number(s.slice(5, s.indexOf('#'))));
      assert.ok(rows.length <= 1 || rows.reduce((a, x) => a + x, 0) <= 64, `batch ${b.join(',')}`);
    }
  });
});
