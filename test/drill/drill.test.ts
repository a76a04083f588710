/**
 * The fault drill's short form (see drill.ts): about a minute of mixed etcd and MQTT load with
 * 5 SIGKILLs, one receiver outage, a start on a slow disk and one in a time namespace; every
 * acknowledged etcd write and report is checked at the end. The long form is
 * `npm run bench -- drill`.
 *
 * Needs: PostgreSQL 15, strace, unshare, root.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import { runDrill } from './drill.js';

test('fault drill (short): nothing acknowledged is lost or doubled through kills and outages', async () => {
  const r = await runDrill({ seconds: 60, kills: 5, devices: 3, etcdClients: 2, outages: 1 });
  process.stderr.write(`drill: ${JSON.stringify(r)}\n`);
  assert.equal(r.kills, 5);
  assert.ok(r.starts.slowDisk >= 1 && r.starts.timeNamespace >= 1);
  assert.ok(r.acknowledged.puts > 0 && r.acknowledged.txns > 0 && r.acknowledged.leaseKeys > 0);
  assert.ok(r.acknowledged.reports > 0);
});
