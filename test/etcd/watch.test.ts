/**
 * The Watch stream's protocol details as etcd sends them: client-chosen and duplicate watch IDs,
 * cancel (and cancel of an unknown ID), empty ranges, compacted start revisions, progress
 * requests (watch_id -1), progress_notify, filters and fragmented responses.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { ClientDuplexStream } from '@grpc/grpc-js';
import { EtcdClient } from '../../src/etcd/cli.js';
import { type Edge, startEdge, waitFor } from './helpers.js';

// biome-ignore lint/suspicious/noExplicitAny: decoded responses
type M = any;

let edge: Edge;
let c: EtcdClient;
const B = (s: string) => Buffer.from(s);

before(async () => {
  edge = await startEdge({ server: { progressNotifyMs: 200, maxRequestBytes: 8 * 1024 } });
  c = new EtcdClient(edge.endpoint);
});
after(async () => {
  c?.close();
  await edge?.close();
});

function stream(): { w: ClientDuplexStream<object, M>; msgs: M[] } {
  const w = c.duplex('etcdserverpb.Watch', 'Watch');
  const msgs: M[] = [];
  w.on('data', (m: M) => msgs.push(m));
  w.on('error', () => {});
  return { w, msgs };
}

const put = (k: string, v: string) => c.call('etcdserverpb.KV', 'Put', { key: B(k), value: B(v) });

describe('watch protocol', () => {
  it('watch IDs: auto from 0, client-chosen, duplicates refused, cancel answered once', async () => {
    const { w, msgs } = stream();
    w.write({ create_request: { key: B('/id/a') } });
    w.write({ create_request: { key: B('/id/b'), watch_id: 7 } });
    w.write({ create_request: { key: B('/id/c'), watch_id: 7 } });
    w.write({ create_request: { key: B('/id/d'), range_end: B('/id/a') } });
    await waitFor(() => msgs.length === 4, 'four create responses');
    assert.equal(Number(msgs[0].watch_id), 0);
    assert.equal(msgs[0].created, true);
    assert.equal(Number(msgs[1].watch_id), 7);
    assert.equal(msgs[2].canceled, true);
    assert.equal(Number(msgs[2].watch_id), -1);
    assert.equal(msgs[2].cancel_reason, 'mvcc: duplicate watch ID provided on the WatchStream');
    assert.equal(msgs[3].cancel_reason, 'mvcc: watcher range is empty');
    w.write({ cancel_request: { watch_id: 7 } });
    w.write({ cancel_request: { watch_id: 99 } });
    await waitFor(() => msgs.length === 5, 'cancel response');
    assert.equal(msgs[4].canceled, true);
    assert.equal(Number(msgs[4].watch_id), 7);
    await put('/id/b', 'x'); // cancelled watcher: nothing
    await put('/id/a', 'y');
    await waitFor(() => msgs.length === 6, 'event for watcher 0');
    assert.equal(Number(msgs[5].watch_id), 0);
    assert.equal(msgs[5].events.length, 1);
    assert.equal(msgs.length, 6, 'no response for the unknown cancel or the cancelled watcher');
    w.cancel();
  });

  it('compacted start revision: created, then canceled with compact_revision', async () => {
    await put('/cmp/k', '1');
    const r = await put('/cmp/k', '2');
    const rev = Number(r.header.revision);
    await c.call('etcdserverpb.KV', 'Compact', { revision: rev });
    const { w, msgs } = stream();
    w.write({ create_request: { key: B('/cmp/k'), start_revision: rev - 1 } });
    await waitFor(() => msgs.length === 2, 'created and compacted');
    assert.equal(msgs[0].created, true);
    assert.equal(msgs[1].canceled, true);
    assert.equal(Number(msgs[1].compact_revision), rev);
    w.cancel();
  });

  it('progress request answers with watch_id -1 and the revision; progress_notify when idle', async () => {
    const { w, msgs } = stream();
    w.write({ create_request: { key: B('/prog/'), range_end: B('/prog0'), progress_notify: true } });
    await waitFor(() => msgs.length === 1, 'created');
    const r = await put('/other', 'x');
    w.write({ progress_request: {} });
    await waitFor(() => msgs.some((m) => Number(m.watch_id) === -1), 'progress response');
    const p = msgs.find((m) => Number(m.watch_id) === -1);
    assert.ok(Number(p.header.revision) >= Number(r.header.revision));
    await waitFor(
      () => msgs.some((m) => Number(m.watch_id) === 0 && !m.created && (m.events ?? []).length === 0),
      'progress_notify',
    );
    w.cancel();
  });

  it('filters and prev_kv', async () => {
    const { w, msgs } = stream();
    w.write({ create_request: { key: B('/f/k'), filters: [0], prev_kv: true } }); // NOPUT
    await waitFor(() => msgs.length === 1, 'created');
    await put('/f/k', 'v1');
    await c.call('etcdserverpb.KV', 'DeleteRange', { key: B('/f/k') });
    await waitFor(() => msgs.length === 2, 'delete event');
    assert.equal(msgs[1].events.length, 1);
    assert.equal(msgs[1].events[0].type, 1);
    assert.equal(msgs[1].events[0].prev_kv.value.toString(), 'v1');
    w.cancel();
  });

  it('fragment: a revision larger than max-request-bytes arrives in pieces', async () => {
    const { w, msgs } = stream();
    w.write({ create_request: { key: B('/frag/'), range_end: B('/frag0'), fragment: true } });
    const { w: w2, msgs: whole } = stream();
    w2.write({ create_request: { key: B('/frag/'), range_end: B('/frag0') } });
    await waitFor(() => msgs.length === 1 && whole.length === 1, 'created');
    const value = Buffer.alloc(3000, 0x62);
    await c.call('etcdserverpb.KV', 'Txn', {
      success: Array.from({ length: 8 }, (_, i) => ({ request_put: { key: B(`/frag/${i}`), value } })),
    });
    await waitFor(
      () => msgs.slice(1).reduce((n, m) => n + (m.events?.length ?? 0), 0) === 8,
      'all fragments',
    );
    const pieces = msgs.slice(1);
    assert.ok(pieces.length > 1, 'not fragmented');
    for (const p of pieces.slice(0, -1)) assert.equal(p.fragment, true);
    assert.equal(pieces.at(-1).fragment, false);
    await waitFor(() => whole.length === 2, 'unfragmented watcher');
    assert.equal(whole[1].events.length, 8);
    w.cancel();
    w2.cancel();
  });
});
