/**
 * HTTPS with client certificates: a node authenticates with a certificate whose CN is its name
 * (no token), signed by the CA the receiver trusts; a certificate naming another node is refused.
 * Needs: PostgreSQL 15 (see pg.ts), openssl.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { createSyncPart, type FleetServer, startFleetServer } from '../../src/sync/index.js';
import { insertReports, makeContext, openNodeStore, tempDir, waitFor } from './helpers.js';
import { startPostgres, type TestPostgres } from './pg.js';

let pg: TestPostgres;
let srv: FleetServer;
const t = tempDir('ek-sync-tls-');
const f = (name: string) => join(t.dir, name);

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: 'pipe' });
}

function issue(name: string, cn: string, ext?: string): void {
  openssl([
    'req',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    f(`${name}.key`),
    '-out',
    f(`${name}.csr`),
    '-subj',
    `/CN=${cn}`,
  ]);
  const args = [
    'x509',
    '-req',
    '-in',
    f(`${name}.csr`),
    '-CA',
    f('ca.crt'),
    '-CAkey',
    f('ca.key'),
    '-CAcreateserial',
    '-out',
    f(`${name}.crt`),
    '-days',
    '1',
  ];
  if (ext) {
    writeFileSync(f(`${name}.ext`), ext);
    args.push('-extfile', f(`${name}.ext`));
  }
  openssl(args);
}

before(async () => {
  openssl([
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    f('ca.key'),
    '-out',
    f('ca.crt'),
    '-days',
    '1',
    '-subj',
    '/CN=edgekeeper test CA',
  ]);
  issue('server', '127.0.0.1', 'subjectAltName=IP:127.0.0.1\n');
  issue('certnode', 'certnode');
  issue('other', 'othernode');
  pg = await startPostgres();
  srv = await startFleetServer({
    database: pg.url,
    port: 0,
    nodes: { certnode: 'unused-token', othernode: 'unused-2' },
    tls: { cert: f('server.crt'), key: f('server.key'), clientCa: f('ca.crt') },
  });
});
after(async () => {
  await srv?.close();
  pg?.stop();
  t.remove();
});

test('a node uploads with its client certificate; a certificate for another node is refused', async () => {
  assert.match(srv.url, /^https:/);
  for (const [cert, expectOk] of [
    ['certnode', true],
    ['other', false],
  ] as const) {
    const d = tempDir();
    const store = await openNodeStore(d.dir);
    const part = createSyncPart(makeContext(store, 'certnode', d.dir), {
      url: srv.url,
      certFile: f(`${cert}.crt`),
      keyFile: f(`${cert}.key`),
      caFile: f('ca.crt'),
      idleInterval: 20,
      batchDelay: 0,
      retryBase: 10,
      retryMax: 100,
    });
    try {
      await insertReports(store, 30);
      await part.start();
      if (expectOk) {
        await waitFor('reports over TLS', async () => {
          const r = await srv.pool.query('SELECT count(*)::int AS n FROM fleet_reports');
          return r.rows[0].n === 30;
        });
      } else {
        await waitFor('refused', () => /401/.test(part.status().lastError ?? ''));
        assert.equal(part.status().state, 'retrying');
      }
    } finally {
      await part.stop();
      await store.close();
      d.remove();
    }
  }
});
