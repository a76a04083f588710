/**
 * Drain a backlog of reports (8 numeric metrics each, sensor-like values from 50 devices) from
 * the node's SQLite file to the reference receiver on loopback, into PostgreSQL 15.
 * Prints records/s, bytes per report on the wire (compressed batch bodies; HTTP headers apart),
 * CPU per process, RSS of the uplink over time against its idle RSS, and time to the first
 * acknowledged batch. Each side runs in its own process. EDGEKEEPER_BENCH_SYNC_N overrides the
 * backlog size (default 1,000,000).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { openStore } from '../../../src/store/index.js';
import { encodeCbor } from '../../../src/sync/codec.js';
import { syncMigrations } from '../../../src/sync/index.js';
import { startPostgres } from '../../sync/pg.js';
import { SOURCE_MIGRATIONS, tempDir } from '../../sync/helpers.js';

const here = import.meta.dirname;

/** Sensor-like reports: random walks with the precision real sensors report. */
async function prepare(dir: string, n: number): Promise<void> {
  const store = await openStore({
    file: join(dir, 'edgekeeper.db'),
    durability: 'relaxed',
    migrations: [...syncMigrations, ...SOURCE_MIGRATIONS],
  });
  let seed = 7;
  const rnd = () => {
    seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const devices = Array.from({ length: 50 }, () => ({
    temp: 21.5,
    hum: 45,
    press: 1013.2,
    count: 0,
    seq: 0,
  }));
  let t = Date.now() - n * 2;
  const chunk = 5000;
  for (let done = 0; done < n; done += chunk) {
    const rows: unknown[][] = [];
    for (let i = 0; i < Math.min(chunk, n - done); i++) {
      const d = (done + i) % 50;
      const s = devices[d]!;
      s.temp = Math.round((s.temp + (rnd() - 0.5) * 0.2) * 100) / 100;
      s.hum = Math.round((s.hum + (rnd() - 0.5)) * 10) / 10;
      s.press = Math.round((s.press + (rnd() - 0.5) * 0.4) * 10) / 10;
      s.count += Math.floor(rnd() * 3);
      s.seq++;
      t += Math.floor(rnd() * 4);
      const metrics = {
        temp: s.temp,
        hum: s.hum,
        press: s.press,
        volt: Math.round((3.3 + (rnd() - 0.5) * 0.02) * 1000) / 1000,
        count: s.count,
        rpm: Math.round(1200 + (rnd() - 0.5) * 40),
        load: Math.round(rnd() * 100),
        mode: rnd() < 0.9 ? 1 : 2,
      };
      rows.push([
        `sensor-${String(d).padStart(3, '0')}`,
        t,
        t - 20 - Math.floor(rnd() * 10),
        s.seq,
        encodeCbor({ metrics }),
      ]);
    }
    await store.write({
      sql: [{ sql: 'INSERT INTO reports (device, received_at, ts, seq, body) VALUES (?, ?, ?, ?, ?)', rows }],
    });
  }
  await store.close();
}

function child(
  script: string,
  args: string[],
  extra: string[] = [],
): { proc: ChildProcess; lines: () => Promise<Record<string, unknown>> } {
  const proc = spawn(process.execPath, [...extra, '--import', 'tsx', join(here, script), ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const queue: Record<string, unknown>[] = [];
  const waiters: ((v: Record<string, unknown>) => void)[] = [];
  let buf = '';
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      const v = JSON.parse(line) as Record<string, unknown>;
      const w = waiters.shift();
      if (w) w(v);
      else queue.push(v);
    }
  });
  return {
    proc,
    lines: () => (queue.length ? Promise.resolve(queue.shift()!) : new Promise((r) => waiters.push(r))),
  };
}

/** CPU ms of the PostgreSQL server and its backends, from /proc. */
function pgCpuMs(dataDir: string): number {
  const pid = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const tick = 100; // USER_HZ on Linux
  let total = 0;
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const ppid = Number(f[1]);
      if (Number(e) === pid || ppid === pid) total += ((Number(f[11]) + Number(f[12])) * 1000) / tick;
    } catch {
      // Gone meanwhile.
    }
  }
  return total;
}
export default async function run(): Promise<void> {
  const n = Number(process.env.EDGEKEEPER_BENCH_SYNC_N ?? 1_000_000);
  const compression = (process.env.EDGEKEEPER_BENCH_SYNC_COMPRESSION ?? 'gzip') as 'gzip' | 'brotli';
  const batch = process.env.EDGEKEEPER_BENCH_SYNC_BATCH ?? '10000';
  const pgs = await startPostgres();
  const t = tempDir('ek-sync-bench-');
  const procs: ChildProcess[] = [];
  try {
    const p0 = performance.now();
    await prepare(t.dir, n);
    const prepareMs = performance.now() - p0;
    // EDGEKEEPER_BENCH_SYNC_NODEFLAGS: extra node flags for both children (e.g. --cpu-prof).
    const flags = (process.env.EDGEKEEPER_BENCH_SYNC_NODEFLAGS ?? '').split(' ').filter(Boolean);
    const recv = child('drain-receiver-child.ts', [pgs.url], flags);
    procs.push(recv.proc);
    const { url } = (await recv.lines()) as { url: string };
    const pgDataDir = pgs.dataDir;
    const pgCpu0 = pgCpuMs(pgDataDir);
    const up = child('drain-uplink-child.ts', [t.dir, url, compression, batch], ['--expose-gc', ...flags]);
    procs.push(up.proc);
    const r = (await up.lines()) as {
      idleRss: number;
      rss: [number, number][];
      firstAckMs: number;
      drainMs: number;
      cpuUserMs: number;
      cpuSystemMs: number;
    };
    const pgCpu = pgCpuMs(pgDataDir) - pgCpu0;
    recv.proc.kill('SIGTERM');
    const rc = (await recv.lines()) as { cpuUserMs: number; cpuSystemMs: number };
    const db = new pg.Client(pgs.url);
    await db.connect();
    const w = (
      await db.query(
        'SELECT count(*)::int AS batches, sum(wire_bytes)::bigint AS bytes, sum(records)::bigint AS records FROM fleet_batches',
      )
    ).rows[0];
    const stored = (
      await db.query('SELECT count(*)::int AS n, count(DISTINCT id)::int AS d FROM fleet_reports')
    ).rows[0];
    await db.end();
    if (stored.n !== n || stored.d !== n)
      throw new Error(`PostgreSQL holds ${stored.n} reports (${stored.d} distinct), expected ${n}`);
    const rssValues = r.rss.map(([, v]) => v).sort((a, b) => a - b);
    const mb = (b: number) => Math.round((b / 1024 / 1024) * 10) / 10;
    const rate = n / (r.drainMs / 1000);
    const bytesPerReport = Number(w.bytes) / n;
    console.log(
      JSON.stringify({
        bench: 'sync.drain.rate',
        unit: 'reports/s',
        p50: Math.round(rate),
        p99: Math.round(rate),
        n,
        compression,
        batch: Number(batch),
        target: 50_000,
      }),
    );
    console.log(
      JSON.stringify({
        bench: 'sync.drain.wire_bytes_per_report',
        unit: 'bytes',
        p50: Math.round(bytesPerReport * 100) / 100,
        p99: Math.round(bytesPerReport * 100) / 100,
        n,
        batches: w.batches,
        headersPerReportApprox: Math.round(((w.batches * 250) / n) * 1000) / 1000,
        target: 30,
      }),
    );
    console.log(
      JSON.stringify({
        bench: 'sync.drain.rss_over_idle',
        unit: 'MB',
        p50: mb(rssValues[rssValues.length >> 1]! - r.idleRss),
        p99: mb(rssValues[Math.floor(rssValues.length * 0.99)]! - r.idleRss),
        max: mb(rssValues.at(-1)! - r.idleRss),
        idle: mb(r.idleRss),
        n,
        target: 20,
        series: r.rss
          .filter((_, i) => i % Math.max(1, Math.floor(r.rss.length / 20)) === 0)
          .map(([ms, v]) => [ms, mb(v)]),
      }),
    );
    console.log(
      JSON.stringify({
        bench: 'sync.drain.first_ack',
        unit: 'ms',
        p50: Math.round(r.firstAckMs),
        p99: Math.round(r.firstAckMs),
        n: 1,
      }),
    );
    console.log(
      JSON.stringify({
        bench: 'sync.drain.cpu',
        unit: 'ms',
        p50: Math.round(r.cpuUserMs + r.cpuSystemMs),
        p99: Math.round(r.cpuUserMs + r.cpuSystemMs),
        n,
        uplinkUsPerReport: Math.round((((r.cpuUserMs + r.cpuSystemMs) * 1000) / n) * 100) / 100,
        receiverMs: Math.round(rc.cpuUserMs + rc.cpuSystemMs),
        postgresMs: Math.round(pgCpu),
        drainMs: Math.round(r.drainMs),
        prepareMs: Math.round(prepareMs),
      }),
    );
  } finally {
    for (const p of procs) p.kill('SIGKILL');
    pgs.stop();
    t.remove();
  }
}
