/**
 * The fleet receiver's operator side against a real PostgreSQL 15: a schema-1 database upgraded
 * in place; node lifecycle through the admin API and the CLI (add, rotate, revoke, decommission)
 * with a revoked token refused at once by every receiver; the nodes file; health from batch
 * summaries (worst first, filters, search, pages); /metrics; and the usual attacks: missing and
 * wrong credentials, Basic for writes, CSRF, hostile names and texts, huge pages, a desired
 * state that is not JSON. Each refused with the right status and nothing stored.
 * Needs: PostgreSQL 15 (see pg.ts).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import pg from 'pg';
import { type Batch, encodeBatch, type HealthSummary } from '../../src/sync/codec.js';
import { fleetNodeCommand } from '../../src/sync/cli.js';
import { FLEET_MIGRATIONS } from '../../src/sync/receiver/schema.js';
import { type FleetServer, startFleetServer } from '../../src/sync/receiver/server.js';
import { tempDir } from './helpers.js';
import { startPostgres, type TestPostgres } from './pg.js';

const ADMIN = 'admin-token-for-tests';
const CLI = join(import.meta.dirname, 'fixtures', 'cli.ts');

export function summary(over: Partial<HealthSummary> = {}): HealthSummary {
  return {
    ready: true,
    failing: {},
    alerts: [],
    uplink: { state: 'ok' },
    disk: { full: false, dbBytes: 40e6, quotaBytes: 2e9, backlogBytes: 0, budgetBytes: 512e6 },
    nextContactSeconds: 3600,
    ...over,
  };
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

interface Answer {
  status: number;
  headers: Headers;
  body: Record<string, unknown>;
  text: string;
}

async function call(url: string, init: RequestInit = {}): Promise<Answer> {
  const r = await fetch(url, { redirect: 'manual', ...init });
  const text = await r.text();
  let body: Record<string, unknown> = {};
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // HTML or empty.
  }
  return { status: r.status, headers: r.headers, body, text };
}

describe('fleet receiver: operators, nodes, health', () => {
  let pgs: TestPostgres;
  let srv: FleetServer;
  let srv2: FleetServer;
  const tmp = tempDir('ek-fleet-');

  before(async () => {
    pgs = await startPostgres();
    srv = await startFleetServer({ database: pgs.url, port: 0, adminToken: ADMIN, staleAfterSeconds: 120 });
    srv2 = await startFleetServer({ database: pgs.url, port: 0, adminToken: ADMIN });
  });
  after(async () => {
    await srv?.close();
    await srv2?.close();
    pgs?.stop();
    tmp.remove();
  });

  const admin = (path: string, init: RequestInit = {}, s = srv) =>
    call(`${s.url}${path}`, {
      ...init,
      headers: {
        Authorization: `Bearer ${ADMIN}`,
        ...(init.body ? { 'Content-Type': 'application/json' } : {}),
        ...init.headers,
      },
    });
  const upload = (s: FleetServer, node: string, token: string, b: Batch) =>
    call(`${s.url}/v1/nodes/${node}/batches`, {
      method: 'POST',
      body: gzipSync(encodeBatch(b)),
      headers: {
        Authorization: `Bearer ${token}`,
        'Content-Encoding': 'gzip',
        'Content-Type': 'application/cbor',
      },
    });
  const count = async (sql: string, params: unknown[] = []) =>
    Number((await srv.pool.query(sql, params)).rows[0].n);

  test('a database of schema 1 is upgraded in place, its data kept and given proper times', async () => {
    const admin0 = new pg.Client({ connectionString: pgs.url });
    await admin0.connect();
    await admin0.query('CREATE DATABASE old_receiver');
    await admin0.end();
    const url = pgs.url.replace(/\/postgres$/, '/old_receiver');
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    // The database exactly as the previous release left it.
    await c.query(`CREATE TABLE fleet_schema (version integer NOT NULL); ${FLEET_MIGRATIONS[0]!.sql}`);
    await c.query('INSERT INTO fleet_schema VALUES (1)');
    await c.query(
      "INSERT INTO fleet_nodes (name, token_hash, last_seen, backlog) VALUES ('old-1', encode(sha256('tok-old-1'), 'hex'), now(), '{\"events\":0,\"reports\":3,\"samples\":0}')",
    );
    await c.query("INSERT INTO fleet_streams (node_id, stream) VALUES (1, 'aa')");
    await c.query(
      `INSERT INTO fleet_events (node_id, stream_id, id, ts_ms, kind, subject, data) VALUES (1, 1, 1, 1700000000123, 'device.online', 'd1', '{}');
       INSERT INTO fleet_reports (node_id, stream_id, id, device, received_at_ms, ts_ms, metrics)
         SELECT 1, 1, i, 'd1', 1700000000000 + i, CASE WHEN i = 3 THEN 1152921504606846976 END, '{"t":1}' FROM generate_series(1, 3) i;
       INSERT INTO fleet_samples (node_id, stream_id, id, ts_ms, probe, metric, data) VALUES (1, 1, 1, 1700000000500, 'fsync', 'lat', '{}')`,
    );
    await c.end();
    const up = await startFleetServer({ database: url, port: 0, adminToken: ADMIN });
    try {
      const q = (sql: string) => up.pool.query(sql).then((r) => r.rows);
      assert.deepEqual(
        (await q('SELECT version FROM fleet_schema ORDER BY version')).map((r) => r.version),
        FLEET_MIGRATIONS.map((m) => m.version),
      );
      assert.equal((await q('SELECT ts FROM fleet_events'))[0].ts.toISOString(), '2023-11-14T22:13:20.123Z');
      const reps = await q('SELECT received_at, ts FROM fleet_reports ORDER BY id');
      assert.equal(reps[0].received_at.toISOString(), '2023-11-14T22:13:20.001Z');
      assert.equal(reps[2].ts, null, 'a node clock beyond year 9999 has no time, and the row stays');
      assert.equal((await q('SELECT ts FROM fleet_samples'))[0].ts.toISOString(), '2023-11-14T22:13:20.500Z');
      const [node] = await q('SELECT status, managed_by, token_at FROM fleet_nodes');
      assert.equal(node.status, 'active');
      assert.equal(node.managed_by, 'file');
      // The old node still uploads with its old token, and shows on the list.
      const r = await upload(
        up,
        'old-1',
        'tok-old-1',
        batch('old-1', 1, { stream: 'aa', health: summary() }),
      );
      assert.equal(r.status, 200, r.text);
      const list = await admin('/v1/nodes', {}, up);
      assert.equal((list.body.nodes as { health: string }[])[0]!.health, 'ok');
    } finally {
      await up.close();
    }
  });

  test('lifecycle through the admin API: add, rotate, revoke (refused at once on every receiver), reinstate, decommission', async () => {
    const added = await admin('/v1/nodes', { method: 'POST', body: JSON.stringify({ name: 'pi-01' }) });
    assert.equal(added.status, 201, added.text);
    const tok1 = added.body.token as string;
    assert.match(tok1, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(
      (await admin('/v1/nodes', { method: 'POST', body: JSON.stringify({ name: 'pi-01' }) })).body.code,
      'EDGE_ERR_FLEET_NODE_STATE',
    );
    assert.equal((await upload(srv, 'pi-01', tok1, batch('pi-01', 1))).status, 200);

    const rotated = await admin('/v1/nodes/pi-01/rotate', { method: 'POST' });
    const tok2 = rotated.body.token as string;
    assert.notEqual(tok2, tok1);
    const old = await upload(srv2, 'pi-01', tok1, batch('pi-01', 2));
    assert.equal(old.status, 401);
    assert.equal(old.body.code, 'EDGE_ERR_SYNC_UNAUTHORIZED');
    assert.equal((await upload(srv2, 'pi-01', tok2, batch('pi-01', 2))).status, 200);

    assert.equal((await admin('/v1/nodes/pi-01/revoke', { method: 'POST' })).status, 200);
    for (const s of [srv, srv2]) {
      const r = await upload(s, 'pi-01', tok2, batch('pi-01', 3));
      assert.equal(r.status, 401);
      assert.equal(r.body.code, 'EDGE_ERR_SYNC_REVOKED');
      assert.match(r.headers.get('www-authenticate') ?? '', /^Bearer /);
      const d = await call(`${s.url}/v1/nodes/pi-01/desired`, {
        headers: { Authorization: `Bearer ${tok2}` },
      });
      assert.equal(d.status, 401, 'desired state is refused too');
    }
    assert.equal(
      await count(
        "SELECT count(*) AS n FROM fleet_batches b JOIN fleet_nodes n ON n.id = b.node_id WHERE n.name = 'pi-01'",
      ),
      2,
    );
    const detail = await admin('/v1/nodes/pi-01');
    assert.equal(detail.body.health, 'revoked');
    assert.equal(detail.body.problem, 'revoked; still tries to upload');
    // A revoked node stays listed (apart, last); decommissioned nodes leave the default list.
    const reinstated = await admin('/v1/nodes/pi-01/rotate', { method: 'POST' });
    assert.equal(reinstated.status, 200);
    assert.equal(
      (await upload(srv, 'pi-01', reinstated.body.token as string, batch('pi-01', 3))).status,
      200,
    );
    assert.equal((await admin('/v1/nodes/pi-01/decommission', { method: 'POST' })).status, 200);
    assert.equal(
      (await upload(srv, 'pi-01', reinstated.body.token as string, batch('pi-01', 4))).body.code,
      'EDGE_ERR_SYNC_REVOKED',
    );
    assert.equal((await admin('/v1/nodes/pi-01/rotate', { method: 'POST' })).status, 409);
    assert.equal((await admin('/v1/nodes/pi-01/revoke', { method: 'POST' })).status, 409);
    const names = async (q: string) =>
      ((await admin(`/v1/nodes${q}`)).body.nodes as { name: string }[]).map((n) => n.name);
    assert.ok(!(await names('')).includes('pi-01'));
    assert.deepEqual(await names('?state=retired'), ['pi-01']);
    assert.equal((await admin('/v1/nodes/nobody/revoke', { method: 'POST' })).status, 404);
  });

  test('the CLI manages nodes through the admin API', async () => {
    // In-process (the command is an HTTP client; a process each would cost seconds), with its
    // output captured; one real process below proves the entry point.
    const run = async (args: string[]) => {
      const out: string[] = [];
      const err: string[] = [];
      const o = process.stdout.write.bind(process.stdout);
      const e = process.stderr.write.bind(process.stderr);
      process.stdout.write = ((d: string) => out.push(d) > 0) as typeof process.stdout.write;
      process.stderr.write = ((d: string) => err.push(d) > 0) as typeof process.stderr.write;
      try {
        const code = await fleetNodeCommand.run([...args, '--server', srv.url, '--admin-token', ADMIN]);
        return { code, out: out.join(''), err: err.join('') };
      } finally {
        process.stdout.write = o;
        process.stderr.write = e;
      }
    };
    const add = await new Promise<{ code: number | null; out: string }>((resolve) => {
      const c = spawn(
        process.execPath,
        ['--import', 'tsx', CLI, 'fleet-node', 'add', 'cli-1', '--server', srv.url],
        {
          env: { ...process.env, EDGEKEEPER_FLEET_ADMIN_TOKEN: ADMIN },
        },
      );
      let out = '';
      c.stdout.on('data', (d) => (out += d));
      c.on('exit', (code) => resolve({ code, out }));
    });
    assert.equal(add.code, 0);
    const token = add.out.trim();
    assert.equal((await upload(srv, 'cli-1', token, batch('cli-1', 1, { health: summary() }))).status, 200);
    const list = await run(['list']);
    assert.match(list.out, /^OK\s+cli-1\s/m);
    assert.equal((await run(['revoke', 'cli-1'])).out.trim(), 'cli-1: revoked');
    assert.equal((await upload(srv, 'cli-1', token, batch('cli-1', 2))).status, 401);
    const rot = await run(['rotate', 'cli-1']);
    assert.equal((await upload(srv, 'cli-1', rot.out.trim(), batch('cli-1', 2))).status, 200);
    assert.equal((await run(['decommission', 'cli-1'])).code, 0);
    const again = await run(['add', 'cli-1']);
    assert.equal(again.code, 1);
    assert.match(again.err, /EDGE_ERR_FLEET_NODE_STATE/);
    const wrong = await fleetNodeCommand
      .run(['list', '--server', srv.url, '--admin-token', 'nope'])
      .catch(() => -1);
    assert.equal(wrong, 1);
    assert.equal((await run(['frobnicate', 'x'])).code, 2);
  });

  test('the nodes file: added and updated; dropped nodes revoked; nodes changed through the API left alone', async () => {
    const file = { 'f-1': 'tok-f-1', 'f-2': 'tok-f-2', 'f-3': 'tok-f-3' };
    const r1 = await srv.applyNodes(file, true);
    assert.deepEqual(r1, { ignored: [], revoked: [] });
    assert.equal((await upload(srv, 'f-1', 'tok-f-1', batch('f-1', 1))).status, 200);
    // f-3 is revoked through the API: the file no longer touches it.
    await admin('/v1/nodes/f-3/revoke', { method: 'POST' });
    const r2 = await srv.applyNodes({ 'f-2': 'tok-f-2b', 'f-3': 'tok-f-3' }, true);
    assert.deepEqual(r2, { ignored: ['f-3'], revoked: ['f-1'] });
    assert.equal((await upload(srv, 'f-1', 'tok-f-1', batch('f-1', 2))).body.code, 'EDGE_ERR_SYNC_REVOKED');
    assert.equal((await upload(srv, 'f-2', 'tok-f-2', batch('f-2', 1))).status, 401, 'the old token of f-2');
    assert.equal((await upload(srv, 'f-2', 'tok-f-2b', batch('f-2', 1))).status, 200);
    assert.equal((await upload(srv, 'f-3', 'tok-f-3', batch('f-3', 1))).body.code, 'EDGE_ERR_SYNC_REVOKED');
    // --node flags alone add, never revoke.
    assert.deepEqual(await srv.applyNodes({ 'f-4': 'tok-f-4' }, false), { ignored: [], revoked: [] });
    assert.equal((await upload(srv, 'f-2', 'tok-f-2b', batch('f-2', 2))).status, 200);
  });

  test('health from summaries: worst first, filters, search, pages, and stale nodes', async () => {
    const s = await startFleetServer({
      database: pgs.url.replace(/\/postgres$/, '/old_receiver'),
      port: 0,
      adminToken: ADMIN,
      staleAfterSeconds: 0,
    });
    try {
      const add = async (name: string, h?: HealthSummary, backlog = 0) => {
        const r = await admin('/v1/nodes', { method: 'POST', body: JSON.stringify({ name }) }, s);
        if (h) {
          const u = await upload(
            s,
            name,
            r.body.token as string,
            batch(name, 1, { health: h, backlog: { events: 0, reports: backlog, samples: 0 } }),
          );
          assert.equal(u.status, 200, u.text);
        }
      };
      for (let i = 0; i < 12; i++) await add(`h-ok-${String(i).padStart(2, '0')}`, summary());
      await add(
        'h-notready',
        summary({ ready: false, failing: { store: 'store commit p99 90 ms > objective 50 ms' } }),
      );
      await add('h-diskfull', summary({ disk: { full: true, dbBytes: 2.1e9, quotaBytes: 2e9 } }));
      await add(
        'h-warn',
        summary({ alerts: [{ severity: 'warning', text: 'SoC 83 °C: the CPU throttles' }] }),
      );
      await add('h-behind', summary({ oldestUnsentSeconds: 7200 }), 12345);
      await add('h-stale', summary({ nextContactSeconds: 0 }));
      await add('h-never');
      const list = async (q: string) =>
        (await admin(`/v1/nodes${q}`, {}, s)).body as {
          nodes: { name: string; health: string; problem: string | null }[];
          total: number;
          counts: Record<string, number>;
        };
      const worst = await list('?sort=health&q=h-&limit=8');
      assert.deepEqual(
        worst.nodes.map((n) => `${n.health} ${n.name}`),
        [
          'stale h-never',
          'stale h-stale',
          'alert h-diskfull',
          'alert h-notready',
          'warn h-behind',
          'warn h-warn',
          'ok h-ok-00',
          'ok h-ok-01',
        ],
      );
      const byName = Object.fromEntries(worst.nodes.map((n) => [n.name, n.problem]));
      assert.equal(byName['h-never'], 'never contacted');
      assert.match(byName['h-stale']!, /^no contact for \d+ s$/);
      assert.equal(byName['h-diskfull'], 'disk full: database 2.1 GB over its quota of 2.0 GB');
      assert.equal(byName['h-notready'], 'not ready: store commit p99 90 ms > objective 50 ms');
      assert.equal(byName['h-behind'], 'uploads 2 h behind (12,345 records waiting)');
      assert.equal(byName['h-warn'], 'SoC 83 °C: the CPU throttles');
      assert.equal(worst.total, 18);
      assert.deepEqual(
        (await list('?state=problems&q=h-&sort=name')).nodes.map((n) => n.name),
        ['h-behind', 'h-diskfull', 'h-never', 'h-notready', 'h-stale', 'h-warn'],
      );
      assert.deepEqual(
        (await list('?state=alert&q=h-')).nodes.map((n) => n.name),
        ['h-diskfull', 'h-notready'],
      );
      // Search looks at problems too, and treats % and _ literally.
      assert.deepEqual(
        (await list('?q=quota')).nodes.map((n) => n.name),
        ['h-diskfull'],
      );
      assert.equal((await list('?q=%25')).total, 0);
      const page2 = await list('?q=h-ok&sort=name&limit=5&page=2');
      assert.deepEqual(
        page2.nodes.map((n) => n.name),
        ['h-ok-05', 'h-ok-06', 'h-ok-07', 'h-ok-08', 'h-ok-09'],
      );
      assert.equal(page2.total, 12);
      assert.equal((await list('?q=h-ok&page=99')).nodes.length, 0);
    } finally {
      await s.close();
    }
  });

  test('/metrics: nodes by health, batches, bytes, lag, errors', async () => {
    const r = await admin('/v1/nodes', { method: 'POST', body: JSON.stringify({ name: 'm-1' }) });
    const events = [{ id: 1, ts: Date.now() - 90_000, kind: 'alert.raised', subject: 'x', data: '{}' }];
    assert.equal(
      (await upload(srv, 'm-1', r.body.token as string, batch('m-1', 1, { events, health: summary() })))
        .status,
      200,
    );
    await upload(srv, 'm-1', 'wrong-token', batch('m-1', 2));
    const text = (await call(`${srv.url}/metrics`)).text;
    const value = (name: string) => {
      const m = new RegExp(`^${name.replace(/[{}"]/g, (c) => `\\${c}`)} (\\S+)$`, 'm').exec(text);
      assert.ok(m, `${name} in /metrics`);
      return Number(m[1]);
    };
    assert.ok(value('edgekeeper_fleet_nodes{health="ok"}') >= 1);
    assert.ok(value('edgekeeper_fleet_nodes{health="retired"}') >= 1);
    assert.ok(value('edgekeeper_fleet_batches_total{result="stored"}') >= 1);
    assert.ok(value('edgekeeper_fleet_received_bytes_total') > 0);
    assert.ok(value('edgekeeper_fleet_records_total{source="events"}') >= 1);
    assert.ok(value('edgekeeper_fleet_batch_lag_seconds_bucket{le="300"}') >= 1);
    assert.ok(value('edgekeeper_fleet_request_errors_total{code="EDGE_ERR_SYNC_UNAUTHORIZED"}') >= 1);
    assert.equal(value('edgekeeper_fleet_database_up'), 1);
  });

  test('admin API: missing and wrong credentials, Basic for writes, bad input; nothing stored', async () => {
    const nodesBefore = await count('SELECT count(*) AS n FROM fleet_nodes');
    const none = await call(`${srv.url}/v1/nodes`);
    assert.equal(none.status, 401);
    assert.equal(none.body.code, 'EDGE_ERR_FLEET_UNAUTHORIZED');
    assert.match(none.headers.get('www-authenticate') ?? '', /Basic realm="edgekeeper fleet"/);
    assert.equal(
      (await call(`${srv.url}/v1/nodes`, { headers: { Authorization: 'Bearer wrong' } })).status,
      401,
    );
    const basic = `Basic ${Buffer.from(`ops:${ADMIN}`).toString('base64')}`;
    assert.equal((await call(`${srv.url}/v1/nodes`, { headers: { Authorization: basic } })).status, 200);
    const viaBasic = await call(`${srv.url}/v1/nodes`, {
      method: 'POST',
      body: JSON.stringify({ name: 'basic-1' }),
      headers: { Authorization: basic },
    });
    assert.equal(viaBasic.status, 403);
    assert.equal(viaBasic.body.code, 'EDGE_ERR_FLEET_CSRF');
    const cases: [string, string, RequestInit, number, string][] = [
      [
        'HTML in a node name',
        '/v1/nodes',
        { method: 'POST', body: JSON.stringify({ name: '<img src=x onerror=alert(1)>' }) },
        400,
        'EDGE_ERR_INVALID_ARGUMENT',
      ],
      [
        'name not a string',
        '/v1/nodes',
        { method: 'POST', body: JSON.stringify({ name: 7 }) },
        400,
        'EDGE_ERR_INVALID_ARGUMENT',
      ],
      [
        'short token',
        '/v1/nodes',
        { method: 'POST', body: JSON.stringify({ name: 'ok-name', token: 'short' }) },
        400,
        'EDGE_ERR_INVALID_ARGUMENT',
      ],
      [
        'token with a newline',
        '/v1/nodes',
        { method: 'POST', body: JSON.stringify({ name: 'ok-name', token: `${'a'.repeat(20)}\nX-Evil: 1` }) },
        400,
        'EDGE_ERR_INVALID_ARGUMENT',
      ],
      ['not JSON', '/v1/nodes', { method: 'POST', body: '{"name": ' }, 400, 'EDGE_ERR_INVALID_ARGUMENT'],
      [
        'huge body',
        '/v1/nodes',
        { method: 'POST', body: JSON.stringify({ name: 'x'.repeat(300 * 1024) }) },
        413,
        'EDGE_ERR_REQUEST_TOO_LARGE',
      ],
      ['huge page', '/v1/nodes?limit=100000000', {}, 400, 'EDGE_ERR_INVALID_ARGUMENT'],
      ['page 0', '/v1/nodes?page=0', {}, 400, 'EDGE_ERR_INVALID_ARGUMENT'],
      ['page not a number', '/v1/nodes?page=1e9', {}, 400, 'EDGE_ERR_INVALID_ARGUMENT'],
      ['unknown state', '/v1/nodes?state=<b>', {}, 400, 'EDGE_ERR_INVALID_ARGUMENT'],
      ['unknown sort', '/v1/nodes?sort=1;DROP TABLE fleet_nodes', {}, 400, 'EDGE_ERR_INVALID_ARGUMENT'],
      ['search too long', `/v1/nodes?q=${'x'.repeat(200)}`, {}, 400, 'EDGE_ERR_INVALID_ARGUMENT'],
      ['a parameter twice', '/v1/nodes?limit=5&limit=6', {}, 400, 'EDGE_ERR_INVALID_ARGUMENT'],
      [
        'desired not JSON',
        '/v1/nodes/f-2/desired',
        { method: 'PUT', body: 'mode=eco' },
        400,
        'EDGE_ERR_INVALID_ARGUMENT',
      ],
      [
        'desired keys an array',
        '/v1/nodes/f-2/desired',
        { method: 'PUT', body: '{"keys": [1]}' },
        400,
        'EDGE_ERR_INVALID_ARGUMENT',
      ],
      [
        'desired reserved key',
        '/v1/nodes/f-2/desired',
        { method: 'PUT', body: '{"keys": {".version": 1}}' },
        400,
        'EDGE_ERR_INVALID_ARGUMENT',
      ],
      [
        'desired of an unknown node',
        '/v1/nodes/nobody/desired',
        { method: 'PUT', body: '{"keys": {}}' },
        404,
        'EDGE_ERR_NOT_FOUND',
      ],
      ['unknown node', '/v1/nodes/%3Cscript%3E', {}, 404, 'EDGE_ERR_NOT_FOUND'],
      ['unknown action', '/v1/nodes/f-2/explode', { method: 'POST' }, 404, 'EDGE_ERR_NOT_FOUND'],
    ];
    for (const [what, path, init, status, code] of cases) {
      const r = await admin(path, init);
      assert.equal(r.status, status, `${what}: ${r.text.slice(0, 200)}`);
      assert.equal(r.body.code, code, what);
    }
    assert.equal(await count('SELECT count(*) AS n FROM fleet_nodes'), nodesBefore);
    assert.equal(
      await count(
        "SELECT count(*) AS n FROM fleet_desired d JOIN fleet_nodes n ON n.id = d.node_id WHERE n.name = 'f-2'",
      ),
      0,
    );
    assert.equal(await count('SELECT count(*) AS n FROM fleet_nodes'), nodesBefore);
  });

  test('browser sessions: login, CSRF on every write, no open redirect, logout', async () => {
    const form = (o: Record<string, string>) => new URLSearchParams(o).toString();
    const post = (path: string, body: Record<string, string>, headers: Record<string, string> = {}) =>
      call(`${srv.url}${path}`, {
        method: 'POST',
        body: form(body),
        headers: { 'Content-Type': 'application/x-www-form-urlencoded', ...headers },
      });
    // Without a session a page sends the browser to the login form.
    const page = await call(`${srv.url}/nodes/f-2?events=all`);
    assert.equal(page.status, 303);
    assert.equal(page.headers.get('location'), '/login?next=%2Fnodes%2Ff-2%3Fevents%3Dall');
    const bad = await post('/login', { token: 'nope', next: '/' });
    assert.equal(bad.status, 401);
    assert.match(bad.text, /wrong admin token/);
    assert.equal(bad.headers.get('set-cookie'), null);
    const evil = await post('/login', { token: ADMIN, next: '/' }, { Origin: 'https://evil.example' });
    assert.equal(evil.status, 403, 'a login form posted from another site');
    for (const next of ['//evil.example/x', 'https://evil.example', '/\\evil.example']) {
      const r = await post('/login', { token: ADMIN, next });
      assert.equal(r.status, 303);
      assert.equal(r.headers.get('location'), '/', next);
    }
    const ok = await post('/login', { token: ADMIN, next: '/nodes/f-2' });
    assert.equal(ok.headers.get('location'), '/nodes/f-2');
    const setCookie = ok.headers.get('set-cookie') ?? '';
    assert.match(setCookie, /HttpOnly/);
    assert.match(setCookie, /SameSite=Strict/);
    const cookie = setCookie.split(';')[0]!;
    const html = await call(`${srv.url}/nodes/f-2`, { headers: { Cookie: cookie } });
    assert.equal(html.status, 200);
    assert.match(html.headers.get('content-security-policy') ?? '', /default-src 'none'/);
    const csrf = /name="csrf" value="([^"]+)"/.exec(html.text)![1]!;
    const desired = (extra: Record<string, string>, headers: Record<string, string> = {}) =>
      post('/nodes/f-2/desired', { keys: '{"mode": "eco"}', ...extra }, { Cookie: cookie, ...headers });
    const versions = () =>
      count(
        "SELECT count(*) AS n FROM fleet_desired d JOIN fleet_nodes n ON n.id = d.node_id WHERE n.name = 'f-2'",
      );
    assert.equal((await desired({})).status, 403, 'no CSRF token');
    assert.equal((await desired({ csrf: 'x'.repeat(32) })).status, 403, 'wrong CSRF token');
    assert.equal(
      (await desired({ csrf }, { Origin: 'https://evil.example' })).status,
      403,
      'from another site',
    );
    assert.equal(
      (await desired({ csrf }, { 'Sec-Fetch-Site': 'cross-site' })).status,
      403,
      'cross-site fetch',
    );
    assert.equal(await versions(), 0);
    const notJson = await post('/nodes/f-2/desired', { keys: '{"mode": eco <b>', csrf }, { Cookie: cookie });
    assert.equal(notJson.status, 400);
    assert.match(notJson.text, /desired state is not JSON/);
    assert.match(notJson.text, /\{&#34;mode&#34;: eco &#60;b&#62;/, 'the typed text comes back, escaped');
    assert.equal(await versions(), 0);
    const saved = await desired({ csrf });
    assert.equal(saved.status, 303);
    assert.equal(saved.headers.get('location'), '/nodes/f-2?done=desired');
    assert.equal(await versions(), 1);
    // A session writes through the API too, with its CSRF header.
    const api = await call(`${srv.url}/v1/nodes/f-2/revoke`, { method: 'POST', headers: { Cookie: cookie } });
    assert.equal(api.status, 403);
    const logout = await post('/logout', { csrf }, { Cookie: cookie });
    assert.equal(logout.status, 303);
    assert.equal(
      (await call(`${srv.url}/`, { headers: { Cookie: cookie } })).status,
      303,
      'the session is gone',
    );
    assert.equal((await desired({ csrf })).status, 401);
    assert.equal(await versions(), 1);
  });

  test('hostile texts from nodes are escaped on every page', async () => {
    const r = await admin('/v1/nodes', { method: 'POST', body: JSON.stringify({ name: 'x-1' }) });
    const evil = '<script>alert(1)</script>';
    const h = summary({
      ready: false,
      failing: { [`chk${evil}`]: `bad ${evil}` },
      alerts: [{ severity: 'critical', text: `alert ${evil}` }],
      uplink: { state: 'ok', lastError: `e ${evil}` },
    });
    const events = [
      {
        id: 1,
        ts: Date.now(),
        kind: `device.online${evil}`,
        subject: `dev ${evil}`,
        data: `{"x": "${evil}"}`,
      },
      { id: 2, ts: Date.now(), kind: 'alert.raised', subject: evil, data: 'not json <img src=x>' },
    ];
    assert.equal(
      (await upload(srv, 'x-1', r.body.token as string, batch('x-1', 1, { health: h, events }))).status,
      200,
    );
    const basic = `Basic ${Buffer.from(`ops:${ADMIN}`).toString('base64')}`;
    for (const path of [
      '/?q=x-1',
      '/nodes/x-1?events=all',
      `/?q=${encodeURIComponent(evil)}`,
      `/nodes/${encodeURIComponent(evil)}`,
    ]) {
      const page = await call(`${srv.url}${path}`, { headers: { Authorization: basic } });
      assert.ok(page.status === 200 || page.status === 404, path);
      assert.ok(!page.text.includes('<script'), `${path} has no raw <script>`);
      assert.ok(!page.text.includes('<img src=x'), `${path} has no raw <img>`);
    }
    const node = await call(`${srv.url}/nodes/x-1?events=all`, { headers: { Authorization: basic } });
    assert.match(node.text, /alert &#60;script&#62;alert\(1\)&#60;\/script&#62;/);
    assert.match(node.text, /not json &#60;img src=x&#62;/);
  });

  test('too many failed logins from one address: 429 for the rest of the minute', async () => {
    const s = await startFleetServer({ database: pgs.url, port: 0, adminToken: ADMIN });
    try {
      const statuses: number[] = [];
      for (let i = 0; i < 12; i++)
        statuses.push(
          (await call(`${s.url}/v1/nodes`, { headers: { Authorization: `Bearer guess-${i}` } })).status,
        );
      assert.deepEqual(statuses.slice(0, 10), Array(10).fill(401));
      assert.deepEqual(statuses.slice(10), [429, 429]);
      const right = await call(`${s.url}/v1/nodes`, { headers: { Authorization: `Bearer ${ADMIN}` } });
      assert.equal(right.status, 429, 'even the right token waits');
      assert.ok(Number(right.headers.get('retry-after')) > 0);
    } finally {
      await s.close();
    }
  });
});
