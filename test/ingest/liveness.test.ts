/**
 * Liveness: a device that drops its connection without DISCONNECT goes offline through its last
 * will; one that stays connected but silent goes offline when its silence timeout passes (driven
 * with ManualClock); both changes are visible to a watch on /edgekeeper/devices/. Also: while
 * `admit()` is false (disk budget full, "stop acknowledging"), QoS 1 reports get no PUBACK and
 * are not stored; once it is true again they are stored once and acknowledged.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ManualClock } from '../../src/clock.js';
import {
  callRoute,
  device,
  endClient,
  harness,
  publish,
  reportCount,
  waitFor,
  watchPrefix,
} from './helpers.js';

function lastDoc(
  events: { kv: { key: Buffer; value: Buffer } }[],
  id: string,
): { online: boolean; reason?: string } | undefined {
  const e = events.filter((x) => x.kv.key.toString() === `/edgekeeper/devices/${id}`).at(-1);
  return e ? JSON.parse(e.kv.value.toString()) : undefined;
}

describe('ingest liveness', () => {
  it('marks a device offline through its will when the connection drops', async () => {
    const h = await harness();
    try {
      const secret = ((await callRoute(h, 'POST', '/v1/devices', { id: 'w1' })).body as { secret: string })
        .secret;
      const w = watchPrefix(h.store, '/edgekeeper/devices/');
      const c = await device(h.url, 'w1', secret, {
        will: {
          topic: 'edgekeeper/v1/devices/w1/status',
          payload: Buffer.from('offline'),
          qos: 1,
          retain: false,
        },
      });
      await publish(c, 'edgekeeper/v1/devices/w1/status', 'online', 1);
      await waitFor(() => lastDoc(w.events, 'w1')?.online === true, 'online in watch');
      // no DISCONNECT: the broker sees the socket die and publishes the will
      c.stream.destroy();
      const doc = await waitFor(() => {
        const d = lastDoc(w.events, 'w1');
        return d?.online === false ? d : undefined;
      }, 'offline in watch');
      assert.equal(doc.reason, 'will');
      await endClient(c, true);
      w.cancel();
    } finally {
      await h.close();
    }
  });

  it('marks a connected but silent device offline after its silence timeout, and online again on its next report', async () => {
    const clock = new ManualClock(Date.now());
    const h = await harness({ silenceTimeout: 60_000 }, clock);
    try {
      const secret = ((await callRoute(h, 'POST', '/v1/devices', { id: 's1' })).body as { secret: string })
        .secret;
      const w = watchPrefix(h.store, '/edgekeeper/devices/');
      const c = await device(h.url, 's1', secret, { keepalive: 0 });
      await publish(c, 'edgekeeper/v1/devices/s1/report', '{"metrics":{"x":1}}', 1);
      await waitFor(() => lastDoc(w.events, 's1')?.online === true, 'online');
      clock.advance(30_000);
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(lastDoc(w.events, 's1')?.online, true, 'still online inside the timeout');
      clock.advance(40_000);
      const doc = await waitFor(() => {
        const d = lastDoc(w.events, 's1');
        return d?.online === false ? d : undefined;
      }, 'offline after silence');
      assert.equal(doc.reason, 'silence');
      await publish(c, 'edgekeeper/v1/devices/s1/report', '{"metrics":{"x":2}}', 1);
      await waitFor(() => lastDoc(w.events, 's1')?.online === true, 'online again');
      const kinds = h.store
        .query<{ kind: string }>("SELECT kind FROM events WHERE subject = 's1' ORDER BY id")
        .all()
        .map((r) => r.kind);
      assert.deepEqual(kinds, ['device.online', 'device.offline', 'device.online']);
      await endClient(c);
      w.cancel();
    } finally {
      await h.close();
    }
  });

  it('holds QoS 1 reports unacknowledged while admit() is false', async () => {
    let admit = false;
    const h = await harness({ admit: () => admit });
    try {
      const secret = ((await callRoute(h, 'POST', '/v1/devices', { id: 'a1' })).body as { secret: string })
        .secret;
      const c = await device(h.url, 'a1', secret);
      let acked = 0;
      const p = publish(c, 'edgekeeper/v1/devices/a1/report', '{"seq":1,"metrics":{"x":1}}', 1).then(
        () => acked++,
      );
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(acked, 0, 'no PUBACK while admission is closed');
      assert.equal(reportCount(h.store), 0);
      admit = true;
      await p;
      assert.equal(acked, 1);
      assert.equal(reportCount(h.store), 1);
      await endClient(c);
    } finally {
      await h.close();
    }
  });
});
