/**
 * The report writer on a real store: every body byte for byte and in order, de-duplication
 * inside one batch and across batches (within the window only, by device, seq and ts, with and
 * without ts) through one index probe, reports without seq always stored, and the bytes bound
 * on one write.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { systemClock } from '../../src/clock.js';
import { silentLogger } from '../../src/log.js';
import { ReportCommitter } from '../../src/ingest/commit.js';
import { createMetrics } from '../../src/ingest/metrics.js';
import { ingestMigrations } from '../../src/ingest/schema.js';
import { arrivalTime, BATCH_MAX_BYTES, INSERT_REPORT, ReportWriter } from '../../src/ingest/writer.js';
import { openStore } from '../../src/store/index.js';
import type { BlobColumn, Store, WriteRequest } from '../../src/store/types.js';
import { openTestStore, tempDir, writerOn } from './helpers.js';

const HOUR = 3_600_000;

describe('report writer', () => {
  let dir: string;
  let store: Store;
  let writes: WriteRequest[];
  let writer: ReportWriter;
  let registry: Registry;

  before(async () => {
    dir = tempDir();
    store = await openTestStore(dir);
    // the store as the writer sees it, recording every write
    const spy = Object.create(store) as Store;
    spy.write = (req) => {
      writes.push(req);
      return store.write(req);
    };
    registry = new Registry();
    const committer = new ReportCommitter(spy, systemClock, createMetrics(registry), silentLogger());
    writer = new ReportWriter((b) => committer.commit(b), { batchMax: 500, dedupeWindow: HOUR });
  });
  after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const rows = (device: string) =>
    store
      .query<{ id: number; ts: number | null; seq: number | null; body: Buffer; received_at: number }>(
        'SELECT id, ts, seq, body, received_at FROM reports WHERE device = ? ORDER BY id',
      )
      .all(device);

  it('stores a batch in order with every body intact, copies within the batch once', async () => {
    writes = [];
    const now = Date.now();
    const body = (i: number) =>
      Buffer.from(Array.from({ length: 1 + (i % 7) * 13 }, (_, k) => (i * 31 + k) % 256));
    const adds: Promise<void>[] = [];
    for (let i = 0; i < 40; i++)
      adds.push(writer.add({ device: 'w1', receivedAt: now, ts: 1000 + i, seq: i, body: body(i) }, 1, 0));
    // the same report again in the same turn, one with the same seq but another ts, two without seq
    adds.push(writer.add({ device: 'w1', receivedAt: now, ts: 1005, seq: 5, body: body(5) }, 1, 0));
    adds.push(writer.add({ device: 'w1', receivedAt: now, ts: 9999, seq: 5, body: body(99) }, 1, 0));
    adds.push(writer.add({ device: 'w1', receivedAt: now, ts: null, seq: null, body: body(1) }, 0, 0));
    adds.push(writer.add({ device: 'w1', receivedAt: now, ts: null, seq: null, body: body(1) }, 0, 0));
    await Promise.all(adds);
    assert.equal(writes.length, 1, 'one event-loop turn, one write');
    const got = rows('w1');
    assert.equal(got.length, 43);
    for (let i = 0; i < 40; i++) {
      assert.equal(got[i]!.seq, i);
      assert.equal(got[i]!.ts, 1000 + i);
      assert.deepEqual(got[i]!.body, body(i));
    }
    assert.deepEqual(
      got.slice(40).map((r) => [r.seq, r.ts, Buffer.compare(r.body, body(r.seq === 5 ? 99 : 1))]),
      [
        [5, 9999, 0],
        [null, null, 0],
        [null, null, 0],
      ],
    );
    const dup = (await registry.getSingleMetric('edgekeeper_ingest_duplicates_total')?.get())?.values[0]
      ?.value;
    assert.equal(dup, 1);
  });

  it('drops a redelivered report within the window and stores it again after the window', async () => {
    const t = Date.now();
    const r = { device: 'w2', ts: 7, seq: 1, body: Buffer.from([0xa0]) };
    await writer.add({ ...r, receivedAt: t }, 1, 0);
    await writer.add({ ...r, receivedAt: t + HOUR - 1 }, 1, 0);
    assert.equal(rows('w2').length, 1);
    await writer.add({ ...r, receivedAt: t + 2 * HOUR }, 1, 0);
    assert.equal(rows('w2').length, 2);
    // without ts: the same device and seq is the same report
    const bare = { device: 'w2', ts: null, seq: 2, body: Buffer.from([0xa0]) };
    await writer.add({ ...bare, receivedAt: t }, 1, 0);
    await writer.add({ ...bare, receivedAt: t + 1 }, 1, 0);
    assert.equal(rows('w2').length, 3);
  });

  it('keeps recognising reports stored before the index changed (schema 1 to 2)', async () => {
    const old = tempDir();
    const file = join(old, 'edgekeeper.db');
    const first = ingestMigrations.filter((m) => m.version === 1);
    const s1 = await openStore({ file, migrations: first, durability: 'relaxed' });
    const report = { device: 'u1', receivedAt: Date.now(), ts: 5, seq: 9, body: Buffer.from([1]) };
    await writerOn(s1).add(report, 1, 0);
    await s1.close();
    const s2 = await openStore({ file, migrations: ingestMigrations, durability: 'relaxed' });
    try {
      const indexes = s2
        .query<{ name: string }>(
          "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'reports'",
        )
        .all()
        .map((r) => r.name);
      assert.deepEqual(indexes, ['reports_ts_device_seq']);
      await writerOn(s2).add(report, 1, 0);
      const n = s2.query<{ n: number }>("SELECT count(*) AS n FROM reports WHERE device = 'u1'").get()!.n;
      assert.equal(n, 1, 'the redelivery is recognised');
    } finally {
      await s2.close();
      rmSync(old, { recursive: true, force: true });
    }
  });

  it('finds a redelivered report with one probe of the (ts, device, seq) index', () => {
    const plan = store
      .query<{ detail: string }>(`EXPLAIN QUERY PLAN ${INSERT_REPORT}`)
      .all({ device: 'x', receivedAt: 1, ts: 1, seq: 1, since: 0, body: Buffer.alloc(1) })
      .map((r) => r.detail);
    assert.ok(
      plan.some((d) => d.includes('USING INDEX reports_ts_device_seq (ts=? AND device=? AND seq=?)')),
      plan.join('; '),
    );
  });

  it('bounds the body bytes of one write', async () => {
    writes = [];
    const big = Buffer.alloc(300 * 1024, 1);
    await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        writer.add({ device: 'w3', receivedAt: Date.now(), ts: null, seq: i, body: big }, 1, 0),
      ),
    );
    assert.equal(rows('w3').length, 8);
    assert.ok(writes.length >= 3, `8 x 300 KiB need at least 3 writes, got ${writes.length}`);
    for (const w of writes) {
      const body = (w.sql![0] as { columns: Record<string, BlobColumn> }).columns.body!;
      assert.ok(body.bytes.length <= BATCH_MAX_BYTES);
    }
  });

  it('acknowledges a committed batch at most 64 reports per turn of the event loop', async () => {
    let turn = 0;
    let counting = true;
    const tick = () => {
      turn++;
      if (counting) setImmediate(tick);
    };
    setImmediate(tick);
    const perTurn = new Map<number, number>();
    const t = Date.now();
    await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        writer
          .add({ device: 'w4', receivedAt: t, ts: null, seq: i, body: Buffer.from([0xa0]) }, 1, 0)
          .then(() => perTurn.set(turn, (perTurn.get(turn) ?? 0) + 1)),
      ),
    );
    counting = false;
    assert.equal(rows('w4').length, 200);
    assert.equal(
      [...perTurn.values()].reduce((a, b) => a + b, 0),
      200,
    );
    assert.ok(Math.max(...perTurn.values()) <= 64, JSON.stringify([...perTurn]));
  });

  it('holds batches while admission is closed, writes them when it opens, refuses them once stopping', async (ctx) => {
    let admit = false;
    const reg = new Registry();
    const metrics = createMetrics(reg);
    const committer = new ReportCommitter(store, systemClock, metrics, silentLogger(), () => admit);
    const w = new ReportWriter((b) => committer.commit(b), { batchMax: 500, dedupeWindow: HOUR });
    const t = Date.now();
    const report = (seq: number) => ({
      device: 'w5',
      receivedAt: t,
      ts: null,
      seq,
      body: Buffer.from([0xa0]),
    });
    // The committer's recheck timer is unref'd (the daemon's sockets keep it alive); so is
    // everything else here, so this interval keeps the test's event loop running meanwhile.
    const alive = setInterval(() => {}, 1000);
    ctx.after(() => clearInterval(alive));
    let done = 0;
    const first = Promise.all([1, 2, 3].map((i) => w.add(report(i), 1, arrivalTime()).then(() => done++)));
    await new Promise((r) => setTimeout(r, 700));
    assert.equal(done, 0, 'nothing acknowledged while admission is closed');
    assert.equal(rows('w5').length, 0);
    assert.equal((await metrics.held.get()).values[0]?.value, 3);
    admit = true;
    await first;
    assert.equal(rows('w5').length, 3);
    assert.equal((await metrics.held.get()).values[0]?.value, 0);

    admit = false;
    const held = w.add(report(4), 1, arrivalTime());
    await new Promise((r) => setTimeout(r, 50));
    committer.failHeld(new Error('ingest stopping'));
    await assert.rejects(held, /ingest stopping/);
    // a batch that comes after the shutdown began is refused at once, not held
    await assert.rejects(w.add(report(5), 1, arrivalTime()), /ingest stopping/);
    await w.drain();
    assert.equal(rows('w5').length, 3);
  });

  it('writes a batch in chunks while chunkRows gives a size, every body intact, acknowledged once all commit', async () => {
    const chunked: WriteRequest[] = [];
    const spy = Object.create(store) as Store;
    spy.write = (req) => {
      chunked.push(req);
      return store.write(req);
    };
    let chunk: number | undefined = 64;
    const committer = new ReportCommitter(
      spy,
      systemClock,
      createMetrics(new Registry()),
      silentLogger(),
      undefined,
      () => chunk,
    );
    const w = new ReportWriter((b) => committer.commit(b), { batchMax: 500, dedupeWindow: HOUR });
    const t = Date.now();
    const body = (i: number) => Buffer.from(`report ${i} `.repeat(1 + (i % 5)));
    const add = (seq: number) =>
      w.add({ device: 'w6', receivedAt: t, ts: t, seq, body: body(seq) }, 1, arrivalTime());
    // 150 reports in one turn: one batch, stored as 64 + 64 + 22
    await Promise.all(Array.from({ length: 150 }, (_, i) => add(i)));
    assert.deepEqual(
      chunked.map((r) => (r.sql![0] as { count: number }).count),
      [64, 64, 22],
    );
    const got = rows('w6');
    assert.equal(got.length, 150);
    got.forEach((r, i) => {
      assert.equal(r.seq, i);
      assert.deepEqual(r.body, body(i));
    });
    // not yielding: one write again; a resent copy of the stored reports inserts nothing
    chunk = undefined;
    chunked.length = 0;
    await Promise.all(Array.from({ length: 100 }, (_, i) => add(i)));
    assert.equal(chunked.length, 1);
    assert.equal(rows('w6').length, 150);
  });
});
