/**
 * Bad input on the wire: garbage bytes, wrong protobuf types, oversized messages, 10,000 watchers
 * on one stream, and a client that never reads its watch stream. Each gets etcd's error or a
 * bounded cancel, it is counted, and other clients are unaffected.
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { Client, credentials, Metadata, type ServiceError } from '@grpc/grpc-js';
import { Registry } from 'prom-client';
import { EtcdClient } from '../../src/etcd/cli.js';
import { type Edge, startEdge, waitFor } from './helpers.js';

let edge: Edge;
let c: EtcdClient;
const registry = new Registry();

before(async () => {
  edge = await startEdge({ store: { watchBufferLimit: 200 }, server: { registry } });
  c = new EtcdClient(edge.endpoint);
});
after(async () => {
  c?.close();
  await edge?.close();
});

async function metric(name: string, labels: Record<string, string>): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  const v = (m?.values ?? []).find((x) => Object.entries(labels).every(([k, want]) => x.labels[k] === want));
  return Number(v?.value ?? 0);
}

function rawCall(path: string, payload: Buffer): Promise<ServiceError | Buffer> {
  const client = new Client(edge.endpoint, credentials.createInsecure());
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

describe('bad input on the etcd port', () => {
  it('garbage bytes: the connection is dropped, the server keeps serving', async () => {
    for (const junk of [Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), Buffer.alloc(4096, 0xab)]) {
      await new Promise<void>((resolve) => {
        const s = connect(edge.server.port, '127.0.0.1', () => s.write(junk));
        s.on('data', () => {});
        s.on('error', () => resolve());
        s.on('close', () => resolve());
        setTimeout(() => s.destroy(), 3000).unref();
      });
    }
    const r = await c.call('etcdserverpb.KV', 'Put', {
      key: Buffer.from('/after-garbage'),
      value: Buffer.from('ok'),
    });
    assert.ok(Number(r.header.revision) > 1);
  });

  it('wrong protobuf types: INTERNAL, counted, nothing stored', async () => {
    const before = await metric('edgekeeper_etcd_bad_input_total', { kind: 'undecodable' });
    // Field 1 (key, bytes) sent as a varint, then a truncated length-delimited field.
    const err = (await rawCall(
      '/etcdserverpb.KV/Put',
      Buffer.from([0x08, 0x96, 0x01, 0x12, 0x7f, 0x01]),
    )) as ServiceError;
    assert.equal(err.code, 13);
    const err2 = (await rawCall(
      '/etcdserverpb.KV/Range',
      Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]),
    )) as ServiceError;
    assert.equal(err2.code, 13);
    assert.equal(await metric('edgekeeper_etcd_bad_input_total', { kind: 'undecodable' }), before + 2);
    // A message of another type whose fields happen to fit (a WatchProgressRequest-like field 7
    // varint) decodes as a Range without a key: etcd's own answer to that.
    const err3 = (await rawCall('/etcdserverpb.KV/Range', Buffer.from([0x38, 0x01]))) as ServiceError;
    assert.equal(err3.code, 3);
    assert.equal(err3.details, 'etcdserver: key is not provided');
    // An unknown method.
    const err4 = (await rawCall('/etcdserverpb.KV/Nope', Buffer.alloc(0))) as ServiceError;
    assert.equal(err4.code, 12);
  });

  it('oversized messages: etcd request-size error, then gRPC limit; server unaffected', async () => {
    await assert.rejects(
      c.call('etcdserverpb.KV', 'Put', { key: Buffer.from('/big'), value: Buffer.alloc(1.6 * 1024 * 1024) }),
      (e: ServiceError) => e.code === 3 && e.details === 'etcdserver: request is too large',
    );
    await assert.rejects(
      c.call('etcdserverpb.KV', 'Put', { key: Buffer.from('/big'), value: Buffer.alloc(3 * 1024 * 1024) }),
      (e: ServiceError) => e.code === 8,
    );
    const r = await c.call('etcdserverpb.KV', 'Range', { key: Buffer.from('/big') });
    assert.equal((r.kvs as unknown[]).length, 0);
  });

  it('10,000 watchers on one stream all get created and the event', async () => {
    const w = c.duplex('etcdserverpb.Watch', 'Watch');
    const N = 10_000;
    let created = 0;
    let events = 0;
    w.on('data', (m: { created?: boolean; events?: unknown[] }) => {
      if (m.created) created++;
      events += m.events?.length ?? 0;
    });
    w.on('error', () => {});
    for (let i = 0; i < N; i++) w.write({ create_request: { key: Buffer.from('/many'), watch_id: 0 } });
    await waitFor(() => created === N, `${N} created responses`, 60_000);
    await c.call('etcdserverpb.KV', 'Put', { key: Buffer.from('/many'), value: Buffer.from('x') });
    await waitFor(() => events === N, `${N} events`, 60_000);
    w.cancel();
  });

  it('a client that never reads its watch stream is cancelled with a reason; others are unaffected', async () => {
    const slowClient = new EtcdClient(edge.endpoint);
    const slow = slowClient.duplex('etcdserverpb.Watch', 'Watch');
    const slowMsgs: { canceled?: boolean; cancel_reason?: string; events?: unknown[] }[] = [];
    slow.on('data', (m) => slowMsgs.push(m));
    slow.on('error', () => {});
    slow.write({ create_request: { key: Buffer.from('/flood/'), range_end: Buffer.from('/flood0') } });
    await waitFor(() => slowMsgs.length === 1, 'slow watcher created');
    slow.pause(); // never read again
    const fast = c.duplex('etcdserverpb.Watch', 'Watch');
    let fastEvents = 0;
    fast.on('data', (m: { events?: unknown[] }) => {
      fastEvents += m.events?.length ?? 0;
    });
    fast.on('error', () => {});
    fast.write({ create_request: { key: Buffer.from('/flood/'), range_end: Buffer.from('/flood0') } });
    const cancelsBefore = await metric('edgekeeper_etcd_watch_cancels_total', { reason: 'slow_consumer' });
    const value = Buffer.alloc(16 * 1024, 0x61);
    const PUTS = 600;
    for (let i = 0; i < PUTS; i += 20) {
      await Promise.all(
        Array.from({ length: 20 }, (_, j) =>
          c.call('etcdserverpb.KV', 'Put', { key: Buffer.from(`/flood/${(i + j) % 50}`), value }),
        ),
      );
    }
    await waitFor(() => fastEvents === PUTS, 'the reading watcher got every event', 30_000);
    await waitFor(
      async () =>
        (await metric('edgekeeper_etcd_watch_cancels_total', { reason: 'slow_consumer' })) > cancelsBefore,
      'slow watcher cancelled',
      30_000,
    );
    slow.resume();
    await waitFor(() => slowMsgs.some((m) => m.canceled), 'cancel response reaches the slow client', 30_000);
    const cancel = slowMsgs.find((m) => m.canceled)!;
    assert.match(cancel.cancel_reason ?? '', /fell more than 200 events behind/);
    const delivered = slowMsgs.reduce((n, m) => n + (m.events?.length ?? 0), 0);
    assert.ok(delivered < PUTS, 'the slow watcher was cut off, not fed everything');
    slow.cancel();
    fast.cancel();
    slowClient.close();
  });
});
