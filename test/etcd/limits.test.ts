/**
 * The attacks on the etcd port, reproduced on loopback with small bounds (src/etcd/limits.ts):
 * a LeaseGrant whose TTL arrives with the wrong wire type, a message prefix claiming 100 MB,
 * incomplete messages over the pending-bytes budget, streams and watchers beyond their bounds,
 * connections beyond theirs. Each is refused the way etcd or HTTP/2 says, counted, and the
 * server keeps serving. Real etcd answers the malformed LeaseGrant the same way.
 */
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { Client, credentials, Metadata, type ServiceError } from '@grpc/grpc-js';
import { Registry } from 'prom-client';
import { EtcdClient } from '../../src/etcd/cli.js';
import { protoRoot } from '../../src/etcd/proto.js';
import { type Edge, type RealEtcd, startEdge, startRealEtcd, waitFor } from './helpers.js';

let edge: Edge;
let c: EtcdClient;
const registry = new Registry();
const LIMITS = {
  maxConnections: 8,
  maxStreamsPerConnection: 20,
  maxStreams: 50,
  maxWatchersPerConnection: 5,
  maxWatchers: 8,
  maxPendingBytes: 1024 * 1024,
};

before(async () => {
  edge = await startEdge({ server: { registry, limits: LIMITS } });
  c = new EtcdClient(edge.endpoint);
});
after(async () => {
  c?.close();
  await edge?.close();
});

async function metric(name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  const v = (m?.values ?? []).find((x) => Object.entries(labels).every(([k, want]) => x.labels[k] === want));
  return Number(v?.value ?? 0);
}

function rawCall(endpoint: string, path: string, payload: Buffer): Promise<ServiceError | Buffer> {
  const client = new Client(endpoint, credentials.createInsecure());
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
      payload,
      new Metadata(),
      {},
      (err, res) => {
        client.close();
        resolve(err ?? (res as Buffer));
      },
    );
  });
}

/** A raw HTTP/2 connection to the etcd port, closed by the test. */
function session(): http2.ClientHttp2Session {
  const s = http2.connect(`http://${edge.endpoint}`);
  s.on('error', () => {});
  return s;
}

function grpcStream(s: http2.ClientHttp2Session, path: string): http2.ClientHttp2Stream {
  const req = s.request({
    ':method': 'POST',
    ':path': path,
    'content-type': 'application/grpc',
    te: 'trailers',
  });
  req.on('error', () => {});
  req.on('data', () => {});
  return req;
}

function frame(msg: Uint8Array): Buffer {
  const out = Buffer.alloc(5 + msg.length);
  out.writeUInt32BE(msg.length, 1);
  out.set(msg, 5);
  return out;
}

function closed(req: http2.ClientHttp2Stream): Promise<number> {
  return req.closed
    ? Promise.resolve(req.rstCode ?? 0)
    : new Promise((r) => req.once('close', () => r(req.rstCode ?? 0)));
}

/** LeaseGrant { TTL: <field 1 as 4 length-delimited bytes> }: protobufjs alone read TTL 4,294,967,295. */
const BAD_LEASE_GRANT = Buffer.from([0x0a, 0x04, 0xff, 0xff, 0xff, 0xff]);

describe('etcd port under attack', { timeout: 120_000 }, () => {
  it('a LeaseGrant whose TTL has the wrong wire type is refused INTERNAL; no lease is made', async () => {
    const before = await metric('edgekeeper_etcd_bad_input_total', { kind: 'undecodable' });
    const err = (await rawCall(
      edge.endpoint,
      '/etcdserverpb.Lease/LeaseGrant',
      BAD_LEASE_GRANT,
    )) as ServiceError;
    assert.equal(err.code, 13);
    assert.equal(await metric('edgekeeper_etcd_bad_input_total', { kind: 'undecodable' }), before + 1);
    const leases = await c.call('etcdserverpb.Lease', 'LeaseLeases', {});
    assert.deepEqual(leases.leases, []);
    // Nested too: a Txn's Put whose lease (field 4, a varint) arrives length-delimited.
    const Txn = protoRoot().lookupType('etcdserverpb.TxnRequest');
    const put = protoRoot().lookupType('etcdserverpb.PutRequest');
    const badPut = Buffer.concat([
      put.encode({ key: Buffer.from('/nested') }).finish(),
      Buffer.from([0x22, 0x00]),
    ]);
    const op = Buffer.concat([Buffer.from([0x12, badPut.length]), badPut]); // RequestOp.request_put
    const txn = Buffer.concat([Buffer.from([0x12, op.length]), op]); // TxnRequest.success
    assert.ok(Txn.decode(txn)); // protobufjs by itself takes it
    const err2 = (await rawCall(edge.endpoint, '/etcdserverpb.KV/Txn', txn)) as ServiceError;
    assert.equal(err2.code, 13);
    const r = await c.call('etcdserverpb.KV', 'Range', { key: Buffer.from('/nested') });
    assert.equal((r.kvs as unknown[]).length, 0);
    // Well-formed requests still pass, with unknown fields skipped as protobuf requires.
    const ok = await rawCall(
      edge.endpoint,
      '/etcdserverpb.Lease/LeaseGrant',
      Buffer.from([0x08, 0x3c, 0xf8, 0x07, 0x01]),
    );
    assert.ok(Buffer.isBuffer(ok));
  });

  it('real etcd refuses the same LeaseGrant with INTERNAL', async () => {
    let real: RealEtcd | undefined;
    try {
      real = await startRealEtcd();
      const err = (await rawCall(
        real.endpoint,
        '/etcdserverpb.Lease/LeaseGrant',
        BAD_LEASE_GRANT,
      )) as ServiceError;
      assert.equal(err.code, 13);
      assert.match(err.details, /wrong wireType = 2 for field TTL/);
    } finally {
      await real?.close();
    }
  });

  it('a prefix claiming 100 MB: RESOURCE_EXHAUSTED, and the stream is reset after one window', async () => {
    const before = await metric('edgekeeper_etcd_bad_input_total', { kind: 'message_too_large' });
    const s = session();
    try {
      const req = grpcStream(s, '/etcdserverpb.KV/Put');
      let status: string | undefined;
      req.on('response', (h) => {
        status = String(h['grpc-status']);
      });
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(100 * 1024 * 1024, 1);
      req.write(prefix);
      let sent = 0;
      const chunk = Buffer.alloc(64 * 1024);
      // Without the reset the server reads all 100 MB (and the loop runs to its end).
      while (!req.closed && sent < 100 * 1024 * 1024) {
        sent += chunk.length;
        if (!req.write(chunk)) {
          const moved = await new Promise((r) => {
            const t = setTimeout(() => r(false), 5000);
            const go = () => {
              clearTimeout(t);
              r(true);
            };
            req.once('drain', go);
            req.once('close', go);
          });
          if (!moved) break; // the server stopped reading without a reset
        }
      }
      assert.equal(await closed(req), http2.constants.NGHTTP2_NO_ERROR);
      assert.equal(status, '8');
      assert.ok(sent <= 1024 * 1024, `the client sent ${sent} bytes before the reset`);
    } finally {
      s.destroy();
    }
    assert.equal(await metric('edgekeeper_etcd_bad_input_total', { kind: 'message_too_large' }), before + 1);
    const r = await c.call('etcdserverpb.KV', 'Put', {
      key: Buffer.from('/after-prefix'),
      value: Buffer.from('v'),
    });
    assert.ok(Number(r.header.revision) > 1);
  });

  it('incomplete messages over the pending-bytes budget: ENHANCE_YOUR_CALM, bytes given back', async () => {
    const s = session();
    try {
      const streams: http2.ClientHttp2Stream[] = [];
      // Each claims 1.5 MB (allowed) and sends 400 KB of it: the third passes the 1 MiB budget.
      for (let i = 0; i < 3; i++) {
        const req = grpcStream(s, '/etcdserverpb.KV/Put');
        const prefix = Buffer.alloc(5);
        prefix.writeUInt32BE(1.5 * 1024 * 1024, 1);
        req.write(Buffer.concat([prefix, Buffer.alloc(400 * 1024)]));
        streams.push(req);
        await waitFor(
          async () =>
            (await metric('edgekeeper_etcd_pending_request_bytes')) >= (i + 1) * 400 * 1024 || req.closed,
          'bytes held',
        );
      }
      assert.equal(await closed(streams[2]!), http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
      assert.equal(streams[0]!.closed, false);
      assert.equal(await metric('edgekeeper_etcd_pending_request_bytes'), 800 * 1024);
      assert.equal(await metric('edgekeeper_etcd_bad_input_total', { kind: 'pending_bytes' }), 1);
    } finally {
      s.destroy();
    }
    await waitFor(
      async () => (await metric('edgekeeper_etcd_pending_request_bytes')) === 0,
      'bytes given back',
    );
  });

  it('streams: the per-connection bound is announced, the total refuses with REFUSED_STREAM, the first 8 of a connection pass', async () => {
    const sessions = [session(), session(), session()];
    try {
      const streams: http2.ClientHttp2Stream[] = [];
      for (const s of sessions) {
        await new Promise((r) => s.once('remoteSettings', r));
        assert.equal(s.remoteSettings.maxConcurrentStreams, 20);
        // Half-open: headers, then nothing.
        for (let i = 0; i < 20; i++) streams.push(grpcStream(s, '/etcdserverpb.Watch/Watch'));
      }
      await waitFor(async () => streams.filter((r) => r.closed).length === 10, '10 streams refused', 10_000);
      const refused = streams.filter((r) => r.closed);
      assert.ok(refused.every((r) => r.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM));
      assert.equal(await metric('edgekeeper_etcd_streams'), 50);
      assert.equal(await metric('edgekeeper_etcd_bad_input_total', { kind: 'streams' }), 10);
      // A client that keeps to a few streams is served whoever holds the total.
      const polite = session();
      sessions.push(polite);
      const few = Array.from({ length: 3 }, () => grpcStream(polite, '/etcdserverpb.Watch/Watch'));
      await waitFor(async () => (await metric('edgekeeper_etcd_streams')) === 53, 'the polite streams');
      assert.ok(few.every((r) => !r.closed));
      // A connection that keeps opening streams past its refusals is closed.
      const flood = session();
      for (let wave = 0; wave < 10 && !flood.destroyed; wave++) {
        // Waves of 12: HTTP/2 clients keep to the connection's 20 at once themselves.
        const w = Array.from({ length: 12 }, () => grpcStream(flood, '/etcdserverpb.KV/Put'));
        await waitFor(() => flood.destroyed || w.filter((r) => r.closed).length >= 4, 'refusals');
      }
      await waitFor(() => flood.destroyed, 'the flooding connection closed');
      assert.equal(await metric('edgekeeper_etcd_bad_input_total', { kind: 'stream_flood' }), 1);
      await waitFor(async () => (await metric('edgekeeper_etcd_streams')) === 53, 'its streams gone');
      assert.ok(few.every((r) => !r.closed));
    } finally {
      for (const s of sessions) s.destroy();
    }
    await waitFor(async () => (await metric('edgekeeper_etcd_streams')) === 0, 'streams closed');
  });

  it('watchers: per connection and in all, refused with a cancel reason, given back on cancel', async () => {
    const Req = protoRoot().lookupType('etcdserverpb.WatchRequest');
    const Res = protoRoot().lookupType('etcdserverpb.WatchResponse');
    const create = (key: string) => frame(Req.encode({ create_request: { key: Buffer.from(key) } }).finish());
    /** A watch stream whose responses are decoded as they come. */
    const watchStream = (s: http2.ClientHttp2Session) => {
      const req = grpcStream(s, '/etcdserverpb.Watch/Watch');
      const responses: Record<string, unknown>[] = [];
      let pending = Buffer.alloc(0);
      req.removeAllListeners('data');
      req.on('data', (d: Buffer) => {
        pending = Buffer.concat([pending, d]);
        while (pending.length >= 5 && pending.length >= 5 + pending.readUInt32BE(1)) {
          const n = pending.readUInt32BE(1);
          responses.push(Res.toObject(Res.decode(pending.subarray(5, 5 + n)), { longs: Number }));
          pending = pending.subarray(5 + n);
        }
      });
      return { req, responses };
    };
    const a = session();
    const b = session();
    try {
      const a1 = watchStream(a);
      const a2 = watchStream(a);
      for (let i = 0; i < 3; i++) a1.req.write(create(`/a1/${i}`));
      for (let i = 0; i < 3; i++) a2.req.write(create(`/a2/${i}`));
      await waitFor(() => a1.responses.length + a2.responses.length === 6, 'six answers');
      const refusedA = [...a1.responses, ...a2.responses].filter((r) => r.canceled);
      assert.equal(refusedA.length, 1);
      assert.match(String(refusedA[0]!.cancel_reason), /a connection may hold at most 5 watchers/);
      const b1 = watchStream(b);
      for (let i = 0; i < 4; i++) b1.req.write(create(`/b1/${i}`));
      await waitFor(() => b1.responses.length === 4, 'four answers');
      const refusedB = b1.responses.filter((r) => r.canceled);
      assert.equal(refusedB.length, 1);
      assert.match(String(refusedB[0]!.cancel_reason), /limit of 8 watchers/);
      assert.equal(await metric('edgekeeper_etcd_watchers'), 8);
      // A watcher cancelled gives its place back.
      const id = b1.responses.find((r) => !r.canceled)!.watch_id;
      b1.req.write(frame(Req.encode({ cancel_request: { watch_id: id } }).finish()));
      await waitFor(async () => (await metric('edgekeeper_etcd_watchers')) === 7, 'one given back');
      b1.req.write(create('/b1/again'));
      await waitFor(() => b1.responses.length === 6, 'created again');
      assert.equal(b1.responses[5]!.canceled, undefined);
    } finally {
      a.destroy();
      b.destroy();
    }
    await waitFor(
      async () => (await metric('edgekeeper_etcd_watchers')) === 0,
      'watchers gone with their connections',
    );
  });

  it('connections beyond the bound are closed at accept; the server keeps serving', async () => {
    const before = await metric('edgekeeper_etcd_bad_input_total', { kind: 'connections' });
    c.close();
    await waitFor(async () => (await metric('edgekeeper_etcd_connections')) === 0, 'no connection open');
    const sockets = await Promise.all(
      Array.from(
        { length: 12 },
        () =>
          new Promise<{ closed: boolean }>((resolve) => {
            const s = connect(edge.server.port, '127.0.0.1');
            const st = { closed: false, s };
            s.on('error', () => {});
            s.on('close', () => {
              st.closed = true;
            });
            s.on('connect', () => resolve(st));
          }),
      ),
    );
    await waitFor(() => sockets.filter((x) => x.closed).length === 4, 'four closed');
    assert.equal(await metric('edgekeeper_etcd_connections'), 8);
    assert.equal(await metric('edgekeeper_etcd_bad_input_total', { kind: 'connections' }), before + 4);
    for (const x of sockets) (x as unknown as { s: { destroy(): void } }).s.destroy();
    await waitFor(async () => (await metric('edgekeeper_etcd_connections')) === 0, 'all closed');
    c = new EtcdClient(edge.endpoint);
    const r = await c.call('etcdserverpb.KV', 'Range', { key: Buffer.from('/after-prefix') });
    assert.equal((r.kvs as unknown[]).length, 1);
  });
});
