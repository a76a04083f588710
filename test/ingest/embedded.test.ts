/**
 * Embedded broker with MQTT.js devices: reports over 3.1.1 (QoS 0 and 1, JSON and CBOR) are
 * stored once and acknowledged after the commit, devices appear under /edgekeeper/devices/,
 * node events are written, downlink commands are delivered and their state written back.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { encode } from 'cbor-x';
import { Registry } from 'prom-client';
import { createIngestPart, decodeBody, ingestDefaults } from '../../src/ingest/index.js';
import {
  callRoute,
  device,
  endClient,
  type Harness,
  harness,
  metricValue,
  publish,
  reportCount,
  waitFor,
  watchPrefix,
} from './helpers.js';

describe('ingest, embedded broker', () => {
  let h: Harness;
  const secrets: Record<string, string> = {};

  before(async () => {
    h = await harness({ mirrorInterval: 0 });
    for (const id of ['d1', 'd2', 'd3']) {
      const r = await callRoute(h, 'POST', '/v1/devices', { id });
      assert.equal(r.status, 201);
      secrets[id] = (r.body as { secret: string }).secret;
    }
  });
  after(() => h.close());

  it('stores QoS 1 JSON and CBOR reports and QoS 0 reports, with ts and seq', async () => {
    const c = await device(h.url, 'd1', secrets.d1);
    await publish(
      c,
      'edgekeeper/v1/devices/d1/report',
      JSON.stringify({ ts: 1700000000123, seq: 1, metrics: { temp: 21.5 } }),
      1,
    );
    // the PUBACK came back: the row must be committed already
    assert.equal(reportCount(h.store, 'd1'), 1);
    await publish(
      c,
      'edgekeeper/v1/devices/d1/report',
      Buffer.from(
        encode({ seq: 2, metrics: { temp: 22, hum: 40 }, state: { door: 'open' }, tags: { room: 'a' } }),
      ),
      1,
    );
    assert.equal(reportCount(h.store, 'd1'), 2);
    await publish(c, 'edgekeeper/v1/devices/d1/report', '  {"metrics":{"temp":23}}', 0);
    await waitFor(() => reportCount(h.store, 'd1') === 3, 'QoS 0 report');
    const rows = h.store
      .query<{ ts: number | null; seq: number | null; body: Buffer }>(
        "SELECT ts, seq, body FROM reports WHERE device = 'd1' ORDER BY id",
      )
      .all();
    assert.deepEqual(
      rows.map((r) => [r.ts, r.seq]),
      [
        [1700000000123, 1],
        [null, 2],
        [null, null],
      ],
    );
    assert.deepEqual(decodeBody(rows[1]!.body), {
      metrics: { temp: 22, hum: 40 },
      state: { door: 'open' },
      tags: { room: 'a' },
    });
    assert.deepEqual(decodeBody(rows[0]!.body), { metrics: { temp: 21.5 } });
    assert.equal(await metricValue(h.registry, 'edgekeeper_ingest_reports_total'), 3);
    await endClient(c);
  });

  it('stores a redelivered report (same seq) once', async () => {
    const c = await device(h.url, 'd2', secrets.d2);
    const p = JSON.stringify({ seq: 7, ts: 5, metrics: { a: 1 } });
    await publish(c, 'edgekeeper/v1/devices/d2/report', p, 1);
    await publish(c, 'edgekeeper/v1/devices/d2/report', p, 1, { dup: true });
    await publish(c, 'edgekeeper/v1/devices/d2/report', p, 1);
    assert.equal(reportCount(h.store, 'd2'), 1);
    assert.equal(await metricValue(h.registry, 'edgekeeper_ingest_duplicates_total'), 2);
    // same seq with another device clock is a new report (a device that restarted its counter)
    await publish(
      c,
      'edgekeeper/v1/devices/d2/report',
      JSON.stringify({ seq: 7, ts: 6, metrics: { a: 1 } }),
      1,
    );
    assert.equal(reportCount(h.store, 'd2'), 2);
    await endClient(c);
  });

  it('mirrors devices to /edgekeeper/devices/<id> and writes online/offline events', async () => {
    const w = watchPrefix(h.store, '/edgekeeper/devices/');
    const c = await device(h.url, 'd3', secrets.d3);
    await publish(c, 'edgekeeper/v1/devices/d3/report', JSON.stringify({ seq: 1, metrics: { v: 42 } }), 1);
    const doc = await waitFor(() => {
      const e = w.events
        .filter((x) => x.kv.key.toString() === '/edgekeeper/devices/d3' && x.type === 'PUT')
        .at(-1);
      const d = e && JSON.parse(e.kv.value.toString());
      return d?.reports === 1 ? d : undefined;
    }, 'device doc with one report');
    assert.equal(doc.online, true);
    assert.deepEqual(doc.metrics, { v: 42 });
    assert.equal(doc.lastSeq, 1);
    await endClient(c);
    await waitFor(() => {
      const e = w.events.filter((x) => x.kv.key.toString() === '/edgekeeper/devices/d3').at(-1);
      return e && JSON.parse(e.kv.value.toString()).online === false;
    }, 'device offline in watch');
    w.cancel();
    const ev = h.store
      .query<{ kind: string; data: string }>("SELECT kind, data FROM events WHERE subject = 'd3' ORDER BY id")
      .all();
    assert.deepEqual(
      ev.map((e) => e.kind),
      ['device.online', 'device.offline'],
    );
    assert.equal(JSON.parse(ev[1]!.data).reason, 'disconnect');
  });

  it('delivers a command put under /edgekeeper/commands/<id>/ and writes its state back', async () => {
    const c = await device(h.url, 'd1', secrets.d1);
    const got: string[] = [];
    c.on('message', (topic, msg) => got.push(`${topic} ${msg.toString()}`));
    // a command put while the device is not subscribed stays pending
    await h.store.put({
      key: Buffer.from('/edgekeeper/commands/d1/reboot'),
      value: Buffer.from('{"op":"reboot"}'),
    });
    const stateKey = Buffer.from('/edgekeeper/commands/d1/reboot/state');
    const state = () => {
      const kv = h.store.range({ key: stateKey }).kvs[0];
      return kv ? (JSON.parse(kv.value.toString()) as { state: string }) : undefined;
    };
    await waitFor(() => state()?.state === 'pending', 'pending state');
    await new Promise<void>((r, j) =>
      c.subscribe('edgekeeper/v1/devices/d1/command', { qos: 1 }, (e) => (e ? j(e) : r())),
    );
    await waitFor(() => state()?.state === 'delivered', 'delivered state');
    assert.deepEqual(got, ['edgekeeper/v1/devices/d1/command {"op":"reboot"}']);
    // a command for a connected, subscribed device goes out at once
    await h.store.put({ key: Buffer.from('/edgekeeper/commands/d1/led'), value: Buffer.from('on') });
    await waitFor(() => got.length === 2, 'second command');
    assert.equal(got[1], 'edgekeeper/v1/devices/d1/command on');
    await endClient(c);
  });

  it('lists, rotates and removes devices through the HTTP routes', async () => {
    const list = (await callRoute(h, 'GET', '/v1/devices')).body as { id: string; reports: number }[];
    assert.deepEqual(
      list.map((d) => d.id),
      ['d1', 'd2', 'd3'],
    );
    assert.equal(list.find((d) => d.id === 'd1')!.reports, 3);
    const rot = await callRoute(h, 'POST', '/v1/devices/rotate', { id: 'd2' });
    assert.equal(rot.status, 200);
    const fresh = (rot.body as { secret: string }).secret;
    assert.notEqual(fresh, secrets.d2);
    const c = await device(h.url, 'd2', fresh);
    await endClient(c);
    await assert.rejects(device(h.url, 'd2', secrets.d2));
    const rm = await callRoute(h, 'POST', '/v1/devices/remove', { id: 'd2' });
    assert.equal(rm.status, 200);
    await assert.rejects(device(h.url, 'd2', fresh));
    assert.equal(
      (await callRoute(h, 'POST', '/v1/devices', { id: 'bad/id' }).catch((e) => ({ status: e.status })))
        .status,
      400,
    );
  });

  it('fails to start with the listener error when the port is taken, and still stops cleanly', async () => {
    const ctx = { ...h.ctx, registry: new Registry(), http: { add: () => undefined } };
    const second = createIngestPart(ctx, ingestDefaults({ listen: `127.0.0.1:${h.port}` }));
    await assert.rejects(second.start(), /EADDRINUSE/);
    // the ingest thread is ended, not left running
    await second.stop();
    // the first part is unaffected
    const c = await device(h.url, 'd1', secrets.d1);
    await publish(c, 'edgekeeper/v1/devices/d1/report', '{"metrics":{"after":1}}', 1);
    await endClient(c);
  });
});
