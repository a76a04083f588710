/**
 * The fleet receiver's operator side at scale, against PostgreSQL 15 on loopback:
 * - the node list (GET / as a logged-in browser, and GET /v1/nodes) with 10,000 and 100,000
 *   nodes, worst first, a search, and a deep page: server time per request, p50 and p99 over 40
 *   requests each (nodes seeded in SQL: 1% stale, 0.5% alert, 2% warn);
 * - upgrading a schema-1 database holding EDGEKEEPER_BENCH_FLEET_REPORTS reports (default
 *   1,000,000) to the current schema (the stored time columns rewrite the record tables).
 */
import pg from 'pg';
import { FLEET_MIGRATIONS, migrate } from '../../../src/sync/receiver/schema.js';
import { startFleetServer } from '../../../src/sync/receiver/server.js';
import { startPostgres } from '../../sync/pg.js';

const ADMIN = 'bench-admin-token';

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return Number(s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!.toFixed(1));
}

async function seed(pool: pg.Pool, n: number): Promise<void> {
  await pool.query(
    `INSERT INTO fleet_nodes (name, token_hash, managed_by, token_at, last_seen, expect_by, backlog, applied_version,
                             health_level, health_reason, health_summary)
     SELECT format('site-%s-node-%s', lpad((i / 100)::text, 4, '0'), lpad(i::text, 6, '0')), md5(i::text), 'api', now(),
            CASE WHEN i % 100 = 7 THEN now() - interval '2 hours' ELSE now() - make_interval(secs => i % 50) END,
            CASE WHEN i % 100 = 7 THEN now() - interval '119 minutes' ELSE now() + interval '1 minute' END,
            jsonb_build_object('events', 0, 'reports', (i * 13) % 900, 'samples', 0), '4',
            CASE WHEN i % 200 = 3 THEN 2 WHEN i % 50 = 1 THEN 1 ELSE 0 END,
            CASE WHEN i % 200 = 3 THEN 'not ready: store commit p99 95 ms > objective 50 ms'
                 WHEN i % 50 = 1 THEN 'disk 92% full' END,
            '{"ready": true, "failing": {}, "alerts": [], "uplink": {"state": "ok"}, "disk": {"full": false}, "nextContactSeconds": 61}'
     FROM generate_series(1, $1) i`,
    [n],
  );
  await pool.query('ANALYZE fleet_nodes');
}

export default async function bench(): Promise<void> {
  const pgs = await startPostgres();
  try {
    for (const n of [10_000, 100_000]) {
      const db = `fleet_${n}`;
      const admin = new pg.Client({ connectionString: pgs.url });
      await admin.connect();
      await admin.query(`CREATE DATABASE ${db}`);
      await admin.end();
      const srv = await startFleetServer({
        database: pgs.url.replace(/\/postgres$/, `/${db}`),
        port: 0,
        adminToken: ADMIN,
      });
      try {
        await seed(srv.pool, n);
        const login = await fetch(`${srv.url}/login`, {
          method: 'POST',
          redirect: 'manual',
          body: new URLSearchParams({ token: ADMIN, next: '/' }).toString(),
          headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
        });
        const cookie = (login.headers.get('set-cookie') ?? '').split(';')[0]!;
        const cases: [string, string, Record<string, string>][] = [
          ['page_worst_first', '/', { Cookie: cookie }],
          ['page_search', '/?q=node-0042', { Cookie: cookie }],
          ['page_deep', `/?sort=name&page=${Math.floor(n / 50)}`, { Cookie: cookie }],
          ['api_1000', '/v1/nodes?sort=health&limit=1000', { Authorization: `Bearer ${ADMIN}` }],
        ];
        for (const [name, path, headers] of cases) {
          const ms: number[] = [];
          let bytes = 0;
          for (let i = 0; i < 40; i++) {
            const t0 = performance.now();
            const r = await fetch(`${srv.url}${path}`, { headers });
            const body = await r.arrayBuffer();
            ms.push(performance.now() - t0);
            bytes = body.byteLength;
            if (r.status !== 200) throw new Error(`${path}: ${r.status}`);
          }
          process.stdout.write(
            `${JSON.stringify({ bench: `sync.fleet.${name}`, unit: 'ms', p50: pct(ms, 50), p99: pct(ms, 99), n: 40, nodes: n, bytes })}\n`,
          );
        }
      } finally {
        await srv.close();
      }
    }

    const reports = Number(process.env.EDGEKEEPER_BENCH_FLEET_REPORTS ?? 1_000_000);
    const admin = new pg.Client({ connectionString: pgs.url });
    await admin.connect();
    await admin.query('CREATE DATABASE fleet_upgrade');
    await admin.end();
    const pool = new pg.Pool({ connectionString: pgs.url.replace(/\/postgres$/, '/fleet_upgrade') });
    try {
      await pool.query(`CREATE TABLE fleet_schema (version integer NOT NULL); ${FLEET_MIGRATIONS[0]!.sql}`);
      await pool.query('INSERT INTO fleet_schema VALUES (1)');
      await pool.query("INSERT INTO fleet_nodes (name) VALUES ('n')");
      await pool.query("INSERT INTO fleet_streams (node_id, stream) VALUES (1, 'a')");
      await pool.query(
        `INSERT INTO fleet_reports (node_id, stream_id, id, device, received_at_ms, ts_ms, seq, metrics)
         SELECT 1, 1, i, 'dev-' || (i % 5), 1700000000000 + i * 10, 1700000000000 + i * 10 - 5, i,
           ('{"temp":' || (20 + i % 100 / 10.0) || ',"hum":' || (40 + i % 13) || ',"press":1013.2,"volt":3.3,"count":' || i || ',"rpm":1200,"load":' || (i % 7) || ',"mode":1}')::json
         FROM generate_series(1, $1) i`,
        [reports],
      );
      await pool.query('CHECKPOINT');
      const t0 = performance.now();
      await migrate(pool);
      const s = (performance.now() - t0) / 1000;
      process.stdout.write(
        `${JSON.stringify({ bench: 'sync.fleet.schema_upgrade', unit: 's', p50: Number(s.toFixed(2)), p99: Number(s.toFixed(2)), n: 1, reports })}\n`,
      );
    } finally {
      await pool.end();
    }
  } finally {
    pgs.stop();
  }
}
