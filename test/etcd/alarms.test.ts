/**
 * Alarms as etcd keeps them (their answers to the same requests are compared with real etcd in
 * test/interop/etcd-gateway.test.ts): raised alarms survive a restart of the server and of the
 * store; NOSPACE raised by the quota stays raised after space is freed, until it is disarmed.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { ServiceError } from '@grpc/grpc-js';
import { EtcdClient } from '../../src/etcd/cli.js';
import { etcdMigrations, startEtcdServer } from '../../src/etcd/index.js';
import { openStore } from '../../src/store/index.js';
import { startEdge } from './helpers.js';

const B = (s: string) => Buffer.from(s);
const GET = 0;
const ACTIVATE = 1;
const DEACTIVATE = 2;
const NOSPACE = 1;
const CORRUPT = 2;

function code(p: Promise<unknown>): Promise<number> {
  return p.then(
    () => 0,
    (e: ServiceError) => e.code,
  );
}

describe('alarms', () => {
  it('raised alarms survive a restart of the server and the store', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ek-alarms-'));
    const file = join(dir, 'edgekeeper.db');
    try {
      let store = await openStore({ file, durability: 'relaxed', migrations: etcdMigrations });
      let srv = await startEtcdServer(store, { listen: '127.0.0.1:0', stateDir: dir });
      let c = new EtcdClient(`127.0.0.1:${srv.port}`);
      await c.call('etcdserverpb.Maintenance', 'Alarm', { action: ACTIVATE, memberID: 5, alarm: CORRUPT });
      await c.call('etcdserverpb.Maintenance', 'Alarm', { action: ACTIVATE, memberID: 7, alarm: NOSPACE });
      c.close();
      await srv.close();
      await store.close();

      store = await openStore({ file, durability: 'relaxed', migrations: etcdMigrations });
      srv = await startEtcdServer(store, { listen: '127.0.0.1:0', stateDir: dir });
      c = new EtcdClient(`127.0.0.1:${srv.port}`);
      try {
        const got = await c.call('etcdserverpb.Maintenance', 'Alarm', { action: GET });
        assert.deepEqual(
          got.alarms.map((a: { memberID: unknown; alarm: number }) => [Number(a.memberID), a.alarm]),
          [
            [7, NOSPACE],
            [5, CORRUPT],
          ],
        );
        assert.equal(await code(c.call('etcdserverpb.KV', 'Put', { key: B('/k'), value: B('v') })), 15);
        assert.equal(await code(c.call('etcdserverpb.KV', 'Range', { key: B('/k') })), 0);
        await c.call('etcdserverpb.Maintenance', 'Alarm', {
          action: DEACTIVATE,
          memberID: 5,
          alarm: CORRUPT,
        });
        assert.equal(await code(c.call('etcdserverpb.KV', 'Put', { key: B('/k'), value: B('v') })), 8);
        await c.call('etcdserverpb.Maintenance', 'Alarm', {
          action: DEACTIVATE,
          memberID: 7,
          alarm: NOSPACE,
        });
        assert.equal(await code(c.call('etcdserverpb.KV', 'Put', { key: B('/k'), value: B('v') })), 0);
      } finally {
        c.close();
        await srv.close();
        await store.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("NOSPACE raised by the quota stays raised once space is freed, until disarmed (etcd's procedure)", async () => {
    const edge = await startEdge({ store: { quotaBytes: 256 * 1024 } });
    const c = new EtcdClient(edge.endpoint);
    try {
      const member = (await c.call('etcdserverpb.Maintenance', 'Status', {})).header.member_id;
      const big = Buffer.alloc(48 * 1024, 1);
      let refused = 0;
      for (let i = 0; i < 40 && !refused; i++)
        refused = await code(c.call('etcdserverpb.KV', 'Put', { key: B(`/fill/${i}`), value: big }));
      assert.equal(refused, 8, 'the quota was never enforced');
      // Free the space: delete, compact, defragment.
      const del = await c.call('etcdserverpb.KV', 'DeleteRange', {
        key: B('/fill/'),
        range_end: B('/fill0'),
      });
      await c.call('etcdserverpb.KV', 'Compact', { revision: del.header.revision, physical: true });
      await c.call('etcdserverpb.Maintenance', 'Defragment', {});
      assert.equal(edge.store.stats().noSpace, false);
      assert.equal(await code(c.call('etcdserverpb.KV', 'Put', { key: B('/after'), value: B('1') })), 8);
      const listed = await c.call('etcdserverpb.Maintenance', 'Alarm', { action: GET });
      assert.deepEqual(
        listed.alarms.map((a: { memberID: unknown; alarm: number }) => [String(a.memberID), a.alarm]),
        [[String(member), NOSPACE]],
      );
      await c.call('etcdserverpb.Maintenance', 'Alarm', {
        action: DEACTIVATE,
        memberID: member,
        alarm: NOSPACE,
      });
      assert.equal(await code(c.call('etcdserverpb.KV', 'Put', { key: B('/after'), value: B('1') })), 0);
    } finally {
      c.close();
      await edge.close();
    }
  });
});
