/**
 * Fuzz targets of the ingest part (run by fuzz.test.ts and the fuzz bench, see test/fuzz.ts):
 * - report and status payloads: bytes, JSON and CBOR reports with hostile fields, deep nesting
 *   and mutated valid reports into the decoders; each is a report or a refusal with a reason;
 * - the embedded broker, raw bytes: any bytes on a socket, before and after a valid CONNECT;
 * - the embedded broker, packets: a logged-in device (MQTT 3.1.1 or 5) sends structurally valid
 *   packets with hostile fields (any topic, payload, QoS, packet id, filters, properties).
 * The broker targets hold when the ingest thread never restarts, nothing stays pending, and a
 * well-behaved device still gets its report stored after all of it.
 */
import assert from 'node:assert/strict';
import { encode } from 'cbor-x';
import fc from 'fast-check';
import mqttPacket from 'mqtt-packet';
import { decodeBody, decodeReport, parseStatus } from '../../src/ingest/payload.js';
import type { FuzzTarget } from '../fuzz.js';
import {
  callRoute,
  device,
  endClient,
  type Harness,
  harness,
  metricValue,
  publish,
  reportCount,
} from './helpers.js';
import { login, open, type Raw } from './raw.js';

const REASONS = new Set(['too_large', 'malformed', 'schema', 'too_many_metrics']);

const hostileKey = fc.oneof(
  fc.constantFrom('__proto__', 'constructor', 'prototype', 'toString', 'metrics', 'ts', 'seq', 'a', 'b.c'),
  fc.string({ maxLength: 140 }),
);
const hostileNumber = fc.oneof(
  fc.double(),
  fc.integer(),
  fc.constantFrom(Number.MAX_SAFE_INTEGER + 2, -0, 2 ** 64, Number.MIN_VALUE),
);
const hostileValue = fc.oneof(
  hostileNumber,
  fc.string({ maxLength: 300 }),
  fc.boolean(),
  fc.constant(null),
  fc.uint8Array({ maxLength: 16 }),
  fc.array(fc.integer(), { maxLength: 4 }),
);
const report = fc.record(
  {
    ts: hostileValue,
    seq: hostileValue,
    metrics: fc.oneof(fc.dictionary(hostileKey, hostileValue, { maxKeys: 300 }), hostileValue),
    state: fc.oneof(fc.dictionary(hostileKey, fc.jsonValue({ maxDepth: 3 }), { maxKeys: 10 }), hostileValue),
    tags: fc.oneof(fc.dictionary(hostileKey, hostileValue, { maxKeys: 40 }), hostileValue),
    extra: hostileValue,
  },
  { requiredKeys: [] },
);
const validReport = fc.record(
  {
    ts: fc.nat(),
    seq: fc.nat(),
    metrics: fc.dictionary(
      fc.stringMatching(/^[a-z_][a-z0-9_]{0,10}$/),
      fc.double({ noNaN: true, noDefaultInfinity: true }),
      {
        maxKeys: 20,
      },
    ),
  },
  { requiredKeys: ['metrics'] },
);

function json(v: unknown): Buffer {
  return Buffer.from(JSON.stringify(v, (_k, x) => (x instanceof Uint8Array ? [...x] : x)));
}

/** A report whose state nests `depth` maps deep: JSON text, or CBOR made by hand (a map of one entry per level). */
function nested(depth: number, cbor: boolean): Buffer {
  if (!cbor) return Buffer.from(`{"metrics":{"a":1},"state":${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}}`);
  const head = Buffer.from(encode({ metrics: { a: 1 } })).subarray(1);
  // a map of two entries (0xa2), the metrics entry, then "state": {"a": {"a": ... 1}}
  const level = Buffer.from([0xa1, 0x61, 0x61]);
  return Buffer.concat([
    Buffer.from([0xa2]),
    head,
    Buffer.from([0x65, ...Buffer.from('state')]),
    Buffer.concat(Array(depth).fill(level)),
    Buffer.from([0x01]),
  ]);
}

/** Bytes of `base` with some of them replaced, cut or doubled. */
const mutated = (base: fc.Arbitrary<Buffer>) =>
  fc
    .tuple(
      base,
      fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }),
      fc.option(fc.nat()),
    )
    .map(([b, flips, cut]) => {
      const out = Buffer.from(b);
      for (const [i, v] of flips) if (out.length) out[i % out.length] = v;
      return cut === null ? out : out.subarray(0, cut % (out.length + 1));
    });

export const payloadTarget: FuzzTarget = {
  name: 'ingest.payload',
  async setup() {
    const limits = { maxPayload: 64 * 1024, maxMetrics: 256 };
    const payload = fc.oneof(
      fc.uint8Array({ maxLength: 1024 }).map((b) => Buffer.from(b)),
      report.map(json),
      report.map((r) => Buffer.from(encode(r))),
      fc.jsonValue().map(json),
      fc.tuple(fc.integer({ min: 1, max: 20_000 }), fc.boolean()).map(([d, c]) => nested(d, c)),
      mutated(validReport.map(json)),
      mutated(validReport.map((r) => Buffer.from(encode(r)))),
      fc.integer({ min: 64 * 1024 - 2, max: 64 * 1024 + 2 }).map((n) => Buffer.alloc(n, 0x20)),
    );
    const contentType = fc.option(
      fc.constantFrom('application/json', 'application/cbor', 'text/plain', 'APPLICATION/CBOR; x=1', ''),
      { nil: undefined },
    );
    return {
      property: fc.property(payload, contentType, (p, ct) => {
        const d = decodeReport(p, limits, ct);
        if (d.ok) {
          assert.ok(Object.keys(d.report.metrics).length <= limits.maxMetrics);
          for (const v of Object.values(d.report.metrics)) assert.ok(Number.isFinite(v));
          assert.deepEqual(decodeBody(d.body).metrics, { ...d.report.metrics });
        } else {
          assert.ok(REASONS.has(d.reason), `reason ${d.reason}`);
          assert.equal(typeof d.detail, 'string');
        }
        assert.ok([true, false, undefined].includes(parseStatus(p)));
        // no decoder may reach the shared prototype
        assert.deepEqual(Object.keys(Object.prototype), []);
      }),
      close: async () => undefined,
    };
  },
};

// --- the broker ---------------------------------------------------------------------------------

const OWN = 'fz';

async function brokerSetup(): Promise<{ h: Harness; secret: string }> {
  // short deadlines so hostile half-connections do not pile up over a run
  const h = await harness({ connectTimeout: 2000, maxPendingConnections: 64, loginBurst: 1_000_000 });
  const secret = ((await callRoute(h, 'POST', '/v1/devices', { id: OWN })).body as { secret: string }).secret;
  await callRoute(h, 'POST', '/v1/devices', { id: 'honest' });
  return { h, secret };
}

/** Whether the broker is still well: no thread restart, nothing left pending, a device still reports. */
async function brokerWell(h: Harness): Promise<void> {
  assert.equal(await metricValue(h.registry, 'edgekeeper_ingest_thread_restarts_total'), 0);
  const secret = (
    (await callRoute(h, 'POST', '/v1/devices/rotate', { id: 'honest' })).body as { secret: string }
  ).secret;
  const before = reportCount(h.store, 'honest');
  const c = await device(h.url, 'honest', secret);
  await publish(c, 'edgekeeper/v1/devices/honest/report', '{"metrics":{"ok":1}}', 1);
  assert.equal(reportCount(h.store, 'honest'), before + 1);
  await endClient(c);
  for (const end = Date.now() + 5000; ; ) {
    if ((await metricValue(h.registry, 'edgekeeper_ingest_pending_connections')) === 0) break;
    if (Date.now() > end) assert.fail('connections left pending after the run');
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Wait until `r` closed, or `ms` passed. */
function settle(r: Raw, ms: number): Promise<void> {
  return Promise.race([r.closed, new Promise<void>((res) => setTimeout(res, ms))]);
}

function connectBytes(v: 4 | 5, secret: string): Buffer {
  return mqttPacket.generate(
    {
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: v,
      clean: true,
      clientId: OWN,
      username: OWN,
      password: Buffer.from(secret),
      keepalive: 30,
    },
    { protocolVersion: v },
  );
}

export const brokerBytesTarget: FuzzTarget = {
  name: 'ingest.broker_bytes',
  async setup() {
    const { h, secret } = await brokerSetup();
    const chunks = fc.array(fc.uint8Array({ minLength: 1, maxLength: 512 }), { minLength: 1, maxLength: 6 });
    const stream = fc.oneof(
      chunks.map((c) => c.map((x) => Buffer.from(x))),
      // past the first-byte check: a CONNECT type with anything after it
      chunks.map((c) => [Buffer.from([0x10]), ...c.map((x) => Buffer.from(x))]),
      // a valid log-in, then anything
      fc
        .tuple(fc.constantFrom<4 | 5>(4, 5), chunks)
        .map(([v, c]) => [connectBytes(v, secret), ...c.map((x) => Buffer.from(x))]),
    );
    return {
      property: fc.asyncProperty(stream, async (parts) => {
        const r = await open(h.port);
        for (const p of parts) r.send(p);
        await settle(r, 20);
        r.sock.destroy();
      }),
      after: () => brokerWell(h),
      close: () => h.close(),
    };
  },
};

const topic = fc.oneof(
  fc.constantFrom(
    `edgekeeper/v1/devices/${OWN}/report`,
    `edgekeeper/v1/devices/${OWN}/status`,
    `edgekeeper/v1/devices/${OWN}/command`,
    'edgekeeper/v1/devices/honest/report',
    '#',
    '+/+',
    '$SYS/x',
    'edgekeeper/v1/devices/+/report',
    '',
  ),
  fc.string({ maxLength: 80 }),
);
const messageId = fc.integer({ min: 1, max: 65535 });
const qos = fc.constantFrom<0 | 1 | 2>(0, 1, 2);
const reportPayload = fc.oneof(
  validReport.map(json),
  report.map(json),
  fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)),
  fc.constantFrom(Buffer.from('online'), Buffer.from('offline'), Buffer.alloc(70 * 1024, 0x7b)),
);
const properties = fc.record(
  {
    topicAlias: fc.integer({ min: 1, max: 10 }),
    contentType: fc.constantFrom('application/json', 'application/cbor', 'x'),
    payloadFormatIndicator: fc.boolean(),
    messageExpiryInterval: fc.nat(),
    userProperties: fc.dictionary(fc.string({ maxLength: 8 }), fc.string({ maxLength: 8 }), { maxKeys: 3 }),
    subscriptionIdentifier: fc.integer({ min: 1, max: 1000 }),
  },
  { requiredKeys: [] },
);
const packet = fc.oneof(
  fc.record({
    cmd: fc.constant('publish'),
    topic,
    payload: reportPayload,
    qos,
    retain: fc.boolean(),
    dup: fc.boolean(),
    messageId,
    properties,
  }),
  fc.record({
    cmd: fc.constant('subscribe'),
    messageId,
    subscriptions: fc.array(fc.record({ topic, qos }), { minLength: 1, maxLength: 12 }),
    properties,
  }),
  fc.record({
    cmd: fc.constant('unsubscribe'),
    messageId,
    unsubscriptions: fc.array(topic, { minLength: 1, maxLength: 12 }),
  }),
  fc.record({ cmd: fc.constantFrom('puback', 'pubrec', 'pubrel', 'pubcomp'), messageId }),
  fc.record({ cmd: fc.constant('pingreq') }),
  fc.record({ cmd: fc.constant('disconnect'), reasonCode: fc.constantFrom(0, 4, 0x80) }),
  fc.record({ cmd: fc.constant('auth'), reasonCode: fc.constantFrom(0, 0x18) }),
  fc.record({
    cmd: fc.constant('connect'),
    protocolId: fc.constant('MQTT'),
    protocolVersion: fc.constantFrom(4, 5),
    clientId: fc.string({ maxLength: 30 }),
  }),
);

export const brokerPacketsTarget: FuzzTarget = {
  name: 'ingest.broker_packets',
  async setup() {
    const { h, secret } = await brokerSetup();
    return {
      property: fc.asyncProperty(
        fc.constantFrom<4 | 5>(4, 5),
        fc.array(packet, { minLength: 1, maxLength: 12 }),
        async (v, packets) => {
          const r = await login(h.port, OWN, secret, { protocolVersion: v });
          for (const p of packets) {
            let bytes: Buffer;
            try {
              bytes = mqttPacket.generate(p as unknown as mqttPacket.Packet, { protocolVersion: v });
            } catch {
              continue; // fields the encoder itself refuses cannot be sent
            }
            r.send(bytes);
          }
          // packets are handled in order: the PINGRESP (or the close) comes after all of them
          r.send(mqttPacket.generate({ cmd: 'pingreq' }));
          await Promise.race([r.next('pingresp'), settle(r, 2000)]);
          r.sock.destroy();
        },
      ),
      after: () => brokerWell(h),
      close: () => h.close(),
    };
  },
};

export const ingestTargets = [payloadTarget, brokerBytesTarget, brokerPacketsTarget];
