/**
 * etcd-format snapshots against real etcd 3.4, both ways.
 *
 * The same workload (puts and overwrites, deletes, a multi-key delete and a txn of several ops
 * in one revision, a value larger than a page, binary keys, leases with keys, a lease revoke, a
 * compaction at a delete's revision with writes after it) runs on edgekeeper and on a real etcd,
 * through the same raw gRPC client, with the same lease IDs. Then:
 * - edgekeeper -> etcd: `etcdctl snapshot save` from edgekeeper; `snapshot status` reports the
 *   revision and key count etcd's own snapshot reports, and the `key` and `lease` buckets are
 *   byte-for-byte etcd's; `etcdctl snapshot restore` plus a real etcd started on it serves every
 *   key (value, create/mod revision, version, lease) at every revision since the compaction,
 *   refuses the compacted ones, and has the leases with their TTLs and keys.
 * - etcd -> edgekeeper: etcd's snapshot through `edgekeeper restore --from-etcd` into a node with
 *   data of its own; a store on the result answers the same at every revision, with the same
 *   leases, a watch from the compact revision replays etcd's events, the node keeps its IDs.
 * - a snapshot taken while writes go on is the store at one revision;
 * - `backup --format etcd` from a running daemon (HTTP) and a stopped node;
 * - bad input: truncated, a flipped byte, a raw copy without the SHA-256 (imports), a file that
 *   is not bbolt, bbolt without the `key` bucket, a meta page claiming a huge page count, a page
 *   referenced twice, a broken record: each refused with its code, the node's database intact.
 * Needs: /usr/bin/etcd and /usr/bin/etcdctl (Debian etcd-server, etcd-client); missing, it fails.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { loadConfig } from '../../src/config/index.js';
import { allSections, restoreFromEtcdSnapshot, startDaemon } from '../../src/daemon/index.js';
import { EtcdClient } from '../../src/etcd/cli.js';
import { etcdMigrations, startEtcdServer, verifyEtcdSnapshot } from '../../src/etcd/index.js';
import { BoltReader, BoltWriter, revisionKey } from '../../src/etcd/snapshot/index.js';
import { EdgeError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { openStore } from '../../src/store/index.js';
import {
  type Edge,
  ETCD_BIN,
  ETCDCTL_BIN,
  etcdctl,
  type RealEtcd,
  requirePeer,
  startEdge,
  startRealEtcd,
  waitFor,
} from '../etcd/helpers.js';

const repo = join(import.meta.dirname, '..', '..');
const KV = 'etcdserverpb.KV';
const LEASE = 'etcdserverpb.Lease';
const b = (s: string) => Buffer.from(s);
// biome-ignore lint/suspicious/noExplicitAny: decoded gRPC messages
type J = any;

const LEASES: [bigint, number][] = [
  [0x1234n, 600],
  [0x5678n, 300],
  [0x7fff_0000_0000_0001n, 120],
];

/** The workload; returns the compact revision. Both servers get exactly the same calls. */
async function workload(c: EtcdClient): Promise<number> {
  const put = async (key: Buffer | string, value: Buffer | string, lease = 0n) =>
    Number(
      (await c.call(KV, 'Put', { key: Buffer.from(key), value: Buffer.from(value), lease: lease.toString() }))
        .header.revision,
    );
  for (const [id, ttl] of LEASES) await c.call(LEASE, 'LeaseGrant', { ID: id.toString(), TTL: ttl });
  for (let i = 0; i < 160; i++) await put(`/app/k${i % 40}`, `v${i}`);
  await put('/big', Buffer.alloc(10_000, 0x5a));
  await put(Buffer.from([0, 0xff, 1]), Buffer.from([0xde, 0xad]));
  await put('/lease/a', 'a', LEASES[0]![0]);
  await put('/lease/b', 'b', LEASES[0]![0]);
  await put('/lease/c', 'c', LEASES[1]![0]);
  await put('/lease/d', 'd', LEASES[2]![0]);
  // Several keys deleted in one revision (k2, k20..k29), and a txn of four ops in one revision.
  await c.call(KV, 'DeleteRange', { key: b('/app/k2'), range_end: b('/app/k3') });
  await c.call(KV, 'Txn', {
    compare: [],
    success: [
      { request_put: { key: b('/t/1'), value: b('one') } },
      { request_delete_range: { key: b('/app/k31') } },
      { request_put: { key: b('/t/2'), value: b('two') } },
      { request_put: { key: b('/app/k32'), value: b('txn') } },
    ],
  });
  await put('/app/k5', 'again');
  // Compact at a delete's revision: etcd drops that delete's tombstone too.
  const del = Number((await c.call(KV, 'DeleteRange', { key: b('/app/k1') })).header.revision);
  await put('/app/k6', 'after-compact-0');
  await c.call(KV, 'Compact', { revision: del, physical: true });
  for (let i = 0; i < 12; i++) await put(`/app/k${6 + (i % 3)}`, `after-${i}`);
  await c.call(KV, 'DeleteRange', { key: b('/t/'), range_end: b('/t0') });
  await c.call(LEASE, 'LeaseRevoke', { ID: LEASES[1]![0].toString() });
  await put('/app/k1', 'back');
  return del;
}

const s = (x: unknown) => String(x ?? 0);
function normKv(kv: J): string[] {
  return [
    Buffer.from(kv.key).toString('hex'),
    s(kv.create_revision),
    s(kv.mod_revision),
    s(kv.version),
    Buffer.from(kv.value ?? []).toString('hex'),
    s(kv.lease),
  ];
}

async function rangeAt(c: EtcdClient, rev: number): Promise<J> {
  try {
    const r = await c.call(KV, 'Range', {
      key: Buffer.from([0]),
      range_end: Buffer.from([0]),
      revision: rev,
    });
    return { count: s(r.count), kvs: (r.kvs ?? []).map(normKv) };
  } catch (err) {
    const e = err as { code?: number; details?: string };
    return { error: e.code, details: e.details };
  }
}

async function revisionOf(c: EtcdClient): Promise<number> {
  return Number((await c.call(KV, 'Range', { key: b('x') })).header.revision);
}

/** The key space at every revision from compact-1 (refused) to the current one, and the leases. */
async function sameAs(got: EtcdClient, want: EtcdClient, compact: number): Promise<void> {
  const rev = await revisionOf(want);
  assert.equal(await revisionOf(got), rev, 'current revision');
  for (let r = compact - 1; r <= rev; r++)
    assert.deepEqual(await rangeAt(got, r), await rangeAt(want, r), `range at ${r}`);
  const ids = async (c: EtcdClient) =>
    ((await c.call(LEASE, 'LeaseLeases', {})).leases ?? []).map((l: J) => s(l.ID)).sort();
  assert.deepEqual(await ids(got), await ids(want));
  for (const id of await ids(want)) {
    const ttl = async (c: EtcdClient) => {
      const t = await c.call(LEASE, 'LeaseTimeToLive', { ID: id, keys: true });
      return { granted: s(t.grantedTTL), keys: (t.keys ?? []).map((k: Buffer) => k.toString('hex')).sort() };
    };
    assert.deepEqual(await ttl(got), await ttl(want), `lease ${id}`);
  }
}

function bucket(file: string, name: string): string[] {
  const r = BoltReader.open(file);
  try {
    return [...(r.entries(name) ?? [])].map(([k, v]) => `${k.toString('hex')}=${v.toString('hex')}`);
  } finally {
    r.close();
  }
}

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p: ChildProcess = spawn(
      process.execPath,
      ['--import', 'tsx', join(repo, 'src', 'main.ts'), ...args],
      {
        cwd: repo,
        env: { ...process.env, NOTIFY_SOCKET: '' },
      },
    );
    let stdout = '';
    let stderr = '';
    p.stdout?.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    p.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const sha = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');

describe('etcd-format snapshots, differential against real etcd 3.4', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'ek-snap-'));
  let edge: Edge;
  let etcd: RealEtcd;
  let ec: EtcdClient;
  let rc: EtcdClient;
  let compact = 0;
  const edgeSnap = join(tmp, 'edge.snap');
  const etcdSnap = join(tmp, 'etcd.snap');

  before(async () => {
    requirePeer(ETCD_BIN, 'etcd-server');
    requirePeer(ETCDCTL_BIN, 'etcd-client');
    [edge, etcd] = await Promise.all([startEdge(), startRealEtcd()]);
    ec = new EtcdClient(edge.endpoint);
    rc = new EtcdClient(etcd.endpoint);
    const [a, c] = await Promise.all([workload(ec), workload(rc)]);
    assert.equal(a, c);
    compact = a;
    for (const [ep, file] of [
      [edge.endpoint, edgeSnap],
      [etcd.endpoint, etcdSnap],
    ] as const) {
      const r = await etcdctl(ep, ['snapshot', 'save', file]);
      assert.equal(r.status, 0, r.stderr);
    }
  });
  after(async () => {
    ec?.close();
    rc?.close();
    await Promise.all([edge?.close(), etcd?.close()]);
    rmSync(tmp, { recursive: true, force: true });
  });

  it('snapshot status: same revision and key count as etcd; key and lease buckets byte for byte', async () => {
    const status = async (file: string) => {
      const r = await etcdctl('127.0.0.1:1', ['snapshot', 'status', '-w', 'json', file]);
      assert.equal(r.status, 0, r.stderr);
      return JSON.parse(r.stdout) as { revision: number; totalKey: number };
    };
    const [mine, theirs] = [await status(edgeSnap), await status(etcdSnap)];
    assert.equal(mine.revision, theirs.revision);
    assert.equal(mine.totalKey, theirs.totalKey);
    assert.equal(mine.revision, await revisionOf(rc));
    // Sub revisions of entries at or below the compact revision may differ: etcd numbered them
    // among all the changes of their txn, edgekeeper among those that survived the compaction.
    const subs = (entries: string[]) =>
      entries.map((e) =>
        Number.parseInt(e.slice(0, 16), 16) <= compact ? `${e.slice(0, 18)}*${e.slice(34)}` : e,
      );
    const keys = subs(bucket(edgeSnap, 'key'));
    assert.ok(keys.length > 40, `${keys.length} history entries`);
    assert.deepEqual(keys, subs(bucket(etcdSnap, 'key')));
    assert.deepEqual(bucket(edgeSnap, 'lease'), bucket(etcdSnap, 'lease'));
    const r = BoltReader.open(edgeSnap, { length: readFileSync(edgeSnap).length - 32 });
    try {
      assert.ok(r.depth('key')! >= 2, 'the key bucket needs branch pages');
    } finally {
      r.close();
    }
  });

  it('etcdctl snapshot restore + a real etcd on it serves the same key space, history and leases', async () => {
    const restored = await startRealEtcd([], [], { snapshot: edgeSnap });
    const c = new EtcdClient(restored.endpoint);
    try {
      await sameAs(c, ec, compact);
      // And it goes on from there.
      const r = await c.call(KV, 'Put', { key: b('/after'), value: b('x') });
      assert.equal(Number(r.header.revision), (await revisionOf(ec)) + 1);
    } finally {
      c.close();
      await restored.close();
    }
  });

  it('restore --from-etcd: etcd history into a node with data of its own; watch from an old revision', async () => {
    const dir = join(tmp, 'node');
    mkdirSync(dir);
    const old = await openStore({ file: join(dir, 'edgekeeper.db'), logger: silentLogger() });
    await old.put({ key: b('/mine'), value: b('old') });
    const identity = old.identity();
    await old.close();
    const r = await cli(['restore', '--from-etcd', etcdSnap, '--data-dir', dir]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /imported etcd 3\.4 snapshot .* revision \d+, compact revision \d+, \d+ keys/);
    assert.match(r.stdout, /previous database kept as edgekeeper\.db\.pre-restore-/);
    const store = await openStore({
      file: join(dir, 'edgekeeper.db'),
      logger: silentLogger(),
      migrations: etcdMigrations,
    });
    const server = await startEtcdServer(store, { listen: '127.0.0.1:0' });
    const c = new EtcdClient(`127.0.0.1:${server.port}`);
    try {
      assert.deepEqual(store.identity(), identity, 'the node keeps its cluster and member IDs');
      assert.equal(store.compactRevision(), compact);
      await sameAs(c, rc, compact);
      const events = async (client: EtcdClient) => {
        const w = client.duplex('etcdserverpb.Watch', 'Watch');
        const out: string[] = [];
        const last = await revisionOf(client);
        await new Promise<void>((resolve, reject) => {
          w.on('data', (m: J) => {
            for (const e of m.events ?? [])
              out.push(
                `${e.type ?? 0}:${normKv(e.kv).join(',')}:${e.prev_kv ? normKv(e.prev_kv).join(',') : '-'}`,
              );
            if (
              Number(m.header?.revision) >= last &&
              out.length > 0 &&
              Number(m.events?.at(-1)?.kv?.mod_revision) >= last
            )
              resolve();
          });
          w.on('error', reject);
          w.write({
            create_request: {
              key: Buffer.from([0]),
              range_end: Buffer.from([0]),
              start_revision: compact + 1,
              prev_kv: true,
            },
          });
        });
        w.end();
        return out;
      };
      const got = await events(c);
      assert.ok(got.length > 12, `${got.length} events`);
      assert.deepEqual(got, await events(rc));
    } finally {
      c.close();
      await server.close();
      await store.close();
    }
  });

  it('a snapshot taken while writes go on is the store at one revision', async () => {
    let stop = false;
    const writer = (async () => {
      for (let i = 0; !stop; i++)
        await ec.call(KV, 'Put', { key: b(`/busy/${i % 50}`), value: Buffer.alloc(200, i) });
    })();
    const file = join(tmp, 'busy.snap');
    try {
      await new Promise((r) => setTimeout(r, 50));
      const r = await etcdctl(edge.endpoint, ['snapshot', 'save', file]);
      assert.equal(r.status, 0, r.stderr);
    } finally {
      stop = true;
      await writer;
    }
    const dir = join(tmp, 'busy');
    const imported = await restoreFromEtcdSnapshot(file, dir, Date.now());
    assert.ok(imported.revision < (await revisionOf(ec)), 'writes continued after the snapshot');
    const store = await openStore({ file: join(dir, 'edgekeeper.db'), logger: silentLogger() });
    try {
      const all = { key: Buffer.from([0]), rangeEnd: Buffer.from([0]), revision: imported.revision };
      const norm = (r: { kvs: J[] }) =>
        r.kvs.map((kv) =>
          normKv({ ...kv, create_revision: kv.createRevision, mod_revision: kv.modRevision }),
        );
      const mine = norm(store.range(all));
      assert.ok(
        mine.some((kv) => kv[0] === b('/busy/0').toString('hex')),
        'the snapshot holds some busy writes',
      );
      assert.deepEqual(mine, norm(edge.store.range(all)));
    } finally {
      await store.close();
    }
  });

  it('a client that stops reading and leaves: the server stops and removes its file', async () => {
    const e = await startEdge();
    const c = new EtcdClient(e.endpoint);
    try {
      for (let i = 0; i < 40; i++)
        await e.store.put({ key: b(`/fat/${i}`), value: Buffer.alloc(100_000, i) });
      const call = c.serverStream('etcdserverpb.Maintenance', 'Snapshot', {});
      call.on('error', () => undefined);
      await new Promise<void>((resolve) =>
        call.once('data', () => {
          call.pause();
          resolve();
        }),
      );
      const temp = () => readdirSync(e.dir).filter((f) => f.startsWith('.edgekeeper-snapshot-'));
      assert.equal(temp().length, 1, 'the snapshot file exists while it is sent');
      await new Promise((r) => setTimeout(r, 300));
      call.cancel();
      await waitFor(() => temp().length === 0, 'the snapshot file to go', 5000);
    } finally {
      c.close();
      await e.close();
    }
  });

  it('backup --format etcd from a running daemon (HTTP) and from a stopped node', async () => {
    const dir = join(tmp, 'daemon');
    const config = loadConfig({
      env: {},
      sections: allSections([]),
      flags: { 'data-dir': dir, 'http-listen': '127.0.0.1:0', 'node-name': 'n1', 'log-level': 'silent' },
    });
    const d = await startDaemon(config, [], { env: {}, logger: silentLogger(), inlineWriter: true });
    let rev: number;
    try {
      for (let i = 0; i < 30; i++) await d.store.put({ key: b(`/d/${i % 7}`), value: b(`v${i}`) });
      rev = d.store.revision();
      const file = join(tmp, 'http.snap');
      const token = readFileSync(join(d.stateDir, 'http.token'), 'utf8').trim();
      const res = await fetch(`http://127.0.0.1:${d.httpAddress.port}/v1/backup?format=etcd`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}` },
      });
      assert.equal(res.status, 200);
      writeFileSync(file, Buffer.from(await res.arrayBuffer()));
      const v = await verifyEtcdSnapshot(file);
      assert.deepEqual([v.revision, v.rows, v.hasHash], [rev, 30, true]);
    } finally {
      await d.stop();
    }
    const file = join(tmp, 'stopped.snap');
    const [r, badFormat] = await Promise.all([
      cli(['backup', file, '--format', 'etcd', '--data-dir', dir]),
      cli(['backup', join(tmp, 'x'), '--format', 'xml', '--data-dir', dir]),
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(badFormat.code, 2);
    assert.match(badFormat.stderr, /--format must be one of sqlite, etcd, got "xml"/);
    const st = await etcdctl('127.0.0.1:1', ['snapshot', 'status', '-w', 'json', file]);
    assert.equal(st.status, 0, st.stderr);
    assert.equal(JSON.parse(st.stdout).revision, rev);
  });

  describe('bad input is refused with what is wrong; the node keeps its database', () => {
    const dir = join(tmp, 'victim');
    let original: string;
    const bad = (name: string, bytes: Buffer) => {
      const f = join(tmp, name);
      writeFileSync(f, bytes);
      return f;
    };
    const withHash = (db: Buffer) => Buffer.concat([db, createHash('sha256').update(db).digest()]);
    const refused = async (file: string, code: string, message: RegExp) => {
      await assert.rejects(restoreFromEtcdSnapshot(file, dir, Date.now()), (err: unknown) => {
        assert.ok(err instanceof EdgeError, String(err));
        assert.equal(err.code, code, err.message);
        assert.match(err.message, message);
        return true;
      });
      assert.equal(sha(join(dir, 'edgekeeper.db')), original, 'database bytes unchanged');
      assert.deepEqual(readdirSync(dir).sort(), ['edgekeeper.db'], 'nothing left behind');
    };
    const good = () => readFileSync(etcdSnap);
    const db = () => good().subarray(0, good().length - 32);

    before(async () => {
      mkdirSync(dir);
      const s = await openStore({ file: join(dir, 'edgekeeper.db'), logger: silentLogger() });
      await s.put({ key: b('/keep'), value: b('me') });
      await s.close();
      for (const f of readdirSync(dir)) if (f !== 'edgekeeper.db') rmSync(join(dir, f));
      original = sha(join(dir, 'edgekeeper.db'));
    });

    it('truncated', async () => {
      const g = good();
      await refused(bad('trunc1', g.subarray(0, 3 * 4096 + 100)), 'EDGE_ERR_SNAPSHOT_CORRUPT', /truncated/);
      await refused(bad('trunc2', g.subarray(0, g.length - 5)), 'EDGE_ERR_SNAPSHOT_CORRUPT', /cut short/);
      await refused(bad('trunc3', g.subarray(0, 4 * 512 + 32)), 'EDGE_ERR_SNAPSHOT_CORRUPT', /truncated/);
    });

    it('a flipped byte (the SHA-256 catches it)', async () => {
      const g = Buffer.from(good());
      g[5 * 4096 + 1234]! ^= 0x40;
      await refused(bad('flip', g), 'EDGE_ERR_SNAPSHOT_CORRUPT', /SHA-256 .* does not match/);
    });

    it('a raw database copy without the SHA-256 imports when its structure holds; damaged, it does not', async () => {
      const raw = bad('raw', db());
      const other = join(tmp, 'raw-node');
      const r = await restoreFromEtcdSnapshot(raw, other, Date.now());
      assert.equal(r.hasHash, false);
      assert.equal(r.revision, await revisionOf(rc));
      const broken = Buffer.from(db());
      // The root bucket's page header names another page.
      const root = Number(broken.readBigUInt64LE(16 + 16));
      broken.writeBigUInt64LE(77n, root * 4096);
      await refused(
        bad('raw-broken', broken),
        'EDGE_ERR_SNAPSHOT_CORRUPT',
        new RegExp(`page ${root} says it is page 77`),
      );
    });

    it('not a bbolt file', async () => {
      await refused(
        bad('text', Buffer.alloc(8192, 'not a database ')),
        'EDGE_ERR_SNAPSHOT_NOT_ETCD',
        /not a bbolt database/,
      );
      await refused(
        bad('sqlite', readFileSync(join(dir, 'edgekeeper.db'))),
        'EDGE_ERR_SNAPSHOT_NOT_ETCD',
        /not a bbolt/,
      );
      await refused(bad('tiny', Buffer.from('x')), 'EDGE_ERR_SNAPSHOT_NOT_ETCD', /too short/);
    });

    it('a bbolt file without the key bucket', async () => {
      const f = join(tmp, 'nokey.db');
      const w = await BoltWriter.create(f);
      await w.bucket(b('meta'), [[b('consistent_index'), Buffer.alloc(8)]]);
      await w.finish();
      await refused(
        bad('nokey', withHash(readFileSync(f))),
        'EDGE_ERR_SNAPSHOT_NOT_ETCD',
        /without etcd's `key` bucket/,
      );
    });

    it('a meta page claiming a huge page count (checksum recomputed)', async () => {
      const d = Buffer.from(db());
      for (const page of [0, 1]) {
        const m = page * 4096 + 16;
        d.writeBigUInt64LE(1n << 40n, m + 40);
        d.writeBigUInt64LE(fnv(d.subarray(m, m + 56)), m + 56);
      }
      await refused(
        bad('huge', withHash(d)),
        'EDGE_ERR_SNAPSHOT_CORRUPT',
        /truncated: the meta page counts 1099511627776 pages/,
      );
    });

    it('a page referenced twice, and a broken record', async () => {
      // A key bucket of two leaf pages under one branch; point both branch elements at one leaf.
      const f = join(tmp, 'twice.db');
      const w = await BoltWriter.create(f);
      w.beginBucket(b('key'));
      for (let i = 2; i < 100; i++)
        w.put(
          revisionKey(i, 0),
          Buffer.from([0x0a, 1, 0x6b, 0x10, i, 0x18, i, 0x20, 1, 0x2a, 40, ...Buffer.alloc(40)]),
        );
      w.endBucket();
      await w.finish();
      const d = readFileSync(f);
      let patched = false;
      for (let p = 2; p * 4096 < d.length && !patched; p++) {
        if (d.readUInt16LE(p * 4096 + 8) !== 1) continue; // a branch page
        d.writeBigUInt64LE(d.readBigUInt64LE(p * 4096 + 16 + 8), p * 4096 + 16 + 16 + 8);
        patched = true;
      }
      assert.ok(patched);
      await refused(bad('twice', withHash(d)), 'EDGE_ERR_SNAPSHOT_CORRUPT', /reached twice/);
      const g = join(tmp, 'record.db');
      const w2 = await BoltWriter.create(g);
      await w2.bucket(b('key'), [[revisionKey(2, 0), Buffer.from([0x0a, 0x50, 0x41])]]);
      await w2.finish();
      await refused(
        bad('record', withHash(readFileSync(g))),
        'EDGE_ERR_SNAPSHOT_CORRUPT',
        /revision 2\.0: not a KeyValue record/,
      );
    });

    it('a snapshot of an etcd with auth on imports, and says so', async () => {
      const f = join(tmp, 'auth.db');
      const w = await BoltWriter.create(f);
      await w.bucket(b('auth'), [
        [b('authEnabled'), Buffer.from([1])],
        [b('authRevision'), Buffer.alloc(8)],
      ]);
      await w.bucket(b('key'), [
        [revisionKey(2, 0), Buffer.from([0x0a, 1, 0x6b, 0x10, 2, 0x18, 2, 0x20, 1])],
      ]);
      await w.finish();
      const r = await restoreFromEtcdSnapshot(
        bad('auth', withHash(readFileSync(f))),
        join(tmp, 'auth-node'),
        0,
      );
      assert.deepEqual([r.authEnabled, r.revision, r.keys], [true, 2, 1]);
    });

    it('the CLI says what is wrong with the code, exit 1', async () => {
      const g = Buffer.from(good());
      g[g.length - 40]! ^= 1;
      const r = await cli(['restore', '--from-etcd', bad('cli-flip', g), '--data-dir', dir]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /is damaged: its SHA-256 .*nothing was imported \[EDGE_ERR_SNAPSHOT_CORRUPT\]/);
      assert.equal(sha(join(dir, 'edgekeeper.db')), original);
      copyFileSync(etcdSnap, join(tmp, 'unused'));
    });
  });
});

function fnv(bytes: Buffer): bigint {
  let h = 0xcbf29ce484222325n;
  for (const x of bytes) h = ((h ^ BigInt(x)) * 0x100000001b3n) & 0xffffffffffffffffn;
  return h;
}
