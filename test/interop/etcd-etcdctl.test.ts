/**
 * Proves that the real etcdctl 3.4 (Debian package etcd-client, /usr/bin/etcdctl, ETCDCTL_API=3)
 * works unchanged against edgekeeper's etcd API: every command the issue lists, with its output
 * checked, including lock and elect with two competing etcdctl processes.
 * Needs: /usr/bin/etcdctl (a missing etcdctl fails the test loudly).
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  ETCDCTL_BIN,
  type Edge,
  etcdctl,
  etcdctlBg,
  requirePeer,
  startEdge,
  waitFor,
} from '../etcd/helpers.js';

let edge: Edge;
let ep: string;

async function ok(args: string[], input?: string): Promise<string> {
  const r = await etcdctl(ep, args, input);
  assert.equal(r.status, 0, `etcdctl ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

before(async () => {
  requirePeer(ETCDCTL_BIN, 'etcd-client');
  edge = await startEdge();
  ep = edge.endpoint;
});
after(async () => {
  await edge?.close();
});

describe('etcdctl against edgekeeper', () => {
  it('put, get with prefix, from-key, limit, sort, keys-only, value-only, json', async () => {
    for (const [k, v] of [
      ['/a/1', 'one'],
      ['/a/2', 'two'],
      ['/a/3', 'three'],
      ['/b/1', 'bee'],
    ]) {
      assert.equal((await ok(['put', k!, v!])).trim(), 'OK');
    }
    assert.equal(await ok(['get', '/a/', '--prefix', '--keys-only']), '/a/1\n\n/a/2\n\n/a/3\n\n');
    assert.equal(await ok(['get', '/a/', '--prefix', '--print-value-only']), 'one\ntwo\nthree\n');
    assert.equal(await ok(['get', '/a/', '--prefix', '--limit=2', '--print-value-only']), 'one\ntwo\n');
    assert.equal(
      await ok(['get', '/a/', '--prefix', '--sort-by=VALUE', '--order=DESCEND', '--print-value-only']),
      'two\nthree\none\n',
    );
    assert.equal(await ok(['get', '/a/3', '--from-key', '--print-value-only']), 'three\nbee\n');
    const j = JSON.parse(await ok(['get', '/a/', '--prefix', '-w', 'json']));
    assert.equal(j.count, 3);
    assert.equal(Buffer.from(j.kvs[0].key, 'base64').toString(), '/a/1');
    assert.equal(Buffer.from(j.kvs[0].value, 'base64').toString(), 'one');
    assert.equal(j.kvs[0].version, 1);
    assert.equal(j.header.raft_term, 1);
    assert.equal(typeof j.header.cluster_id, 'number');
  });

  it('get --rev reads history; del with --prefix and --from-key', async () => {
    const first = JSON.parse(await ok(['put', '/h/k', 'v1', '-w', 'json'])).header.revision;
    await ok(['put', '/h/k', 'v2']);
    assert.equal(await ok(['get', '/h/k', `--rev=${first}`, '--print-value-only']), 'v1\n');
    assert.equal(await ok(['get', '/h/k', '--print-value-only']), 'v2\n');
    await ok(['put', '/h/x', '1']);
    assert.equal((await ok(['del', '/h/', '--prefix'])).trim(), '2');
    await ok(['put', '/z/1', '1']);
    await ok(['put', '/z/2', '2']);
    assert.equal((await ok(['del', '/z/2', '--from-key'])).trim(), '1');
    assert.equal(await ok(['get', '/z/', '--prefix', '--print-value-only']), '1\n');
    const r = await etcdctl(ep, ['get', '/h/k', '--rev=99999']);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /etcdserver: mvcc: required revision is a future revision/);
  });

  it('txn from stdin, both branches', async () => {
    await ok(['put', '/t/k', 'yes']);
    const input = 'value("/t/k") = "yes"\n\nput /t/r then\n\nput /t/r else\n\n';
    const j = JSON.parse(await ok(['txn', '-w', 'json'], input));
    assert.equal(j.succeeded, true);
    assert.equal(await ok(['get', '/t/r', '--print-value-only']), 'then\n');
    const j2 = JSON.parse(
      await ok(['txn', '-w', 'json'], 'value("/t/k") = "no"\n\nput /t/r then\n\nput /t/r else\n\n'),
    );
    assert.equal(j2.succeeded ?? false, false);
    assert.equal(await ok(['get', '/t/r', '--print-value-only']), 'else\n');
  });

  it('watch with --rev, --prefix and --prev-kv replays history then follows live', async () => {
    const start = JSON.parse(await ok(['put', '/w/a', '1', '-w', 'json'])).header.revision;
    await ok(['put', '/w/a', '2']);
    const w = etcdctlBg(ep, ['watch', '/w/', '--prefix', '--prev-kv', `--rev=${start}`]);
    try {
      await waitFor(() => w.out().includes('\n2\n'), 'history replay');
      await ok(['put', '/w/b', '3']);
      await ok(['del', '/w/a']);
      await waitFor(
        () => w.out().split('DELETE').length > 1 && w.out().trim().endsWith('/w/a'),
        'live events',
      );
      assert.equal(
        w.out(),
        'PUT\n/w/a\n1\nPUT\n/w/a\n1\n/w/a\n2\nPUT\n/w/b\n3\nDELETE\n/w/a\n2\n/w/a\n\n',
        w.err(),
      );
    } finally {
      await w.stop();
    }
  });

  it('lease grant, put --lease, timetolive --keys, keep-alive, list, revoke', async () => {
    const g = await ok(['lease', 'grant', '60']);
    const id = /lease ([0-9a-f]+) granted with TTL\(60s\)/.exec(g)?.[1];
    assert.ok(id, g);
    await ok(['put', '/l/k', 'v', `--lease=${id}`]);
    assert.match(
      await ok(['lease', 'timetolive', id!, '--keys']),
      new RegExp(
        `lease ${id} granted with TTL\\(60s\\), remaining\\(\\d+s\\), attached keys\\(\\[/l/k\\]\\)`,
      ),
    );
    assert.match(
      await ok(['lease', 'keep-alive', '--once', id!]),
      new RegExp(`lease ${id} keepalived with TTL\\(60\\)`),
    );
    assert.match(await ok(['lease', 'list']), new RegExp(`found \\d+ leases\\n(.*\\n)*${id}\\n`));
    assert.match(await ok(['lease', 'revoke', id!]), new RegExp(`lease ${id} revoked`));
    assert.equal(await ok(['get', '/l/k']), '');
    assert.match(await ok(['lease', 'timetolive', id!]), /already expired/);
    const r = await etcdctl(ep, ['lease', 'revoke', id!]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /etcdserver: requested lease not found/);
  });

  it('lock: two competing etcdctl processes take turns', async () => {
    const a = etcdctlBg(ep, ['lock', 'mylock']);
    try {
      const keyA = await waitFor(() => a.out().trim(), 'first lock holder');
      assert.match(keyA, /^mylock\/[0-9a-f]+$/);
      const b = etcdctlBg(ep, ['lock', 'mylock']);
      try {
        // b must wait while a holds the lock: give it time to (wrongly) acquire.
        await new Promise((r) => setTimeout(r, 700));
        assert.equal(b.out(), '', 'second process acquired a held lock');
        await a.stop();
        const keyB = await waitFor(() => b.out().trim(), 'second lock holder');
        assert.notEqual(keyB, keyA);
        assert.match(keyB, /^mylock\//);
      } finally {
        await b.stop();
      }
    } finally {
      await a.stop();
    }
    // A lock with a command: etcdctl 3.4 runs it while holding the lock and reports its failure.
    const r = await etcdctl(ep, ['lock', 'mylock', '--', 'sh', '-c', 'echo held; exit 3']);
    assert.match(r.stdout, /held/);
    assert.match(r.stderr, /exit status 3/);
  });

  it('elect: two competing campaigners and an observer', async () => {
    const obs = etcdctlBg(ep, ['elect', '-l', 'myelect']);
    const a = etcdctlBg(ep, ['elect', 'myelect', 'alpha']);
    try {
      await waitFor(() => a.out().includes('alpha'), 'first leader');
      const b = etcdctlBg(ep, ['elect', 'myelect', 'beta']);
      try {
        await new Promise((r) => setTimeout(r, 700));
        assert.equal(b.out(), '', 'second campaigner became leader while the first leads');
        await waitFor(() => obs.out().includes('alpha'), 'observer sees alpha');
        await a.stop();
        await waitFor(() => b.out().includes('beta'), 'second leader');
        await waitFor(() => obs.out().includes('beta'), 'observer sees beta');
      } finally {
        await b.stop();
      }
    } finally {
      await a.stop();
      await obs.stop();
    }
  });

  it('endpoint status and health, alarm list, member list', async () => {
    const s = JSON.parse(await ok(['endpoint', 'status', '-w', 'json']));
    assert.equal(s[0].Status.version >= '3.5.13', true);
    assert.ok(s[0].Status.dbSize > 0);
    assert.equal(s[0].Status.leader, s[0].Status.header.member_id);
    // etcdctl 3.4 prints the health line on stderr.
    const h = await etcdctl(ep, ['endpoint', 'health']);
    assert.equal(h.status, 0, h.stderr);
    assert.match(h.stdout + h.stderr, /is healthy: successfully committed proposal/);
    assert.equal(await ok(['alarm', 'list']), '');
    assert.match(await ok(['member', 'list']), new RegExp(`started, edgekeeper, , http://${ep}`));
  });

  it('compaction, then old revisions are refused; defrag', async () => {
    const rev = JSON.parse(await ok(['put', '/c/k', '1', '-w', 'json'])).header.revision;
    await ok(['put', '/c/k', '2']);
    assert.match(await ok(['compaction', String(rev + 1)]), new RegExp(`compacted revision ${rev + 1}`));
    const r = await etcdctl(ep, ['get', '/c/k', `--rev=${rev}`]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /etcdserver: mvcc: required revision has been compacted/);
    assert.match(await ok(['defrag']), /Finished defragmenting etcd member/);
    assert.equal(await ok(['get', '/c/k', '--print-value-only']), '2\n');
  });

  it('snapshot save writes an etcd snapshot that snapshot status reads', async () => {
    const file = join(tmpdir(), `ek-snap-${process.pid}.db`);
    try {
      await ok(['put', '/snap/k', 'v']);
      const r = await etcdctl(ep, ['snapshot', 'save', file]);
      assert.equal(r.status, 0, r.stderr);
      assert.ok(existsSync(file));
      const data = readFileSync(file);
      assert.equal(data.readUInt32LE(16), 0xed0cdaed, 'a bbolt file');
      const st = await ok(['snapshot', 'status', '-w', 'json', file]);
      assert.equal(JSON.parse(st).revision, edge.store.revision());
    } finally {
      rmSync(file, { force: true });
    }
  });
});
