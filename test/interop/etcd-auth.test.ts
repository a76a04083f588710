/**
 * etcd auth, differential: the same etcdctl 3.4 commands (and curl on the JSON gateway) against a
 * real etcd 3.4 and against edgekeeper, both started here with a 2 s token TTL; stdout, the
 * errors etcdctl prints and exit codes must be the same, step by step. Covers every etcdctl
 * auth/user/role command, every denied operation of a user without permission, a wrong password,
 * an expired token, a user deleted while its token is live and a role revoked during a watch.
 * Needs: /usr/bin/etcd, /usr/bin/etcdctl, curl.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  curlBatch,
  type Edge,
  ETCD_BIN,
  ETCDCTL_BIN,
  etcdctl as etcdctlRaw,
  etcdctlBg,
  type RealEtcd,
  requirePeer,
  startEdge,
  startRealEtcd,
  waitFor,
} from '../etcd/helpers.js';

const TTL_S = 2;

/** etcdctl with a longer command timeout: both servers share a busy machine with their clients. */
const etcdctl = (ep: string, args: string[], input?: string) =>
  etcdctlRaw(ep, ['--command-timeout=18s', ...args], input);
let real: RealEtcd;
let edge: Edge;

before(async () => {
  requirePeer(ETCD_BIN, 'etcd-server');
  requirePeer(ETCDCTL_BIN, 'etcd-client');
  [real, edge] = await Promise.all([
    startRealEtcd([], ['--auth-token', 'simple', '--auth-token-ttl', String(TTL_S)]),
    startEdge({ server: { authTokenTtlMs: TTL_S * 1000 } }),
  ]);
});
after(async () => {
  await Promise.all([real?.close(), edge?.close()]);
});

/** What a user sees of an etcdctl run: its output, its errors (clientv3's log lines reduced to their error) and exit code. */
function seen(r: { status: number; stdout: string; stderr: string }): string {
  const err = r.stderr
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => {
      try {
        const j = JSON.parse(l) as { msg?: string; error?: string };
        return `log: ${j.msg} ${j.error ?? ''}`;
      } catch {
        return l;
      }
    });
  return `exit ${r.status}\n${r.stdout}${err.join('\n')}`
    .replace(/127\.0\.0\.1:\d+/g, 'ENDPOINT')
    .replace(/\b[0-9a-f]{16}\b/g, 'LEASE');
}

/** Run the same etcdctl command on both; return what etcd showed after checking edgekeeper showed the same. */
async function same(args: string[], input?: string): Promise<string> {
  const [a, b] = await Promise.all([
    etcdctl(real.endpoint, args, input),
    etcdctl(edge.endpoint, args, input),
  ]);
  assert.equal(seen(b), seen(a), `etcdctl ${args.join(' ')}`);
  return seen(a);
}

/** `same` for commands that change nothing, run a few at a time. */
async function sameAll(list: string[][]): Promise<void> {
  const queue = [...list];
  await Promise.all(
    [1, 2].map(async () => {
      for (let args = queue.shift(); args; args = queue.shift()) await same(args);
    }),
  );
}

const ROOT = ['--user', 'root:rootpw'];
const ALICE = ['--user', 'alice:pw'];

/** POST the same gateway requests to both; statuses and bodies (headers' IDs blanked) must match. */
async function gateway(reqs: { path: string; body: object; token?: string | [string, string] }[]) {
  const run = (ep: string, which: 0 | 1) =>
    curlBatch(
      reqs.map((r) => ({
        url: `http://${ep}${r.path}`,
        body: JSON.stringify(r.body),
        headers:
          r.token === undefined
            ? []
            : [`Authorization: ${typeof r.token === 'string' ? r.token : r.token[which]}`],
      })),
    );
  const [a, b] = await Promise.all([run(real.endpoint, 0), run(edge.endpoint, 1)]);
  const norm = (x: { status: number; body: string }) => ({
    status: x.status,
    body: x.body
      .replace(/"(cluster_id|member_id|revision|raft_term)":"\d+"/g, '"$1":"_"')
      .replace(/"token":"[^"]*"/, '"token":"_"'),
  });
  assert.deepEqual(b.map(norm), a.map(norm));
  return [a, b] as const;
}

async function tokens(user: string, password: string): Promise<[string, string]> {
  const [a, b] = await gateway([{ path: '/v3/auth/authenticate', body: { name: user, password } }]);
  return [JSON.parse(a[0]!.body).token as string, JSON.parse(b[0]!.body).token as string];
}

describe('etcd auth: etcdctl against etcd 3.4 and edgekeeper', () => {
  it('users, roles, auth enable: every command and its refusals', async () => {
    await same(['auth', 'enable']);
    await same(['user', 'add', 'root:rootpw']);
    await same(['user', 'add', 'root:again']);
    await same(['auth', 'enable']);
    // Enabled: nobody, a wrong password, a non-root user.
    await sameAll([
      ['get', '/a/1'],
      ['put', '/a/1', 'x'],
      ['user', 'list'],
      ['--user', 'root:nope', 'get', '/a/1'],
      ['--user', 'nobody:pw', 'get', '/a/1'],
      [...ROOT, 'role', 'add', 'r1'],
    ]);
    // Groups of commands whose order does not matter, one group after the other.
    for (const group of [
      [
        ['role', 'add', 'r1'],
        ['role', 'add', 'r2'],
        ['user', 'add', 'alice:pw'],
        ['user', 'add', 'bob:pw'],
        ['user', 'add', 'dave', '--no-password'],
        ['user', 'add', 'erin', '--new-user-password=pw2'],
        ['role', 'grant-permission', 'r1', 'write', '/w/k'],
        ['role', 'grant-permission', 'r1', 'readwrite', '/r1', '/r5'],
        ['role', 'grant-permission', 'r1', 'readwrite', '/r5', '/r7'],
        ['role', 'grant-permission', 'r1', 'readwrite', '/l/', '--prefix'],
        ['role', 'grant-permission', 'r1', 'write', '/a/', '--prefix'],
        ['put', '/a/1', 'one'],
        ['put', '/b/1', 'bee'],
        ['put', '/z9', 'zed'],
      ],
      [
        // Granting again on the same range changes the permission's type.
        ['role', 'grant-permission', 'r1', 'read', '/a/', '--prefix'],
        ['role', 'grant-permission', 'r2', 'read', '/z', '--from-key'],
        ['user', 'grant-role', 'alice', 'r1'],
        ['user', 'grant-role', 'bob', 'r2'],
      ],
    ])
      await sameAll(group.map((a) => [...ROOT, ...a]));
    await sameAll([
      ...[
        ['user', 'grant-role', 'alice', 'r1'],
        ['role', 'grant-permission', 'nosuch', 'read', '/x'],
        ['user', 'grant-role', 'alice', 'nosuch'],
        ['user', 'grant-role', 'nosuch', 'r1'],
        ['role', 'get', 'r1'],
        ['role', 'get', 'r2'],
        ['role', 'get', 'nosuch'],
        ['role', 'list'],
        ['user', 'list'],
        ['user', 'get', 'alice'],
        ['user', 'get', 'root'],
        ['user', 'get', 'nosuch'],
        ['user', 'get', 'alice', '--detail'],
      ].map((a) => [...ROOT, ...a]),
      // A user may read itself and its roles, nothing else of the auth tables.
      ...[
        ['user', 'get', 'alice'],
        ['user', 'get', 'bob'],
        ['role', 'get', 'r1'],
        ['role', 'get', 'r2'],
        ['user', 'list'],
        ['role', 'list'],
        ['user', 'add', 'eve:pw'],
        ['auth', 'disable'],
      ].map((a) => [...ALICE, ...a]),
      // A user without a password cannot authenticate; one added with --new-user-password can.
      ['--user', 'dave:x', 'get', '/a/1'],
      ['--user', 'erin:pw2', 'get', '/a/1'],
    ]);
  });

  it('what a user may and may not do: KV, txn, lease, lock, elect, maintenance', async () => {
    const snap = join(tmpdir(), `ek-auth-snap-${process.pid}`);
    await sameAll(
      [
        ['get', '/a/1'],
        ['get', '/a/', '--prefix'],
        ['get', '/a'],
        ['get', '/b/1'],
        ['get', '', '--prefix'],
        ['put', '/a/1', 'x'],
        ['put', '/w/k', 'v', '--prev-kv'],
        ['put', '/w/k2', 'v'],
        ['get', '/w/k'],
        ['get', '/r1', '/r8'],
        ['get', '/r0', '/r3'],
        ['del', '/a/1'],
        ['del', '/a/', '--prefix'],
        ['del', '/r2', '--prev-kv'],
        ['defrag'],
        ['endpoint', 'hashkv'],
        ['alarm', 'list'],
        ['snapshot', 'save', snap],
        ['lock', 'mylock', 'echo', 'held'],
        ['elect', '-l', 'myelection'],
        ['elect', 'myelection', 'candidate'],
      ].map((a) => [...ALICE, ...a]),
    );
    rmSync(snap, { force: true });
    for (const args of [
      ['put', '/a/2', 'y', '--prev-kv'],
      ['put', '/w/k', 'v'],
      ['get', '/r2'],
      ['get', '/r1', '/r7'],
      ['del', '/w/k'],
      ['compaction', '1'],
      ['lease', 'list'],
    ])
      await same([...ALICE, ...args]);
    await same([...ROOT, 'get', '/a/', '--prefix']);
    await same(['--user', 'bob:pw', 'get', '/z9']);
    await same(['--user', 'bob:pw', 'get', '/z', '--from-key']);
    await same(['--user', 'bob:pw', 'get', '/y', '--from-key']);
    // txn: compares and both branches are checked.
    await same([...ALICE, 'txn'], 'value("/a/2") = "y"\n\nput /a/3 z\n\nget /r2\n\n');
    await same([...ALICE, 'txn'], 'value("/b/1") = "bee"\n\nput /a/3 z\n\n\n');
    await same([...ALICE, 'txn'], 'value("/a/2") = "y"\n\nget /a/2\n\nput /b/2 z\n\n');
    await same([...ALICE, 'txn'], 'value("/a/2") = "y"\n\nget /r2\n\n\n');
    // lock needs its keys (refused above without them).
    await same([...ALICE, 'lock', '/l/x', 'echo', 'held']);
  });

  it('lease revoke needs write on the keys attached to the lease', async () => {
    // Lease IDs differ between the two servers: grant, attach and revoke on each.
    const outs = await Promise.all(
      [real.endpoint, edge.endpoint].map(async (ep) => {
        const g = await etcdctl(ep, [...ALICE, 'lease', 'grant', '100']);
        const id = /lease ([0-9a-f]+) granted/.exec(g.stdout)?.[1];
        assert.ok(id, g.stdout + g.stderr);
        const attach = await etcdctl(ep, [...ROOT, 'put', '/b/leased', 'v', `--lease=${id}`]);
        const put = await etcdctl(ep, [...ALICE, 'put', '/w/k', 'v', `--lease=${id}`]);
        const revoke = await etcdctl(ep, [...ALICE, 'lease', 'revoke', id]);
        const ttl = await etcdctl(ep, [...ALICE, 'lease', 'timetolive', id]);
        return [attach, put, revoke, ttl]
          .map(seen)
          .join('\n')
          .replaceAll(id, 'ID')
          .replace(/remaining\(\d+s\)/, 'remaining(_)');
      }),
    );
    assert.equal(outs[1], outs[0]);
  });

  it('watch: refused without read permission; a role revoked during a watch', async () => {
    const watch = (ep: string, args: string[]) => etcdctlBg(ep, [...ALICE, 'watch', ...args]);
    const results = await Promise.all(
      [real.endpoint, edge.endpoint].map(async (ep) => {
        // From the next revision on, so that no event depends on when the watch got created.
        const rev = JSON.parse((await etcdctl(ep, [...ROOT, 'get', 'x', '-w', 'json'])).stdout).header
          .revision;
        const denied = watch(ep, ['/b/1']);
        const w = watch(ep, ['/a/', '--prefix', `--rev=${rev + 1}`]);
        await etcdctl(ep, [...ROOT, 'put', '/a/9', 'before']);
        // The watch runs (it has sent its first event) before the role goes.
        await waitFor(() => w.out().includes('before'), 'the watch to start');
        await etcdctl(ep, [...ROOT, 'user', 'revoke-role', 'alice', 'r1']);
        await etcdctl(ep, [...ROOT, 'put', '/a/9', 'after']);
        const again = await etcdctl(ep, [...ALICE, 'get', '/a/9']);
        await new Promise((r) => setTimeout(r, 1000));
        await Promise.all([denied.stop(), w.stop()]);
        await etcdctl(ep, [...ROOT, 'user', 'grant-role', 'alice', 'r1']);
        const clean = (s: string) => s.replace(/"ts":"[^"]*"/g, '').replace(/"target":"[^"]*"/g, '');
        return [
          `denied: ${denied.out()}|${clean(denied.err())}`,
          `watch: ${w.out()}|${clean(w.err())}`,
          seen(again),
        ].join('\n');
      }),
    );
    assert.equal(results[1], results[0]);
  });

  it('the JSON gateway with a token; an expired token; a user deleted while its token is live', async () => {
    const t = await tokens('alice', 'pw');
    await gateway([
      { path: '/v3/kv/range', body: { key: Buffer.from('/a/2').toString('base64') }, token: t },
      { path: '/v3/kv/range', body: { key: Buffer.from('/b/1').toString('base64') }, token: t },
      { path: '/v3/kv/range', body: { key: Buffer.from('/a/2').toString('base64') } },
      { path: '/v3/kv/range', body: { key: Buffer.from('/a/2').toString('base64') }, token: 'bogus.1' },
      { path: '/v3/auth/user/list', body: {}, token: t },
      { path: '/v3/auth/authenticate', body: { name: 'alice', password: 'nope' } },
      { path: '/v3/auth/authenticate', body: { name: '', password: '' } },
    ]);
    // Unused for longer than the TTL: expired.
    await new Promise((r) => setTimeout(r, TTL_S * 1000 + 1500));
    await gateway([
      { path: '/v3/kv/range', body: { key: Buffer.from('/a/2').toString('base64') }, token: t },
    ]);
    // Deleted while its token is live: the token dies with the user.
    await same([...ROOT, 'user', 'add', 'carol:pw']);
    await same([...ROOT, 'user', 'grant-role', 'carol', 'r1']);
    const c = await tokens('carol', 'pw');
    await gateway([
      { path: '/v3/kv/range', body: { key: Buffer.from('/a/2').toString('base64') }, token: c },
    ]);
    await same([...ROOT, 'user', 'delete', 'carol']);
    await gateway([
      { path: '/v3/kv/range', body: { key: Buffer.from('/a/2').toString('base64') }, token: c },
    ]);
  });

  it('revoking, deleting, passwords, disabling', async () => {
    for (const group of [
      [['role', 'revoke-permission', 'r1', '/w/k']],
      [
        ['role', 'revoke-permission', 'r1', '/w/k'],
        ['role', 'revoke-permission', 'r1', '/r1', '/r5'],
        ['role', 'revoke-permission', 'r1', '/a/', '--prefix'],
        ['role', 'revoke-permission', 'nosuch', '/a'],
        ['user', 'revoke-role', 'bob', 'r2'],
        ['user', 'revoke-role', 'nosuch', 'r2'],
        ['user', 'revoke-role', 'root', 'root'],
        ['user', 'delete', 'root'],
        ['role', 'delete', 'root'],
        ['user', 'delete', 'nosuch'],
        ['role', 'delete', 'nosuch'],
      ],
      [
        ['role', 'get', 'r1'],
        ['user', 'revoke-role', 'bob', 'r2'],
      ],
      [['role', 'delete', 'r1']],
      [
        ['user', 'get', 'alice'],
        ['user', 'delete', 'bob'],
      ],
      [
        ['user', 'list'],
        ['role', 'list'],
      ],
    ])
      await sameAll(group.map((a) => [...ROOT, ...a]));
    await same([...ROOT, 'user', 'passwd', 'alice', '--interactive=false'], 'newpw\n');
    await same([...ALICE, 'get', '/x']);
    await same(['--user', 'alice:newpw', 'get', '/x']);
    await same(['--user', 'alice:newpw', 'auth', 'disable']);
    await same([...ROOT, 'auth', 'disable']);
    await same(['get', '/a/2', '--print-value-only']);
    await same([...ROOT, 'get', '/a/2', '--print-value-only']);
    await same(['user', 'list']);
    await same(['role', 'delete', 'root']);
  });
});
