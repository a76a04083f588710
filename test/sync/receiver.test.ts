/**
 * The reference fleet receiver against a real PostgreSQL 15: batches stored once by idempotency
 * key, bad input refused with a 4xx JSON and nothing stored, desired state with ETags, frames,
 * the node list, and two receivers sharing one database.
 * Needs: PostgreSQL 15 binaries (/usr/lib/postgresql/15/bin), run as root or the postgres user.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { brotliCompressSync, gzipSync } from 'node:zlib';
import { type Batch, encodeBatch, encodeCbor, type ReportRecord } from '../../src/sync/codec.js';
import { type FleetServer, startFleetServer } from '../../src/sync/receiver/server.js';
import { startPostgres, type TestPostgres } from './pg.js';

function reports(from: number, n: number): ReportRecord[] {
  const out: ReportRecord[] = [];
  for (let i = 0; i < n; i++) {
    const id = from + i;
    out.push({
      id,
      device: `d${id % 3}`,
      received_at: 1_700_000_000_000 + id * 10,
      ts: id % 4 === 0 ? null : 1_700_000_000_000 + id * 10 - 5,
      seq: id,
      body: encodeCbor({
        metrics: { t: 20 + id / 10, h: id % 7, label: id % 5 === 0 ? 'x' : 1 },
        ...(id % 6 === 0 ? { state: { on: true } } : {}),
      }),
    });
  }
  return out;
}

function batch(node: string, seq: number, over: Partial<Batch> = {}): Batch {
  return {
    node,
    stream: 'a1',
    seq,
    sentAt: Date.now(),
    applied: null,
    backlog: { events: 0, reports: 0, samples: 0 },
    events: [],
    reports: [],
    samples: [],
    ...over,
  };
}

async function post(
  srv: FleetServer,
  node: string,
  body: Buffer,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Record<string, unknown> }> {
  const r = await fetch(`${srv.url}/v1/nodes/${encodeURIComponent(node)}/batches`, {
    method: 'POST',
    body,
    headers: {
      'Content-Type': 'application/cbor',
      Authorization: 'Bearer tok-a',
      'Content-Encoding': 'gzip',
      ...headers,
    },
  });
  return { status: r.status, body: (await r.json()) as Record<string, unknown> };
}

describe('fleet receiver', () => {
  let pg: TestPostgres;
  let srv: FleetServer;
  let srv2: FleetServer;

  before(async () => {
    pg = await startPostgres();
    srv = await startFleetServer({
      database: pg.url,
      port: 0,
      nodes: { a: 'tok-a', b: 'tok-b' },
      adminToken: 'admin',
      maxBatchBytes: 256 * 1024,
      maxDecodedBytes: 1024 * 1024,
    });
    srv2 = await startFleetServer({ database: pg.url, port: 0 });
  });
  after(async () => {
    await srv?.close();
    await srv2?.close();
    pg?.stop();
  });

  async function count(table: string, node = 'a'): Promise<number> {
    const r = await srv.pool.query(
      `SELECT count(*)::int AS n FROM ${table} t JOIN fleet_nodes n ON n.id = t.node_id WHERE n.name = $1`,
      [node],
    );
    return r.rows[0].n;
  }

  test('a batch is stored once; a retry with the same seq answers what was stored first', async () => {
    const b = batch('a', 1, {
      reports: reports(1, 50),
      events: [{ id: 1, ts: 1, kind: 'device.online', subject: 'd1', data: '{"x":1}' }],
      samples: [
        { id: 7, ts: 5, probe: 'fsync', metric: 'lat', data: encodeCbor({ p50: 1.5, big: 2n ** 60n }) },
      ],
      applied: 'v1',
      backlog: { events: 0, reports: 12, samples: 0 },
    });
    const first = await post(srv, 'a', gzipSync(encodeBatch(b)));
    assert.equal(first.status, 200);
    assert.deepEqual(first.body, { seq: 1, duplicate: false, upTo: { events: 1, reports: 50, samples: 7 } });
    // Same seq with different content (a node that crashed before committing its cursor).
    const again = await post(
      srv2,
      'a',
      brotliCompressSync(encodeBatch(batch('a', 1, { reports: reports(1, 80) }))),
      {
        'Content-Encoding': 'br',
      },
    );
    assert.equal(again.status, 200);
    assert.deepEqual(again.body, { seq: 1, duplicate: true, upTo: { events: 1, reports: 50, samples: 7 } });
    assert.equal(await count('fleet_reports'), 50);
    assert.equal(await count('fleet_events'), 1);
    assert.equal(await count('fleet_samples'), 1);
    const row = (
      await srv.pool.query(
        "SELECT r.* FROM fleet_reports r JOIN fleet_nodes n ON n.id = r.node_id WHERE n.name = 'a' AND r.id = 30",
      )
    ).rows[0];
    assert.equal(row.device, 'd0');
    assert.equal(Number(row.received_at_ms), 1_700_000_000_300);
    assert.equal(Number(row.ts_ms), 1_700_000_000_295);
    assert.equal(Number(row.seq), 30);
    assert.deepEqual(row.metrics, { t: 23, h: 2, label: 'x' });
    assert.deepEqual(row.state, { on: true });
    const s = (await srv.pool.query('SELECT data FROM fleet_samples')).rows[0];
    assert.deepEqual(s.data, { p50: 1.5, big: String(2n ** 60n) });
    const nodes = await fetch(`${srv.url}/v1/nodes`, { headers: { Authorization: 'Bearer admin' } });
    const list = ((await nodes.json()) as { nodes: Record<string, unknown>[] }).nodes;
    const a = list.find((n) => n.name === 'a')!;
    assert.equal(a.appliedVersion, 'v1');
    assert.deepEqual(a.backlog, { events: 0, reports: 12, samples: 0 });
    assert.equal(a.lastSeq, 1);
    assert.ok(a.lastSeen);
  });

  test('two receivers racing on the same batch store it once', async () => {
    const body = gzipSync(encodeBatch(batch('a', 2, { reports: reports(51, 2000) })));
    const results = await Promise.all([post(srv, 'a', body), post(srv2, 'a', body), post(srv, 'a', body)]);
    assert.deepEqual(
      results.map((r) => r.status),
      [200, 200, 200],
    );
    assert.equal(results.filter((r) => r.body.duplicate === false).length, 1);
    for (const r of results) assert.deepEqual(r.body.upTo, { events: null, reports: 2050, samples: null });
    assert.equal(await count('fleet_reports'), 2050);
  });

  test('bad input is refused with a clear 4xx and nothing is stored', async () => {
    const before = await count('fleet_reports');
    const batchesBefore = (await srv.pool.query('SELECT count(*)::int AS n FROM fleet_batches')).rows[0].n;
    const good = encodeBatch(batch('a', 3, { reports: reports(3000, 10) }));
    const cases: [
      string,
      () => Promise<{ status: number; body: Record<string, unknown> }>,
      number,
      string,
    ][] = [
      ['corrupt gzip', () => post(srv, 'a', Buffer.from('not gzip at all')), 400, 'EDGE_ERR_SYNC_BAD_BATCH'],
      [
        'truncated gzip',
        () => post(srv, 'a', gzipSync(good).subarray(0, 40)),
        400,
        'EDGE_ERR_SYNC_BAD_BATCH',
      ],
      [
        'wrong CBOR',
        () => post(srv, 'a', gzipSync(Buffer.from([0xff, 0x00, 0x13]))),
        400,
        'EDGE_ERR_SYNC_BAD_BATCH',
      ],
      [
        'CBOR but not a batch',
        () => post(srv, 'a', gzipSync(encodeCbor({ v: 1, hello: 'x' }))),
        400,
        'EDGE_ERR_SYNC_BAD_BATCH',
      ],
      [
        'columns that do not add up',
        // A row count larger than its id column.
        () =>
          post(
            srv,
            'a',
            gzipSync(
              encodeCbor({
                v: 1,
                n: 'a',
                q: 3,
                t: 1,
                a: null,
                bl: [0, 0, 0],
                r: { n: 11, i: Buffer.from([2]) },
              }),
            ),
          ),
        400,
        'EDGE_ERR_SYNC_BAD_BATCH',
      ],
      ['unknown node', () => post(srv, 'nobody', gzipSync(good)), 403, 'EDGE_ERR_SYNC_UNKNOWN_NODE'],
      ['hostile node name', () => post(srv, '../../etc', gzipSync(good)), 403, 'EDGE_ERR_SYNC_UNKNOWN_NODE'],
      [
        'bad token',
        () => post(srv, 'a', gzipSync(good), { Authorization: 'Bearer tok-b' }),
        401,
        'EDGE_ERR_SYNC_UNAUTHORIZED',
      ],
      [
        'no token',
        () => post(srv, 'a', gzipSync(good), { Authorization: '' }),
        401,
        'EDGE_ERR_SYNC_UNAUTHORIZED',
      ],
      [
        'batch for another node',
        () => post(srv, 'b', gzipSync(good), { Authorization: 'Bearer tok-b' }),
        400,
        'EDGE_ERR_SYNC_BAD_BATCH',
      ],
      [
        'unknown encoding',
        () => post(srv, 'a', good, { 'Content-Encoding': 'zstd' }),
        400,
        'EDGE_ERR_SYNC_BAD_BATCH',
      ],
      [
        'oversized body',
        () => post(srv, 'a', Buffer.alloc(300 * 1024, 1), { 'Content-Encoding': 'identity' }),
        413,
        'EDGE_ERR_REQUEST_TOO_LARGE',
      ],
      [
        'zip bomb',
        () => post(srv, 'a', gzipSync(Buffer.alloc(8 * 1024 * 1024))),
        413,
        'EDGE_ERR_REQUEST_TOO_LARGE',
      ],
    ];
    for (const [name, run, status, code] of cases) {
      const r = await run();
      assert.equal(r.status, status, `${name}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.code, code, name);
      assert.equal(typeof r.body.message, 'string', name);
    }
    assert.equal(await count('fleet_reports'), before);
    assert.equal(
      (await srv.pool.query('SELECT count(*)::int AS n FROM fleet_batches')).rows[0].n,
      batchesBefore,
    );
    // The receiver is undisturbed: the good batch still goes in.
    const ok = await post(srv, 'a', gzipSync(good));
    assert.equal(ok.status, 200);
    assert.equal(await count('fleet_reports'), before + 10);
  });

  test('hostile strings and odd numbers are stored faithfully', async () => {
    const body = (o: unknown) => encodeCbor(o);
    const rows: ReportRecord[] = [
      {
        id: 5001,
        device: 'tab\there\nnl\\back\0nul',
        received_at: 1,
        ts: null,
        seq: null,
        body: body({
          metrics: { 'q"uote\\\t': 1.5, nan: Number.NaN, inf: Number.POSITIVE_INFINITY, neg: -0.001 },
        }),
      },
      {
        id: 5002,
        device: 'd',
        received_at: 2,
        ts: 2 ** 60,
        seq: -5,
        body: body({ metrics: { s: 'text\0' }, state: { k: 'v\0\\' }, extra: [1, 2] }),
      },
      { id: 5003, device: 'd', received_at: 3, ts: 4, seq: 7, body: Buffer.from([0xff, 0xfe]) },
    ];
    const r = await post(srv, 'a', gzipSync(encodeBatch(batch('a', 4, { reports: rows }))));
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const got = (
      await srv.pool.query(
        "SELECT r.* FROM fleet_reports r JOIN fleet_nodes n ON n.id = r.node_id WHERE n.name = 'a' AND r.id >= 5001 ORDER BY r.id",
      )
    ).rows;
    assert.equal(got[0].device, 'tab\there\nnl\\back\uFFFDnul');
    assert.deepEqual(got[0].metrics, { 'q"uote\\\t': 1.5, nan: null, inf: null, neg: -0.001 });
    assert.equal(Number(got[1].ts_ms), 2 ** 60);
    assert.equal(Number(got[1].seq), -5);
    assert.deepEqual(got[1].metrics, { s: 'text\uFFFD' });
    assert.deepEqual(got[1].state, { k: 'v\uFFFD\\' });
    assert.deepEqual(got[1].other, { extra: [1, 2] });
    assert.deepEqual(got[2].metrics, {});
    assert.deepEqual(got[2].other, { raw: { base64: Buffer.from([0xff, 0xfe]).toString('base64') } });
  });

  test('a batch overlapping stored records is refused whole', async () => {
    const r = await post(srv, 'a', gzipSync(encodeBatch(batch('a', 99, { reports: reports(2040, 20) }))));
    assert.equal(r.status, 409);
    assert.equal(r.body.code, 'EDGE_ERR_SYNC_CONFLICT');
    assert.equal(
      (await srv.pool.query('SELECT count(*)::int AS n FROM fleet_batches WHERE seq = 99')).rows[0].n,
      0,
    );
  });

  test("a node's re-created database starts a new stream instead of colliding with its past", async () => {
    const before = await count('fleet_reports');
    const b = { ...batch('a', 1, { reports: reports(1, 10) }), stream: 'b2' };
    const r = await post(srv, 'a', gzipSync(encodeBatch(b)));
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, {
      seq: 1,
      duplicate: false,
      upTo: { events: null, reports: 10, samples: null },
    });
    assert.equal(await count('fleet_reports'), before + 10);
    const bad = await post(srv, 'a', gzipSync(encodeBatch({ ...b, stream: 'not hex!' })));
    assert.equal(bad.status, 400);
  });

  test('desired state: versions, ETag and If-None-Match, admin only', async () => {
    const get = (etag?: string) =>
      fetch(`${srv.url}/v1/nodes/b/desired`, {
        headers: { Authorization: 'Bearer tok-b', ...(etag ? { 'If-None-Match': etag } : {}) },
      });
    assert.equal((await get()).status, 204);
    const put = (auth: string, body: unknown) =>
      fetch(`${srv.url}/v1/nodes/b/desired`, {
        method: 'PUT',
        headers: { Authorization: auth },
        body: JSON.stringify(body),
      });
    assert.equal((await put('Bearer tok-b', { keys: { a: '1' } })).status, 401);
    assert.equal((await put('Bearer admin', { nope: 1 })).status, 400);
    const p1 = await put('Bearer admin', { keys: { 'app/mode': 'eco', limits: { max: 3 } } });
    assert.deepEqual(await p1.json(), { version: '1' });
    const g1 = await get();
    assert.equal(g1.status, 200);
    const etag = g1.headers.get('etag')!;
    assert.deepEqual(await g1.json(), { version: '1', keys: { 'app/mode': 'eco', limits: { max: 3 } } });
    assert.equal((await get(etag)).status, 304);
    await put('Bearer admin', { keys: { 'app/mode': 'fast' } });
    const g2 = await get(etag);
    assert.equal(g2.status, 200);
    assert.deepEqual(await g2.json(), { version: '2', keys: { 'app/mode': 'fast' } });
    // Desired state of a node is only for that node.
    const other = await fetch(`${srv.url}/v1/nodes/b/desired`, {
      headers: { Authorization: 'Bearer tok-a' },
    });
    assert.equal(other.status, 401);
  });

  test("frames: PUT by the node, shown on the node's page", async () => {
    const png = Buffer.concat([
      Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
      Buffer.alloc(100, 7),
    ]);
    const bad = await fetch(`${srv.url}/v1/nodes/a/frame`, {
      method: 'PUT',
      headers: { Authorization: 'Bearer tok-a' },
      body: 'GIF89a',
    });
    assert.equal(bad.status, 400);
    const put = await fetch(`${srv.url}/v1/nodes/a/frame`, {
      method: 'PUT',
      headers: { Authorization: 'Bearer tok-a' },
      body: png,
    });
    assert.equal(put.status, 204);
    assert.equal((await fetch(`${srv.url}/v1/nodes/a/frame`)).status, 401);
    const basic = `Basic ${Buffer.from('ops:admin').toString('base64')}`;
    const got = await fetch(`${srv.url}/v1/nodes/a/frame`, { headers: { Authorization: basic } });
    assert.deepEqual(Buffer.from(await got.arrayBuffer()), png);
    const html = await (await fetch(`${srv.url}/`, { headers: { Authorization: basic } })).text();
    assert.match(html, /<a href="\/nodes\/a">a<\/a>/);
    assert.match(html, /<a href="\/nodes\/b">b<\/a>/);
    const page = await (await fetch(`${srv.url}/nodes/a`, { headers: { Authorization: basic } })).text();
    assert.match(page, /<img src="\/v1\/nodes\/a\/frame\?t=\d+"/);
  });
});
