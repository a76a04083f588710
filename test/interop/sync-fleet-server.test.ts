/**
 * `edgekeeper fleet-server` as an operator runs it: two receiver processes started at once on one
 * PostgreSQL 15 database (the schema is migrated once), curl as the uploading client, psql
 * reading what was stored, desired state set with the admin token, SIGTERM for a clean exit.
 * Needs: PostgreSQL 15 (server binaries and psql), curl.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { encodeBatch, encodeCbor } from '../../src/sync/codec.js';
import { FLEET_MIGRATIONS } from '../../src/sync/receiver/schema.js';
import { tempDir, waitFor } from '../sync/helpers.js';
import { freePort, startPostgres, type TestPostgres } from '../sync/pg.js';

const CLI = join(import.meta.dirname, '..', 'sync', 'fixtures', 'cli.ts');
let pg: TestPostgres;
const tmp = tempDir('ek-fleet-cli-');
const children = new Set<ChildProcess>();

before(async () => {
  pg = await startPostgres();
});
after(() => {
  for (const c of children) c.kill('SIGKILL');
  pg?.stop();
  tmp.remove();
});

function run(args: string[]): { child: ChildProcess; out: string[]; exit: Promise<number | null> } {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  const out: string[] = [];
  child.stdout!.setEncoding('utf8').on('data', (d: string) => out.push(d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => out.push(d));
  const exit = new Promise<number | null>((r) =>
    child.once('exit', (code) => {
      children.delete(child);
      r(code);
    }),
  );
  return { child, out, exit };
}

function curl(args: string[]): { status: number; body: string } {
  const out = execFileSync('curl', ['-s', '-w', '\n%{http_code}', ...args], { encoding: 'utf8' });
  const i = out.lastIndexOf('\n');
  return { status: Number(out.slice(i + 1)), body: out.slice(0, i) };
}

function psql(sql: string): string {
  return execFileSync('psql', [pg.url, '-At', '-c', sql], { encoding: 'utf8' }).trim();
}

test('fleet-server: two receivers on one database, curl uploads, psql reads, SIGTERM exits', async () => {
  const nodesFile = join(tmp.dir, 'nodes');
  writeFileSync(nodesFile, '# fleet nodes\nn2=tok-2\n');
  const [p1, p2] = [await freePort(), await freePort()];
  const common = [
    '--database',
    pg.url,
    '--node',
    'n1=tok-1',
    '--nodes-file',
    nodesFile,
    '--admin-token',
    'adm',
  ];
  const a = run(['fleet-server', ...common, '--listen', `127.0.0.1:${p1}`]);
  const b = run(['fleet-server', ...common, '--listen', `127.0.0.1:${p2}`]);
  await waitFor(
    'both listening',
    () => a.out.join('').includes('listening') && b.out.join('').includes('listening'),
    60_000,
  );
  // Each migration applied once although two receivers raced to apply them.
  assert.equal(psql('SELECT count(*) FROM fleet_schema'), String(FLEET_MIGRATIONS.length));

  const reports = Array.from({ length: 20 }, (_, i) => ({
    id: i + 1,
    device: 'pump-1',
    received_at: 1_700_000_000_000 + i,
    ts: null,
    seq: i,
    body: encodeCbor({ metrics: { flow: i * 1.5, on: 1 } }),
  }));
  const file = join(tmp.dir, 'batch.gz');
  writeFileSync(
    file,
    gzipSync(
      encodeBatch({
        node: 'n1',
        stream: 'abc',
        seq: 1,
        sentAt: Date.now(),
        applied: null,
        backlog: { events: 0, reports: 0, samples: 0 },
        events: [],
        reports,
        samples: [],
      }),
    ),
  );
  const post = (port: number, token: string) =>
    curl([
      '-H',
      `Authorization: Bearer ${token}`,
      '-H',
      'Content-Encoding: gzip',
      '-H',
      'Content-Type: application/cbor',
      '--data-binary',
      `@${file}`,
      `http://127.0.0.1:${port}/v1/nodes/n1/batches`,
    ]);
  const first = post(p1, 'tok-1');
  assert.equal(first.status, 200, first.body);
  assert.equal(JSON.parse(first.body).duplicate, false);
  // The same batch through the other receiver: recognised, not stored again.
  const again = post(p2, 'tok-1');
  assert.equal(again.status, 200, again.body);
  assert.equal(JSON.parse(again.body).duplicate, true);
  const wrong = post(p2, 'tok-2');
  assert.equal(wrong.status, 401);
  assert.equal(JSON.parse(wrong.body).code, 'EDGE_ERR_SYNC_UNAUTHORIZED');
  assert.equal(psql('SELECT count(*) FROM fleet_reports'), '20');
  assert.equal(psql("SELECT metrics->>'flow' FROM fleet_reports WHERE id = 3"), '3');

  const put = curl([
    '-X',
    'PUT',
    '-H',
    'Authorization: Bearer adm',
    '--data',
    '{"keys":{"mode":"eco"}}',
    `http://127.0.0.1:${p1}/v1/nodes/n2/desired`,
  ]);
  assert.equal(put.status, 200, put.body);
  const got = curl(['-H', 'Authorization: Bearer tok-2', `http://127.0.0.1:${p2}/v1/nodes/n2/desired`]);
  assert.deepEqual(JSON.parse(got.body), { version: '1', keys: { mode: 'eco' } });
  const list = curl(['-u', 'ops:adm', `http://127.0.0.1:${p2}/v1/nodes`]);
  assert.deepEqual(
    JSON.parse(list.body).nodes.map((n: { name: string }) => n.name),
    ['n1', 'n2'],
  );

  a.child.kill('SIGTERM');
  b.child.kill('SIGTERM');
  assert.equal(await a.exit, 0);
  assert.equal(await b.exit, 0);
});

test('fleet-server refuses bad arguments with usage and exit code 2', async () => {
  const r = run(['fleet-server', '--listen', '127.0.0.1:1']);
  assert.equal(await r.exit, 2);
  assert.match(r.out.join(''), /--database is required/);
  const s = run(['sync', 'nonsense']);
  assert.equal(await s.exit, 2);
  assert.match(s.out.join(''), /unknown subcommand "nonsense"; one of status/);
});
