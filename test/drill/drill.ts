/**
 * The fault drill: a real `edgekeeper run` child process under mixed load, killed with SIGKILL
 * at random moments and restarted, while the fleet receiver goes away and comes back, some
 * starts run on a slow disk (strace delays every fsync) and some in a private time namespace
 * whose monotonic and boot clocks are a year ahead of the previous run's. At the end every
 * acknowledged write is checked:
 * - etcd: every acknowledged put and txn is there with the revision it was acknowledged with
 *   (each key is written once), revisions are unique and grow in each client's order, every key
 *   put with an acknowledged long lease is still there on that lease;
 * - MQTT: every acknowledged report is stored exactly once in the node and reached PostgreSQL
 *   exactly once.
 *
 * The wall clock is not stepped: CLOCK_REALTIME has no per-namespace offset, and setting it
 * needs CAP_SYS_TIME and moves the whole machine. Wall-clock steps are covered by the unit
 * tests on an injected clock (test/{store,ingest,sync,daemon}/clock-steps.test.ts).
 *
 * The short form is test/drill/drill.test.ts; the long form `npm run bench -- drill`.
 * Needs: PostgreSQL 15, strace, unshare (util-linux), root.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Etcd3 } from 'etcd3';
import mqtt from 'mqtt';
import pg from 'pg';
import { silentLogger } from '../../src/log.js';
import { type FleetServer, startFleetServer } from '../../src/sync/index.js';
import { slowDisk } from '../slowdisk.js';
import { freePort, startPostgres } from '../sync/pg.js';

const main = new URL('../../src/main.ts', import.meta.url).pathname;
const YEAR_S = 365 * 86_400;

export interface DrillOptions {
  /** Seconds of load between the first start and the end of the last kill cycle. */
  seconds: number;
  /** SIGKILLs, spread over the run at random moments. */
  kills: number;
  /** MQTT devices publishing QoS 1 reports. */
  devices: number;
  /** etcd clients, each writing in sequence. */
  etcdClients: number;
  /** Receiver outages (the fleet server closed for a few seconds). */
  outages: number;
  /** Progress lines (stderr in the bench). */
  log?: (line: string) => void;
}

export interface DrillResult {
  seconds: number;
  kills: number;
  starts: { plain: number; slowDisk: number; timeNamespace: number };
  outages: number;
  acknowledged: { puts: number; txns: number; leaseKeys: number; reports: number };
  /** Writes that failed (the daemon was down): neither required nor forbidden afterwards. */
  unacknowledged: { etcd: number };
  storedReports: number;
  fleetReports: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor<T>(what: string, f: () => Promise<T | undefined>, ms = 60_000): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    await sleep(200);
  }
  throw new Error(`drill: timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
}

function check(ok: boolean, what: string): void {
  if (!ok) throw new Error(`drill: ${what}`);
}

export async function runDrill(o: DrillOptions): Promise<DrillResult> {
  const log = o.log ?? (() => {});
  const started = Date.now();
  const dir = mkdtempSync(join(tmpdir(), 'ek-drill-'));
  const db = await startPostgres();
  const fleetPort = await freePort();
  let fleet: FleetServer | undefined;
  const startFleet = async () => {
    fleet = await startFleetServer({
      database: db.url,
      port: fleetPort,
      host: '127.0.0.1',
      nodes: { drill: 'drill-token' },
      logger: silentLogger(),
    });
  };
  const [httpPort, etcdPort, mqttPort] = [await freePort(), await freePort(), await freePort()];
  const dataDir = join(dir, 'data');
  const config = join(dir, 'edgekeeper.json');
  writeFileSync(
    config,
    JSON.stringify({
      node: { name: 'drill', dataDir },
      http: { listen: `127.0.0.1:${httpPort}` },
      etcd: { listen: `127.0.0.1:${etcdPort}` },
      mqtt: { listen: `127.0.0.1:${mqttPort}` },
      probes: { enabled: [] },
      sync: {
        url: `http://127.0.0.1:${fleetPort}`,
        token: 'drill-token',
        idleInterval: '200ms',
        batchDelay: 0,
        retryMax: '2s',
      },
    }),
  );
  const result: DrillResult = {
    seconds: 0,
    kills: 0,
    starts: { plain: 0, slowDisk: 0, timeNamespace: 0 },
    outages: 0,
    acknowledged: { puts: 0, txns: 0, leaseKeys: 0, reports: 0 },
    unacknowledged: { etcd: 0 },
    storedReports: 0,
    fleetReports: 0,
  };
  let daemon: ChildProcess | undefined;
  let monoOffset = 0;
  const clients: mqtt.MqttClient[] = [];
  const etcds: Etcd3[] = [];
  let running = true;

  /** The daemon's own pid: under strace or unshare the child we spawned is not the daemon. */
  const daemonPid = () => Number(readFileSync(join(dataDir, 'edgekeeper.pid'), 'utf8').trim());

  const start = async (n: number) => {
    const node = [process.execPath, '--import', 'tsx', main, 'run', '--config', config];
    let argv = node;
    // the first start is plain; then slow disk and a time namespace in turn with plain ones
    const kind = n === 0 ? 'plain' : (['plain', 'slowDisk', 'timeNamespace'] as const)[n % 3]!;
    if (kind === 'slowDisk') argv = [...slowDisk(20), ...node];
    if (kind === 'timeNamespace') {
      // each such start's monotonic and boot clocks run a year further ahead than the last
      monoOffset += YEAR_S;
      argv = [
        'unshare',
        '--time',
        '--fork',
        '--kill-child',
        `--monotonic=${monoOffset}`,
        `--boottime=${monoOffset}`,
        ...node,
      ];
    }
    result.starts[kind]++;
    daemon = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    daemon.stderr!.on('data', (d) => {
      err = (err + d).slice(-4000);
    });
    const child = daemon;
    await waitFor(`the daemon (${kind}) to be ready${err ? `; stderr: ${err}` : ''}`, async () => {
      if (child.exitCode !== null) throw new Error(`the daemon exited: ${err}`);
      const r = await fetch(`http://127.0.0.1:${httpPort}/readyz`);
      return r.ok ? true : undefined;
    });
    log(`start ${n} (${kind}) ready`);
  };

  const kill = async () => {
    const child = daemon!;
    const exited = new Promise((r) => child.once('exit', r));
    process.kill(daemonPid(), 'SIGKILL');
    await exited;
    result.kills++;
  };

  try {
    await startFleet();
    await start(0);
    const token = readFileSync(join(dataDir, 'http.token'), 'utf8').trim();
    const devices = Array.from({ length: o.devices }, (_, i) => `drill-${i}`);
    const secrets = new Map<string, string>();
    for (const id of devices) {
      const r = await fetch(`http://127.0.0.1:${httpPort}/v1/devices`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}` },
        body: JSON.stringify({ id }),
      });
      check(r.status === 201, `registering ${id} answered ${r.status}`);
      secrets.set(id, ((await r.json()) as { secret: string }).secret);
    }

    // --- load -------------------------------------------------------------------------------
    const ackedReports = new Set<string>();
    const reporting = devices.map(async (id) => {
      const c = mqtt.connect(`mqtt://127.0.0.1:${mqttPort}`, {
        clientId: id,
        username: id,
        password: secrets.get(id)!,
        reconnectPeriod: 300,
        clean: true,
      });
      c.on('error', () => {});
      clients.push(c);
      for (let seq = 0; running; seq++) {
        const payload = JSON.stringify({ seq, ts: seq, metrics: { v: seq } });
        // PUBACK = stored; a publish cut by a kill is resent by MQTT.js after reconnecting
        await c.publishAsync(`edgekeeper/v1/devices/${id}/report`, payload, { qos: 1 });
        ackedReports.add(`${id}/${seq}`);
        await sleep(20);
      }
    });

    const acked: { key: string; value: string; rev: number; lease?: string }[] = [];
    const writing = Array.from({ length: o.etcdClients }, async (_, w) => {
      const c = new Etcd3({ hosts: `127.0.0.1:${etcdPort}`, dialTimeout: 2000 });
      etcds.push(c);
      let lastRev = 0;
      for (let i = 0; running; i++) {
        const key = `/drill/${w}/${i}`;
        const value = `v${i}`;
        try {
          let rev: number;
          let lease: string | undefined;
          if (i % 10 === 9) {
            // a long lease: it must outlive every kill (TTL re-based at each start)
            const l = c.lease(3600, { autoKeepAlive: false });
            lease = await l.grant();
            rev = Number((await l.put(key).value(value).exec()).header.revision);
          } else if (i % 3 === 0) {
            const t = await c.if(key, 'Create', '==', 0).then(c.put(key).value(value)).commit();
            check(t.succeeded, `txn on the new key ${key} did not succeed`);
            rev = Number(t.header.revision);
          } else {
            rev = Number((await c.put(key).value(value).exec()).header.revision);
          }
          check(rev > lastRev, `client ${w}: revision ${rev} acknowledged after ${lastRev}`);
          lastRev = rev;
          acked.push({ key, value, rev, lease });
          if (lease) result.acknowledged.leaseKeys++;
          else if (i % 3 === 0) result.acknowledged.txns++;
          else result.acknowledged.puts++;
        } catch (err) {
          if ((err as Error).message.startsWith('drill:')) throw err;
          result.unacknowledged.etcd++;
          await sleep(100);
        }
      }
    });

    // --- faults -----------------------------------------------------------------------------
    const end = started + o.seconds * 1000;
    const outageAt = new Set(
      Array.from({ length: o.outages }, (_, i) => Math.floor(((i + 1) * o.kills) / (o.outages + 1))),
    );
    for (let k = 0; k < o.kills; k++) {
      const left = Math.max(1000, (end - Date.now()) / (o.kills - k));
      await sleep(left * (0.5 + Math.random()));
      await kill();
      log(`kill ${result.kills} (${ackedReports.size} reports, ${acked.length} etcd writes acknowledged)`);
      if (outageAt.has(k)) {
        await fleet!.close();
        result.outages++;
        log('receiver down');
        await start(k + 1);
        await sleep(3000);
        await startFleet();
        log('receiver up');
      } else await start(k + 1);
    }
    await sleep(2000);
    running = false;
    await Promise.all(writing);
    await waitFor(
      'every report publish to be acknowledged',
      async () =>
        await Promise.race([Promise.all(reporting).then(() => true), sleep(1000).then(() => undefined)]),
    );
    result.acknowledged.reports = ackedReports.size;

    // --- checks -----------------------------------------------------------------------------
    const reader = new Etcd3({ hosts: `127.0.0.1:${etcdPort}` });
    etcds.push(reader);
    const revs = new Set<number>();
    for (const a of acked) {
      check(!revs.has(a.rev), `revision ${a.rev} acknowledged twice`);
      revs.add(a.rev);
      const r = await reader.get(a.key).exec();
      const kv = r.kvs[0];
      check(!!kv, `acknowledged ${a.key} is missing`);
      check(kv!.value.toString() === a.value, `${a.key} has another value`);
      check(Number(kv!.mod_revision) === a.rev, `${a.key} at ${kv!.mod_revision}, acknowledged at ${a.rev}`);
      if (a.lease) check(kv!.lease === a.lease, `${a.key} lost its lease ${a.lease}`);
    }

    const pgc = new pg.Client({ connectionString: db.url });
    await pgc.connect();
    try {
      const rows = await waitFor('every acknowledged report in PostgreSQL', async () => {
        const r = await pgc.query<{ device: string; seq: string }>('SELECT device, seq FROM fleet_reports');
        const seen = new Set(r.rows.map((x) => `${x.device}/${x.seq}`));
        return [...ackedReports].every((k) => seen.has(k)) ? r.rows : undefined;
      });
      result.fleetReports = rows.length;
      check(
        new Set(rows.map((x) => `${x.device}/${x.seq}`)).size === rows.length,
        'a report reached PostgreSQL twice',
      );
    } finally {
      await pgc.end();
    }
    for (const c of clients) c.end(true);
    // stop the node cleanly, then read its database
    const child = daemon!;
    const exited = new Promise((r) => child.once('exit', r));
    process.kill(daemonPid(), 'SIGTERM');
    await exited;
    daemon = undefined;
    const sqlite = new Database(join(dataDir, 'edgekeeper.db'), { readonly: true });
    try {
      const local = sqlite.prepare('SELECT device, seq FROM reports').all() as {
        device: string;
        seq: number;
      }[];
      result.storedReports = local.length;
      const keys = new Set(local.map((x) => `${x.device}/${x.seq}`));
      check(keys.size === local.length, 'a report is stored twice in the node');
      for (const k of ackedReports) check(keys.has(k), `acknowledged report ${k} is not stored`);
    } finally {
      sqlite.close();
    }
    result.seconds = Math.round((Date.now() - started) / 1000);
    return result;
  } finally {
    running = false;
    for (const c of clients) c.end(true);
    for (const c of etcds) c.close();
    if (daemon) {
      try {
        process.kill(daemonPid(), 'SIGKILL');
      } catch {}
      daemon.kill('SIGKILL');
    }
    await fleet?.close().catch(() => {});
    db.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
