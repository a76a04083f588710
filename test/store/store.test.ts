/**
 * The store's contract beyond the model test: bad input and its typed errors, leases and their
 * expiry (driven by a manual clock), slow watchers, the quota, a damaged file, restart.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'node:test';
import Database from 'better-sqlite3';
import { Registry } from 'prom-client';
import { ManualClock } from '../../src/clock.js';
import { openStore } from '../../src/store/index.js';
import type { Store, StoreOptions, WatchEvent } from '../../src/store/types.js';

const b = (s: string) => Buffer.from(s);

async function withStore(opts: Partial<StoreOptions>, fn: (s: Store, file: string) => Promise<void>) {
  const dir = mkdtempSync(join(tmpdir(), 'ek-store-'));
  const file = join(dir, 's.db');
  const s = await openStore({ file, durability: 'relaxed', ...opts });
  try {
    await fn(s, file);
  } finally {
    await s.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function code(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    return (e as { code: string }).code;
  }
  return 'no error';
}

test('bad input gets typed errors, is counted, and the store keeps serving', async () => {
  const registry = new Registry();
  await withStore({ registry, maxRequestBytes: 1024, maxTxnOps: 4 }, async (s) => {
    assert.equal(s.revision(), 1, 'an empty store is at revision 1');
    assert.equal(await code(s.put({ key: b(''), value: b('x') })), 'EDGE_ERR_EMPTY_KEY');
    assert.equal(await code(() => s.range({ key: b('') })), 'EDGE_ERR_EMPTY_KEY');
    assert.equal(await code(s.put({ key: b('k'), value: Buffer.alloc(2000) })), 'EDGE_ERR_REQUEST_TOO_LARGE');
    const ops = Array.from({ length: 5 }, (_, i) => ({ put: { key: b(`k${i}`), value: b('v') } }));
    assert.equal(await code(s.txn({ success: ops })), 'EDGE_ERR_TOO_MANY_OPS');
    assert.equal(
      await code(
        s.txn({
          success: [{ put: { key: b('a'), value: b('1') } }, { put: { key: b('a'), value: b('2') } }],
        }),
      ),
      'EDGE_ERR_DUPLICATE_KEY',
    );
    assert.equal(
      await code(s.put({ key: b('k'), value: b('v'), lease: 12345n })),
      'EDGE_ERR_LEASE_NOT_FOUND',
    );
    assert.equal(await code(s.put({ key: b('missing'), ignoreValue: true })), 'EDGE_ERR_KEY_NOT_FOUND');
    assert.equal(await code(() => s.range({ key: b('k'), revision: 99 })), 'EDGE_ERR_FUTURE_REV');
    assert.equal(await code(s.leaseRevoke(777n)), 'EDGE_ERR_LEASE_NOT_FOUND');
    assert.equal(await code(() => s.leaseKeepAlive(777n)), 'EDGE_ERR_LEASE_NOT_FOUND');
    assert.equal(await code(s.compact(50)), 'EDGE_ERR_FUTURE_REV');
    assert.equal(s.revision(), 1, 'refused requests must not take revisions');
    // The store still works, and a good request in the same group commit as a bad one is unharmed.
    const [good, bad] = await Promise.allSettled([
      s.put({ key: b('ok'), value: b('1') }),
      s.put({ key: b('bad'), value: b('1'), lease: 1n }),
    ]);
    assert.equal(good.status, 'fulfilled');
    assert.equal(bad.status, 'rejected');
    assert.equal(s.range({ key: b('ok') }).kvs[0]?.value.toString(), '1');
    assert.equal(s.range({ key: b('bad') }).kvs.length, 0);
    await s.compact(2);
    assert.equal(await code(() => s.range({ key: b('ok'), revision: 1 })), 'EDGE_ERR_COMPACTED');
    assert.equal(await code(s.compact(2)), 'EDGE_ERR_COMPACTED');
    assert.equal(
      await code(() => s.watch({ key: b('ok'), startRevision: 1 }, { onEvents() {}, onCancel() {} })),
      'EDGE_ERR_COMPACTED',
    );
    const text = await registry.metrics();
    assert.match(text, /edgekeeper_store_errors_total\{code="EDGE_ERR_EMPTY_KEY"\} 2/);
    assert.match(text, /edgekeeper_store_errors_total\{code="EDGE_ERR_LEASE_NOT_FOUND"\} [34]/);
  });
});

test('lease expiry deletes every attached key in one revision, with delete events', async () => {
  const clock = new ManualClock();
  await withStore({ clock, minLeaseTtl: 1 }, async (s) => {
    const l = await s.leaseGrant(5);
    assert.equal(l.ttl, 5);
    await s.put({ key: b('l/a'), value: b('1'), lease: l.id });
    await s.put({ key: b('l/b'), value: b('2'), lease: l.id });
    await s.put({ key: b('other'), value: b('3') });
    const events: WatchEvent[] = [];
    s.watch({ key: b('l/'), rangeEnd: b('l0') }, { onEvents: (e) => events.push(...e), onCancel() {} });
    const ttl = s.leaseTimeToLive(l.id, true);
    assert.equal(ttl.grantedTtl, 5);
    assert.deepEqual(ttl.keys.map(String), ['l/a', 'l/b']);
    clock.advance(4000);
    assert.equal(s.leaseKeepAlive(l.id).ttl, 5, 'keepalive renews to the granted TTL');
    clock.advance(4000);
    assert.equal(s.range({ key: b('l/a') }).kvs.length, 1, 'renewed lease must not expire yet');
    const before = s.revision();
    clock.advance(1500);
    for (let i = 0; i < 50 && s.range({ key: b('l/a') }).kvs.length > 0; i++)
      await new Promise((r) => setTimeout(r, 10));
    assert.equal(s.range({ key: b('l/'), rangeEnd: b('l0') }).count, 0);
    assert.equal(s.revision(), before + 1, 'expiry takes exactly one revision');
    assert.deepEqual(
      events.map((e) => [e.type, e.kv.key.toString(), e.kv.modRevision]),
      [
        ['DELETE', 'l/a', before + 1],
        ['DELETE', 'l/b', before + 1],
      ],
    );
    assert.equal(s.range({ key: b('other') }).kvs.length, 1);
    assert.throws(() => s.leaseTimeToLive(l.id), { code: 'EDGE_ERR_LEASE_NOT_FOUND' });
    assert.deepEqual(s.leaseList(), []);
  });
});

test('a paused watcher that falls too far behind is cancelled; others keep receiving', async () => {
  await withStore({ watchBufferLimit: 10 }, async (s) => {
    let cancelled: Error | undefined;
    const fast: WatchEvent[] = [];
    const slow = s.watch({ key: b('w') }, { onEvents() {}, onCancel: (e) => (cancelled = e) });
    s.watch({ key: b('w') }, { onEvents: (e) => fast.push(...e), onCancel() {} });
    slow.pause();
    for (let i = 0; i < 15; i++) await s.put({ key: b('w'), value: b(String(i)) });
    assert.equal((cancelled as { code?: string } | undefined)?.code, 'EDGE_ERR_WATCH_OVERFLOW');
    assert.equal(fast.length, 15);
    assert.equal(s.stats().watchers, 1);
  });
});

test('a paused watcher within its limit gets the buffered events in order on resume', async () => {
  await withStore({}, async (s) => {
    const got: number[] = [];
    const h = s.watch(
      { key: b('p') },
      { onEvents: (e) => got.push(...e.map((x) => x.kv.modRevision)), onCancel() {} },
    );
    h.pause();
    assert.equal(h.progressRevision(), undefined);
    for (let i = 0; i < 5; i++) await s.put({ key: b('p'), value: b(String(i)) });
    assert.deepEqual(got, []);
    h.resume();
    assert.deepEqual(got, [2, 3, 4, 5, 6]);
    assert.equal(h.progressRevision(), 6);
  });
});

test('the quota refuses writes but allows deletes and compaction, then recovers', async () => {
  await withStore({ quotaBytes: 256 * 1024 }, async (s) => {
    let refused = 'no error';
    for (let i = 0; i < 200 && refused === 'no error'; i++)
      refused = await code(s.put({ key: b(`big/${i}`), value: Buffer.alloc(8 * 1024, i) }));
    assert.equal(refused, 'EDGE_ERR_NO_SPACE');
    assert.equal(s.stats().noSpace, true);
    assert.equal(await code(s.leaseGrant(10)), 'EDGE_ERR_NO_SPACE');
    const d = await s.deleteRange({ key: b('big/'), rangeEnd: b('big0') });
    assert.ok(d.deleted > 0);
    await s.compact(s.revision(), true);
    await s.put({ key: b('small'), value: b('x') });
    assert.equal(s.stats().noSpace, false);
  });
});

test('the WAL past its kept size counts in the quota (a reader holding checkpoints back)', async () => {
  await withStore({ quotaBytes: 6 * 1024 * 1024 }, async (s, file) => {
    // A reader on its own connection pins a snapshot: the WAL can neither be copied past it nor
    // restart, so every write grows the file while the database's pages in use stay ~1 MB.
    const reader = new Database(file, { readonly: true });
    reader.exec('BEGIN');
    reader.prepare('SELECT count(*) FROM meta').get();
    let refused = 'no error';
    let n = 0;
    try {
      for (; n < 60 && refused === 'no error'; n++) {
        refused = await code(s.put({ key: b('one'), value: Buffer.alloc(256 * 1024, n) }));
        if (refused === 'no error') await s.compact(s.revision(), true);
      }
      assert.equal(refused, 'EDGE_ERR_NO_SPACE', `the WAL reached ${s.stats().walSize} bytes unrefused`);
      assert.ok(s.stats().dbSizeInUse < 2 * 1024 * 1024);
    } finally {
      reader.exec('COMMIT');
      reader.close();
    }
  });
});

test('a damaged database file is refused with a clear error', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ek-bad-'));
  try {
    const file = join(dir, 'bad.db');
    writeFileSync(file, Buffer.alloc(8192, 0x5a));
    await assert.rejects(openStore({ file }), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'EDGE_ERR_CORRUPT');
      assert.match(e.message, /integrity check|restore/);
      return true;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('restart keeps revisions, leases, the compaction point and lets watches resume', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ek-restart-'));
  const file = join(dir, 'r.db');
  try {
    let s = await openStore({ file });
    const lease = await s.leaseGrant(600);
    await s.put({ key: b('k'), value: b('1'), lease: lease.id });
    await s.put({ key: b('k'), value: b('2'), lease: lease.id });
    const mid = (await s.put({ key: b('j'), value: b('x') })).header.revision;
    await s.put({ key: b('k'), value: b('3'), lease: lease.id });
    await s.compact(mid, true);
    const ids = s.identity();
    const rev = s.revision();
    await s.close();

    s = await openStore({ file });
    try {
      assert.equal(s.revision(), rev);
      assert.equal(s.compactRevision(), mid);
      assert.deepEqual(s.identity(), ids, 'cluster and member IDs are stable');
      assert.deepEqual(s.leaseList(), [lease.id]);
      const ttl = s.leaseTimeToLive(lease.id, true);
      assert.equal(ttl.grantedTtl, 600);
      assert.ok(ttl.ttl >= 599, 'a lease gets its full TTL again after a restart');
      assert.deepEqual(ttl.keys.map(String), ['k']);
      await assert.rejects(async () => s.range({ key: b('k'), revision: mid - 1 }), {
        code: 'EDGE_ERR_COMPACTED',
      });
      assert.equal(s.range({ key: b('k'), revision: mid }).kvs[0]?.value.toString(), '2');
      const seen: string[] = [];
      s.watch(
        { key: b('k'), startRevision: mid },
        { onEvents: (e) => seen.push(...e.map((x) => x.kv.value.toString())), onCancel() {} },
      );
      const next = await s.put({ key: b('k'), value: b('4') });
      assert.equal(next.header.revision, rev + 1, 'revisions continue where they stopped');
      await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual(seen, ['3', '4']);
    } finally {
      await s.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('recipes: a second locker waits for the first; election leader follows resignation', async () => {
  await withStore({}, async (s) => {
    const l1 = (await s.leaseGrant(60)).id;
    const l2 = (await s.leaseGrant(60)).id;
    const first = await s.lock(b('m'), l1);
    assert.equal(first.key.toString(), `m/${l1.toString(16)}`);
    let second = false;
    const p = s.lock(b('m'), l2).then((r) => {
      second = true;
      return r;
    });
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(second, false, 'the second locker must wait');
    await s.unlock(first.key);
    assert.equal((await p).key.toString(), `m/${l2.toString(16)}`);

    const a = await s.campaign(b('e'), l1, b('alpha'));
    assert.equal(s.leader(b('e'))?.value.toString(), 'alpha');
    const bWins = s.campaign(b('e'), l2, b('beta'));
    await s.proclaim(a.leader, b('alpha2'));
    assert.equal(s.leader(b('e'))?.value.toString(), 'alpha2');
    await s.resign(a.leader);
    const bl = await bWins;
    assert.equal(s.leader(b('e'))?.value.toString(), 'beta');
    await assert.rejects(s.proclaim(a.leader, b('x')), { code: 'EDGE_ERR_NOT_LEADER' });
    assert.equal(bl.leader.key.toString(), `e/${l2.toString(16)}`);
  });
});

test('a watcher whose listener throws is cancelled; the write and other watchers are unaffected', async () => {
  await withStore({}, async (s) => {
    let cancelled: Error | undefined;
    const good: number[] = [];
    s.watch(
      { key: b('t') },
      {
        onEvents() {
          throw new Error('consumer bug');
        },
        onCancel: (e) => (cancelled = e),
      },
    );
    s.watch(
      { key: b('t') },
      { onEvents: (e) => good.push(...e.map((x) => x.kv.modRevision)), onCancel() {} },
    );
    const r = await s.put({ key: b('t'), value: b('1') });
    assert.equal(r.header.revision, 2, 'the put is acknowledged despite the throwing listener');
    assert.equal(cancelled?.message, 'consumer bug');
    await s.put({ key: b('t'), value: b('2') });
    assert.deepEqual(good, [2, 3]);
    assert.equal(s.stats().watchers, 1);
  });
});

test('a columns op appends the same rows as one object per row, through the writer thread', async () => {
  const migrations = [
    { part: 'cols', version: 1, sql: 'CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, n INTEGER, b BLOB)' },
  ];
  const { blobColumn } = await import('../../src/store/index.js');
  await withStore({ migrations }, async (s) => {
    // blobs as views into a larger buffer (as a decoder hands them out), one empty
    const backing = Buffer.from('xxabcdefghyy');
    const blobs = [backing.subarray(2, 5), backing.subarray(5, 5), backing.subarray(5, 10)];
    const res = await s.write({
      sql: [
        {
          sql: 'INSERT INTO t(name, n, b) VALUES (@name, @n, @b)',
          columns: { name: ['a', 'b', 'c'], n: [1, null, 3], b: blobColumn(blobs) },
          count: 3,
        },
      ],
    });
    assert.equal(res.sql[0]!.changes, 3);
    const rows = s
      .query<{ name: string; n: number | null; b: Buffer }>('SELECT name, n, b FROM t ORDER BY id')
      .all();
    assert.deepEqual(
      rows.map((r) => [r.name, r.n, Buffer.from(r.b).toString()]),
      [
        ['a', 1, 'abc'],
        ['b', null, ''],
        ['c', 3, 'defgh'],
      ],
    );
  });
});

test('commit latency is reported over the last minute and only from 20 commits on', async () => {
  const clock = new ManualClock();
  await withStore({ clock }, async (s) => {
    for (let i = 0; i < 19; i++) await s.put({ key: Buffer.from(`l/${i}`), value: Buffer.from('v') });
    assert.equal(s.stats().commitLatencyMs, undefined, '19 commits are too few for a p99');
    await s.put({ key: Buffer.from('l/19'), value: Buffer.from('v') });
    const l = s.stats().commitLatencyMs;
    assert.ok(l && l.p50 > 0 && l.p99 >= l.p50, JSON.stringify(l));
    clock.advance(61_000);
    assert.equal(s.stats().commitLatencyMs, undefined, 'commits older than a minute still count');
  });
});

test('under steady writes the WAL restarts from its start and stays bounded', async () => {
  const { statSync } = await import('node:fs');
  const { WalIndex } = await import('../../src/store/sql/walindex.js');
  await withStore({ durability: 'fsync' }, async (s, file) => {
    const value = Buffer.alloc(2048, 7);
    const wal = new WalIndex(file);
    let maxWal = 0;
    let lastFrames = 0;
    let restarts = 0;
    // 24 MiB of puts, never idle: passive checkpoints alone would never let the WAL restart.
    for (let i = 0; i < 6000; i++) {
      await Promise.all([0, 1].map((j) => s.put({ key: Buffer.from(`w/${(i * 2 + j) % 500}`), value })));
      if (i % 20 === 0) {
        const frames = wal.read()!.frames;
        if (frames < lastFrames) restarts++;
        lastFrames = frames;
        maxWal = Math.max(maxWal, statSync(`${file}-wal`).size);
      }
    }
    wal.close();
    assert.ok(restarts >= 2, `the WAL restarted ${restarts} times`);
    assert.ok(maxWal <= 8 * 1024 * 1024, `the WAL grew to ${maxWal} bytes`);
  });
});

test('a batch that changes nothing is not synced and writes nothing', async () => {
  const { statSync } = await import('node:fs');
  const { Registry } = await import('prom-client');
  const registry = new Registry();
  await withStore({ durability: 'fsync', registry }, async (s, file) => {
    const syncs = async () =>
      (await registry.getSingleMetric('edgekeeper_store_sync_seconds')!.get()).values.find((v) =>
        (v as { metricName?: string }).metricName?.endsWith('_count'),
      )?.value ?? 0;
    await s.put({ key: b('a'), value: b('1') });
    const before = { syncs: await syncs(), wal: statSync(`${file}-wal`).size };
    assert.ok(before.syncs >= 1, 'a put is synced');
    for (let i = 0; i < 10; i++) {
      await s.write({});
      await s.deleteRange({ key: b('missing') });
      await s.txn({
        compare: [{ key: b('a'), target: 'VERSION', result: 'EQUAL', version: 9 }],
        success: [],
      });
    }
    assert.equal(await syncs(), before.syncs, 'a batch that wrote nothing was synced');
    assert.equal(statSync(`${file}-wal`).size, before.wal);
    await s.put({ key: b('a'), value: b('2') });
    assert.equal(await syncs(), before.syncs + 1);
  });
});
