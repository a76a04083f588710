/**
 * Patroni (Debian's patroni 3, PostgreSQL high availability with etcd v3 as its store) leads a
 * PostgreSQL 15 through edgekeeper: Patroni speaks only etcd's JSON gateway (/version,
 * /v3/cluster/member/list, kv range/put/txn/deleterange, lease grant/keepalive and a /v3/watch
 * stream). The test waits until Patroni's REST API says it is the primary and its leader key is
 * in edgekeeper with a lease, then kills Patroni (no clean release) and checks that the key
 * expires with its lease.
 * Needs: patroni, PostgreSQL 15 (/usr/lib/postgresql/15/bin), root (PostgreSQL runs as the
 * `postgres` user); a missing one fails loudly.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { chmodSync, chownSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type Edge, freePort, requirePeer, run, startEdge, waitFor } from '../etcd/helpers.js';

const PG_BIN = '/usr/lib/postgresql/15/bin';
const SCOPE = 'ektest';
const LEADER_KEY = Buffer.from(`/service/${SCOPE}/leader`);
/** Patroni's leader lease: its dcs ttl (20 s is the smallest it accepts). */
const TTL = 20;

let edge: Edge;
let dir: string;
let patroni: ChildProcess | undefined;
let log = '';
let pgPort = 0;
let rest = 0;

before(async () => {
  requirePeer('/usr/bin/patroni', 'patroni');
  requirePeer(join(PG_BIN, 'postgres'), 'postgresql');
  if (process.getuid?.() !== 0)
    throw new Error('the Patroni test runs PostgreSQL as the postgres user: run it as root');
  edge = await startEdge();
  dir = mkdtempSync(join(tmpdir(), 'ek-patroni-'));
  const uid = Number(execFileSync('id', ['-u', 'postgres']).toString());
  const gid = Number(execFileSync('id', ['-g', 'postgres']).toString());
  chownSync(dir, uid, gid);
  chmodSync(dir, 0o700);
  rest = await freePort();
  pgPort = await freePort();
  const cfg = join(dir, 'patroni.yml');
  writeFileSync(
    cfg,
    `scope: ${SCOPE}
namespace: /service/
name: pg1
restapi:
  listen: 127.0.0.1:${rest}
  connect_address: 127.0.0.1:${rest}
etcd3:
  hosts: 127.0.0.1:${edge.server.port}
bootstrap:
  dcs:
    ttl: ${TTL}
    loop_wait: 2
    retry_timeout: 5
  initdb:
    - encoding: UTF8
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:${pgPort}
  connect_address: 127.0.0.1:${pgPort}
  data_dir: ${join(dir, 'data')}
  bin_dir: ${PG_BIN}
  pgpass: ${join(dir, 'pgpass')}
  authentication:
    superuser: {username: postgres, password: pw}
    replication: {username: replicator, password: pw}
  parameters:
    unix_socket_directories: ${dir}
    shared_buffers: 16MB
    max_connections: 20
watchdog:
  mode: off
`,
  );
  chownSync(cfg, uid, gid);
  patroni = spawn('/usr/bin/patroni', [cfg], {
    uid,
    gid,
    cwd: dir,
    env: { PATH: '/usr/bin:/bin', HOME: dir, LANG: 'C.UTF-8' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const keep = (d: Buffer) => {
    log = (log + d.toString()).slice(-20_000);
  };
  patroni.stdout?.on('data', keep);
  patroni.stderr?.on('data', keep);
});

after(async () => {
  if (patroni && patroni.exitCode === null && patroni.signalCode === null) {
    patroni.kill('SIGKILL');
    await new Promise((r) => patroni!.once('exit', r));
  }
  // PostgreSQL outlives a killed Patroni: stop it by its data directory.
  if (dir) {
    await run('su', [
      'postgres',
      '-s',
      '/bin/sh',
      '-c',
      `${PG_BIN}/pg_ctl -D ${join(dir, 'data')} -m immediate -w stop`,
    ]);
    rmSync(dir, { recursive: true, force: true });
  }
  await edge?.close();
});

describe('Patroni leads PostgreSQL 15 through edgekeeper', () => {
  it('becomes primary, holds its leader key on a lease, and the key expires when Patroni dies', async () => {
    try {
      await waitFor(
        async () => {
          if (patroni?.exitCode !== null) throw new Error(`patroni exited with ${patroni?.exitCode}`);
          const r = await fetch(`http://127.0.0.1:${rest}/primary`).catch(() => undefined);
          return r?.status === 200;
        },
        'Patroni to report itself primary',
        90_000,
      );
    } catch (err) {
      throw new Error(`${String(err)}\n--- patroni log ---\n${log}`);
    }
    const leader = edge.store.range({ key: LEADER_KEY });
    assert.equal(leader.kvs.length, 1, 'no leader key in edgekeeper');
    assert.equal(leader.kvs[0]!.value.toString(), 'pg1');
    const lease = leader.kvs[0]!.lease;
    assert.notEqual(lease, 0n, 'the leader key has no lease');
    assert.ok(edge.store.leaseTimeToLive(lease).grantedTtl >= TTL);
    // Patroni keeps the lease alive over the gateway (every loop, 2 s): after 8 s it is still fresh.
    const rev = leader.header.revision;
    await new Promise((r) => setTimeout(r, 8000));
    assert.ok(edge.store.leaseTimeToLive(lease).ttl >= TTL - 5, 'Patroni did not keep its lease alive');
    assert.equal(edge.store.range({ key: LEADER_KEY }).kvs[0]?.value.toString(), 'pg1');
    // PostgreSQL answers as the primary Patroni made it.
    const st = await fetch(`http://127.0.0.1:${rest}/patroni`).then(
      (r) => r.json() as Promise<{ role: string; state: string }>,
    );
    assert.equal(st.state, 'running');
    assert.ok(['master', 'primary'].includes(st.role));
    // Kill Patroni: nothing releases the key, its lease must run out.
    patroni!.kill('SIGKILL');
    await waitFor(
      () => edge.store.range({ key: LEADER_KEY }).kvs.length === 0,
      'the leader key to expire',
      (TTL + 10) * 1000,
    );
    assert.ok(edge.store.revision() > rev);
  });
});
