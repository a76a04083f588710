/**
 * The uplink end to end against the real receiver and a real PostgreSQL 15: records written to
 * the source tables through store.write arrive in PostgreSQL exactly once, through a receiver
 * that goes away and comes back, through injected 500s, 429s, lost answers, cut connections and
 * answers later than the timeout; the disk budget's policies with their gap records; desired
 * state changed while the node is offline; Retry-After and upload windows on an injected clock.
 * Needs: PostgreSQL 15 binaries (see pg.ts).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ManualClock } from '../../src/clock.js';
import { prefixEnd } from '../../src/store/index.js';
import type { Store } from '../../src/store/types.js';
import {
  createSyncPart,
  type FleetServer,
  type SyncOptions,
  startFleetServer,
} from '../../src/sync/index.js';
import {
  type FaultMode,
  insertEvents,
  insertReports,
  insertSamples,
  makeContext,
  openNodeStore,
  startFaultProxy,
  tempDir,
  waitFor,
} from './helpers.js';
import { freePort, startPostgres, type TestPostgres } from './pg.js';

const CLI = join(import.meta.dirname, 'fixtures', 'cli.ts');
const NODES = [
  'e2e',
  'nosamples',
  'bandwidth',
  'frames',
  'down',
  'faults',
  'budget',
  'stopack',
  'retryafter',
  'window',
  'delay',
];
const FAST: SyncOptions = {
  batchMaxRecords: 300,
  idleInterval: 20,
  batchDelay: 0,
  retryBase: 10,
  retryMax: 150,
  budgetInterval: 50,
  desiredPollInterval: 200,
  heartbeatInterval: 60_000,
  requestTimeout: 5000,
};

describe('uplink', () => {
  let pg: TestPostgres;
  let srv: FleetServer;
  const cleanups: (() => Promise<void> | void)[] = [];

  before(async () => {
    pg = await startPostgres();
    srv = await startFleetServer({
      database: pg.url,
      port: 0,
      adminToken: 'admin',
      nodes: Object.fromEntries(NODES.map((n) => [n, `tok-${n}`])),
    });
  });
  after(async () => {
    for (const c of cleanups.reverse()) await c();
    await srv?.close();
    pg?.stop();
  });

  async function node(name: string, opts: SyncOptions, o: { samples?: boolean; clock?: ManualClock } = {}) {
    const t = tempDir();
    const store = await openNodeStore(t.dir, { samples: o.samples, clock: o.clock });
    const ctx = makeContext(store, name, t.dir, o.clock);
    const part = createSyncPart(ctx, { token: `tok-${name}`, ...FAST, ...opts });
    cleanups.push(async () => {
      await part.stop();
      await store.close();
      t.remove();
    });
    return { store, ctx, part, dir: t.dir };
  }

  async function pgIds(name: string, table: string): Promise<number[]> {
    const r = await srv.pool.query(
      `SELECT t.id FROM ${table} t JOIN fleet_nodes n ON n.id = t.node_id WHERE n.name = $1 ORDER BY t.id`,
      [name],
    );
    return r.rows.map((x) => Number(x.id));
  }

  function localIds(store: Store, table: string): number[] {
    return store
      .query<{ id: number }>(`SELECT id FROM ${table} ORDER BY id`)
      .all()
      .map((r) => r.id);
  }

  /** Every local record is in PostgreSQL once (the primary key refuses a second copy). */
  async function assertExactlyOnce(
    name: string,
    store: Store,
    tables = ['reports', 'events', 'probe_samples'],
  ) {
    const pgTable: Record<string, string> = {
      reports: 'fleet_reports',
      events: 'fleet_events',
      probe_samples: 'fleet_samples',
    };
    for (const t of tables) {
      await waitFor(
        `${name}: all ${t} in PostgreSQL`,
        async () => (await pgIds(name, pgTable[t]!)).length >= localIds(store, t).length,
      );
      assert.deepEqual(await pgIds(name, pgTable[t]!), localIds(store, t), `${name}: ${t}`);
    }
    // The node never skips or reuses a batch sequence number.
    const seqs = await srv.pool.query(
      'SELECT b.seq FROM fleet_batches b JOIN fleet_nodes n ON n.id = b.node_id WHERE n.name = $1 ORDER BY b.seq',
      [name],
    );
    const s = seqs.rows.map((r) => Number(r.seq));
    assert.deepEqual(
      s,
      s.map((_, i) => i + 1),
    );
  }

  test('records written as ingest would arrive in PostgreSQL exactly once', async () => {
    const { store, ctx, part } = await node('e2e', { url: srv.url });
    await insertReports(store, 1500);
    await insertSamples(store, 200);
    await insertEvents(store, 30);
    await part.start();
    for (let i = 0; i < 10; i++) {
      await insertReports(store, 100);
      await insertEvents(store, 2);
    }
    await assertExactlyOnce('e2e', store);
    const row = (
      await srv.pool.query(
        "SELECT r.metrics, r.tags, r.device FROM fleet_reports r JOIN fleet_nodes n ON n.id = r.node_id WHERE n.name = 'e2e' ORDER BY r.id LIMIT 1",
      )
    ).rows[0];
    assert.equal(Object.keys(row.metrics).length, 8);
    assert.deepEqual(row.tags, { site: 'a' });
    // Cursors are committed at the last ids.
    await waitFor('cursors at the end', () => {
      const c = Object.fromEntries(
        store
          .query<{ name: string; position: number }>('SELECT * FROM cursors')
          .all()
          .map((r) => [r.name, r.position]),
      );
      return c.reports === localIds(store, 'reports').at(-1) && c.events === localIds(store, 'events').at(-1)
        ? c
        : undefined;
    });
    await waitFor('status ok with empty backlog', () => {
      const s = part.status();
      return s.state === 'ok' && s.backlog.reports === 0 && s.backlog.samples === 0 && s.lastSuccess !== null
        ? s
        : undefined;
    });
    const metrics = await ctx.registry.metrics();
    assert.match(metrics, /edgekeeper_sync_sent_records_total\{source="reports"\} 2500/);
    assert.match(metrics, /edgekeeper_sync_queue_depth_records\{source="reports"\} 0/);
    assert.match(metrics, /edgekeeper_sync_batches_sent_total [1-9]/);
    assert.equal(part.admitReports(), true);

    // `edgekeeper sync status` against the route the part registered.
    const handler = ctx.routes.get('GET /v1/sync/status')!;
    const http = createServer((req, res) => void handler(req, res, new URL(req.url ?? '/', 'http://x')));
    await new Promise<void>((r) => http.listen(0, '127.0.0.1', () => r()));
    try {
      const port = (http.address() as AddressInfo).port;
      const out = await new Promise<{ code: number | null; text: string }>((resolve) => {
        const child = spawn(process.execPath, [
          '--import',
          'tsx',
          CLI,
          'sync',
          'status',
          '--http',
          `127.0.0.1:${port}`,
        ]);
        let text = '';
        child.stdout.setEncoding('utf8').on('data', (d: string) => {
          text += d;
        });
        child.on('exit', (code) => resolve({ code, text }));
      });
      assert.equal(out.code, 0);
      assert.match(out.text, /state: +ok/);
      assert.match(out.text, /backlog: +events 0, reports 0, samples 0/);
    } finally {
      http.close();
    }
  });

  test('a missing source table (its part disabled) is skipped', async () => {
    const { store, part } = await node(
      'nosamples',
      { url: srv.url, compression: 'brotli' },
      { samples: false },
    );
    await insertReports(store, 100);
    await insertEvents(store, 3);
    await part.start();
    await assertExactlyOnce('nosamples', store, ['reports', 'events']);
    await waitFor('status ok', () => part.status().state === 'ok');
    assert.equal(part.status().backlog.samples, 0);
  });

  test('receiver down for a while then back; desired state changed while the node was offline', async () => {
    const port = await freePort();
    let recv: FleetServer | undefined = await startFleetServer({ database: pg.url, port });
    cleanups.push(() => recv?.close());
    const { store, part } = await node('down', { url: recv.url, requestTimeout: 500 });
    await part.start();
    await insertReports(store, 500);
    const put = (keys: unknown) =>
      fetch(`${srv.url}/v1/nodes/down/desired`, {
        method: 'PUT',
        headers: { Authorization: 'Bearer admin' },
        body: JSON.stringify({ keys }),
      });
    assert.equal((await put({ 'app/mode': 'eco', 'app/limit': 5 })).status, 200);
    const get = (k: string) => store.range({ key: Buffer.from(`/edgekeeper/desired/${k}`) }).kvs[0];
    await waitFor('desired v1 applied', () => get('.version')?.value.toString() === '1');
    assert.equal(get('app/limit')?.value.toString(), '5');
    await assertExactlyOnce('down', store, ['reports']);

    await recv.close();
    recv = undefined;
    await insertReports(store, 700);
    await insertEvents(store, 5);
    await waitFor('offline', () => part.status().state === 'offline');
    assert.equal((await put({ 'app/mode': 'fast', 'app/new': { x: 1 } })).status, 200);
    assert.ok(part.status().backlog.reports > 0 || (await pgIds('down', 'fleet_reports')).length < 1200);

    recv = await startFleetServer({ database: pg.url, port });
    await assertExactlyOnce('down', store, ['reports', 'events']);
    await waitFor('desired v2 applied', () => get('.version')?.value.toString() === '2');
    assert.equal(get('app/mode')?.value.toString(), 'fast');
    assert.equal(get('app/new')?.value.toString(), '{"x":1}');
    assert.equal(get('app/limit'), undefined);
    // All of v2 landed in one revision.
    const prefix = Buffer.from('/edgekeeper/desired/');
    const revs = new Set(
      store.range({ key: prefix, rangeEnd: prefixEnd(prefix) }).kvs.map((kv) => kv.modRevision),
    );
    assert.equal(revs.size, 1);
    // The applied version travels back in the next batch.
    await waitFor('applied version at the receiver', async () => {
      const r = await srv.pool.query("SELECT applied_version FROM fleet_nodes WHERE name = 'down'");
      return r.rows[0].applied_version === '2';
    });
  });

  test('faults: random 500 and 429, lost answers, connections cut mid-upload, answers past the timeout', async () => {
    const proxy = await startFaultProxy(srv.url, 700);
    cleanups.push(() => proxy.close());
    let seed = 42;
    const rnd = () => {
      // A small LCG: the fault sequence is the same on every run.
      seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const modes: FaultMode[] = [
      'pass',
      'pass',
      'pass',
      '500',
      '429',
      'pass-then-500',
      'cut-mid-upload',
      'cut-after-store',
      'delay',
    ];
    proxy.mode = (req) => (req.url?.endsWith('/batches') ? modes[Math.floor(rnd() * modes.length)]! : 'pass');
    const { store, ctx, part } = await node('faults', {
      url: proxy.url,
      requestTimeout: 300,
      batchMaxRecords: 150,
    });
    await insertReports(store, 1000);
    await part.start();
    for (let i = 0; i < 8; i++) {
      await insertReports(store, 150);
      await insertSamples(store, 20);
      await insertEvents(store, 3);
      await new Promise((r) => setTimeout(r, 30));
    }
    await assertExactlyOnce('faults', store);
    for (const m of [
      '500',
      '429',
      'pass-then-500',
      'cut-mid-upload',
      'cut-after-store',
      'delay',
    ] as FaultMode[])
      assert.ok((proxy.counts.get(m) ?? 0) > 0, `fault ${m} was injected`);
    const metrics = await ctx.registry.metrics();
    assert.match(metrics, /edgekeeper_sync_batches_retried_total [1-9]/);
  });

  test('disk budget with drop-oldest: samples first, then reports; every drop arrives as a gap record', async () => {
    const proxy = await startFaultProxy(srv.url);
    cleanups.push(() => proxy.close());
    let down = true;
    proxy.mode = () => (down ? '500' : 'pass');
    const { store, part } = await node('budget', {
      url: proxy.url,
      diskBudget: 100_000,
      reportsPolicy: 'drop-oldest',
    });
    const reportIds = await insertReports(store, 2000);
    await insertSamples(store, 1000);
    const sampleIds = localIds(store, 'probe_samples');
    await part.start();
    await waitFor(
      'budget applied',
      () => part.status().droppedRecords > 0 && part.status().backlogBytes <= 100_000,
    );
    assert.equal(part.admitReports(), true);
    down = false;
    await assertExactlyOnce('budget', store);
    // Stored records plus the ranges the gap records name are exactly what was written, no overlap.
    const gaps = await srv.pool.query(
      "SELECT e.subject, e.data FROM fleet_events e JOIN fleet_nodes n ON n.id = e.node_id WHERE n.name = 'budget' AND e.kind = 'sync.gap'",
    );
    assert.ok(gaps.rows.length > 0);
    for (const [table, pgTable, all] of [
      ['reports', 'fleet_reports', reportIds],
      ['probe_samples', 'fleet_samples', sampleIds],
    ] as const) {
      const got = new Set(await pgIds('budget', pgTable));
      let droppedHere = 0;
      for (const g of gaps.rows.filter((r) => r.subject === table)) {
        const d = JSON.parse(g.data) as { fromId: number; toId: number; count: number };
        let n = 0;
        for (let id = d.fromId; id <= d.toId; id++) {
          assert.ok(!got.has(id), `${table} ${id} is both stored and reported dropped`);
          got.add(id);
          n++;
        }
        assert.equal(d.count, n);
        droppedHere += n;
      }
      assert.deepEqual(
        [...got].sort((a, b) => a - b),
        [...all],
        table,
      );
      assert.ok(droppedHere > 0, `${table} were dropped`);
    }
  });

  test('disk budget with stop-ack: reports are refused until the backlog drains, nothing dropped', async () => {
    const proxy = await startFaultProxy(srv.url);
    cleanups.push(() => proxy.close());
    let down = true;
    proxy.mode = () => (down ? 'down' : 'pass');
    const { store, ctx, part } = await node('stopack', {
      url: proxy.url,
      diskBudget: 50_000,
      reportsPolicy: 'stop-ack',
    });
    await insertReports(store, 1000);
    await part.start();
    await waitFor('reports refused', () => part.admitReports() === false);
    assert.match(ctx.checks.get('sync')!() ?? '', /disk budget/);
    down = false;
    await assertExactlyOnce('stopack', store, ['reports']);
    await waitFor('reports admitted again', () => part.admitReports());
    assert.equal(part.status().droppedRecords, 0);
    assert.equal(ctx.checks.get('sync')!(), undefined);
  });

  test('Retry-After is honoured on the injected clock', async () => {
    const clock = new ManualClock(Date.now());
    const proxy = await startFaultProxy(srv.url);
    cleanups.push(() => proxy.close());
    proxy.retryAfter = '120';
    let batches = 0;
    proxy.mode = (req) => (req.url?.endsWith('/batches') ? (++batches === 1 ? '429' : 'pass') : 'pass');
    const { store, part } = await node('retryafter', { url: proxy.url }, { clock });
    await insertReports(store, 50);
    await part.start();
    await waitFor('first attempt', () => batches === 1);
    clock.advance(100_000);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(batches, 1, 'no retry before Retry-After');
    clock.advance(25_000);
    await assertExactlyOnce('retryafter', store, ['reports']);
    // Later batches carry the uplink.down / uplink.up events of that wait.
    const kinds = store.query<{ kind: string }>("SELECT kind FROM events WHERE kind LIKE 'uplink.%'").all();
    assert.deepEqual(
      kinds.map((k) => k.kind),
      ['uplink.down'],
    );
  });

  test('upload windows: nothing is sent outside the window', async () => {
    const start = new Date(2026, 0, 1, 2, 58, 30).getTime(); // local time, as node-cron matches
    const clock = new ManualClock(start);
    const proxy = await startFaultProxy(srv.url);
    cleanups.push(() => proxy.close());
    let requests = 0;
    proxy.mode = () => {
      requests++;
      return 'pass';
    };
    const { store, part } = await node('window', { url: proxy.url, uploadWindows: ['* 3 * * *'] }, { clock });
    await insertReports(store, 80);
    await part.start();
    await new Promise((r) => setTimeout(r, 300));
    clock.advance(60_000); // 02:59:30, still outside
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(requests, 0);
    clock.advance(60_000); // 03:00:30
    await assertExactlyOnce('window', store, ['reports']);
  });

  test('batch delay: a few records wait for more on the injected clock, a full batch goes at once', async () => {
    const clock = new ManualClock(Date.now());
    // requestTimeout runs on the injected clock too: far beyond the steps below, so a request in
    // flight while the clock jumps is not timed out
    const { store, part } = await node(
      'delay',
      { url: srv.url, batchMaxRecords: 50, batchDelay: 30_000, requestTimeout: 3_600_000 },
      { clock },
    );
    await part.start();
    await insertReports(store, 3);
    // The uplink looks every idleInterval (20 ms of the injected clock): step it 5 s at a time.
    const step = async (n: number) => {
      for (let i = 0; i < n; i++) {
        clock.advance(5000);
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    await step(5);
    assert.deepEqual(await pgIds('delay', 'fleet_reports'), [], 'three records wait while the delay runs');
    // The delay counts from the uplink's first look at the records, one step or two after they
    // were written: keep stepping until they go (a few steps).
    for (let i = 0; i < 12 && (await pgIds('delay', 'fleet_reports')).length < 3; i++) await step(1);
    assert.equal((await pgIds('delay', 'fleet_reports')).length, 3, 'the delayed batch went');
    // 50 records fill a batch: it goes at the next look (one idleInterval), not after the delay.
    await insertReports(store, 50);
    clock.advance(100);
    await waitFor('the full batch', async () => (await pgIds('delay', 'fleet_reports')).length === 53);
    await assertExactlyOnce('delay', store, ['reports']);
  });

  test('bandwidth cap: the next batch waits for its share of time on the injected clock', async () => {
    const clock = new ManualClock(Date.now());
    const { store, part } = await node(
      'bandwidth',
      { url: srv.url, batchMaxRecords: 50, bandwidth: 100 },
      { clock },
    );
    await insertReports(store, 200);
    await part.start();
    await waitFor('first batch', async () => (await pgIds('bandwidth', 'fleet_reports')).length === 50);
    await new Promise((r) => setTimeout(r, 300));
    // A batch is a few hundred bytes: at 100 B/s the next one may not leave before seconds pass.
    assert.equal((await pgIds('bandwidth', 'fleet_reports')).length, 50);
    for (let i = 0; i < 10 && (await pgIds('bandwidth', 'fleet_reports')).length < 200; i++) {
      clock.advance(60_000);
      await new Promise((r) => setTimeout(r, 200));
    }
    await assertExactlyOnce('bandwidth', store, ['reports']);
  });

  test('the status frame is uploaded and listed by the receiver', async () => {
    const png = Buffer.concat([
      Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
      Buffer.from('frame-bytes'),
    ]);
    let calls = 0;
    const { store, part } = await node('frames', {
      url: srv.url,
      frameInterval: 50,
      framePng: async () => {
        calls++;
        return png;
      },
    });
    await insertReports(store, 5);
    await part.start();
    await waitFor('frame stored', async () => {
      const r = await fetch(`${srv.url}/v1/nodes/frames/frame`, {
        headers: { Authorization: 'Bearer admin' },
      });
      return r.status === 200 && Buffer.from(await r.arrayBuffer()).equals(png);
    });
    assert.ok(calls >= 1);
  });
});
