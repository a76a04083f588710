/**
 * Attacks on the daemon (`npm run bench -- abuse`): `edgekeeper run` on compiled JavaScript with
 * its default bounds, in its own process, a well-behaved etcd client putting one key every 5 ms
 * (etcd3 in this process; the CPU this process uses is printed as `clientCpuCores`), a device
 * reporting 10 times a second (QoS 1), and each attack in turn from another process and another
 * loopback address (attack.ts):
 *   none       no attack for 10 s: the control, how far the put p99 moves on its own
 *   huge       4 connections whose fixed header claims 256 MB (2 before log-in, 2 logged in)
 *   idle       5,000 sockets that never send a byte, held 15 s; a registered device connects meanwhile
 *   subscribe  a logged-in device sends SUBSCRIBE packets of 10,000 filters for 10 s
 *   login      wrong-secret log-ins for a real device id, 40 at a time, for 10 s; the device itself
 *              and a device never seen before log in meanwhile
 *   sigterm    SIGTERM while 100 sockets that never logged in are open
 *   grpcPrefix 4 HTTP/2 connections to the etcd port send Put streams whose gRPC prefix claims
 *              100 MB and stream bytes until closed, for 10 s
 *   grpcStreams 20,000 half-open Put streams and 2,000 watch streams (1,000 per connection), 15 s
 * One JSON line per attack: the daemon's RSS before and its peak during (delta), the put p99 in
 * the 5 s before and during (ratio), whether the daemon is alive after it, the device's
 * acknowledged reports that are not stored (lost), the daemon's CPU, and how long the refusal
 * took. EDGEKEEPER_BENCH_ATTACKS=huge,login picks attacks.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { Etcd3 } from 'etcd3';
import mqtt, { type MqttClient } from 'mqtt';
import { freePort } from '../../ingest/mosquitto.js';
import { buildJs, type JsBuild, unitEnvironment } from '../build.js';
import { cpuMs, memoryMb } from '../proc.js';

const here = fileURLToPath(new URL('.', import.meta.url));
const ATTACKS = (
  process.env.EDGEKEEPER_BENCH_ATTACKS ?? 'none,huge,idle,subscribe,login,grpcPrefix,grpcStreams,sigterm'
).split(',');
const ATTACKER = '127.0.0.2';

const round = (v: number) => Math.round(v * 100) / 100;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function out(o: Record<string, unknown>): void {
  console.log(JSON.stringify(o, (_k, v) => (typeof v === 'number' ? round(v) : v)));
}

/** A node process with its descriptor limit raised to the hard limit (5,000 idle sockets need as many on each side). */
function spawnNode(build: JsBuild, ts: string, args: string[], env = process.env): ChildProcess {
  const cmd = [process.execPath, build.js(ts), ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  return spawn('sh', ['-c', `ulimit -Sn "$(ulimit -Hn)" && exec ${cmd}`], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env,
  });
}

function exited(p: ChildProcess): Promise<number | null> {
  return p.exitCode !== null ? Promise.resolve(p.exitCode) : new Promise((r) => p.once('exit', (c) => r(c)));
}

interface Daemon {
  proc: ChildProcess;
  pid: number;
  dir: string;
  http: string;
  mqttPort: number;
  etcdPort: number;
  etcd: Etcd3;
  db: Database.Database;
  token: string;
}

async function startDaemon(build: JsBuild): Promise<Daemon> {
  const dir = mkdtempSync(join(tmpdir(), 'ek-bench-abuse-'));
  const [httpPort, etcdPort, mqttPort] = [await freePort(), await freePort(), await freePort()];
  writeFileSync(
    join(dir, 'config.json'),
    JSON.stringify({
      node: { name: 'abuse', dataDir: dir },
      http: { listen: `127.0.0.1:${httpPort}` },
      etcd: { listen: `127.0.0.1:${etcdPort}` },
      mqtt: { listen: `127.0.0.1:${mqttPort}` },
      probes: { enabled: [] },
    }),
  );
  const proc = spawnNode(
    build,
    'src/main.ts',
    ['run', '--config', join(dir, 'config.json')],
    unitEnvironment(),
  );
  createInterface({ input: proc.stdout! }).on('line', () => undefined);
  const http = `http://127.0.0.1:${httpPort}`;
  for (const end = Date.now() + 60_000; ; ) {
    if (proc.exitCode !== null) throw new Error(`edgekeeper run exited with ${proc.exitCode}`);
    if (
      await fetch(`${http}/readyz`).then(
        (r) => r.ok,
        () => false,
      )
    )
      break;
    if (Date.now() > end) throw new Error('edgekeeper run did not become ready');
    await sleep(100);
  }
  // the shell execs node: the pid is the daemon's
  return {
    proc,
    pid: proc.pid!,
    dir,
    http,
    mqttPort,
    etcdPort,
    etcd: new Etcd3({ hosts: `http://127.0.0.1:${etcdPort}` }),
    db: new Database(join(dir, 'edgekeeper.db'), { readonly: true, fileMustExist: true }),
    token: readFileSync(join(dir, 'http.token'), 'utf8').trim(),
  };
}

async function addDevice(d: Daemon, id: string): Promise<string> {
  const r = await fetch(`${d.http}/v1/devices`, {
    method: 'POST',
    headers: { authorization: `Bearer ${d.token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ id }),
  });
  if (r.status !== 201) throw new Error(`device add ${id}: ${r.status}`);
  return ((await r.json()) as { secret: string }).secret;
}

/** etcd puts on one key, one every 5 ms, until `until()`: p50, p99 in ms. */
async function puts(
  etcd: Etcd3,
  until: () => boolean,
): Promise<{ p50: number; p99: number; n: number; errors: number }> {
  const lat: number[] = [];
  let errors = 0;
  for (let i = 0; !until(); i++) {
    const t0 = performance.now();
    try {
      await etcd.put('/bench/abuse').value(String(i));
      lat.push(performance.now() - t0);
    } catch {
      errors++;
    }
    await sleep(5);
  }
  lat.sort((a, b) => a - b);
  return {
    p50: lat[Math.floor(lat.length / 2)] ?? 0,
    p99: lat[Math.floor(lat.length * 0.99)] ?? 0,
    n: lat.length,
    errors,
  };
}

/** The well-behaved device: a QoS 1 report every 100 ms; remembers which were acknowledged. */
function reporter(d: Daemon, secret: string): { acked: Set<number>; stop(): Promise<void> } {
  const acked = new Set<number>();
  let seq = 0;
  let c: MqttClient | undefined;
  let stopped = false;
  const connect = () => {
    c = mqtt.connect(`mqtt://127.0.0.1:${d.mqttPort}`, {
      clientId: 'honest',
      username: 'honest',
      password: secret,
      reconnectPeriod: 500,
      connectTimeout: 5000,
    });
    c.on('error', () => undefined);
  };
  connect();
  const timer = setInterval(() => {
    if (stopped || !c?.connected) return;
    const s = ++seq;
    c.publish(
      'edgekeeper/v1/devices/honest/report',
      JSON.stringify({ seq: s, ts: Date.now(), metrics: { s } }),
      { qos: 1 },
      (err) => {
        if (!err) acked.add(s);
      },
    );
  }, 100);
  return {
    acked,
    async stop() {
      stopped = true;
      clearInterval(timer);
      await new Promise<void>((r) => (c ? c.end(false, {}, () => r()) : r()));
    },
  };
}

/** Acknowledged reports of the device that are not in the database. */
function lost(d: Daemon, acked: Set<number>): number {
  const stored = new Set(
    (d.db.prepare("SELECT seq FROM reports WHERE device = 'honest'").pluck().all() as number[]).map(Number),
  );
  let n = 0;
  for (const s of acked) if (!stored.has(s)) n++;
  return n;
}

/** One raw log-in from 127.0.0.1 (or `from`): CONNACK code and ms, -1 when closed without one. */
function tryLogin(
  d: Daemon,
  id: string,
  secret: string,
  from = '127.0.0.1',
): Promise<{ code: number; ms: number }> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const s = net.connect({ port: d.mqttPort, host: '127.0.0.1', localAddress: from });
    const done = (code: number) => {
      clearTimeout(timer);
      s.destroy();
      resolve({ code, ms: performance.now() - t0 });
    };
    const timer = setTimeout(() => done(-2), 10_000);
    s.on('error', () => done(-1));
    s.once('close', () => done(-1));
    s.on('data', (b: Buffer) => {
      if (b[0] === 0x20 && b.length >= 4) done(b[3]!);
    });
    s.once('connect', () => {
      const pw = Buffer.from(secret);
      const body = Buffer.concat([
        Buffer.from([0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 0xc2, 0, 60, 0, id.length]),
        Buffer.from(id),
        Buffer.from([0, id.length]),
        Buffer.from(id),
        Buffer.from([0, pw.length]),
        pw,
      ]);
      s.write(Buffer.concat([Buffer.from([0x10, body.length]), body]));
    });
  });
}

async function metric(d: Daemon, name: string): Promise<number> {
  const text = await fetch(`${d.http}/metrics`).then(
    (r) => r.text(),
    () => '',
  );
  let sum = 0;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'gm'))) sum += Number(m[1]);
  return sum;
}

async function alive(d: Daemon): Promise<boolean> {
  return (
    d.proc.exitCode === null &&
    (await fetch(`${d.http}/healthz`).then(
      (r) => r.ok,
      () => false,
    ))
  );
}

/**
 * One attack: 5 s of puts before it, then puts while the attacker runs, with the daemon's RSS
 * sampled every 100 ms; `during` runs alongside (a device logging in, say).
 */
async function attack(
  build: JsBuild,
  d: Daemon,
  rep: { acked: Set<number> },
  name: string,
  cfg: Record<string, unknown>,
  during: () => Promise<Record<string, unknown>> = async () => ({}),
): Promise<void> {
  let stop = performance.now() + 5000;
  const before = await puts(d.etcd, () => performance.now() > stop);
  const rssBefore = memoryMb(d.pid).rss;
  await metric(d, 'nodejs_eventloop_lag_p99_seconds'); // prom-client restarts its histogram on every read
  const rejects0 = await metric(d, 'edgekeeper_ingest_rejects_total');
  let rssPeak = rssBefore;
  const sampler = setInterval(() => {
    rssPeak = Math.max(rssPeak, memoryMb(d.pid).rss);
  }, 100);
  const c0 = { daemon: cpuMs(d.pid), client: process.cpuUsage() };
  const t0 = performance.now();
  const child = spawnNode(build, join(here, 'attack.ts'), [
    JSON.stringify({ port: d.mqttPort, from: ATTACKER, ...cfg }),
  ]);
  let result = '';
  child.stdout!.on('data', (b) => (result += b));
  let done = false;
  const ended = exited(child).then(() => (done = true));
  stop = Number.POSITIVE_INFINITY;
  const [duringPuts, extra] = await Promise.all([puts(d.etcd, () => done), during(), ended]);
  const seconds = (performance.now() - t0) / 1000;
  clearInterval(sampler);
  const cu = process.cpuUsage(c0.client);
  out({
    bench: `abuse.${name}`,
    unit: 'ms',
    rssBeforeMB: rssBefore,
    rssPeakMB: rssPeak,
    rssDeltaMB: rssPeak - rssBefore,
    putP99BeforeMs: before.p99,
    putP99DuringMs: duringPuts.p99,
    putRatio: duringPuts.p99 / Math.max(0.001, before.p99),
    putErrors: duringPuts.errors,
    eventLoopLagP99Ms: (await metric(d, 'nodejs_eventloop_lag_p99_seconds')) * 1000,
    daemonCpuCores: (cpuMs(d.pid) - c0.daemon) / 1000 / seconds,
    clientCpuCores: (cu.user + cu.system) / 1e6 / seconds,
    seconds,
    alive: await alive(d),
    acked: rep.acked.size,
    lost: lost(d, rep.acked),
    rejects: (await metric(d, 'edgekeeper_ingest_rejects_total')) - rejects0,
    attacker: JSON.parse(result || '{}') as unknown,
    ...extra,
  });
}

export default async function abuseBench(): Promise<void> {
  const build = buildJs([join(here, 'attack.ts')]);
  let d: Daemon | undefined;
  try {
    d = await startDaemon(build);
    const daemon = d;
    const secret: Record<string, string> = {};
    for (const id of ['honest', 'big', 'subs', 'victim', 'fresh', 'probe'])
      secret[id] = await addDevice(d, id);
    const rep = reporter(d, secret.honest!);
    await sleep(1000);

    if (ATTACKS.includes('none')) await attack(build, d, rep, 'none', { kind: 'none', seconds: 10 });

    if (ATTACKS.includes('huge'))
      await attack(build, d, rep, 'huge', {
        kind: 'huge',
        seconds: 20,
        conns: 4,
        device: 'big',
        secret: secret.big,
      });

    if (ATTACKS.includes('idle'))
      await attack(build, d, rep, 'idle', { kind: 'idle', seconds: 15, conns: 5000 }, async () => {
        // the registered device tries to log in every 300 ms while the sockets are held
        await sleep(2000);
        const tries: { code: number; ms: number }[] = [];
        for (let i = 0; i < 43; i++) {
          tries.push(await tryLogin(daemon, 'probe', secret.probe!));
          await sleep(300);
        }
        const ok = tries.filter((t) => t.code === 0);
        return {
          deviceLogins: tries.length,
          deviceLoginsOk: ok.length,
          deviceConnackMaxMs: Math.max(...ok.map((t) => t.ms)),
        };
      });

    if (ATTACKS.includes('subscribe'))
      await attack(build, d, rep, 'subscribe', {
        kind: 'subscribe',
        seconds: 10,
        device: 'subs',
        secret: secret.subs,
      });

    if (ATTACKS.includes('login')) {
      // the victim logged in once since the start: its check is a cache hit from then on
      await tryLogin(d, 'victim', secret.victim!);
      await attack(
        build,
        d,
        rep,
        'login',
        { kind: 'login', seconds: 10, device: 'victim', inFlight: 40 },
        async () => {
          await sleep(2000);
          const victim: { code: number; ms: number }[] = [];
          for (let i = 0; i < 10; i++) {
            victim.push(await tryLogin(daemon, 'victim', secret.victim!));
            await sleep(300);
          }
          const fresh = await tryLogin(daemon, 'fresh', secret.fresh!, '127.0.0.3');
          return {
            victimLoginsOk: victim.filter((v) => v.code === 0).length,
            victimConnackMaxMs: Math.max(...victim.map((v) => v.ms)),
            freshDeviceCode: fresh.code,
            freshDeviceConnackMs: fresh.ms,
          };
        },
      );
    }

    if (ATTACKS.includes('grpcPrefix'))
      await attack(build, d, rep, 'grpcPrefix', {
        kind: 'grpcPrefix',
        port: d.etcdPort,
        seconds: 10,
        conns: 4,
      });

    if (ATTACKS.includes('grpcStreams'))
      await attack(build, d, rep, 'grpcStreams', {
        kind: 'grpcStreams',
        port: d.etcdPort,
        seconds: 15,
        streams: 20_000,
        watches: 2000,
      });

    await rep.stop();
    if (ATTACKS.includes('sigterm')) {
      const idle: net.Socket[] = [];
      for (let i = 0; i < 100; i++) {
        const s = net.connect({ port: d.mqttPort, host: '127.0.0.1', localAddress: ATTACKER });
        s.on('error', () => undefined);
        idle.push(s);
      }
      await sleep(500);
      const t0 = performance.now();
      d.proc.kill('SIGTERM');
      const code = await Promise.race([exited(d.proc), sleep(60_000).then(() => 'still running')]);
      out({
        bench: 'abuse.sigterm',
        unit: 'ms',
        idleSockets: idle.length,
        exitCode: code,
        stopMs: performance.now() - t0,
        lost: lost(d, rep.acked),
        acked: rep.acked.size,
      });
      for (const s of idle) s.destroy();
    }
  } finally {
    if (d) {
      d.etcd.close();
      d.proc.kill('SIGKILL');
      await exited(d.proc);
      d.db.close();
      rmSync(d.dir, { recursive: true, force: true });
    }
    build.cleanup();
  }
}
