/**
 * The uplink killed with SIGKILL during uploads, many rounds, while reports keep being written:
 * afterwards every report and event in the node's SQLite file is in PostgreSQL exactly once and
 * the batch sequence has no hole. Proves that cursors move only with acknowledged batches and
 * that a batch rebuilt after a crash is recognised by its (node, seq) idempotency key.
 * Needs: PostgreSQL 15 binaries (see pg.ts).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { type FleetServer, startFleetServer } from '../../src/sync/index.js';
import { openNodeStore, tempDir, waitFor } from './helpers.js';
import { startPostgres, type TestPostgres } from './pg.js';

const CHILD = join(import.meta.dirname, 'fixtures', 'uplink-child.ts');

let pg: TestPostgres;
let srv: FleetServer;
const children = new Set<ChildProcess>();

before(async () => {
  pg = await startPostgres();
  srv = await startFleetServer({ database: pg.url, port: 0, nodes: { killed: 'tok' } });
});
after(async () => {
  for (const c of children) c.kill('SIGKILL');
  await srv?.close();
  pg?.stop();
});

function spawnNode(dir: string, insert: boolean): { child: ChildProcess; lines: string[] } {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', CHILD, dir, srv.url, 'killed', 'tok', insert ? '1' : '0'],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  children.add(child);
  child.on('exit', () => children.delete(child));
  const lines: string[] = [];
  child.stdout!.setEncoding('utf8').on('data', (d: string) => lines.push(...d.split('\n').filter(Boolean)));
  return { child, lines };
}

async function pgCount(table: string): Promise<number> {
  const r = await srv.pool.query(`SELECT count(*)::int AS n FROM ${table}`);
  return r.rows[0].n;
}

test('SIGKILL during uploads, many rounds: nothing lost, nothing duplicated', async () => {
  const t = tempDir();
  try {
    const rounds = 6;
    for (let round = 0; round < rounds; round++) {
      const before = await pgCount('fleet_reports');
      const { child, lines } = spawnNode(t.dir, true);
      await waitFor('child writing', () => lines.some((l) => l.includes('"last"')), 60_000);
      // Kill once uploads are under way: some batch stored since this round began.
      await waitFor('uploads in progress', async () => (await pgCount('fleet_reports')) > before, 60_000);
      await new Promise((r) => setTimeout(r, 50 + round * 37));
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
    // A last run without new reports drains the backlog.
    const { child } = spawnNode(t.dir, false);
    const store = await openNodeStore(t.dir);
    try {
      const local = (table: string) =>
        store
          .query<{ id: number }>(`SELECT id FROM ${table} ORDER BY id`)
          .all()
          .map((r) => r.id);
      const remote = async (table: string) =>
        (await srv.pool.query(`SELECT id FROM ${table} ORDER BY id`)).rows.map((r) => Number(r.id));
      const want = local('reports');
      assert.ok(want.length > 1000, `the child wrote ${want.length} reports`);
      await waitFor('backlog drained', async () => (await pgCount('fleet_reports')) >= want.length, 120_000);
      assert.deepEqual(await remote('fleet_reports'), want);
      await waitFor(
        'events drained',
        async () => (await pgCount('fleet_events')) >= local('events').length,
        60_000,
      );
      assert.deepEqual(await remote('fleet_events'), local('events'));
      const seqs = (await srv.pool.query('SELECT seq FROM fleet_batches ORDER BY seq')).rows.map((r) =>
        Number(r.seq),
      );
      assert.deepEqual(
        seqs,
        seqs.map((_, i) => i + 1),
      );
    } finally {
      child.kill('SIGKILL');
      await store.close();
    }
  } finally {
    t.remove();
  }
});
