/**
 * startDaemon in-process with small test parts: parts start in order with a working context
 * (store, routes, readiness checks), stop in reverse while the store still commits, and the
 * store closes last; a part that fails to start unwinds everything already started.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { loadConfig } from '../../src/config/index.js';
import { allSections, daemonMigrations, type PartEntry, startDaemon } from '../../src/daemon/index.js';
import { AlreadyRunningError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import type { Part } from '../../src/part.js';
import { openStore } from '../../src/store/index.js';

function testPart(name: string, events: string[], opts: { failStart?: boolean } = {}): PartEntry {
  return {
    name,
    migrations: [
      {
        part: name,
        version: 1,
        sql: `CREATE TABLE ${name}_rows (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT NOT NULL)`,
      },
    ],
    create(ctx): Part {
      let healthy = true;
      ctx.http.add('GET', `/v1/${name}`, (_req, res) => {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end(`${name} on ${ctx.nodeName}`);
      });
      ctx.http.add('POST', `/v1/${name}/sick`, (_req, res) => {
        healthy = false;
        res.end();
      });
      ctx.addReadinessCheck(name, () => (healthy ? undefined : `${name} is sick`));
      return {
        name,
        async start() {
          events.push(`start ${name}`);
          if (opts.failStart) throw new Error(`${name} cannot start`);
          await ctx.store.write({
            sql: [{ sql: `INSERT INTO ${name}_rows (v) VALUES (?)`, params: ['started'] }],
          });
        },
        async stop() {
          // A part's last write during shutdown still commits: the store closes after the parts.
          if (!opts.failStart) {
            await ctx.store.write({
              sql: [{ sql: `INSERT INTO ${name}_rows (v) VALUES (?)`, params: ['stopped'] }],
            });
          }
          events.push(`stop ${name}`);
        },
        status: () => ({ healthy }),
      };
    },
  };
}

describe('daemon lifecycle', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'ek-life-'));
  after(() => rmSync(tmp, { recursive: true, force: true }));

  const config = (dir: string) =>
    loadConfig({
      env: {},
      sections: allSections([]),
      flags: { 'data-dir': dir, 'http-listen': '127.0.0.1:0', 'node-name': 'n1', 'log-level': 'silent' },
    });

  test('parts start in order, serve routes and readiness, stop in reverse before the store closes', async () => {
    const dir = join(tmp, 'ok');
    const events: string[] = [];
    const entries = [testPart('alpha', events), testPart('beta', events)];
    const d = await startDaemon(config(dir), entries, {
      env: {},
      logger: silentLogger(),
      inlineWriter: true,
    });
    const base = `http://127.0.0.1:${d.httpAddress.port}`;
    try {
      assert.deepEqual(events, ['start alpha', 'start beta']);
      assert.equal(await (await fetch(`${base}/v1/beta`)).text(), 'beta on n1');
      let r = await fetch(`${base}/readyz`);
      assert.equal(r.status, 200);
      assert.deepEqual(((await r.json()) as { checks: string[] }).checks, ['store', 'alpha', 'beta']);
      await fetch(`${base}/v1/alpha/sick`, { method: 'POST', headers: { 'content-length': '0' } });
      r = await fetch(`${base}/readyz`);
      assert.equal(r.status, 503);
      assert.deepEqual(await r.json(), { status: 'not ready', failing: { alpha: 'alpha is sick' } });
      const status = (await (await fetch(`${base}/v1/status`)).json()) as { node: string; parts: unknown };
      assert.equal(status.node, 'n1');
      assert.deepEqual(status.parts, { alpha: { healthy: false }, beta: { healthy: true } });
      const metrics = await (await fetch(`${base}/metrics`)).text();
      assert.match(metrics, /edgekeeper_daemon_ready 0/);
      // The store's own metrics are on the same registry.
      assert.match(metrics, /^edgekeeper_store_revision \d+$/m);
      assert.match(metrics, /^edgekeeper_store_commit_seconds_count \d+$/m);
      assert.match(metrics, /edgekeeper_daemon_info\{version="[^"]+",node="n1"\} 1/);
      // One daemon per state directory, in-process too.
      await assert.rejects(
        startDaemon(config(dir), [], { env: {}, logger: silentLogger() }),
        AlreadyRunningError,
      );
    } finally {
      await d.stop();
    }
    await d.stop(); // idempotent
    assert.deepEqual(events, ['start alpha', 'start beta', 'stop beta', 'stop alpha']);
    assert.ok(!existsSync(join(dir, 'edgekeeper.pid')));
    await assert.rejects(fetch(`${base}/healthz`), 'HTTP is closed');
    const store = await openStore({
      file: join(dir, 'edgekeeper.db'),
      inlineWriter: true,
      logger: silentLogger(),
      migrations: [...daemonMigrations, ...entries.flatMap((e) => e.migrations ?? [])],
    });
    try {
      const rows = store.query<{ v: string }>('SELECT v FROM alpha_rows ORDER BY id').all();
      assert.deepEqual(
        rows.map((x) => x.v),
        ['started', 'stopped'],
      );
    } finally {
      await store.close();
    }
  });

  test('a part that fails to start unwinds the parts before it, the store and the pid file', async () => {
    const dir = join(tmp, 'fail');
    const events: string[] = [];
    const entries = [
      testPart('alpha', events),
      testPart('beta', events, { failStart: true }),
      testPart('gamma', events),
    ];
    await assert.rejects(
      startDaemon(config(dir), entries, { env: {}, logger: silentLogger(), inlineWriter: true }),
      /beta cannot start/,
    );
    assert.deepEqual(events, ['start alpha', 'start beta', 'stop beta', 'stop alpha']);
    assert.ok(!existsSync(join(dir, 'edgekeeper.pid')));
    // The database was closed: a new daemon starts on it.
    const d = await startDaemon(config(dir), [], { env: {}, logger: silentLogger(), inlineWriter: true });
    await d.stop();
  });

  test("parts get a runtime directory off the data directory: systemd's, else one per data directory in /dev/shm", async () => {
    const seen: string[] = [];
    const modes: number[] = [];
    const probe: PartEntry = {
      name: 'probe',
      create: (ctx) => {
        seen.push(ctx.runtimeDir);
        modes.push(statSync(ctx.runtimeDir).mode & 0o777);
        return { name: 'probe', start: async () => {}, stop: async () => {} };
      },
    };
    const runtime = join(tmp, 'runtime');
    for (const [dir, env] of [
      [join(tmp, 'rt-a'), {}],
      [join(tmp, 'rt-b'), {}],
      [join(tmp, 'rt-c'), { RUNTIME_DIRECTORY: runtime }],
    ] as const) {
      const d = await startDaemon(config(dir), [probe], { env, logger: silentLogger() });
      await d.stop();
    }
    const [a, b, c] = seen;
    assert.ok(a!.startsWith('/dev/shm/edgekeeper-') && b!.startsWith('/dev/shm/edgekeeper-'), `${a} ${b}`);
    assert.notEqual(a, b, 'two data directories share one runtime directory');
    assert.deepEqual(modes.slice(0, 2), [0o700, 0o700]);
    assert.equal(c, runtime);
    // The daemon's own directories in /dev/shm go when it stops; systemd's stays for systemd.
    assert.ok(!existsSync(a!) && !existsSync(b!), 'the /dev/shm directories are removed at stop');
    assert.ok(existsSync(runtime));
  });
});
