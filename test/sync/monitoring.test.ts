/**
 * The monitoring assets in assets/monitoring: the Prometheus rule files pass `promtool check
 * rules` and their own `promtool test rules`; the Grafana dashboard parses and every panel has a
 * query; and every metric the rules and the dashboard name is exported by a real daemon (all its
 * parts, uploading to a real receiver) or by that real receiver, scraped here. The same daemon
 * shows that a node's health reaches the receiver through the daemon's own wiring (readiness and
 * the status frame's alerts): a summary in its batches and a node.ready event.
 * Needs: promtool (Debian's prometheus package), PostgreSQL 15.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadConfig } from '../../src/config/index.js';
import { allSections, allFlags, type Daemon, parts, startDaemon } from '../../src/daemon/index.js';
import { silentLogger } from '../../src/log.js';
import { type FleetServer, startFleetServer } from '../../src/sync/receiver/server.js';
import { tempDir, waitFor } from './helpers.js';
import { startPostgres, type TestPostgres } from './pg.js';

const DIR = join(import.meta.dirname, '..', '..', 'assets', 'monitoring');
const RULES = ['edgekeeper-node.rules.yml', 'edgekeeper-fleet.rules.yml'];
const RULE_TESTS = ['edgekeeper-node.rules.test.yml', 'edgekeeper-fleet.rules.test.yml'];
const DASHBOARD = 'edgekeeper-grafana-dashboard.json';

function promtool(args: string[]): { status: number | null; out: string } {
  const r = spawnSync('promtool', args, { cwd: DIR, encoding: 'utf8' });
  if (r.error) {
    const msg = `promtool is missing (apt-get install prometheus): ${r.error.message}`;
    if (process.env.CI === 'true') throw new Error(msg);
    console.warn(`SKIPPING: ${msg}`);
    return { status: 0, out: '' };
  }
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

/** Metric names (families) in a /metrics text, with a histogram's series names. */
function exported(text: string): Set<string> {
  const out = new Set<string>();
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    out.add(m[1]!);
    if (m[2] === 'histogram') for (const s of ['_bucket', '_sum', '_count']) out.add(`${m[1]}${s}`);
  }
  return out;
}

describe('monitoring assets', () => {
  test('promtool check rules and promtool test rules pass', () => {
    const check = promtool(['check', 'rules', ...RULES]);
    assert.equal(check.status, 0, check.out);
    const tests = promtool(['test', 'rules', ...RULE_TESTS]);
    assert.equal(tests.status, 0, tests.out);
  });

  test('the rule tests fail on a broken rule (they test something)', () => {
    if (spawnSync('promtool', ['--version']).error) return;
    const dir = tempDir('ek-rules-');
    try {
      for (const f of [...RULES, ...RULE_TESTS]) {
        let text = readFileSync(join(DIR, f), 'utf8');
        // The stale threshold off by one: the fleet tests must notice.
        if (f === 'edgekeeper-fleet.rules.yml')
          text = text.replace(
            'max(edgekeeper_fleet_nodes{health="stale"}) > 0',
            'max(edgekeeper_fleet_nodes{health="stale"}) > 1',
          );
        writeFileSync(join(dir.dir, f), text);
      }
      const r = spawnSync('promtool', ['test', 'rules', 'edgekeeper-fleet.rules.test.yml'], {
        cwd: dir.dir,
        encoding: 'utf8',
      });
      assert.notEqual(r.status, 0, 'a wrong threshold fails the rule tests');
    } finally {
      dir.remove();
    }
  });

  describe('every metric the rules and the dashboard use is exported', () => {
    let pg: TestPostgres;
    let srv: FleetServer;
    let daemon: Daemon;
    const tmp = tempDir('ek-mon-');

    before(async () => {
      pg = await startPostgres();
      srv = await startFleetServer({ database: pg.url, port: 0, nodes: { 'mon-node': 'tok-mon-node-1234' } });
      const config = loadConfig({
        env: {
          EDGEKEEPER_SYNC_URL: srv.url,
          EDGEKEEPER_SYNC_TOKEN: 'tok-mon-node-1234',
          EDGEKEEPER_SYNC_HEALTH_INTERVAL: '1s',
          EDGEKEEPER_SYNC_IDLE_INTERVAL: '100ms',
        },
        // No bpftrace processes: the probes part still registers its metrics.
        fileData: { probes: { enabled: [] } },
        sections: allSections(),
        flagSpecs: allFlags(),
        flags: {
          'data-dir': tmp.dir,
          'http-listen': '127.0.0.1:0',
          'etcd-listen': '127.0.0.1:0',
          'mqtt-listen': '127.0.0.1:0',
          'node-name': 'mon-node',
          'log-level': 'silent',
        },
      });
      daemon = await startDaemon(config, parts, { env: {}, logger: silentLogger(), inlineWriter: true });
    });
    after(async () => {
      await daemon?.stop();
      await srv?.close();
      pg?.stop();
      tmp.remove();
    });

    test('the daemon reports its health to the receiver through its own wiring', async () => {
      await waitFor('node.ready from the daemon at the receiver', async () => {
        const r = await srv.pool.query(
          `SELECT n.health_summary, (SELECT count(*) FROM fleet_events e WHERE e.node_id = n.id AND e.kind = 'node.ready')::int AS ready
           FROM fleet_nodes n WHERE n.name = 'mon-node'`,
        );
        const row = r.rows[0];
        return row?.health_summary && row.ready === 1 ? row : undefined;
      });
      const r = await srv.pool.query(
        "SELECT health_summary, health_level FROM fleet_nodes WHERE name = 'mon-node'",
      );
      const h = r.rows[0].health_summary;
      assert.equal(h.ready, true);
      assert.ok(h.disk.quotaBytes > 0, 'the store quota travels');
      assert.ok(h.nextContactSeconds >= 60, 'the heartbeat promise travels');
    });

    test('names in the rules and the dashboard exist in a real /metrics', async () => {
      const { host, port } = daemon.httpAddress;
      const node = exported(await (await fetch(`http://${host}:${port}/metrics`)).text());
      const fleet = exported(await (await fetch(`${srv.url}/metrics`)).text());
      assert.ok(node.has('edgekeeper_daemon_ready') && fleet.has('edgekeeper_fleet_nodes'));
      const dashboard = JSON.parse(readFileSync(join(DIR, DASHBOARD), 'utf8')) as {
        panels: { type: string; title: string; targets?: { expr: string }[] }[];
      };
      const graphs = dashboard.panels.filter((p) => p.type !== 'row');
      assert.ok(graphs.length >= 20);
      for (const p of graphs)
        assert.ok(p.targets?.length && p.targets.every((t) => t.expr), `${p.title} has queries`);
      const sources = [
        ...RULES.map((f) => ({ f, text: readFileSync(join(DIR, f), 'utf8') })),
        { f: DASHBOARD, text: graphs.flatMap((p) => p.targets!.map((t) => t.expr)).join('\n') },
      ];
      let checked = 0;
      for (const { f, text } of sources) {
        const names = new Set([...text.matchAll(/\bedgekeeper_[a-z0-9_]+/g)].map((m) => m[0]));
        assert.ok(names.size >= 5, `${f} names metrics`);
        const missing = [...names].filter((n) => !node.has(n) && !fleet.has(n));
        assert.deepEqual(missing, [], `${f} uses metrics nobody exports`);
        checked += names.size;
      }
      assert.ok(checked > 30);
    });
  });
});
