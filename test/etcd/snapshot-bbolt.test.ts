/**
 * The bbolt writer and reader (src/etcd/snapshot/bbolt.ts): random buckets with random key and
 * value sizes (empty values, values larger than a page, enough keys for branch pages several
 * levels deep) written and read back equal; and the same files opened by real bbolt through
 * `etcdctl snapshot status`, which runs bbolt's consistency check (every page reachable once,
 * page types, bounds) and hashes every bucket name, key and value with CRC-32C: its hash and
 * key count must equal ours, computed from what we meant to write.
 * Needs: /usr/bin/etcdctl (Debian package etcd-client); a missing etcdctl fails loudly.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { BoltReader, BoltWriter } from '../../src/etcd/snapshot/index.js';
import { ETCDCTL_BIN, requirePeer } from './helpers.js';

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const CRC32C = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

/** Streaming CRC-32C (Castagnoli), what etcdctl's `snapshot status` hashes with. */
class Crc32c {
  private c = 0xffffffff;
  update(b: Buffer): void {
    for (const x of b) this.c = CRC32C[(this.c ^ x) & 0xff]! ^ (this.c >>> 8);
  }
  digest(): number {
    return (this.c ^ 0xffffffff) >>> 0;
  }
}

type Bucket = { name: Buffer; entries: [Buffer, Buffer][] };

function randomBuckets(r: () => number, pageSize: number, big: boolean): Bucket[] {
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => Math.floor(r() * 256)));
  const names = new Set<string>();
  while (names.size < 4) names.add(`b${Math.floor(r() * 1000)}`);
  return [...names].sort().map((name, i) => {
    // One bucket empty, one small (inline), the others large.
    const n = i === 0 ? 0 : i === 1 ? 3 : big ? 2500 + Math.floor(r() * 1500) : 40 + Math.floor(r() * 200);
    const keys = new Map<string, Buffer>();
    while (keys.size < n) {
      const k = bytes(1 + Math.floor(r() * (r() < 0.1 ? 300 : 40)));
      keys.set(k.toString('hex'), k);
    }
    const entries = [...keys.values()].sort(Buffer.compare).map((k): [Buffer, Buffer] => {
      const roll = r();
      // Empty values, small values, and now and then values of 1-3 pages (overflow pages).
      const len =
        roll < 0.1 ? 0 : roll < 0.97 ? Math.floor(r() * 200) : pageSize + Math.floor(r() * 2 * pageSize);
      return [k, bytes(len)];
    });
    return { name: Buffer.from(name), entries };
  });
}

async function writeFile(file: string, buckets: Bucket[], pageSize: number): Promise<void> {
  const w = await BoltWriter.create(file, { pageSize });
  for (const b of buckets) await w.bucket(b.name, b.entries);
  await w.finish();
}

function expectedStatus(buckets: Bucket[]): { hash: number; totalKey: number } {
  const h = new Crc32c();
  let totalKey = 0;
  for (const b of buckets) {
    h.update(b.name);
    for (const [k, v] of b.entries) {
      h.update(k);
      h.update(v);
      totalKey++;
    }
  }
  return { hash: h.digest(), totalKey };
}

function etcdctlStatus(file: string): { hash: number; totalKey: number; revision: number } {
  const r = spawnSync(ETCDCTL_BIN, ['snapshot', 'status', '-w', 'json', file], {
    env: { ...process.env, ETCDCTL_API: '3' },
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout);
}

describe('bbolt writer and reader', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ek-bbolt-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  for (const [seed, pageSize, big] of [
    [1, 1024, true],
    [2, 4096, true],
    [3, 512, false],
    [4, 4096, false],
    [5, 16384, false],
  ] as const) {
    it(`round trip, seed ${seed}, ${pageSize}-byte pages${big ? ', deep trees' : ''}; real bbolt agrees`, async () => {
      requirePeer(ETCDCTL_BIN, 'etcd-client');
      const buckets = randomBuckets(rng(seed), pageSize, big);
      const file = join(dir, `s${seed}.db`);
      await writeFile(file, buckets, pageSize);
      const r = BoltReader.open(file);
      try {
        assert.equal(r.pageSize, pageSize);
        assert.deepEqual(
          r.bucketNames().map((b) => b.toString()),
          buckets.map((b) => b.name.toString()),
        );
        for (const b of buckets) {
          const got = [...r.entries(b.name)!].map(([k, v]) => [Buffer.from(k), Buffer.from(v)]);
          assert.equal(got.length, b.entries.length, `bucket ${b.name}`);
          got.forEach(([k, v], i) => {
            assert.ok(k!.equals(b.entries[i]![0]), `bucket ${b.name} key ${i}`);
            assert.ok(v!.equals(b.entries[i]![1]), `bucket ${b.name} value ${i}`);
          });
        }
        assert.equal(r.depth(buckets[0]!.name), 0, 'an empty bucket is inline');
        if (big) {
          const depths = buckets.slice(2).map((b) => r.depth(b.name)!);
          assert.ok(Math.min(...depths) >= 3, `branch pages several levels deep: ${depths}`);
        }
        assert.equal(r.entries('missing'), undefined);
      } finally {
        r.close();
      }
      const st = etcdctlStatus(file);
      const want = expectedStatus(buckets);
      assert.equal(st.totalKey, want.totalKey);
      assert.equal(st.hash, want.hash, 'bbolt reads back exactly the bytes we wrote');
    });
  }

  it('refuses keys out of order and a second finish', async () => {
    const w = await BoltWriter.create(join(dir, 'order.db'));
    w.beginBucket(Buffer.from('a'));
    w.put(Buffer.from('b'), Buffer.alloc(0));
    assert.throws(() => w.put(Buffer.from('a'), Buffer.alloc(0)), /keys must ascend/);
    w.endBucket();
    assert.throws(() => w.beginBucket(Buffer.from('a')), /buckets must ascend/);
    await w.finish();
    await assert.rejects(w.finish(), /already finished/);
  });
});
