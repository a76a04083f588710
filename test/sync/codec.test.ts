/**
 * The batch codec: random report bodies (as several CBOR encoders write them: small and large map
 * headers, float32 and float64, big and negative integers, unicode names, non-numeric metrics,
 * state, tags, other keys, garbage) survive encode -> decode exactly as a full CBOR decode of the
 * body reads them; hostile column data is refused with SyncBadBatchError; a typical report is
 * small on the wire.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { Decoder } from 'cbor-x';
import { SyncBadBatchError } from '../../src/errors.js';
import {
  type Batch,
  decodeBatch,
  encodeBatch,
  encodeCbor,
  type ReportRecord,
  reportRows,
} from '../../src/sync/codec.js';

const full = new Decoder({ useRecords: false, mapsAsObjects: true });

let seed = 1234;
function rnd(): number {
  seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
  return seed / 2 ** 31;
}
const pick = <T>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)]!;

/** Hand-written CBOR with small map headers (0xa0+n), as encoders other than cbor-x write. */
function cborSmall(metrics: [string, number, 'f32' | 'f64' | 'int'][]): Buffer {
  const parts: Buffer[] = [
    Buffer.from([0xa1, 0x67]),
    Buffer.from('metrics'),
    Buffer.from([0xa0 + metrics.length]),
  ];
  for (const [name, v, kind] of metrics) {
    const nb = Buffer.from(name);
    parts.push(Buffer.from([0x60 + nb.length]), nb);
    if (kind === 'int')
      parts.push(v >= 0 ? Buffer.from([0x1a, ...u32(v)]) : Buffer.from([0x3a, ...u32(-1 - v)]));
    else if (kind === 'f32') {
      const b = Buffer.alloc(5);
      b[0] = 0xfa;
      b.writeFloatBE(v, 1);
      parts.push(b);
    } else {
      const b = Buffer.alloc(9);
      b[0] = 0xfb;
      b.writeDoubleBE(v, 1);
      parts.push(b);
    }
  }
  return Buffer.concat(parts);
}
function u32(v: number): number[] {
  return [(v >>> 24) & 255, (v >>> 16) & 255, (v >>> 8) & 255, v & 255];
}

function randomBody(): Uint8Array {
  const names = ['temp', 'hum', 'µ-volts', 'x', 'a"b', 'long_metric_name_for_a_sensor', 'tab\there'];
  const k = Math.floor(rnd() * 6);
  const r = rnd();
  if (r < 0.3) {
    const ms: [string, number, 'f32' | 'f64' | 'int'][] = [];
    const used = new Set<string>();
    for (let i = 0; i < k; i++) {
      const n = pick(names);
      if (used.has(n)) continue;
      used.add(n);
      const kind = pick(['f32', 'f64', 'int'] as const);
      const v =
        kind === 'int' ? Math.floor((rnd() - 0.5) * 2 ** 31) : (rnd() - 0.5) * 10 ** Math.floor(rnd() * 8);
      ms.push([n, v, kind]);
    }
    return cborSmall(ms);
  }
  if (r < 0.35) return Buffer.from([0xff, 0x00, Math.floor(rnd() * 255)]); // not CBOR
  if (r < 0.4) return encodeCbor([1, 2, 3]); // CBOR, not a map
  const metrics: Record<string, unknown> = {};
  for (let i = 0; i < k; i++)
    metrics[pick(names)] = pick([
      Math.round(rnd() * 1000) / 100,
      -Math.floor(rnd() * 1e6),
      2 ** 40 + Math.floor(rnd() * 100),
      Number.NaN,
      -0,
      1e300,
      'on',
      true,
      null,
      2n ** 64n,
    ]);
  const body: Record<string, unknown> = { metrics };
  if (rnd() < 0.2) body.state = { relay: rnd() < 0.5 };
  if (rnd() < 0.2) body.tags = ['a', 'b'];
  if (rnd() < 0.1) body.firmware = '1.2.3';
  if (rnd() < 0.05) body.metrics = 'not a map';
  return encodeCbor(body);
}

function expected(r: ReportRecord) {
  let body: unknown;
  try {
    body = full.decode(r.body);
  } catch {
    body = undefined;
  }
  const out: Record<string, unknown> = {
    id: r.id,
    device: r.device,
    receivedAt: r.received_at,
    ts: r.ts,
    seq: r.seq,
    metrics: {},
  };
  if (body === null || typeof body !== 'object' || Array.isArray(body) || body instanceof Uint8Array) {
    out.other = { raw: Buffer.from(r.body) };
    return out;
  }
  for (const [k, v] of Object.entries(body as Record<string, unknown>)) {
    if (k === 'metrics' && v !== null && typeof v === 'object' && !Array.isArray(v)) {
      out.metrics = { ...(v as object) };
      if (Object.values(v as object).some((x) => typeof x !== 'number')) out.mixed = true;
    } else if (k === 'state') out.state = v;
    else if (k === 'tags') out.tags = v;
    else out.other = { ...(out.other as object), [k]: v };
  }
  return out;
}

function batch(reports: ReportRecord[]): Batch {
  return {
    node: 'n',
    stream: 'f00d',
    seq: 1,
    sentAt: 0,
    applied: null,
    backlog: { events: 0, reports: 0, samples: 0 },
    events: [],
    reports,
    samples: [],
  };
}

test('random report bodies round-trip exactly as a full CBOR decode reads them', () => {
  for (let round = 0; round < 20; round++) {
    const rows: ReportRecord[] = [];
    let id = Math.floor(rnd() * 1000) + 1;
    for (let i = 0; i < 200; i++) {
      id += 1 + Math.floor(rnd() * 3);
      rows.push({
        id,
        device: pick(['d1', 'd2', 'ünï', '']),
        received_at: 1_700_000_000_000 + i * 7,
        ts: rnd() < 0.3 ? null : 1_700_000_000_000 + Math.floor((rnd() - 0.5) * 1e6),
        seq: rnd() < 0.2 ? null : Math.floor(rnd() * 1e6),
        body: randomBody(),
      });
    }
    const got = reportRows(decodeBatch(encodeBatch(batch(rows))).reports);
    assert.equal(got.length, rows.length);
    for (let i = 0; i < rows.length; i++) {
      const want = expected(rows[i]!);
      const g = { ...got[i]! } as Record<string, unknown>;
      assert.deepEqual(g, want, `round ${round} row ${i}`);
    }
  }
});

test('a typical report with 8 numeric metrics costs under 30 bytes on the wire', () => {
  const rows: ReportRecord[] = [];
  let t = 1_700_000_000_000;
  let temp = 21.5;
  for (let i = 0; i < 5000; i++) {
    t += 1000;
    temp = Math.round((temp + (rnd() - 0.5) * 0.2) * 100) / 100;
    const metrics = {
      temp,
      hum: Math.round(40 + rnd() * 10),
      press: 1013.2,
      volt: 3.3,
      count: i,
      rpm: 1200 + Math.floor(rnd() * 10),
      load: Math.floor(rnd() * 100),
      mode: 1,
    };
    rows.push({
      id: i + 1,
      device: `d${i % 20}`,
      received_at: t,
      ts: t - 15,
      seq: Math.floor(i / 20),
      body: encodeCbor({ metrics }),
    });
  }
  const wire = gzipSync(encodeBatch(batch(rows))).length / rows.length;
  assert.ok(wire < 30, `${wire} bytes per report`);
});

test('hostile column data is refused with SyncBadBatchError', () => {
  const good = {
    v: 1,
    n: 'n',
    st: 'ab',
    q: 1,
    t: 0,
    a: null,
    bl: [0, 0, 0],
  };
  const cases: unknown[] = [
    { ...good, v: 2 },
    { ...good, st: 'XYZ' },
    { ...good, q: 0 },
    { ...good, bl: [0, 0] },
    { ...good, r: { n: 2, i: Buffer.from([2, 2]), ra: Buffer.from([2]) } },
    { ...good, r: { n: 1e12 } },
    { ...good, r: { n: 1, i: Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]) } },
    { ...good, e: [[1, 2, 'k']] },
    {
      ...good,
      e: [
        [2, 1, 'k', null, null],
        [1, 1, 'k', null, null],
      ],
    },
    // found by the fuzzer (test/sync/fuzz.ts): times and counts go into bigint columns, and a
    // sent-at of -2^63 ms or a fractional event time made the receiver answer 500
    { ...good, t: -(2 ** 63) },
    { ...good, t: 1.5 },
    { ...good, bl: [0.5, 0, 0] },
    { ...good, e: [[1, 1.5, 'k', null, null]] },
    { ...good, r: { n: 1, i: [1], ra: [2 ** 64], ts: [null], dv: ['d'], di: Buffer.from([0]) } },
    {
      ...good,
      s: {
        n: 1,
        i: Buffer.from([2]),
        t: Buffer.from([2]),
        p: ['x'],
        pi: Buffer.from([5]),
        m: ['y'],
        mi: Buffer.from([0]),
        d: [Buffer.from([1])],
      },
    },
  ];
  for (const c of cases)
    assert.throws(
      () => decodeBatch(encodeCbor(c)),
      SyncBadBatchError,
      JSON.stringify(c, (_k, v) => (typeof v === 'bigint' ? String(v) : v)),
    );
  // A valid reports column whose dictionary index points past the dictionary.
  const b = encodeBatch(
    batch([
      { id: 1, device: 'd', received_at: 1, ts: null, seq: null, body: encodeCbor({ metrics: { a: 1 } }) },
    ]),
  );
  const m = full.decode(b) as { r: { di: Buffer } };
  m.r.di = Buffer.from([7]);
  assert.throws(() => decodeBatch(encodeCbor(m)), SyncBadBatchError);
});

test('the health summary round-trips, and a malformed one is refused', () => {
  const base: Batch = {
    node: 'n',
    stream: 'ab',
    seq: 1,
    sentAt: 5,
    applied: null,
    backlog: { events: 0, reports: 0, samples: 0 },
    events: [],
    reports: [],
    samples: [],
  };
  const health = {
    ready: false,
    failing: {},
    alerts: [{ severity: 'critical' as const, text: '<script>alert(1)</script>' }],
    uplink: { state: 'ok' },
    disk: { full: true, dbBytes: 10, quotaBytes: 5 },
    oldestUnsentSeconds: 12,
    nextContactSeconds: 61,
  };
  const failing = { store: 'store commit p99 90 ms > objective 50 ms' };
  assert.deepEqual(decodeBatch(encodeBatch({ ...base, health: { ...health, failing } })).health, {
    ...health,
    failing,
  });
  // A check named __proto__ (built as a decoder would) does not reach the prototype.
  const hostile = Object.fromEntries([['__proto__', 'x']]);
  const got = decodeBatch(encodeBatch({ ...base, health: { ...health, failing: hostile } })).health!;
  assert.equal(Object.getPrototypeOf(got.failing), Object.prototype);
  assert.equal(decodeBatch(encodeBatch(base)).health, undefined, 'older nodes send none');
  const raw = (h: unknown) => encodeCbor({ v: 1, n: 'n', st: 'ab', q: 1, t: 5, a: null, bl: [0, 0, 0], h });
  for (const [what, h] of [
    ['not a map', 'ok'],
    ['ready missing', { d: false, u: 'ok', nx: 60 }],
    ['bad severity', { r: true, d: false, u: 'ok', nx: 60, al: [['panic', 'x']] }],
    ['long text', { r: true, d: false, u: 'ok', nx: 60, al: [['info', 'x'.repeat(501)]] }],
    ['too many alerts', { r: true, d: false, u: 'ok', nx: 60, al: Array(33).fill(['info', 'x']) }],
    ['negative size', { r: true, d: true, u: 'ok', nx: 60, db: -1 }],
    ['no promise', { r: true, d: false, u: 'ok' }],
    ['failing not a map', { r: false, d: false, u: 'ok', nx: 60, f: ['store'] }],
  ] as const)
    assert.throws(() => decodeBatch(raw(h)), SyncBadBatchError, what);
  // Keys a newer node adds are ignored.
  assert.equal(decodeBatch(raw({ r: true, d: false, u: 'ok', nx: 60, zz: [1] })).health!.ready, true);
});
