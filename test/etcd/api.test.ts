/**
 * The etcd boundary's own rules: etcd's exact gRPC codes and messages for each store error (and
 * their count in /metrics), NOSPACE in Alarm and Status, single-member refusals, listeners (unix
 * socket, TLS with client certificates, refusing non-loopback without TLS) and the CLI commands.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { credentials, type ServiceError } from '@grpc/grpc-js';
import { Registry } from 'prom-client';
import { EtcdClient } from '../../src/etcd/cli.js';
import { createEtcdPart, etcdConfigSection, startEtcdServer } from '../../src/etcd/index.js';
import { systemClock } from '../../src/clock.js';
import { silentLogger } from '../../src/log.js';
import { ConfigError } from '../../src/errors.js';
import { type Edge, startEdge, waitFor } from './helpers.js';

let edge: Edge;
let c: EtcdClient;
const registry = new Registry();

before(async () => {
  edge = await startEdge({ server: { registry, socketPath: '' } });
  c = new EtcdClient(edge.endpoint);
});
after(async () => {
  c?.close();
  await edge?.close();
});

async function expectError(p: Promise<unknown>, code: number, details: string): Promise<void> {
  await assert.rejects(p, (e: ServiceError) => {
    assert.equal(e.details, details);
    assert.equal(e.code, code);
    return true;
  });
}

const B = (s: string) => Buffer.from(s);

describe('etcd error mapping', () => {
  it('answers with etcd codes and exact messages, and counts them', async () => {
    await expectError(
      c.call('etcdserverpb.KV', 'Range', { key: B('') }),
      3,
      'etcdserver: key is not provided',
    );
    await expectError(c.call('etcdserverpb.KV', 'Put', { key: B('') }), 3, 'etcdserver: key is not provided');
    await expectError(
      c.call('etcdserverpb.KV', 'Range', { key: B('a'), revision: 1000 }),
      11,
      'etcdserver: mvcc: required revision is a future revision',
    );
    await expectError(
      c.call('etcdserverpb.KV', 'Put', { key: B('nokey'), ignore_value: true }),
      3,
      'etcdserver: key not found',
    );
    await expectError(
      c.call('etcdserverpb.KV', 'Put', { key: B('k'), value: B('v'), ignore_value: true }),
      3,
      'etcdserver: value is provided',
    );
    await expectError(
      c.call('etcdserverpb.KV', 'Put', { key: B('k'), value: B('v'), lease: 12345 }),
      5,
      'etcdserver: requested lease not found',
    );
    await expectError(
      c.call('etcdserverpb.Lease', 'LeaseRevoke', { ID: 999 }),
      5,
      'etcdserver: requested lease not found',
    );
    await c.call('etcdserverpb.Lease', 'LeaseGrant', { ID: 77, TTL: 30 });
    await expectError(
      c.call('etcdserverpb.Lease', 'LeaseGrant', { ID: 77, TTL: 30 }),
      9,
      'etcdserver: lease already exists',
    );
    const ops = Array.from({ length: 129 }, (_, i) => ({ request_put: { key: B(`t${i}`), value: B('v') } }));
    await expectError(
      c.call('etcdserverpb.KV', 'Txn', { success: ops }),
      3,
      'etcdserver: too many operations in txn request',
    );
    await expectError(
      c.call('etcdserverpb.KV', 'Txn', {
        success: [
          { request_put: { key: B('d'), value: B('1') } },
          { request_put: { key: B('d'), value: B('2') } },
        ],
      }),
      3,
      'etcdserver: duplicate key given in txn request',
    );
    await c.call('etcdserverpb.KV', 'Put', { key: B('h'), value: B('1') });
    const r = await c.call('etcdserverpb.KV', 'Put', { key: B('h'), value: B('2') });
    await c.call('etcdserverpb.KV', 'Compact', { revision: Number(r.header.revision) });
    await expectError(
      c.call('etcdserverpb.KV', 'Range', { key: B('h'), revision: 2 }),
      11,
      'etcdserver: mvcc: required revision has been compacted',
    );
    // TimeToLive of an unknown lease is TTL -1, keep-alive TTL 0 (etcd's answers, not errors).
    const ttl = await c.call('etcdserverpb.Lease', 'LeaseTimeToLive', { ID: 4242 });
    assert.equal(Number(ttl.TTL), -1);
    const counted = (await registry.getMetricsAsJSON()).find(
      (m) => m.name === 'edgekeeper_etcd_requests_total',
    );
    const v = counted?.values.find((x) => x.labels.method === 'Range' && x.labels.code === 'OUT_OF_RANGE');
    assert.equal(v?.value, 2);
  });

  it('single-member refusals and maintenance answers', async () => {
    await assert.rejects(
      c.call('etcdserverpb.Maintenance', 'MoveLeader', { targetID: 1 }),
      (e: ServiceError) => e.code === 9 && /single-member/.test(e.details),
    );
    await assert.rejects(
      c.call('etcdserverpb.Cluster', 'MemberAdd', { peerURLs: ['http://x'] }),
      (e: ServiceError) => e.code === 9,
    );
    await assert.rejects(
      c.call('etcdserverpb.Maintenance', 'Downgrade', {}),
      (e: ServiceError) => e.code === 9,
    );
    const members = await c.call('etcdserverpb.Cluster', 'MemberList', {});
    assert.equal(members.members.length, 1);
    assert.equal(members.members[0].name, 'edgekeeper');
    assert.deepEqual(members.members[0].clientURLs, [`http://${edge.endpoint}`]);
    const { memberId } = edge.store.identity();
    assert.equal(BigInt.asUintN(64, BigInt(String(members.header.member_id))), BigInt.asUintN(64, memberId));
    const st = await c.call('etcdserverpb.Maintenance', 'Status', {});
    assert.equal(st.version, '3.5.13');
    assert.equal(Number(st.dbSize), edge.store.stats().dbSize);
    const h1 = await c.call('etcdserverpb.Maintenance', 'HashKV', {});
    const h2 = await c.call('etcdserverpb.Maintenance', 'HashKV', {});
    assert.equal(h1.hash, h2.hash);
    await c.call('etcdserverpb.KV', 'Put', { key: B('hash-change'), value: B('1') });
    const h3 = await c.call('etcdserverpb.Maintenance', 'HashKV', {});
    assert.notEqual(h3.hash, h1.hash);
    const health = await c.call('grpc.health.v1.Health', 'Check', { service: '' });
    assert.equal(health.status, 1);
  });

  it('NOSPACE: writes refused with etcd message, alarm listed, deletes still allowed', async () => {
    const small = await startEdge({ store: { quotaBytes: 256 * 1024 } });
    const sc = new EtcdClient(small.endpoint);
    try {
      const big = Buffer.alloc(64 * 1024, 1);
      let refused: ServiceError | undefined;
      for (let i = 0; i < 40 && !refused; i++) {
        await sc
          .call('etcdserverpb.KV', 'Put', { key: B(`/fill/${i}`), value: big })
          .catch((e: ServiceError) => {
            refused = e;
          });
      }
      assert.ok(refused, 'quota never enforced');
      assert.equal(refused.code, 8);
      assert.equal(refused.details, 'etcdserver: mvcc: database space exceeded');
      const alarms = await sc.call('etcdserverpb.Maintenance', 'Alarm', { action: 0 });
      assert.equal(alarms.alarms.length, 1);
      assert.equal(alarms.alarms[0].alarm, 1);
      const st = await sc.call('etcdserverpb.Maintenance', 'Status', {});
      assert.match(st.errors[0], /alarm:NOSPACE/);
      await sc.call('etcdserverpb.KV', 'DeleteRange', { key: B('/fill/'), range_end: B('/fill0') });
    } finally {
      sc.close();
      await small.close();
    }
  });
});

describe('listeners', () => {
  it('serves on a unix socket', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ek-sock-'));
    const sock = join(dir, 'etcd.sock');
    const srv = await startEtcdServer(edge.store, { listen: '', socketPath: sock });
    const uc = new EtcdClient(`unix://${sock}`);
    try {
      const r = await uc.call('etcdserverpb.KV', 'Put', { key: B('/via-unix'), value: B('1') });
      assert.ok(Number(r.header.revision) > 1);
    } finally {
      uc.close();
      await srv.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a non-loopback address without TLS, with a clear error', async () => {
    await assert.rejects(startEtcdServer(edge.store, { listen: '0.0.0.0:0' }), (e: Error) => {
      assert.ok(e instanceof ConfigError);
      assert.match(e.message, /not a loopback address.*tlsCert/s);
      return true;
    });
    assert.equal(etcdConfigSection.name, 'etcd');
  });

  it('TLS with required client certificates', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ek-tls-'));
    try {
      const ssl = (args: string[]) => {
        const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
        assert.equal(r.status, 0, r.stderr);
      };
      ssl([
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-keyout',
        'ca.key',
        '-out',
        'ca.crt',
        '-days',
        '2',
        '-subj',
        '/CN=test-ca',
      ]);
      writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1\n');
      for (const n of ['server', 'client']) {
        ssl([
          'req',
          '-newkey',
          'rsa:2048',
          '-nodes',
          '-keyout',
          `${n}.key`,
          '-out',
          `${n}.csr`,
          '-subj',
          `/CN=${n}`,
        ]);
        ssl([
          'x509',
          '-req',
          '-in',
          `${n}.csr`,
          '-CA',
          'ca.crt',
          '-CAkey',
          'ca.key',
          '-CAcreateserial',
          '-out',
          `${n}.crt`,
          '-days',
          '2',
          '-extfile',
          'ext.cnf',
        ]);
      }
      const f = (n: string) => readFileSync(join(dir, n));
      const srv = await startEtcdServer(edge.store, {
        listen: '127.0.0.1:0',
        tls: {
          cert: join(dir, 'server.crt'),
          key: join(dir, 'server.key'),
          clientCa: join(dir, 'ca.crt'),
          clientCertAuth: true,
        },
      });
      const { makeClientConstructor } = await import('@grpc/grpc-js');
      const { serviceDefinition } = await import('../../src/etcd/proto.js');
      const KV = makeClientConstructor(serviceDefinition('etcdserverpb.KV'), 'KV');
      const call = (creds: ReturnType<typeof credentials.createSsl>) =>
        new Promise<unknown>((resolve, reject) => {
          const kv = new KV(`127.0.0.1:${srv.port}`, creds) as unknown as {
            Range(r: object, cb: (e: Error | null, r: unknown) => void): void;
            close(): void;
          };
          kv.Range({ key: B('/x') }, (e, r) => {
            kv.close();
            if (e) reject(e);
            else resolve(r);
          });
        });
      try {
        await call(credentials.createSsl(f('ca.crt'), f('client.key'), f('client.crt')));
        await assert.rejects(call(credentials.createSsl(f('ca.crt'))));
      } finally {
        await srv.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the part', () => {
  it('createEtcdPart serves TCP and <stateDir>/etcd.sock, reports readiness and status', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ek-part-'));
    const checks = new Map<string, () => string | undefined>();
    const part = createEtcdPart(
      {
        store: edge.store,
        logger: silentLogger(),
        registry: new Registry(),
        clock: systemClock,
        http: { add() {} },
        stateDir: dir,
        runtimeDir: dir,
        nodeName: 'node-7',
        addReadinessCheck: (name, check) => checks.set(name, check),
      },
      { listen: '127.0.0.1:0' },
    );
    try {
      assert.match(checks.get('etcd')!() ?? '', /not listening/);
      await part.start();
      assert.equal(checks.get('etcd')!(), undefined);
      const st = part.status!() as { clientUrls: string[] };
      assert.equal(st.clientUrls[1], `unix://${join(dir, 'etcd.sock')}`);
      const uc = new EtcdClient(st.clientUrls[1]!);
      const tc = new EtcdClient(st.clientUrls[0]!);
      try {
        const m = await uc.call('etcdserverpb.Cluster', 'MemberList', {});
        assert.equal(m.members[0].name, 'node-7');
        await tc.call('etcdserverpb.KV', 'Range', { key: B('/x') });
      } finally {
        uc.close();
        tc.close();
      }
    } finally {
      await part.stop();
      await part.stop(); // idempotent
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('CLI commands', () => {
  const runner = join(import.meta.dirname, 'cli-runner.ts');
  const cli = (args: string[]): Promise<{ code: number; out: string; err: string }> =>
    new Promise((resolve) => {
      const p = spawn(
        process.execPath,
        ['--import', 'tsx', runner, args[0]!, '--endpoints', edge.endpoint, ...args.slice(1)],
        {
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      );
      let out = '';
      let err = '';
      p.stdout.on('data', (d: Buffer) => {
        out += d.toString();
      });
      p.stderr.on('data', (d: Buffer) => {
        err += d.toString();
      });
      p.on('close', (code) => resolve({ code: code ?? -1, out, err }));
    });

  it('kv put/get/del, lease grant/timetolive/list/revoke, lock -- CMD, endpoint status, --help', async () => {
    assert.equal((await cli(['kv', 'put', '/cli/a', 'hello'])).out, 'OK\n');
    assert.equal((await cli(['kv', 'get', '/cli/', '--prefix'])).out, '/cli/a\nhello\n');
    assert.equal((await cli(['kv', 'get', '/cli/a', '--print-value-only'])).out, 'hello\n');
    const g = await cli(['lease', 'grant', '30']);
    const id = /lease ([0-9a-f]+) granted/.exec(g.out)?.[1];
    assert.ok(id, g.out + g.err);
    assert.match((await cli(['lease', 'timetolive', id!])).out, /granted with TTL\(30s\)/);
    assert.match((await cli(['lease', 'list'])).out, new RegExp(id!));
    assert.match((await cli(['lease', 'revoke', id!])).out, /revoked/);
    assert.equal((await cli(['kv', 'del', '/cli/a'])).out, '1\n');
    const l = await cli(['lock', 'clilock', '--', 'sh', '-c', 'echo "$EDGEKEEPER_LOCK_KEY"; exit 7']);
    assert.equal(l.code, 7, l.err);
    assert.match(l.out, /^clilock\//);
    const s = await cli(['endpoint', 'status', '-w', 'json']);
    assert.equal(JSON.parse(s.out).version, '3.5.13');
    const h = await cli(['kv', '--help']);
    assert.equal(h.code, 0);
    assert.match(h.out, /edgekeeper kv get/);
    const bad = await cli(['lease', 'revoke', 'zz']);
    assert.equal(bad.code, 2, 'a malformed lease ID is a usage error');
    assert.match(bad.err, /lease ID in hex.*\[EDGE_ERR_USAGE\]/);
  });

  it('kv watch prints events', async () => {
    const p = spawn(
      process.execPath,
      ['--import', 'tsx', runner, 'kv', 'watch', '/cliw/', '--prefix', '--endpoints', edge.endpoint],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let out = '';
    p.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    try {
      const deadline = Date.now() + 15_000;
      while (!out.includes('PUT') && Date.now() < deadline) {
        await c.call('etcdserverpb.KV', 'Put', { key: B('/cliw/k'), value: B('v') });
        await new Promise((r) => setTimeout(r, 200));
      }
      await waitFor(() => out.includes('PUT\n/cliw/k\nv\n'), 'watch output');
    } finally {
      p.kill('SIGKILL');
    }
  });
});
