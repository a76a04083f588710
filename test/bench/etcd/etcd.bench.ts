/**
 * edgekeeper's etcd API against real etcd 3.4 in one run, same client (raw @grpc/grpc-js with
 * our protos, so client cost is equal and small), same machine, 128-byte values:
 * sequential put (p50/p99, ops/s), puts at 32 and 256 in flight, range of 1 and 1,000 keys,
 * watch event latency with 1,000 watchers, lease grant+keepalive+revoke churn, server RSS.
 * Both servers run as child processes with durable writes (edgekeeper `fsync`, etcd's default).
 * EDGEKEEPER_BENCH_SLOWDISK=1 runs both under the slow-disk strace recipe (every fsync +15 ms).
 * Prints one JSON line per measurement and server; the edgekeeper line carries the ratios.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { EtcdClient } from '../../../src/etcd/cli.js';
import { freePort, startRealEtcd } from '../../etcd/helpers.js';
import { slowDisk } from '../../slowdisk.js';
import { buildJs, unitEnvironment } from '../build.js';
import { cpuMs, memoryMb } from '../proc.js';

const here = dirname(fileURLToPath(import.meta.url));
const SLOW = process.env.EDGEKEEPER_BENCH_SLOWDISK === '1';
const STRACE = slowDisk();
const PHASE_MS = Number(process.env.EDGEKEEPER_BENCH_PHASE_MS ?? (SLOW ? 4000 : 3000));
const VALUE = Buffer.alloc(128, 0x76);

interface Target {
  name: 'edgekeeper' | 'etcd';
  endpoint: string;
  pid(): number;
  close(): Promise<void>;
}

interface Result {
  p50: number;
  p99: number;
  n: number;
  opsPerSec: number;
}

function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function summarize(lat: number[], elapsedMs: number): Result {
  lat.sort((a, b) => a - b);
  const r = (x: number) => Math.round(x * 1000) / 1000;
  return {
    p50: r(pct(lat, 50)),
    p99: r(pct(lat, 99)),
    n: lat.length,
    opsPerSec: Math.round((lat.length / elapsedMs) * 1000),
  };
}

/** `inflight` workers each issuing `op` back to back for PHASE_MS. */
async function load(inflight: number, op: (i: number) => Promise<unknown>, ms = PHASE_MS): Promise<Result> {
  const lat: number[] = [];
  const start = performance.now();
  const end = start + ms;
  let i = 0;
  await Promise.all(
    Array.from({ length: inflight }, async () => {
      while (performance.now() < end) {
        const t = performance.now();
        await op(i++);
        lat.push(performance.now() - t);
      }
    }),
  );
  return summarize(lat, performance.now() - start);
}

/** The real server process under a possible strace wrapper (strace's child, or deeper). */
function leafPid(pid: number, comm: string): number {
  try {
    if (readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === comm) return pid;
    for (const t of readdirSync(`/proc/${pid}/task`)) {
      const kids = readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8')
        .trim()
        .split(/\s+/)
        .filter(Boolean);
      for (const k of kids) {
        const found = leafPid(Number(k), comm);
        if (found) return found;
      }
    }
  } catch {
    // process gone
  }
  return 0;
}

async function startEdgekeeper(): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), 'ek-bench-'));
  const port = await freePort();
  // The daemon runs compiled JavaScript under plain node, not tsx.
  const build = buildJs([join(here, 'serve.ts')]);
  // The daemon's V8 flags (EDGEKEEPER_BENCH_NODE_FLAGS, e.g. --max-semi-space-size=4) apply here too.
  const flags = (process.env.EDGEKEEPER_BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean);
  const node = [process.execPath, ...flags, build.js(join(here, 'serve.ts')), dir, String(port)];
  const argv = SLOW ? [...STRACE, ...node] : node;
  const proc: ChildProcess = spawn(argv[0]!, argv.slice(1), {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: unitEnvironment(),
  });
  await new Promise<void>((resolve, reject) => {
    let out = '';
    proc.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('listening')) resolve();
    });
    proc.once('exit', (code) => reject(new Error(`edgekeeper bench server exited with ${code}`)));
  });
  return {
    name: 'edgekeeper',
    endpoint: `127.0.0.1:${port}`,
    pid: () => leafPid(proc.pid!, 'node'),
    async close() {
      // Signal the server itself: strace, when it wraps the server, exits with its tracee but
      // can take minutes to detach on its own SIGTERM.
      const leaf = leafPid(proc.pid!, 'node');
      const exited = new Promise((r) => proc.once('exit', r));
      if (leaf) process.kill(leaf, 'SIGTERM');
      else proc.kill('SIGTERM');
      await exited;
      rmSync(dir, { recursive: true, force: true });
      build.cleanup();
    },
  };
}

async function startEtcd(): Promise<Target> {
  const e = await startRealEtcd(SLOW ? STRACE : []);
  const pid = () => leafPid(e.proc.pid!, 'etcd');
  return {
    name: 'etcd',
    endpoint: e.endpoint,
    pid,
    async close() {
      const leaf = pid();
      if (leaf && leaf !== e.proc.pid) process.kill(leaf, 'SIGTERM');
      await e.close();
    },
  };
}

type Measures = Record<
  string,
  Result & { rssMb?: number; peakRssMb?: number; serverCpuUsPerOp?: number; clientCpuUsPerOp?: number }
>;

/**
 * Run one phase and add each measure's CPU cost per operation on both sides: the client shares
 * the machine's cores with the server, so a phase where the client is saturated says more about
 * the client than about the server.
 */
async function measured(t: Target, phase: Phase, c: EtcdClient): Promise<Measures> {
  const pid = t.pid();
  const s0 = cpuMs(pid);
  const c0 = process.cpuUsage();
  const m = await phase(c);
  const server = (cpuMs(pid) - s0) * 1000;
  const cu = process.cpuUsage(c0);
  const ops = Object.values(m).reduce((a, r) => a + r.n, 0);
  for (const r of Object.values(m)) {
    r.serverCpuUsPerOp = Math.round(server / ops);
    r.clientCpuUsPerOp = Math.round((cu.user + cu.system) / ops);
  }
  return m;
}

type Phase = (c: EtcdClient) => Promise<Measures>;

const putOp = (c: EtcdClient) => (i: number) =>
  c.call('etcdserverpb.KV', 'Put', { key: Buffer.from(`/bench/k${i % 10_000}`), value: VALUE });

/**
 * The workload, phase by phase. run() alternates the servers per phase (etcd, then edgekeeper,
 * then the next phase), so both see the same background load on this shared machine.
 */
const PHASES: Phase[] = [
  async (c) => {
    await load(4, putOp(c), 300); // warm up connections and JIT on both sides
    return {};
  },
  async (c) => ({ 'put.sequential': await load(1, putOp(c)) }),
  async (c) => ({ 'put.inflight32': await load(32, putOp(c)) }),
  async (c) => ({ 'put.inflight256': await load(256, putOp(c)) }),
  async (c) => {
    // Ranges: 1,000 keys under one prefix.
    for (let i = 0; i < 1000; i += 100) {
      await Promise.all(
        Array.from({ length: 100 }, (_, j) =>
          c.call('etcdserverpb.KV', 'Put', {
            key: Buffer.from(`/r/${String(i + j).padStart(4, '0')}`),
            value: VALUE,
          }),
        ),
      );
    }
    return {
      'range.1key': await load(
        1,
        () => c.call('etcdserverpb.KV', 'Range', { key: Buffer.from('/r/0500') }),
        2000,
      ),
    };
  },
  async (c) => ({
    'range.1000keys': await load(
      1,
      () => c.call('etcdserverpb.KV', 'Range', { key: Buffer.from('/r/'), range_end: Buffer.from('/r0') }),
      2000,
    ),
  }),
  watchLatency,
  leaseChurn,
];

/** 1,000 watchers on one stream; time from sending a put to the last of its 1,000 events. */
async function watchLatency(c: EtcdClient): Promise<Measures> {
  const w = c.duplex('etcdserverpb.Watch', 'Watch');
  let created = 0;
  let events = 0;
  let waiter: (() => void) | undefined;
  w.on('data', (m: { created?: boolean; events?: unknown[] }) => {
    if (m.created) created++;
    events += m.events?.length ?? 0;
    if (waiter && events >= 1000) waiter();
  });
  w.on('error', () => {});
  for (let i = 0; i < 1000; i++) w.write({ create_request: { key: Buffer.from('/watched') } });
  while (created < 1000) await new Promise((r) => setTimeout(r, 10));
  const wl: number[] = [];
  const wStart = performance.now();
  for (let i = 0; i < (SLOW ? 60 : 200); i++) {
    events = 0;
    const t = performance.now();
    const done = new Promise<void>((r) => {
      waiter = r;
    });
    await c.call('etcdserverpb.KV', 'Put', { key: Buffer.from('/watched'), value: VALUE });
    await done;
    wl.push(performance.now() - t);
  }
  waiter = undefined;
  w.cancel();
  return { 'watch.latency1000': summarize(wl, performance.now() - wStart) };
}

/** Lease churn: grant, one keep-alive over a shared stream, revoke; 8 in flight. */
async function leaseChurn(c: EtcdClient): Promise<Measures> {
  const ka = c.duplex('etcdserverpb.Lease', 'LeaseKeepAlive');
  const pending = new Map<string, () => void>();
  ka.on('data', (m: { ID?: unknown }) => {
    const k = String(m.ID);
    pending.get(k)?.();
    pending.delete(k);
  });
  ka.on('error', () => {});
  const r = await load(8, async () => {
    const g = await c.call('etcdserverpb.Lease', 'LeaseGrant', { TTL: 60, ID: 0 });
    await new Promise<void>((res) => {
      pending.set(String(g.ID), res);
      ka.write({ ID: g.ID });
    });
    await c.call('etcdserverpb.Lease', 'LeaseRevoke', { ID: g.ID });
  });
  ka.cancel();
  return { 'lease.grant_keepalive_revoke': r };
}

export default async function run(): Promise<void> {
  const results: Record<string, Measures> = { etcd: {}, edgekeeper: {} };
  const targets: Target[] = [];
  try {
    targets.push(await startEtcd());
    targets.push(await startEdgekeeper());
    const clients = targets.map((t) => new EtcdClient(t.endpoint));
    for (const phase of PHASES) {
      for (let i = 0; i < targets.length; i++)
        Object.assign(results[targets[i]!.name]!, await measured(targets[i]!, phase, clients[i]!));
    }
    for (const t of targets) {
      const m = memoryMb(t.pid());
      const mem = { rss: Math.round(m.rss * 10) / 10, hwm: Math.round(m.hwm * 10) / 10 };
      results[t.name]!['server.rss'] = {
        p50: mem.rss,
        p99: mem.hwm,
        n: 1,
        opsPerSec: 0,
        rssMb: mem.rss,
        peakRssMb: mem.hwm,
      };
    }
    for (const c of clients) c.close();
  } finally {
    for (const t of targets) await t.close();
  }
  const disk = SLOW ? 'slowdisk' : 'disk';
  const e = results.etcd!;
  const k = results.edgekeeper!;
  for (const name of Object.keys(k)) {
    const a = k[name]!;
    const b = e[name]!;
    const unit = name === 'server.rss' ? 'MB' : 'ms';
    console.log(JSON.stringify({ bench: `etcd.${name}`, disk, unit, peer: 'etcd', ...b }));
    const ratio =
      name === 'server.rss'
        ? { rssRatio: Math.round((a.peakRssMb! / b.peakRssMb!) * 100) / 100 }
        : {
            throughputRatio: Math.round((a.opsPerSec / b.opsPerSec) * 100) / 100,
            p99Ratio: Math.round((a.p99 / b.p99) * 100) / 100,
          };
    console.log(JSON.stringify({ bench: `etcd.${name}`, disk, unit, server: 'edgekeeper', ...a, ...ratio }));
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await run();
