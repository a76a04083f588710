/**
 * A full disk is survivable: the database lives on a 16 MiB tmpfs with an 8 MiB quota (the
 * volume holds the quota, the WAL's kept 4 MiB and room to defragment, little more). Puts fill
 * it until NOSPACE; reads and watches go on; the daemon's heartbeat (the watchdog's ping) keeps
 * committing, also when a file takes every byte left on the volume and writes fail with a full
 * disk; then `etcdctl del`, `compaction`, `defrag` and `alarm disarm` bring writes back
 * without a restart, as etcd's documented recovery does.
 *
 * Needs root (mount) and etcdctl; in CI their absence is a failure.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { ServiceError } from '@grpc/grpc-js';
import { systemClock } from '../../src/clock.js';
import { Heartbeat } from '../../src/daemon/health.js';
import { EtcdClient } from '../../src/etcd/cli.js';
import { silentLogger } from '../../src/log.js';
import { ETCDCTL_BIN, etcdctl, requirePeer, startEdge, waitFor } from '../etcd/helpers.js';

const MiB = 1024 * 1024;

function canRun(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (mount -t tmpfs)';
  return undefined;
}

const why = canRun();
test('a full disk: NOSPACE, reads, watches and the heartbeat go on; del, compact, defrag bring writes back', {
  skip: process.env.CI === 'true' ? false : why,
  timeout: 120_000,
}, async () => {
  if (why) throw new Error(why);
  requirePeer(ETCDCTL_BIN, 'etcd-client');
  const mnt = mkdtempSync(join(tmpdir(), 'ek-fulldisk-'));
  mkdirSync(mnt, { recursive: true });
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', mnt], { encoding: 'utf8' });
  assert.equal(m.status, 0, m.stderr);
  const edge = await startEdge({ store: { file: join(mnt, 'edgekeeper.db'), quotaBytes: 8 * MiB } });
  const c = new EtcdClient(edge.endpoint);
  let pings = 0;
  const hb = new Heartbeat({
    store: edge.store,
    clock: systemClock,
    logger: silentLogger(),
    intervalMs: 50,
    onCommitted: () => pings++,
  });
  try {
    hb.start();
    const watch = c.duplex('etcdserverpb.Watch', 'Watch');
    let events = 0;
    watch.on('data', (r: { events?: unknown[] }) => {
      events += r.events?.length ?? 0;
    });
    watch.write({ create_request: { key: Buffer.from('/fill/'), range_end: Buffer.from('/fill0') } });

    const value = Buffer.alloc(64 * 1024, 7);
    let put = 0;
    let refused: ServiceError | undefined;
    for (; put < 1000 && !refused; put++) {
      await c
        .call('etcdserverpb.KV', 'Put', { key: Buffer.from(`/fill/${put}`), value })
        .catch((e: ServiceError) => {
          refused = e;
        });
    }
    assert.ok(refused, 'the quota was never reached');
    assert.equal(refused.code, 8);
    assert.equal(refused.details, 'etcdserver: mvcc: database space exceeded');
    const stored = put - 1;
    assert.ok(stored > 50, `only ${stored} puts fit`);

    // Reads and watches still work; so does the heartbeat.
    const r = await c.call('etcdserverpb.KV', 'Range', {
      key: Buffer.from('/fill/'),
      range_end: Buffer.from('/fill0'),
      count_only: true,
    });
    assert.equal(Number(r.count), stored);
    await waitFor(() => events === stored, 'every put watched');
    const w2 = c.duplex('etcdserverpb.Watch', 'Watch');
    const created = new Promise((resolve) => w2.once('data', resolve));
    w2.write({ create_request: { key: Buffer.from('/other') } });
    assert.equal(((await created) as { created: boolean }).created, true);
    w2.end();
    let before = pings;
    await waitFor(() => pings >= before + 3, 'heartbeats over the quota');

    // Then the volume itself fills: a file takes every byte left.
    const filler = join(mnt, 'filler');
    const chunk = Buffer.alloc(256 * 1024);
    try {
      for (let i = 0; i < 64; i++) writeFileSync(filler, chunk, { flag: 'a' });
    } catch (e) {
      assert.equal((e as NodeJS.ErrnoException).code, 'ENOSPC');
    }
    for (let i = 0; i < 64; i++) {
      try {
        writeFileSync(filler, Buffer.alloc(4096), { flag: 'a' });
      } catch {
        break;
      }
    }
    const fs = statfsSync(mnt);
    assert.ok(fs.bavail * fs.bsize < 64 * 1024, `${fs.bavail * fs.bsize} bytes still free`);
    before = pings;
    await waitFor(() => pings >= before + 3, 'heartbeats on a full volume');
    const r2 = await c.call('etcdserverpb.KV', 'Range', { key: Buffer.from('/fill/0') });
    assert.equal((r2.kvs as unknown[]).length, 1);
    rmSync(filler);

    // etcd's recovery: delete, compact, defragment, disarm.
    const del = await etcdctl(edge.endpoint, ['del', '--prefix', '/fill/']);
    assert.equal(del.status, 0, del.stderr);
    assert.equal(del.stdout.trim(), String(stored));
    const rev = Number(
      (await c.call('etcdserverpb.KV', 'Range', { key: Buffer.from('/x') })).header.revision,
    );
    for (const args of [['compaction', String(rev)], ['defrag'], ['alarm', 'disarm']]) {
      const res = await etcdctl(edge.endpoint, args);
      assert.equal(res.status, 0, `etcdctl ${args.join(' ')}: ${res.stderr}`);
    }
    const ok = await c.call('etcdserverpb.KV', 'Put', { key: Buffer.from('/after'), value });
    assert.ok(Number(ok.header.revision) > rev);
    assert.ok(edge.store.stats().dbSizeInUse < 2 * MiB);
    watch.end();
  } finally {
    await hb.stop();
    c.close();
    await edge.close();
    spawnSync('umount', [mnt]);
    rmSync(mnt, { recursive: true, force: true });
  }
});
