/**
 * The whole node, end to end, with real peers: MQTT.js devices publish QoS 1 reports to the
 * daemon's embedded broker; the daemon (a real `edgekeeper run` child process) stores them,
 * shows the devices to `etcdctl watch`, and uploads them to the reference fleet receiver on a real
 * PostgreSQL. The daemon is killed with SIGKILL half-way and restarted. Every report the broker
 * acknowledged must arrive in PostgreSQL exactly once.
 *
 * Needs: etcdctl (etcd-client), PostgreSQL 15, root (PostgreSQL runs as its own user).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'node:test';
import mqtt from 'mqtt';
import pg from 'pg';
import { silentLogger } from '../../src/log.js';
import { startFleetServer } from '../../src/sync/index.js';
import { freePort, startPostgres } from '../sync/pg.js';

const main = new URL('../../src/main.ts', import.meta.url).pathname;

async function waitFor<T>(
  what: string,
  f: () => Promise<T | undefined> | T | undefined,
  ms = 60_000,
): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
}

test('MQTT reports reach PostgreSQL exactly once through a SIGKILL; devices show in etcdctl watch', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ek-e2e-'));
  const db = await startPostgres();
  const fleet = await startFleetServer({
    database: db.url,
    port: 0,
    host: '127.0.0.1',
    nodes: { e2e: 'secret-token' },
    logger: silentLogger(),
  });
  const [httpPort, etcdPort, mqttPort] = [await freePort(), await freePort(), await freePort()];
  const config = join(dir, 'edgekeeper.json');
  writeFileSync(
    config,
    JSON.stringify({
      node: { name: 'e2e', dataDir: join(dir, 'data') },
      http: { listen: `127.0.0.1:${httpPort}` },
      etcd: { listen: `127.0.0.1:${etcdPort}` },
      mqtt: { listen: `127.0.0.1:${mqttPort}` },
      probes: { enabled: [] },
      sync: { url: fleet.url, token: 'secret-token', idleInterval: '200ms', batchDelay: 0 },
    }),
  );
  let daemon: ChildProcess | undefined;
  const watch = spawn(
    'etcdctl',
    [`--endpoints=127.0.0.1:${etcdPort}`, 'watch', '--prefix', '/edgekeeper/devices/'],
    {
      env: { ...process.env, ETCDCTL_API: '3' },
    },
  );
  const clients: mqtt.MqttClient[] = [];
  const client = new pg.Client({ connectionString: db.url });
  t.after(async () => {
    for (const c of clients) c.end(true);
    watch.kill('SIGKILL');
    daemon?.kill('SIGKILL');
    await client.end().catch(() => {});
    await fleet.close();
    db.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const start = async () => {
    daemon = spawn(process.execPath, ['--import', 'tsx', main, 'run', '--config', config], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    await waitFor('the daemon to be ready', async () => {
      const r = await fetch(`http://127.0.0.1:${httpPort}/readyz`);
      return r.ok ? true : undefined;
    });
  };
  await start();

  const devices = ['press-1', 'press-2', 'oven-1'];
  const secrets = new Map<string, string>();
  for (const id of devices) {
    // registering a device needs the admin token the daemon wrote for its own user
    const token = readFileSync(join(dir, 'data', 'http.token'), 'utf8').trim();
    const r = await fetch(`http://127.0.0.1:${httpPort}/v1/devices`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}` },
      body: JSON.stringify({ id }),
    });
    assert.equal(r.status, 201);
    secrets.set(id, ((await r.json()) as { secret: string }).secret);
  }
  let watchOut = '';
  watch.stdout!.on('data', (d) => (watchOut += d));

  const acked = new Set<string>();
  const perDevice = 150;
  for (const id of devices) {
    const c = mqtt.connect(`mqtt://127.0.0.1:${mqttPort}`, {
      clientId: id,
      username: id,
      password: secrets.get(id)!,
      reconnectPeriod: 200,
      clean: true,
    });
    c.on('error', () => {});
    clients.push(c);
  }
  const publishRange = async (from: number, to: number) =>
    Promise.all(
      devices.map(async (id, i) => {
        for (let seq = from; seq < to; seq++) {
          const payload = JSON.stringify({ seq, metrics: { temp: 20 + seq / 10, load: i } });
          // PUBACK = stored; a publish cut by the crash is resent by MQTT.js after reconnecting.
          await clients[i]!.publishAsync(`edgekeeper/v1/devices/${id}/report`, payload, { qos: 1 });
          acked.add(`${id}/${seq}`);
        }
      }),
    );
  await publishRange(0, perDevice / 2);
  daemon!.kill('SIGKILL');
  await new Promise((r) => daemon!.once('exit', r));
  const second = publishRange(perDevice / 2, perDevice);
  await start();
  await second;
  assert.equal(acked.size, devices.length * perDevice);

  await client.connect();
  const rows = await waitFor('every report in PostgreSQL', async () => {
    const r = await client.query('SELECT device, seq FROM fleet_reports');
    return r.rowCount === acked.size ? r.rows : undefined;
  });
  const seen = new Set(rows.map((r: { device: string; seq: string }) => `${r.device}/${r.seq}`));
  assert.equal(seen.size, rows.length, 'a report arrived twice');
  assert.deepEqual(
    [...acked].filter((k) => !seen.has(k)),
    [],
    'acknowledged reports are missing',
  );
  await waitFor('devices in the etcd watch', () =>
    devices.every((d) => watchOut.includes(`/edgekeeper/devices/${d}`)) ? true : undefined,
  );
  const doc = JSON.parse(watchOut.trim().split('\n').at(-1)!) as { id?: string };
  assert.ok(doc.id && devices.includes(doc.id), 'the device document is JSON naming the device');
});
