/**
 * The SD-card benchmark: edgekeeper against real etcd 3.4 on a model of a cheap SD card, with
 * etcd's own Go client. `npm run bench -- sdcard` (as root). docs/store.md, "SD-card benchmark",
 * says how to run it and read it; in short:
 *
 * The card (card.ts): a fresh 3 GiB loop device with ext4 per server and per run, its writes
 * throttled by a cgroup v1 blkio group to 150 write I/Os and 10 MB/s; the server runs inside the
 * group. Bytes written = /sys/block/loopN/stat field 7 × 512, write I/Os = field 5, both taken
 * around the measured window with a syncfs on the card at each end (so what the server left
 * dirty in the page cache is counted in the window that dirtied it).
 *
 * Phases (EDGEKEEPER_BENCH_SDCARD_PHASES, default `mix,fast,wear`), all repeated
 * EDGEKEEPER_BENCH_RUNS times (default 2, each run on fresh cards; lines carry `run`):
 *   mix   the Kubernetes-like mix of loadgen/main.go against each server on its own card, one
 *         after the other (the order alternates between runs): 3,000 keys of 2 KiB preloaded,
 *         then for EDGEKEEPER_BENCH_SDCARD_SECONDS (60): 50 puts/s open loop, a burst of
 *         64 writers × 10 back-to-back puts every 5 s, a leader-election renewal (Txn on
 *         mod_revision, then put) every 2 s, one watcher on /registry/ that must see every write.
 *   fast  the machine's own disk, no throttle, both servers up: 128-byte puts back to back from
 *         1, 32 and 256 goroutines for EDGEKEEPER_BENCH_SDCARD_FAST_SECONDS (5) each, the servers
 *         alternating per phase.
 *   wear  edgekeeper alone on a card with fleet sync on (the reference receiver, `edgekeeper
 *         fleet-server`, on PostgreSQL 15 off the card; sync.batchDelay at most half the
 *         window), probes and frames on: after
 *         EDGEKEEPER_BENCH_SDCARD_SETTLE_SECONDS (30), bytes/s written while idle and its RSS,
 *         then bytes per report with one registered device reporting once a second, each for
 *         EDGEKEEPER_BENCH_SDCARD_WEAR_SECONDS (60).
 *
 * Output: one JSON line per measure and server, `{"bench":"sdcard.<measure>","run",
 * "server":"etcd"|"edgekeeper","unit",...}`; the edgekeeper line of a comparison carries its
 * ratios to etcd's line of the same run (p99Ratio, maxRatio, bytesPerPutRatio, throughputRatio)
 * and the target beside them. Measures:
 *   put_steady, put_steady_in_burst, put_burst, renewal  latency in ms from the scheduled moment
 *       (p50, p99, p999, max; n acknowledged, issued, errors);
 *   watch       events seen against acknowledged writes (missing, unexpected, outOfOrder);
 *   card        bytes and write I/Os per acknowledged put in the window, split into what went
 *               through the throttle (the server's own) and what escaped it (journal, writeback);
 *   files       the card's files before and after the window (where the bytes went);
 *   server      RSS, peak RSS, CPU per put (the server process; tree = with its children);
 *   commit      edgekeeper: its commit histogram and every edgekeeper_store_commit_stall_* /
 *               edgekeeper_store_checkpoint_* series; etcd: WAL fsync and backend commit;
 *   fast_seq, fast_inflight32, fast_inflight256  ops/s, p50, p99, max;
 *   wear_idle (B/s), wear_report (B/report), memory_idle (MB)  edgekeeper alone, target beside.
 * EDGEKEEPER_BENCH_DAEMON=<another checkout's root> benchmarks that checkout's daemon instead.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import mqtt from 'mqtt';
import { adminFetch } from '../../../src/admin.js';
import { ETCD_BIN, freePort } from '../../etcd/helpers.js';
import { startPostgres } from '../../sync/pg.js';
import { cpuMs, memoryMb } from '../proc.js';
import { Card, type FileInfo, imageDir, missingPeers, sweepStale, WRITE_BPS, WRITE_IOPS } from './card.js';
import { buildLoadgen, type Line, missingGo, runLoadgen } from './loadgen.js';
import { histogramWindow, matching, total } from './prom.js';
import {
  buildDaemon,
  type Daemon,
  type DaemonBuild,
  processTree,
  type Server,
  type ServerName,
  startEdgekeeper,
  startEtcd,
} from './servers.js';

function num(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0)
    throw new Error(`${name} must be a positive number, got ${JSON.stringify(v)}`);
  return n;
}

const SECONDS = num('EDGEKEEPER_BENCH_SDCARD_SECONDS', 60);
const KEYS = num('EDGEKEEPER_BENCH_SDCARD_KEYS', 3000);
const FAST_SECONDS = num('EDGEKEEPER_BENCH_SDCARD_FAST_SECONDS', 5);
const WEAR_SECONDS = num('EDGEKEEPER_BENCH_SDCARD_WEAR_SECONDS', 60);
const SETTLE_SECONDS = num('EDGEKEEPER_BENCH_SDCARD_SETTLE_SECONDS', 30);
// the issue asks for every comparison at least twice: the machines are shared and noisy
const RUNS = num('EDGEKEEPER_BENCH_RUNS', 2);
const ALL_PHASES = ['mix', 'fast', 'wear'];
const PHASES = (process.env.EDGEKEEPER_BENCH_SDCARD_PHASES || ALL_PHASES.join(',')).split(',');

/** The mix's numbers (loadgen flags); documented in loadgen/main.go and docs/store.md. */
const MIX = [
  ...['-keys', String(KEYS), '-value-bytes', '2048', '-lease-bytes', '512'],
  ...['-steady-rate', '50', '-burst-every', '5s', '-burst-writers', '64', '-burst-run', '10'],
  ...['-renew-every', '2s', '-timeout', '30s'],
];

/** Targets of the issue, printed beside the figures. */
const TARGET = {
  put: 'p99Ratio <= 0.25',
  renewal: 'maxRatio <= 0.25 and max <= 1000 ms',
  card: 'bytesPerPutRatio <= 0.5',
  fast_seq: 'throughputRatio >= 1 and p99Ratio <= 1',
  fast_inflight: 'throughputRatio >= 1',
  wearIdle: 1024,
  wearReport: 2048,
  memoryIdle: 100,
};

const r3 = (x: number) => Math.round(x * 1000) / 1000;
const ratio = (a: unknown, b: unknown) =>
  typeof a === 'number' && typeof b === 'number' && b > 0 ? r3(a / b) : null;

function out(o: Record<string, unknown>): void {
  console.log(JSON.stringify(o, (_k, v) => (typeof v === 'number' ? r3(v) : v)));
}

/**
 * Everything this bench started that must not outlive it, torn down in reverse order on the way
 * out, and synchronously on SIGINT/SIGTERM.
 */
class Teardown {
  private readonly items: { name: string; sync: () => void }[] = [];
  private readonly onSignal = (sig: NodeJS.Signals) => {
    process.stderr.write(`sdcard bench: ${sig}, tearing down\n`);
    try {
      this.all();
    } catch (err) {
      process.stderr.write(`sdcard bench: ${(err as Error).message}\n`);
    }
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };

  constructor() {
    process.once('SIGINT', this.onSignal);
    process.once('SIGTERM', this.onSignal);
  }

  /** A child process, SIGKILLed on teardown unless it has exited by then. */
  child(name: string, proc: ChildProcess): void {
    const forget = this.add(name, () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    });
    proc.once('exit', forget);
  }

  add(name: string, sync: () => void): () => void {
    const item = { name, sync };
    this.items.push(item);
    return () => {
      const i = this.items.indexOf(item);
      if (i >= 0) this.items.splice(i, 1);
    };
  }

  /** Run every item still registered; the errors are collected and thrown together. */
  all(): void {
    const errors: string[] = [];
    while (this.items.length > 0) {
      const item = this.items.pop()!;
      try {
        item.sync();
      } catch (err) {
        errors.push(`${item.name}: ${(err as Error).message}`);
      }
    }
    process.removeListener('SIGINT', this.onSignal);
    process.removeListener('SIGTERM', this.onSignal);
    if (errors.length > 0) throw new Error(errors.join('\n'));
  }
}

interface Ctx {
  run: number;
  loadgen: string;
  build: DaemonBuild;
  teardown: Teardown;
}

/** Servers register their process the moment it is spawned, before they are ready. */
const track = (ctx: Ctx) => (name: string, proc: ChildProcess) => ctx.teardown.child(name, proc);

/** A card for the length of `f`, torn down after it whatever happens. */
async function withCard<T>(ctx: Ctx, f: (card: Card) => Promise<T>): Promise<T> {
  const card = Card.create();
  const forget = ctx.teardown.add(`card ${card.loop}`, () => card.destroy());
  try {
    return await f(card);
  } finally {
    forget();
    card.destroy();
  }
}

async function withServer<T extends Server, R>(
  ctx: Ctx,
  start: Promise<T>,
  f: (s: T) => Promise<R>,
): Promise<R> {
  const s = await start;
  const forget = ctx.teardown.add(`${s.name} ${s.pid}`, () => s.kill());
  try {
    return await f(s);
  } finally {
    forget();
    await s.stop();
  }
}

/** CPU ms used so far by a process and all its children. */
function treeCpuMs(pid: number): number {
  return processTree(pid).reduce((a, p) => a + (cpuMs(p) || 0), 0);
}

function treeRssMb(pid: number): number {
  return processTree(pid).reduce((a, p) => a + (memoryMb(p).rss || 0), 0);
}

/** Which files changed on the card between two listings, largest growth first. */
function fileChanges(a: Map<string, FileInfo>, b: Map<string, FileInfo>) {
  const names = new Set([...a.keys(), ...b.keys()]);
  const rows = [...names].map((file) => {
    const x = a.get(file);
    const y = b.get(file);
    return {
      file,
      sizeBefore: x?.size ?? null,
      sizeAfter: y?.size ?? null,
      allocatedAfter: y?.allocated ?? null,
      modified: !x || !y || x.mtimeMs !== y.mtimeMs || x.size !== y.size,
    };
  });
  return rows
    .filter((r) => r.modified)
    .sort((p, q) => (q.sizeAfter ?? 0) - (q.sizeBefore ?? 0) - ((p.sizeAfter ?? 0) - (p.sizeBefore ?? 0)));
}

interface Window {
  seconds: number;
  bytes: number;
  writeIos: number;
  throttledBytes: number;
  throttledIos: number;
  files: ReturnType<typeof fileChanges>;
}

/** Measure the card around `f`: syncfs and counters at both ends. */
function cardWindow(card: Card) {
  card.syncfs();
  const s0 = card.stat();
  const t0 = card.throttled();
  const f0 = card.files();
  const start = performance.now();
  return (): Window => {
    card.syncfs();
    const seconds = (performance.now() - start) / 1000;
    const s1 = card.stat();
    const t1 = card.throttled();
    return {
      seconds,
      bytes: s1.writeBytes - s0.writeBytes,
      writeIos: s1.writeIos - s0.writeIos,
      throttledBytes: t1.writeBytes - t0.writeBytes,
      throttledIos: t1.writeIos - t0.writeIos,
      files: fileChanges(f0, card.files()),
    };
  };
}

interface MixResult {
  classes: Record<string, Line>;
  config: Line;
  watch: Line;
  elapsedS: number;
  acked: number;
  card: Window;
  cpuMs: number;
  treeCpuMs: number;
  rssMb: number;
  peakRssMb: number;
  treeRssMb: number;
  metricsBefore: string;
  metricsAfter: string;
  /** edgekeeper's /readyz answer at the end of the window. */
  readyz: unknown;
}

async function mixOn(ctx: Ctx, name: ServerName): Promise<MixResult> {
  return await withCard(ctx, async (card) => {
    const start =
      name === 'etcd'
        ? startEtcd(join(card.mount, 'etcd'), card, track(ctx))
        : startEdgekeeper(ctx.build, {
            dataDir: join(card.mount, 'edgekeeper'),
            configDir: card.dir,
            card,
            track: track(ctx),
          });
    return await withServer(ctx, start as Promise<Server>, async (s) => {
      let end: (() => Window) | undefined;
      let win: Window | undefined;
      let m0 = '';
      let m1 = '';
      let c0 = 0;
      let k0 = 0;
      let cpu = 0;
      let treeCpu = 0;
      let treeRss = 0;
      let sampler: NodeJS.Timeout | undefined;
      let readyz: unknown = null;
      const lines = await runLoadgen(
        ctx.loadgen,
        ['-mode', 'mix', '-endpoint', s.endpoint, '-duration', `${SECONDS}s`, '-wait', ...MIX],
        async (phase) => {
          if (phase === 'preloaded') {
            m0 = await s.metrics();
            end = cardWindow(card);
            c0 = cpuMs(s.pid);
            k0 = treeCpuMs(s.pid);
            sampler = setInterval(() => {
              treeRss = Math.max(treeRss, treeRssMb(s.pid));
            }, 250);
          } else {
            clearInterval(sampler);
            win = end!();
            cpu = cpuMs(s.pid) - c0;
            treeCpu = treeCpuMs(s.pid) - k0;
            m1 = await s.metrics();
            if (s.name === 'edgekeeper')
              readyz = await fetch(`${(s as Daemon).httpBase}/readyz`).then(
                (r) => r.json() as Promise<unknown>,
              );
          }
        },
        (p) => ctx.teardown.child('loadgen', p),
      );
      clearInterval(sampler);
      if (!win) throw new Error(`${name}: the loadgen never said done`);
      const classes = Object.fromEntries(lines.filter((l) => l.class).map((l) => [l.class!, l]));
      const config = lines.find((l) => l.phase === 'config')!;
      const elapsed = lines.find((l) => l.phase === 'end')!;
      const acked = ['steady', 'steady_in_burst', 'burst', 'renewal'].reduce(
        (a, c) => a + Number(classes[c]?.acked ?? 0),
        0,
      );
      const mem = memoryMb(s.pid);
      return {
        classes,
        config,
        watch: classes.watch!,
        elapsedS: Number(elapsed.elapsedS),
        acked,
        card: win,
        cpuMs: cpu,
        treeCpuMs: treeCpu,
        rssMb: mem.rss,
        peakRssMb: mem.hwm,
        treeRssMb: treeRss,
        metricsBefore: m0,
        metricsAfter: m1,
        readyz,
      };
    });
  });
}

const CARD = { writeIops: WRITE_IOPS, writeBps: WRITE_BPS };

function printMix(run: number, res: Record<ServerName, MixResult>): void {
  const e = res.etcd;
  const k = res.edgekeeper;
  const both = (
    measure: string,
    unit: string,
    f: (r: MixResult) => Record<string, unknown>,
    ratios: (a: Record<string, unknown>, b: Record<string, unknown>) => Record<string, unknown>,
  ) => {
    const a = f(e);
    const b = f(k);
    out({ bench: `sdcard.${measure}`, run, server: 'etcd', unit, ...a });
    out({ bench: `sdcard.${measure}`, run, server: 'edgekeeper', unit, ...b, ...ratios(b, a) });
  };
  for (const [cls, measure] of [
    ['steady', 'put_steady'],
    ['steady_in_burst', 'put_steady_in_burst'],
    ['burst', 'put_burst'],
    ['renewal', 'renewal'],
  ] as const) {
    both(
      measure,
      'ms',
      (r) => {
        const c = r.classes[cls]!;
        return {
          p50: c.p50,
          p99: c.p99,
          p999: c.p999,
          max: c.max,
          n: c.acked,
          issued: c.issued,
          errors: c.errors,
          ...(c.firstError ? { firstError: c.firstError } : {}),
        };
      },
      (b, a) => ({
        p99Ratio: ratio(b.p99, a.p99),
        maxRatio: ratio(b.max, a.max),
        target: cls === 'renewal' ? TARGET.renewal : TARGET.put,
      }),
    );
  }
  both(
    'watch',
    'events',
    (r) => {
      const w = r.watch;
      return {
        n: w.events,
        ackedWrites: w.ackedWrites,
        missing: w.missing,
        unexpected: w.unexpected,
        outOfOrder: w.outOfOrder,
        canceled: w.canceled,
        preloaded: r.classes.preload!.acked,
      };
    },
    () => ({}),
  );
  both(
    'card',
    'B/put',
    (r) => ({
      value: r.card.bytes / r.acked,
      n: r.acked,
      windowS: r.card.seconds,
      bytesWritten: r.card.bytes,
      writeIos: r.card.writeIos,
      writeIosPerPut: r.card.writeIos / r.acked,
      throttledBytes: r.card.throttledBytes,
      throttledIos: r.card.throttledIos,
      escapedBytes: r.card.bytes - r.card.throttledBytes,
      escapedIos: r.card.writeIos - r.card.throttledIos,
      card: { ...CARD, backing: imageDir() },
    }),
    (b, a) => ({
      bytesPerPutRatio: ratio(b.value, a.value),
      writeIosPerPutRatio: ratio(b.writeIosPerPut, a.writeIosPerPut),
      target: TARGET.card,
    }),
  );
  both(
    'files',
    'bytes',
    (r) => ({ n: r.card.files.length, files: r.card.files }),
    () => ({}),
  );
  both(
    'server',
    'MB',
    (r) => ({
      rssMb: r.rssMb,
      peakRssMb: r.peakRssMb,
      treeRssMb: r.treeRssMb,
      cpuUsPerPut: (r.cpuMs * 1000) / r.acked,
      treeCpuUsPerPut: (r.treeCpuMs * 1000) / r.acked,
      cpuCoresUsed: r.cpuMs / 1000 / r.card.seconds,
      n: r.acked,
    }),
    (b, a) => ({
      peakRssRatio: ratio(b.peakRssMb, a.peakRssMb),
      cpuPerPutRatio: ratio(b.cpuUsPerPut, a.cpuUsPerPut),
    }),
  );
  // what each server says about its own commits: not the same thing, so no ratio
  const longest = (r: MixResult) =>
    Math.max(...['steady', 'steady_in_burst', 'burst', 'renewal'].map((c) => Number(r.classes[c]!.max)));
  const ew = histogramWindow(e.metricsBefore, e.metricsAfter, 'etcd_disk_wal_fsync_duration_seconds');
  out({
    bench: 'sdcard.commit',
    run,
    server: 'etcd',
    unit: 'ms',
    walFsync: ew,
    backendCommit: histogramWindow(
      e.metricsBefore,
      e.metricsAfter,
      'etcd_disk_backend_commit_duration_seconds',
    ),
    longestRequestMs: longest(e),
  });
  const kc = histogramWindow(k.metricsBefore, k.metricsAfter, 'edgekeeper_store_commit_seconds');
  const stall = matching(k.metricsBefore, k.metricsAfter, [
    'edgekeeper_store_commit_stall_',
    'edgekeeper_store_checkpoint_',
  ]);
  out({
    bench: 'sdcard.commit',
    run,
    server: 'edgekeeper',
    unit: 'ms',
    commit: kc,
    commitsPerPut: kc ? kc.n / k.acked : null,
    longestRequestMs: longest(k),
    longestRequestRatio: ratio(longest(k), longest(e)),
    readyz: k.readyz,
    // its WAL syncs alone, where the store measures them (etcd's walFsync is the counterpart)
    walSync: histogramWindow(k.metricsBefore, k.metricsAfter, 'edgekeeper_store_sync_seconds'),
    longestStall: longestStall(stall),
    // the store's own account of its stalls and checkpoints, as it exports them
    stallMetrics: stall,
  });
}

/**
 * The largest of the store's `edgekeeper_store_commit_stall_max_seconds{cause}` gauges, if it
 * exports them: its longest stall since the daemon started (the preload included) and its cause.
 */
function longestStall(stall: Record<string, { value: number }>): { ms: number; cause: string } | null {
  let best: { ms: number; cause: string } | null = null;
  for (const [series, { value }] of Object.entries(stall)) {
    const m = /^edgekeeper_store_commit_stall_max_seconds\{.*cause="([^"]*)"/.exec(series);
    if (m && (!best || value * 1000 > best.ms)) best = { ms: value * 1000, cause: m[1]! };
  }
  return best;
}

async function mixPhase(ctx: Ctx): Promise<void> {
  const order: ServerName[] = ctx.run % 2 === 0 ? ['etcd', 'edgekeeper'] : ['edgekeeper', 'etcd'];
  const res = {} as Record<ServerName, MixResult>;
  for (const name of order) {
    process.stderr.write(`sdcard: run ${ctx.run} mix on ${name}\n`);
    res[name] = await mixOn(ctx, name);
  }
  printMix(ctx.run, res);
}

async function fastPhase(ctx: Ctx): Promise<void> {
  const base = mkdtempSync(join(tmpdir(), 'ek-sdcard-fast-'));
  const forget = ctx.teardown.add('fast data', () => rmSync(base, { recursive: true, force: true }));
  try {
    await withServer(ctx, startEtcd(join(base, 'etcd'), undefined, track(ctx)), async (etcd) =>
      withServer(
        ctx,
        startEdgekeeper(ctx.build, { dataDir: join(base, 'edgekeeper'), configDir: base, track: track(ctx) }),
        async (ek) => {
          const servers: Server[] = ctx.run % 2 === 0 ? [etcd, ek] : [ek, etcd];
          for (const [measure, args] of [
            ['fast_seq', ['-mode', 'seq']],
            ['fast_inflight32', ['-mode', 'inflight', '-n', '32']],
            ['fast_inflight256', ['-mode', 'inflight', '-n', '256']],
          ] as const) {
            const res: Partial<Record<ServerName, Line>> = {};
            for (const s of servers) {
              process.stderr.write(`sdcard: run ${ctx.run} ${measure} on ${s.name}\n`);
              const lines = await runLoadgen(
                ctx.loadgen,
                [...args, '-endpoint', s.endpoint, '-duration', `${FAST_SECONDS}s`],
                undefined,
                (p) => ctx.teardown.child('loadgen', p),
              );
              res[s.name] = lines.find((l) => l.class === 'put')!;
            }
            const line = (l: Line) => ({
              opsPerSec: l.opsPerSec,
              p50: l.p50,
              p99: l.p99,
              max: l.max,
              n: l.acked,
              issued: l.issued,
              errors: l.errors,
              inflight: l.inflight,
            });
            const a = res.etcd!;
            const b = res.edgekeeper!;
            out({
              bench: `sdcard.${measure}`,
              run: ctx.run,
              server: 'etcd',
              unit: 'ms',
              disk: base,
              ...line(a),
            });
            out({
              bench: `sdcard.${measure}`,
              run: ctx.run,
              server: 'edgekeeper',
              unit: 'ms',
              disk: base,
              ...line(b),
              throughputRatio: ratio(b.opsPerSec, a.opsPerSec),
              p99Ratio: ratio(b.p99, a.p99),
              target: measure === 'fast_seq' ? TARGET.fast_seq : TARGET.fast_inflight,
            });
          }
        },
      ),
    );
  } finally {
    forget();
    rmSync(base, { recursive: true, force: true });
  }
}

/** `edgekeeper fleet-server` on `dbUrl`, knowing node `sdbench` by `token`. */
async function startFleet(
  ctx: Ctx,
  dbUrl: string,
  token: string,
): Promise<{ url: string; proc: ChildProcess }> {
  const port = await freePort();
  const proc = spawn(
    process.execPath,
    [ctx.build.js('src/main.ts'), 'fleet-server', '--database', dbUrl, '--node', `sdbench=${token}`].concat([
      '--listen',
      `127.0.0.1:${port}`,
    ]),
    { stdio: ['ignore', 'pipe', 'pipe'], env: ctx.build.env() },
  );
  ctx.teardown.child('fleet-server', proc);
  let log = '';
  proc.stderr!.on('data', (d: Buffer) => {
    log = (log + d.toString()).slice(-4000);
  });
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`fleet-server did not start: ${log}`)), 60_000);
    createInterface({ input: proc.stdout! }).on('line', (l) => {
      if (l.includes('listening')) {
        clearTimeout(t);
        resolve();
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`fleet-server exited with ${code}: ${log}`));
    });
  });
  return { url: `http://127.0.0.1:${port}`, proc };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Sum of the series of `name` between two scrapes. */
const delta = (a: string, b: string, name: string) => total(b, name) - total(a, name);

async function wearPhase(ctx: Ctx): Promise<void> {
  const pg = await startPostgres();
  const forgetPg = ctx.teardown.add('postgres', () => pg.stop());
  try {
    const token = randomBytes(16).toString('hex');
    const fleet = await startFleet(ctx, pg.url, token);
    try {
      await withCard(ctx, async (card) => {
        const start = startEdgekeeper(ctx.build, {
          dataDir: join(card.mount, 'edgekeeper'),
          configDir: card.dir,
          card,
          // Sync at its defaults, except that new records never wait longer than half the
          // reporting window for more (sync.batchDelay, 30 s): in a short window (the test's
          // short form) uploads still happen inside it.
          extra: {
            sync: { url: fleet.url, token, batchDelay: Math.min(30_000, (WEAR_SECONDS * 1000) / 2) },
          },
          track: track(ctx),
        });
        await withServer(ctx, start, (d) => wearOn(ctx, card, d));
      });
    } finally {
      if (fleet.proc.exitCode === null && fleet.proc.signalCode === null) {
        const exited = new Promise((r) => fleet.proc.once('exit', r));
        fleet.proc.kill('SIGTERM');
        const t = setTimeout(() => fleet.proc.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(t);
      }
    }
  } finally {
    forgetPg();
    pg.stop();
  }
}

async function wearOn(ctx: Ctx, card: Card, d: Daemon): Promise<void> {
  const run = ctx.run;
  // the device is registered before the settle period: its secret's write is not wear
  // registering a device needs the daemon's admin token (found through the 401, as the CLI does)
  const reg = await adminFetch(`${d.httpBase}/v1/devices`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ id: 'sensor-1' }),
  });
  if (!reg.ok) throw new Error(`device add: ${reg.status} ${await reg.text()}`);
  const { secret } = (await reg.json()) as { secret: string };
  process.stderr.write(`sdcard: run ${run} wear: settling ${SETTLE_SECONDS} s\n`);
  await sleep(SETTLE_SECONDS * 1000);

  // (a) idle, (c) its memory
  const m0 = await d.metrics();
  const idleEnd = cardWindow(card);
  let treeRss = 0;
  const sampler = setInterval(() => {
    treeRss = Math.max(treeRss, treeRssMb(d.pid));
  }, 500);
  await sleep(WEAR_SECONDS * 1000);
  clearInterval(sampler);
  const idle = idleEnd();
  const mem = memoryMb(d.pid);
  const m1 = await d.metrics();
  const parts = (a: string, b: string) => ({
    probesUp: total(b, 'edgekeeper_probe_up'),
    framesRendered: delta(a, b, 'edgekeeper_frames_rendered_total'),
    syncBatches: delta(a, b, 'edgekeeper_sync_batches_sent_total'),
    syncRecords: delta(a, b, 'edgekeeper_sync_sent_records_total'),
    storeCommits: delta(a, b, 'edgekeeper_store_commit_seconds_count'),
  });
  const idleRate = idle.bytes / idle.seconds;
  out({
    bench: 'sdcard.wear_idle',
    run,
    server: 'edgekeeper',
    unit: 'B/s',
    value: idleRate,
    target: TARGET.wearIdle,
    windowS: idle.seconds,
    bytesWritten: idle.bytes,
    writeIos: idle.writeIos,
    throttledBytes: idle.throttledBytes,
    escapedBytes: idle.bytes - idle.throttledBytes,
    parts: parts(m0, m1),
    files: idle.files,
  });
  out({
    bench: 'sdcard.memory_idle',
    run,
    server: 'edgekeeper',
    unit: 'MB',
    value: mem.rss,
    target: TARGET.memoryIdle,
    peakRssMb: mem.hwm,
    // the daemon with its bpftrace child (one process for all probes)
    treeRssMb: treeRss,
  });

  // (b) one device, one report a second
  const dev = await mqtt.connectAsync(`mqtt://127.0.0.1:${d.mqttPort}`, {
    clientId: 'sensor-1',
    username: 'sensor-1',
    password: secret,
    protocolVersion: 4,
    reconnectPeriod: 0,
  });
  const dc = ctx.teardown.add('device', () => dev.end(true));
  try {
    // the connect's own writes (online state) settle before the window
    await sleep(2000);
    const m2 = await d.metrics();
    const repEnd = cardWindow(card);
    const t0 = performance.now();
    let acked = 0;
    let sent = 0;
    const pending: Promise<void>[] = [];
    for (let i = 0; i < WEAR_SECONDS; i++) {
      await sleep(Math.max(0, t0 + i * 1000 - performance.now()));
      // a typical report: 8 numeric sensor metrics, the device's clock and a sequence number
      const body = {
        ts: Date.now(),
        seq: i,
        metrics: {
          temp: 21.5 + (i % 7) / 10,
          hum: 40 + (i % 5),
          p: 1013,
          v: 3.3,
          i: 0.12,
          rpm: 1450 + i,
          flow: 2.5,
          on: 1,
        },
      };
      sent++;
      pending.push(
        dev
          .publishAsync('edgekeeper/v1/devices/sensor-1/report', JSON.stringify(body), { qos: 1 })
          .then(() => {
            acked++;
          }),
      );
    }
    await Promise.all(pending);
    // the window is whole report periods long, the last one included
    await sleep(Math.max(0, t0 + WEAR_SECONDS * 1000 - performance.now()));
    const rep = repEnd();
    const m3 = await d.metrics();
    out({
      bench: 'sdcard.wear_report',
      run,
      server: 'edgekeeper',
      unit: 'B/report',
      value: rep.bytes / acked,
      target: TARGET.wearReport,
      aboveIdle: (rep.bytes - idleRate * rep.seconds) / acked,
      n: acked,
      sent,
      stored: delta(m2, m3, 'edgekeeper_ingest_reports_total'),
      windowS: rep.seconds,
      bytesWritten: rep.bytes,
      writeIos: rep.writeIos,
      writeIosPerReport: rep.writeIos / acked,
      throttledBytes: rep.throttledBytes,
      escapedBytes: rep.bytes - rep.throttledBytes,
      parts: parts(m2, m3),
      files: rep.files,
    });
  } finally {
    dc();
    await dev.endAsync();
  }
}

export default async function run(): Promise<void> {
  for (const p of PHASES)
    if (!ALL_PHASES.includes(p))
      throw new Error(`EDGEKEEPER_BENCH_SDCARD_PHASES: unknown phase ${JSON.stringify(p)} (${ALL_PHASES})`);
  const missing = [...missingPeers(), ...missingGo()];
  if (!existsSync(ETCD_BIN)) missing.push(`${ETCD_BIN} (Debian package etcd-server)`);
  if (missing.length > 0) throw new Error(`the SD-card bench needs: ${missing.join('; ')}`);
  for (const r of sweepStale()) process.stderr.write(`sdcard: removed a stale card: ${r}\n`);

  const loadgen = buildLoadgen();
  const build = await buildDaemon();
  const teardown = new Teardown();
  // registered first, so it goes last, after every process that runs its files
  teardown.add('daemon build', () => build.cleanup());
  try {
    out({
      bench: 'sdcard.setup',
      daemon: build.root,
      // the daemon compiled for this run (removed at the end)
      daemonBuild: dirname(dirname(build.js('src/main.ts'))),
      runs: RUNS,
      phases: PHASES,
      mixSeconds: SECONDS,
      mix: MIX.join(' '),
      fastSeconds: FAST_SECONDS,
      wearSeconds: WEAR_SECONDS,
      settleSeconds: SETTLE_SECONDS,
      card: { ...CARD, backing: imageDir() },
    });
    for (let run = 0; run < RUNS; run++) {
      const ctx: Ctx = { run, loadgen, build, teardown };
      if (PHASES.includes('mix')) await mixPhase(ctx);
      if (PHASES.includes('fast')) await fastPhase(ctx);
      if (PHASES.includes('wear')) await wearPhase(ctx);
    }
  } finally {
    teardown.all();
  }
}
