/**
 * Bad input on every path of the embedded broker: malformed CBOR and JSON, wrong types, unknown
 * fields, too many metrics, huge payloads, hostile device ids, wrong passwords, anonymous
 * clients, another device's topics, a device flooding at 100x its rate. Each is refused,
 * counted per reason and kept in the dead-letter table; other devices are unaffected.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  callRoute,
  device,
  endClient,
  type Harness,
  harness,
  metricValue,
  publish,
  refused,
  reportCount,
} from './helpers.js';

describe('ingest, bad input', () => {
  let h: Harness;
  const secrets: Record<string, string> = {};
  // the ingest thread's events reach the counters on the main thread a turn later: flush first
  const rejects = async (reason: string) => {
    await h.part.flush();
    return metricValue(h.registry, 'edgekeeper_ingest_rejects_total', { reason });
  };

  before(async () => {
    h = await harness({ maxMetrics: 8, ratePerSec: 10, rateBurst: 30, rejectsMax: 20 });
    for (const id of ['good', 'bad', 'flood', 'other']) {
      secrets[id] = ((await callRoute(h, 'POST', '/v1/devices', { id })).body as { secret: string }).secret;
    }
  });
  after(() => h.close());

  it('refuses malformed, mistyped and oversized reports, acknowledges them and keeps the first bytes', async () => {
    const c = await device(h.url, 'bad', secrets.bad);
    const t = 'edgekeeper/v1/devices/bad/report';
    const cases: [string | Buffer, string][] = [
      ['{"metrics":', 'malformed'],
      [Buffer.from([0xa1, 0x67, 0x6d, 0x65]), 'malformed'], // CBOR map with a truncated key
      [Buffer.from([0xff, 0x00, 0x01]), 'malformed'],
      ['hello', 'malformed'],
      ['[1,2,3]', 'malformed'],
      ['{"metrics":{"t":"hot"}}', 'schema'],
      ['{"metrics":{"t":1},"ts":"yesterday"}', 'schema'],
      ['{"metrics":{"t":1},"seq":-1}', 'schema'],
      ['{"metrics":{"t":1},"extra":true}', 'schema'],
      ['{"metrics":{"bad name":1}}', 'schema'],
      ['{"metrics":{"t":1e999}}', 'schema'],
      ['{"ts":1}', 'schema'],
      [
        JSON.stringify({ metrics: Object.fromEntries(Array.from({ length: 9 }, (_, i) => [`m${i}`, i])) }),
        'too_many_metrics',
      ],
      [Buffer.alloc(100 * 1024, 0x7b), 'too_large'],
    ];
    const before = new Map<string, number>();
    for (const r of ['malformed', 'schema', 'too_many_metrics', 'too_large']) before.set(r, await rejects(r));
    for (const [p] of cases) await publish(c, t, p, 1); // every one is PUBACKed: a device must not resend poison forever
    assert.equal(reportCount(h.store, 'bad'), 0);
    const want = new Map<string, number>();
    for (const [, r] of cases) want.set(r, (want.get(r) ?? 0) + 1);
    for (const [r, n] of want) assert.equal((await rejects(r)) - before.get(r)!, n, `rejects{reason=${r}}`);
    // the connection survived all of it
    await publish(c, t, '{"metrics":{"ok":1}}', 1);
    assert.equal(reportCount(h.store, 'bad'), 1);
    await endClient(c);
    await h.part.flush();
    const dl = (await callRoute(h, 'GET', '/v1/ingest/rejects?limit=100')).body as {
      reason: string;
      device: string;
      head: string;
      size: number;
    }[];
    assert.ok(
      dl.some((r) => r.reason === 'too_large' && r.size === 100 * 1024 && r.head.length === 512),
      'first 256 bytes of the huge payload kept',
    );
    assert.ok(dl.every((r) => r.device === 'bad'));
  });

  it('refuses hostile device ids, wrong passwords, unknown devices and anonymous clients', async () => {
    for (const id of ['a/b', 'a+b', '#', 'a\u0001b', 'x'.repeat(65)]) {
      const e = await refused(h.url, { clientId: id, username: id, password: 'x' });
      assert.ok(
        e.code === 4 || e.code === 5 || e.code === 2,
        `id ${JSON.stringify(id)} refused with ${e.code}`,
      );
    }
    assert.ok((await rejects('bad_device_id')) >= 5);
    assert.equal((await refused(h.url, { clientId: 'good', username: 'good', password: 'wrong' })).code, 4);
    assert.equal((await refused(h.url, { clientId: 'nobody', username: 'nobody', password: 'x' })).code, 4);
    assert.equal((await refused(h.url, { clientId: 'anon' })).code, 5);
    // a device may not use another device's client id (session takeover)
    assert.equal(
      (await refused(h.url, { clientId: 'other', username: 'good', password: secrets.good })).code,
      2,
    );
    assert.ok((await rejects('auth')) >= 3);
    assert.ok((await rejects('unknown_device')) >= 1);
  });

  it("refuses another device's topics: publishing closes the connection, subscribing gets 0x80", async () => {
    const other = await device(h.url, 'other', secrets.other);
    const sub = (topic: string) =>
      new Promise<string>((r) =>
        other.subscribe(topic, { qos: 1 }, (e, g) => r(e ? `error ${e.message}` : `granted ${g?.[0]?.qos}`)),
      );
    // MQTT.js reports SUBACK 0x80 as an error
    assert.match(await sub('edgekeeper/v1/devices/good/command'), /^error/);
    assert.match(await sub('#'), /^error/);
    assert.equal(await sub('edgekeeper/v1/devices/other/command'), 'granted 1');
    const closed = new Promise<void>((r) => other.once('close', () => r()));
    other.publish('edgekeeper/v1/devices/good/report', '{"metrics":{"x":1}}', { qos: 1 });
    await closed;
    await endClient(other, true);
    assert.equal(reportCount(h.store, 'good'), 0);
    assert.ok((await rejects('acl')) >= 3);
  });

  it('rejects a device flooding at 100x its rate while another device is unaffected', async () => {
    const flood = await device(h.url, 'flood', secrets.flood);
    const good = await device(h.url, 'good', secrets.good);
    const before = await rejects('rate');
    const floods: Promise<void>[] = [];
    // 10/s allowed (burst 30); 1,000 as fast as possible is 100x over for a second or more
    for (let i = 0; i < 1000; i++)
      floods.push(
        publish(
          flood,
          'edgekeeper/v1/devices/flood/report',
          JSON.stringify({ seq: i, metrics: { i } }),
          i % 2 ? 1 : 0,
        ),
      );
    const goods: Promise<void>[] = [];
    for (let i = 0; i < 5; i++)
      goods.push(
        publish(good, 'edgekeeper/v1/devices/good/report', JSON.stringify({ seq: i, metrics: { i } }), 1),
      );
    await Promise.all([...floods, ...goods]);
    assert.equal(reportCount(h.store, 'good'), 5);
    // QoS 0 publishes resolve when sent; wait until the broker has handled all 1,000
    let stored = 0;
    const end = Date.now() + 10_000;
    for (;;) {
      stored = reportCount(h.store, 'flood');
      if (stored + (await rejects('rate')) - before >= 1000 || Date.now() > end) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(stored >= 30 && stored < 150, `flood stored ${stored}`);
    assert.equal((await rejects('rate')) - before, 1000 - stored);
    await endClient(flood);
    await endClient(good);
    // the dead-letter table stays bounded
    await h.part.flush();
    const n = h.store.query<{ n: number }>('SELECT count(*) AS n FROM ingest_rejects').get()!.n;
    assert.ok(n <= 20, `dead letters ${n}`);
  });
});
