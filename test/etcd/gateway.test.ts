/**
 * The JSON gateway and the shared client port on edgekeeper alone (the answers etcd gives too are
 * compared with real etcd in test/interop/etcd-gateway.test.ts): gRPC and HTTP on one TCP port,
 * on the unix socket and over TLS (where ALPN gives curl HTTP/1.1 and gRPC clients HTTP/2),
 * hostile input (oversized bodies, deep nesting, garbage, a silent connection), a gateway watch
 * whose client stops reading, the snapshot stream, a waiting lock whose client leaves, and the
 * routes that differ from etcd on purpose. Needs curl and openssl.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { EtcdClient } from '../../src/etcd/cli.js';
import { startEtcdServer } from '../../src/etcd/index.js';
import { SharedListener } from '../../src/etcd/listener.js';
import { curl, type Edge, requirePeer, run, startEdge, waitFor } from './helpers.js';

const b64 = (s: string) => Buffer.from(s).toString('base64');
let edge: Edge;
let registry: Registry;
let base: string;

async function metric(name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  const v = m?.values.find((x) => Object.entries(labels).every(([k, l]) => x.labels[k] === l));
  return Number(v?.value ?? 0);
}

before(async () => {
  requirePeer('/usr/bin/curl', 'curl');
  registry = new Registry();
  edge = await startEdge({
    store: { watchBufferLimit: 200, maxRequestBytes: 8 * 1024 },
    server: { registry, maxRequestBytes: 8 * 1024 },
  });
  base = `http://${edge.endpoint}`;
});
after(async () => {
  await edge?.close();
});

describe('one port for gRPC and the JSON gateway', () => {
  it('gRPC and HTTP/1.1 share the TCP port and see the same data', async () => {
    const c = new EtcdClient(edge.endpoint);
    try {
      await c.call('etcdserverpb.KV', 'Put', { key: Buffer.from('/shared'), value: Buffer.from('grpc') });
      const r = await curl(`${base}/v3/kv/range`, { body: JSON.stringify({ key: b64('/shared') }) });
      assert.equal(r.status, 200);
      assert.equal(JSON.parse(r.body).kvs[0].value, b64('grpc'));
      await curl(`${base}/v3/kv/put`, { body: JSON.stringify({ key: b64('/shared'), value: b64('http') }) });
      const g = await c.call('etcdserverpb.KV', 'Range', { key: Buffer.from('/shared') });
      assert.equal(g.kvs[0].value.toString(), 'http');
    } finally {
      c.close();
    }
    // Cleartext HTTP/2 is gRPC's, as in etcd: JSON over it is refused.
    const h2 = await run('curl', [
      '-s',
      '--max-time',
      '10',
      '--http2-prior-knowledge',
      '-o',
      '/dev/null',
      '-w',
      '%{http_code}',
      `${base}/version`,
    ]);
    assert.notEqual(h2.stdout, '200');
  });

  it('the unix socket serves both too', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ek-gwsock-'));
    const sock = join(dir, 'etcd.sock');
    const srv = await startEtcdServer(edge.store, { listen: '', socketPath: sock });
    const uc = new EtcdClient(`unix://${sock}`);
    try {
      await uc.call('etcdserverpb.KV', 'Put', { key: Buffer.from('/unix'), value: Buffer.from('1') });
      const r = await run('curl', [
        '-s',
        '--unix-socket',
        sock,
        '-d',
        JSON.stringify({ key: b64('/unix') }),
        'http://localhost/v3/kv/range',
      ]);
      assert.equal(JSON.parse(r.stdout).kvs[0].value, b64('1'));
    } finally {
      uc.close();
      await srv.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('TLS: curl gets HTTP/1.1 by ALPN, gRPC gets HTTP/2, client certificates are required of both', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ek-gwtls-'));
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
      '/CN=ca',
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
    const p = (n: string) => join(dir, n);
    const srv = await startEtcdServer(edge.store, {
      listen: '127.0.0.1:0',
      tls: { cert: p('server.crt'), key: p('server.key'), clientCa: p('ca.crt'), clientCertAuth: true },
    });
    try {
      const url = `https://127.0.0.1:${srv.port}/v3/kv/range`;
      const withCert = await run('curl', [
        '-sv',
        '--cacert',
        p('ca.crt'),
        '--cert',
        p('client.crt'),
        '--key',
        p('client.key'),
        '-d',
        JSON.stringify({ key: b64('/shared') }),
        url,
      ]);
      assert.match(withCert.stderr, /ALPN: server accepted http\/1\.1/);
      assert.equal(JSON.parse(withCert.stdout).kvs[0].value, b64('http'));
      const noCert = await run('curl', [
        '-s',
        '--cacert',
        p('ca.crt'),
        '-o',
        '/dev/null',
        '-w',
        '%{http_code}',
        '-d',
        '{}',
        url,
      ]);
      assert.equal(noCert.stdout, '000');
      const ctl = await run(
        'etcdctl',
        [
          `--endpoints=https://127.0.0.1:${srv.port}`,
          '--cacert',
          p('ca.crt'),
          '--cert',
          p('client.crt'),
          '--key',
          p('client.key'),
          'get',
          '/shared',
        ],
        { env: { ...process.env, ETCDCTL_API: '3' } },
      );
      assert.equal(ctl.stdout, '/shared\nhttp\n', ctl.stderr);
    } finally {
      await srv.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('bad input on the gateway: answered, bounded, counted', () => {
  it('a body over the limit: 429, counted, the server still answers', async () => {
    const before = await metric('edgekeeper_etcd_bad_input_total', { kind: 'gateway_body_too_large' });
    // The limit is twice what gRPC takes (8 KiB + 512 KiB of framing here).
    const body = `{"key":"YQ==","value":"${'A'.repeat(1_200_000)}"}`;
    const r = await curl(`${base}/v3/kv/put`, { body });
    assert.equal(r.status, 429);
    assert.match(JSON.parse(r.body).error, /request body larger than 1064960 bytes/);
    assert.equal(
      await metric('edgekeeper_etcd_bad_input_total', { kind: 'gateway_body_too_large' }),
      before + 1,
    );
    const ok = await curl(`${base}/v3/kv/range`, { body: '{"key":"YQ=="}' });
    assert.equal(ok.status, 200);
  });

  it("a message over max-request-bytes: etcd's answers, nothing stored", async () => {
    const tooBig = await curl(`${base}/v3/kv/put`, {
      body: JSON.stringify({ key: b64('/big'), value: b64('x'.repeat(9000)) }),
    });
    assert.equal(tooBig.status, 400);
    assert.equal(JSON.parse(tooBig.body).error, 'etcdserver: request is too large');
    const overGrpc = await curl(`${base}/v3/kv/put`, {
      body: JSON.stringify({ key: b64('/big'), value: b64('x'.repeat(600_000)) }),
    });
    assert.equal(overGrpc.status, 429);
    assert.match(
      JSON.parse(overGrpc.body).error,
      /^grpc: received message larger than max \(\d+ vs\. 532480\)$/,
    );
    const r = await curl(`${base}/v3/kv/range`, { body: JSON.stringify({ key: b64('/big') }) });
    assert.equal(JSON.parse(r.body).kvs, undefined);
  });

  it('hostile JSON: deep nesting, invalid UTF-8, a huge number, garbage streams', async () => {
    const before = await metric('edgekeeper_etcd_bad_input_total', { kind: 'gateway_json' });
    const deep = await curl(`${base}/v3/kv/range`, { body: '['.repeat(200_000) });
    assert.equal(deep.status, 400);
    assert.match(JSON.parse(deep.body).error, /exceeded max depth/);
    const utf = await curl(`${base}/v3/kv/range`, {
      body: Buffer.from([0x7b, 0x22, 0x6b, 0x65, 0x79, 0x22, 0x3a, 0x22, 0xff, 0x22, 0x7d]),
    });
    assert.equal(utf.status, 400);
    assert.match(JSON.parse(utf.body).error, /illegal base64 data at input byte 0/);
    const num = await curl(`${base}/v3/kv/range`, { body: `{"key":"YQ==","limit":${'9'.repeat(5000)}}` });
    assert.equal(num.status, 400);
    const watch = await curl(`${base}/v3/watch`, {
      body: '{"create_request":{"key":"YQ=="}}{"x":',
      maxTime: 1,
    });
    assert.match(watch.body, /"created":true/);
    assert.ok((await metric('edgekeeper_etcd_bad_input_total', { kind: 'gateway_json' })) >= before + 4);
  });

  it('paths that name JavaScript object properties are unknown routes', async () => {
    for (const p of ['/v3/constructor', '/v3/__proto__', '/v3/toString', '/v3/hasOwnProperty']) {
      const r = await curl(`${base}${p}`, { body: '{}' });
      assert.equal(r.status, 404, p);
      assert.equal(r.body, 'Not Found\n');
    }
  });

  it('garbage bytes: HTTP 400, the connection closed, gRPC unharmed', async () => {
    const reply = await new Promise<string>((resolve) => {
      let got = '';
      const s = connect(edge.server.port, '127.0.0.1', () => s.write(Buffer.alloc(2048, 0xab)));
      s.on('data', (d) => {
        got += d.toString('latin1');
      });
      s.on('close', () => resolve(got));
      s.on('error', () => {});
    });
    assert.match(reply, /^HTTP\/1\.1 400 Bad Request/);
    const c = new EtcdClient(edge.endpoint);
    try {
      await c.call('etcdserverpb.KV', 'Range', { key: Buffer.from('a') });
    } finally {
      c.close();
    }
  });

  it('a connection that never speaks is dropped, and counted', async () => {
    const dropped: string[] = [];
    const l = new SharedListener(
      {
        grpc: () => assert.fail('not gRPC'),
        http: () => assert.fail('not HTTP'),
        dropped: (r) => dropped.push(r),
      },
      { firstBytesTimeoutMs: 200 },
    );
    const port = await l.listenTcp('127.0.0.1', 0);
    try {
      const closed = await new Promise<boolean>((resolve) => {
        const s = connect(port, '127.0.0.1');
        s.on('close', () => resolve(true));
        s.on('error', () => {});
        setTimeout(() => resolve(false), 5000).unref();
      });
      assert.ok(closed);
      assert.deepEqual(dropped, ['timeout']);
    } finally {
      await l.close();
    }
  });

  it('a gateway watch whose client stops reading is cancelled with a reason; memory stays bounded', async () => {
    const cancelsBefore = await metric('edgekeeper_etcd_watch_cancels_total', { reason: 'slow_consumer' });
    const body = JSON.stringify({ create_request: { key: b64('/slow/'), range_end: b64('/slow0') } });
    const s = connect(edge.server.port, '127.0.0.1');
    let got = '';
    let stopped = false;
    s.on('data', (d) => {
      got += d.toString('latin1');
      // Read the headers and the created response, then stop reading.
      if (!stopped && got.includes('"created":true')) {
        stopped = true;
        s.pause();
      }
    });
    try {
      s.write(`POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      await waitFor(() => got.includes('"created":true'), 'the watch to be created');
      // 7 KiB values (under max-request-bytes) until the socket, the stream's queue and the store's 200-event buffer are full.
      const value = Buffer.alloc(7 * 1024, 0x61);
      const c = new EtcdClient(edge.endpoint);
      let puts = 0;
      try {
        while (puts < 3000) {
          await Promise.all(
            Array.from({ length: 50 }, (_, j) =>
              c.call('etcdserverpb.KV', 'Put', { key: Buffer.from(`/slow/${(puts + j) % 10}`), value }),
            ),
          );
          puts += 50;
          if (
            (await metric('edgekeeper_etcd_watch_cancels_total', { reason: 'slow_consumer' })) > cancelsBefore
          )
            break;
        }
      } finally {
        c.close();
      }
      assert.ok(
        (await metric('edgekeeper_etcd_watch_cancels_total', { reason: 'slow_consumer' })) > cancelsBefore,
        'the slow gateway watcher was never cancelled',
      );
      s.resume();
      await waitFor(() => got.includes('"canceled":true'), 'the cancel response', 20_000);
      assert.match(got, /"cancel_reason":"edgekeeper: watcher fell more than 200 events behind/);
      // The server held back (and then dropped) what the client did not read, instead of queueing it all.
      const delivered = got.split('"mod_revision"').length - 1;
      assert.ok(delivered < puts, `all ${puts} events were queued for the stalled client`);
    } finally {
      s.destroy();
    }
  });
});

describe('gateway routes', () => {
  it('snapshot: the etcd snapshot in result chunks, its SHA-256 last', async () => {
    const r = await curl(`${base}/v3/maintenance/snapshot`, { body: '{}' });
    const blobs = r.body
      .split('\n')
      .filter(Boolean)
      .map((l) => Buffer.from(JSON.parse(l).result.blob, 'base64'));
    const all = Buffer.concat(blobs);
    const db = all.subarray(0, all.length - 32);
    // etcdctl tells a snapshot with its digest by its size: pages of the file plus 32 bytes.
    assert.equal(all.length % 512, 32);
    assert.deepEqual(all.subarray(all.length - 32), createHash('sha256').update(db).digest());
  });

  it('a waiting lock whose client leaves gives up its place', async () => {
    const lease = JSON.parse((await curl(`${base}/v3/lease/grant`, { body: '{"TTL":60}' })).body).ID;
    const lease2 = JSON.parse((await curl(`${base}/v3/lease/grant`, { body: '{"TTL":60}' })).body).ID;
    const held = await curl(`${base}/v3/lock/lock`, { body: JSON.stringify({ name: b64('gwlock'), lease }) });
    assert.equal(held.status, 200);
    const waiting = await curl(`${base}/v3/lock/lock`, {
      body: JSON.stringify({ name: b64('gwlock'), lease: lease2 }),
      maxTime: 1,
    });
    assert.equal(waiting.body, '');
    // The waiter left: its key is gone, so the lock's prefix holds only the holder's key.
    await waitFor(async () => {
      const r = await curl(`${base}/v3/kv/range`, {
        body: JSON.stringify({ key: b64('gwlock/'), range_end: b64('gwlock0'), count_only: true }),
      });
      return JSON.parse(r.body).count === '1';
    }, 'the waiter to withdraw');
  });

  it('routes that differ on purpose answer with their reason', async () => {
    const add = await curl(`${base}/v3/cluster/member/add`, { body: '{"peerURLs":["http://127.0.0.1:1"]}' });
    assert.equal(add.status, 412);
    assert.match(JSON.parse(add.body).error, /single-member/);
    const move = await curl(`${base}/v3/maintenance/transfer-leadership`, { body: '{"targetID":5}' });
    assert.equal(move.status, 412);
    const sort = await curl(`${base}/v3/kv/range`, { body: '{"key":"YQ==","sort_order":9}' });
    assert.equal(JSON.parse(sort.body).error, 'etcdserver: invalid sort option');
    const nil = await curl(`${base}/v3/kv/txn`, { body: '{"success":[null]}' });
    assert.equal(nil.status, 400);
    const alarm = await curl(`${base}/v3/maintenance/alarm`, { body: '{"action":7}' });
    assert.equal(alarm.status, 400);
  });

  it('etcd metric names on the client port', async () => {
    const r = await curl(`${base}/metrics`);
    assert.equal(r.status, 200);
    assert.match(r.body, /^etcd_server_has_leader 1$/m);
    assert.match(r.body, /^etcd_debugging_mvcc_keys_total \d+$/m);
    assert.match(
      r.body,
      /^grpc_server_handled_total\{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"\} [1-9]/m,
    );
    assert.match(
      r.body,
      /^grpc_server_started_total\{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"\} [1-9]/m,
    );
    assert.match(r.body, /^etcd_disk_backend_commit_duration_seconds_bucket\{le="8.192"\} [1-9]/m);
    assert.match(
      r.body,
      /^edgekeeper_etcd_gateway_requests_total\{path="\/v3\/kv\/put",status="200"\} [1-9]/m,
    );
  });
});
