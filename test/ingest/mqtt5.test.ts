/**
 * MQTT 5 devices on the embedded broker (bridged to aedes's 3.1.1, see src/ingest/v5bridge.ts):
 * QoS 1 and 0 reports in JSON and CBOR are stored and PUBACKed after the commit; wrong
 * passwords get reason code 0x86; refused subscriptions 0x87; commands arrive; a DISCONNECT
 * with reason 0x04 publishes the will; 3.1.1 devices keep working next to them.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { encode } from 'cbor-x';
import {
  callRoute,
  device,
  endClient,
  type Harness,
  harness,
  publish,
  refused,
  reportCount,
  waitFor,
  watchPrefix,
} from './helpers.js';

describe('ingest, MQTT 5 devices on the embedded broker', () => {
  let h: Harness;
  const secrets: Record<string, string> = {};
  before(async () => {
    h = await harness({ mirrorInterval: 0 });
    for (const id of ['v5a', 'v5b', 'v4a'])
      secrets[id] = ((await callRoute(h, 'POST', '/v1/devices', { id })).body as { secret: string }).secret;
  });
  after(() => h.close());

  it('stores QoS 1 and QoS 0 reports, JSON and CBOR, acknowledged after the commit', async () => {
    const c = await device(h.url, 'v5a', secrets.v5a, { protocolVersion: 5 });
    await publish(c, 'edgekeeper/v1/devices/v5a/report', '{"seq":1,"metrics":{"t":1}}', 1, {
      properties: { contentType: 'application/json' },
    });
    assert.equal(reportCount(h.store, 'v5a'), 1);
    await publish(
      c,
      'edgekeeper/v1/devices/v5a/report',
      Buffer.from(encode({ seq: 2, metrics: { t: 2 } })),
      1,
    );
    assert.equal(reportCount(h.store, 'v5a'), 2);
    await publish(c, 'edgekeeper/v1/devices/v5a/report', '{"metrics":{"t":3}}', 0);
    await waitFor(() => reportCount(h.store, 'v5a') === 3, 'QoS 0 report');
    // a 3.1.1 device on the same listener
    const old = await device(h.url, 'v4a', secrets.v4a);
    await publish(old, 'edgekeeper/v1/devices/v4a/report', '{"metrics":{"t":4}}', 1);
    assert.equal(reportCount(h.store, 'v4a'), 1);
    await endClient(old);
    await endClient(c);
  });

  it('answers a wrong password with 0x86 and a foreign subscription with 0x87', async () => {
    const e = await refused(h.url, {
      clientId: 'v5a',
      username: 'v5a',
      password: 'nope',
      protocolVersion: 5,
    });
    assert.equal(e.code, 0x86);
    const c = await device(h.url, 'v5a', secrets.v5a, { protocolVersion: 5 });
    const sub = (topic: string) =>
      new Promise<string>((r) =>
        c.subscribe(topic, { qos: 1 }, (err, g) => r(err ? 'error' : `granted ${g?.[0]?.qos}`)),
      );
    assert.equal(await sub('edgekeeper/v1/devices/v4a/command'), 'error');
    assert.equal(await sub('edgekeeper/v1/devices/v5a/command'), 'granted 1');
    const got: string[] = [];
    c.on('message', (_t, m) => got.push(m.toString()));
    await h.store.put({ key: Buffer.from('/edgekeeper/commands/v5a/blink'), value: Buffer.from('3') });
    await waitFor(() => got.length === 1, 'command');
    assert.deepEqual(got, ['3']);
    const state = () => h.store.range({ key: Buffer.from('/edgekeeper/commands/v5a/blink/state') }).kvs[0];
    await waitFor(() => state() && JSON.parse(state()!.value.toString()).state === 'delivered', 'delivered');
    await endClient(c);
  });

  it('publishes the will on DISCONNECT with reason 0x04', async () => {
    const w = watchPrefix(h.store, '/edgekeeper/devices/v5b');
    const c = await device(h.url, 'v5b', secrets.v5b, {
      protocolVersion: 5,
      will: {
        topic: 'edgekeeper/v1/devices/v5b/status',
        payload: Buffer.from('offline'),
        qos: 1,
        retain: false,
      },
    });
    await publish(c, 'edgekeeper/v1/devices/v5b/report', '{"metrics":{"x":1}}', 1);
    await new Promise<void>((r) => c.end(false, { reasonCode: 0x04 }, () => r()));
    const doc = await waitFor(() => {
      const e = w.events.at(-1);
      const d = e && JSON.parse(e.kv.value.toString());
      return d?.online === false ? d : undefined;
    }, 'offline');
    assert.equal(doc.reason, 'will');
    w.cancel();
  });
});
