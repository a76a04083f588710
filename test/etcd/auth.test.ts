/**
 * etcd auth, unit level: the key-range permission test, token expiry on an injected clock, what is
 * stored (scrypt hashes, never a password) and that it survives a restart, the TLS client
 * certificate's CN as the user, and hostile input (names that are JavaScript property names,
 * oversized and malformed tokens, a grant without a permission).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Auth } from '../../src/etcd/auth/index.js';
import { allowed, mergePerms, READ, READWRITE, WRITE } from '../../src/etcd/auth/perms.js';
import { startEtcdServer } from '../../src/etcd/index.js';
import { silentLogger } from '../../src/log.js';
import { curlBatch, type Edge, etcdctl, startEdge } from './helpers.js';

const B = (s: string) => Buffer.from(s);
const E = Buffer.alloc(0);

describe('key-range permissions (etcd semantics)', () => {
  const p = mergePerms([
    { permType: READ, key: B('/a/'), rangeEnd: B('/a0') },
    { permType: WRITE, key: B('/w'), rangeEnd: E },
    { permType: READWRITE, key: B('/r1'), rangeEnd: B('/r5') },
    { permType: READWRITE, key: B('/r5'), rangeEnd: B('/r7') },
    { permType: READ, key: B('/z'), rangeEnd: B('\0') },
  ]);
  it('single keys', () => {
    assert.ok(allowed(p.read, B('/a/1'), E));
    assert.ok(!allowed(p.read, B('/a'), E));
    assert.ok(!allowed(p.write, B('/a/1'), E));
    assert.ok(allowed(p.write, B('/w'), E));
    assert.ok(!allowed(p.write, B('/w0'), E));
    assert.ok(!allowed(p.read, B('/w'), E));
    assert.ok(allowed(p.read, B('/zzz'), E));
    assert.ok(allowed(p.read, B('\xff\xff'), E));
  });
  it('ranges: covered by merged permissions without a gap', () => {
    assert.ok(allowed(p.read, B('/a/'), B('/a0')));
    assert.ok(allowed(p.read, B('/r1'), B('/r7')));
    assert.ok(allowed(p.write, B('/r2'), B('/r6')));
    assert.ok(!allowed(p.read, B('/r1'), B('/r8')));
    assert.ok(!allowed(p.read, B('/r0'), B('/r3')));
    assert.ok(!allowed(p.read, B('/a/'), B('/r2')));
    // From a key to the end of the key space: only a from-key permission covers it.
    assert.ok(allowed(p.read, B('/z1'), B('\0')));
    assert.ok(!allowed(p.read, B('/y'), B('\0')));
    assert.ok(!allowed(p.read, B('/r1'), B('\0')));
  });
  it('nothing granted: nothing allowed', () => {
    const none = mergePerms([]);
    assert.ok(!allowed(none.read, B('k'), E));
    assert.ok(!allowed(none.read, B('a'), B('b')));
  });
});

describe('the auth store', () => {
  let edge: Edge;
  before(async () => {
    edge = await startEdge();
  });
  after(async () => {
    await edge?.close();
  });

  it('tokens expire after the TTL since their last use; disabling ends them', () => {
    let now = 1_000_000;
    const a = new Auth(edge.store, silentLogger(), { tokenTtlMs: 1000, now: () => now });
    const t = a.state.tokens.assign('alice');
    assert.match(t, /^[A-Za-z]{16}\.\d+$/);
    now += 900;
    assert.equal(a.state.tokens.user(t), 'alice');
    now += 900; // 1.8 s after it was made, 0.9 s after its last use
    assert.equal(a.state.tokens.user(t), 'alice');
    now += 1000;
    assert.equal(a.state.tokens.user(t), undefined);
    const t2 = a.state.tokens.assign('bob');
    a.state.tokens.invalidateUser('bob');
    assert.equal(a.state.tokens.user(t2), undefined);
    assert.equal(a.state.tokens.user('not-a-token'), undefined);
  });

  it('passwords are stored as salted scrypt hashes; everything survives a restart; tokens do not', async () => {
    const ep = edge.endpoint;
    const root = ['--user', 'root:s3cret-pw'];
    for (const args of [
      ['user', 'add', 'root:s3cret-pw'],
      ['user', 'add', 'alice:s3cret-pw'],
      ['role', 'add', 'r'],
      ['role', 'grant-permission', 'r', 'readwrite', '/p/', '--prefix'],
      ['user', 'grant-role', 'alice', 'r'],
      ['auth', 'enable'],
    ]) {
      const r = await etcdctl(ep, args[0] === 'auth' ? args : args);
      assert.equal(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
    }
    const rows = edge.store
      .query<{ name: string; password: string }>('SELECT name, password FROM etcd_auth_users ORDER BY name')
      .all();
    assert.equal(rows.length, 2);
    for (const r of rows) {
      assert.match(r.password, /^scrypt\$16384\$8\$1\$[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}$/);
      assert.ok(!r.password.includes('s3cret'));
    }
    assert.notEqual(rows[0]!.password.split('$')[4], rows[1]!.password.split('$')[4], 'salts differ');
    const [tok] = await curlBatch([
      {
        url: `http://${ep}/v3/auth/authenticate`,
        body: JSON.stringify({ name: 'alice', password: 's3cret-pw' }),
      },
    ]);
    const token = JSON.parse(tok!.body).token as string;

    // Restart the server on the same store.
    await edge.server.close();
    edge.server = await startEtcdServer(edge.store, { listen: '127.0.0.1:0', stateDir: edge.dir });
    const ep2 = `127.0.0.1:${edge.server.port}`;
    assert.match((await etcdctl(ep2, ['get', '/p/x'])).stderr, /user name is empty/);
    assert.equal((await etcdctl(ep2, ['--user', 'alice:s3cret-pw', 'put', '/p/x', '1'])).status, 0);
    assert.match(
      (await etcdctl(ep2, ['--user', 'alice:s3cret-pw', 'put', '/q', '1'])).stderr,
      /permission denied/,
    );
    assert.equal(
      (await etcdctl(ep2, [...root, 'role', 'get', 'r'])).stdout,
      'Role r\nKV Read:\n\t[/p/, /p0) (prefix /p/)\nKV Write:\n\t[/p/, /p0) (prefix /p/)\n',
    );
    const [old] = await curlBatch([
      {
        url: `http://${ep2}/v3/kv/range`,
        body: JSON.stringify({ key: B('/p/x').toString('base64') }),
        headers: [`Authorization: ${token}`],
      },
    ]);
    assert.equal(old!.status, 401);
    assert.match(old!.body, /etcdserver: invalid auth token/);
    // Hostile input: property names as user and role names, a huge and a garbage token, a grant without a permission.
    for (const name of ['__proto__', 'constructor', 'toString']) {
      assert.equal((await etcdctl(ep2, [...root, 'user', 'add', `${name}:pw`])).status, 0, name);
      assert.equal((await etcdctl(ep2, [...root, 'role', 'add', name])).status, 0, name);
      assert.equal((await etcdctl(ep2, [...root, 'user', 'grant-role', name, name])).status, 0, name);
    }
    assert.match(
      (await etcdctl(ep2, [...root, 'user', 'get', 'hasOwnProperty'])).stderr,
      /user name not found/,
    );
    assert.match((await etcdctl(ep2, [...root, 'role', 'get', 'valueOf'])).stderr, /role name not found/);
    assert.match((await etcdctl(ep2, ['--user', '__proto__:pw', 'get', '/p/x'])).stderr, /permission denied/);
    const rootTok = JSON.parse(
      (
        await curlBatch([
          {
            url: `http://${ep2}/v3/auth/authenticate`,
            body: JSON.stringify({ name: 'root', password: 's3cret-pw' }),
          },
        ])
      )[0]!.body,
    ).token as string;
    const res = await curlBatch([
      {
        url: `http://${ep2}/v3/kv/range`,
        body: '{"key":"eA=="}',
        headers: [`Authorization: ${'x'.repeat(6000)}`],
      },
      { url: `http://${ep2}/v3/kv/range`, body: '{"key":"eA=="}', headers: ['Authorization: \u00ff.1'] },
      {
        url: `http://${ep2}/v3/auth/role/grant`,
        body: '{"name":"r"}',
        headers: [`Authorization: ${rootTok}`],
      },
      { url: `http://${ep2}/v3/auth/user/add`, body: '{"name":""}', headers: [`Authorization: ${rootTok}`] },
    ]);
    assert.deepEqual(
      res.map((r) => [r.status, JSON.parse(r.body).error]),
      [
        [401, 'etcdserver: invalid auth token'],
        [401, 'etcdserver: invalid auth token'],
        [400, 'etcdserver: permission not given'],
        [400, 'etcdserver: user name is empty'],
      ],
    );
    assert.equal((await etcdctl(ep2, [...root, 'auth', 'disable'])).status, 0);
  });
});

describe('client certificate CN as the user (client-cert-auth)', () => {
  let edge: Edge;
  let dir: string;
  before(async () => {
    edge = await startEdge();
    dir = mkdtempSync(join(tmpdir(), 'ek-authtls-'));
    const ssl = (args: string[]) => {
      const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
    };
    ssl([
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      'ca.key',
      '-out',
      'ca.crt',
      '-days',
      '2',
      '-subj',
      '/CN=ca',
    ]);
    writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1\n');
    for (const n of ['server', 'alice', 'root', 'mallory']) {
      ssl([
        'req',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
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
  });
  after(async () => {
    await edge?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('with no token, the verified certificate names the user', async () => {
    const ep = edge.endpoint;
    for (const args of [
      ['user', 'add', 'root:pw'],
      ['user', 'add', 'alice:pw'],
      ['role', 'add', 'r'],
      ['role', 'grant-permission', 'r', 'readwrite', '/c/', '--prefix'],
      ['user', 'grant-role', 'alice', 'r'],
      ['auth', 'enable'],
    ])
      assert.equal((await etcdctl(ep, args)).status, 0, args.join(' '));
    await edge.server.close();
    edge.server = await startEtcdServer(edge.store, {
      listen: '127.0.0.1:0',
      stateDir: edge.dir,
      tls: {
        cert: join(dir, 'server.crt'),
        key: join(dir, 'server.key'),
        clientCa: join(dir, 'ca.crt'),
        clientCertAuth: true,
      },
    });
    const tlsEp = `https://127.0.0.1:${edge.server.port}`;
    const as = (n: string, args: string[]) =>
      etcdctl(tlsEp, [
        '--cacert',
        join(dir, 'ca.crt'),
        '--cert',
        join(dir, `${n}.crt`),
        '--key',
        join(dir, `${n}.key`),
        ...args,
      ]);
    assert.equal((await as('alice', ['put', '/c/1', 'v'])).status, 0);
    assert.equal((await as('alice', ['get', '/c/1', '--print-value-only'])).stdout, 'v\n');
    assert.match((await as('alice', ['get', '/d'])).stderr, /etcdserver: permission denied/);
    assert.match((await as('alice', ['user', 'list'])).stderr, /etcdserver: permission denied/);
    // A CN that is no user gets nothing.
    assert.match((await as('mallory', ['get', '/c/1'])).stderr, /etcdserver: permission denied/);
    assert.match((await as('mallory', ['user', 'list'])).stderr, /etcdserver: user name not found/);
    // The root certificate is root; a password given along wins over the certificate.
    assert.equal((await as('root', ['user', 'list'])).stdout, 'alice\nroot\n');
    assert.match((await as('root', ['--user', 'alice:pw', 'user', 'list'])).stderr, /permission denied/);
  });
});
