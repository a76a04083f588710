/**
 * Store benchmarks (in-process store API, durability fsync unless EDGEKEEPER_BENCH_DURABILITY
 * says otherwise). Prints one JSON line per measurement. Run: npm run bench -- store
 * Slow disk (every fsync delayed 15 ms): EDGEKEEPER_BENCH_SLOWDISK=1 npm run bench -- store
 * re-runs the write benches in a child under strace's fault injection.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { openStore, type Store } from '../../../src/store/index.js';
import { slowDisk } from '../../slowdisk.js';

const durability = (process.env.EDGEKEEPER_BENCH_DURABILITY as 'fsync' | 'relaxed' | undefined) ?? 'fsync';

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? Number.NaN;
}

function summary(bench: string, ms: number[], extra: Record<string, unknown> = {}) {
  const s = [...ms].sort((a, b) => a - b);
  const r = (x: number) => Math.round(x * 1000) / 1000;
  console.log(
    JSON.stringify({
      bench,
      unit: 'ms',
      p50: r(pct(s, 0.5)),
      p99: r(pct(s, 0.99)),
      p999: r(pct(s, 0.999)),
      n: ms.length,
      durability,
      ...extra,
    }),
  );
}

async function withStore<T>(fn: (s: Store) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'ek-bench-'));
  const s = await openStore({ file: join(dir, 'b.db'), durability });
  try {
    return await fn(s);
  } finally {
    await s.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const value = Buffer.alloc(128, 'v');

async function sequential(s: Store, n: number) {
  const lat: number[] = [];
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await s.put({ key: Buffer.from(`seq/${i % 1000}`), value });
    lat.push(performance.now() - t);
  }
  summary('store.put.sequential', lat, { opsPerSec: Math.round(n / ((performance.now() - t0) / 1000)) });
}

async function concurrent(s: Store, writers: number, durationMs: number) {
  const lat: number[] = [];
  const h = monitorEventLoopDelay({ resolution: 1 });
  h.enable();
  const end = performance.now() + durationMs;
  let done = 0;
  await Promise.all(
    Array.from({ length: writers }, async (_, w) => {
      let i = 0;
      while (performance.now() < end) {
        const t = performance.now();
        await s.put({ key: Buffer.from(`c/${w}/${i++ % 100}`), value });
        lat.push(performance.now() - t);
        done++;
      }
    }),
  );
  h.disable();
  summary(`store.put.concurrent.${writers}`, lat, {
    opsPerSec: Math.round(done / (durationMs / 1000)),
    eventLoopDelayP99Ms: Math.round(h.percentile(99) / 1e4) / 100,
  });
}

async function ranges(s: Store) {
  const batch: Promise<unknown>[] = [];
  for (let i = 0; i < 10_000; i++)
    batch.push(s.put({ key: Buffer.from(`r/${String(i).padStart(5, '0')}`), value }));
  await Promise.all(batch);
  for (const [n, end] of [
    [1, undefined],
    [100, 'r/00100'],
    [10_000, 'r0'],
  ] as const) {
    const lat: number[] = [];
    const reps = n === 10_000 ? 30 : 2000;
    for (let i = 0; i < reps; i++) {
      const t = performance.now();
      const r = s.range({
        key: Buffer.from(n === 1 ? 'r/00042' : 'r/'),
        rangeEnd: end ? Buffer.from(end) : undefined,
      });
      lat.push(performance.now() - t);
      if (r.kvs.length !== n) throw new Error(`range returned ${r.kvs.length}, expected ${n}`);
    }
    summary(`store.range.${n}`, lat);
  }
}

async function watchFanout(s: Store) {
  const watchers = 1000;
  const lat: number[] = [];
  let sentAt = 0;
  let got = 0;
  let resolveRound: () => void = () => {};
  for (let i = 0; i < watchers; i++)
    s.watch(
      { key: Buffer.from('w/'), rangeEnd: Buffer.from('w0') },
      {
        onEvents: () => {
          lat.push(performance.now() - sentAt);
          if (++got === watchers) resolveRound();
        },
        onCancel: () => {},
      },
    );
  for (let round = 0; round < 50; round++) {
    got = 0;
    const p = new Promise<void>((r) => (resolveRound = r));
    const put = s.put({ key: Buffer.from('w/k'), value });
    // Latency is measured from the commit (the put's resolution) to each watcher's delivery.
    sentAt = performance.now();
    await put;
    await p;
  }
  summary('store.watch.fanout.1000', lat, { note: 'from put submit to delivery, per watcher' });
}

async function rss100k() {
  await withStore(async (s) => {
    for (let i = 0; i < 100_000; i += 1000) {
      await s.write({
        sql: [],
        txn: {
          success: Array.from({ length: 100 }, (_, j) => ({
            put: { key: Buffer.from(`m/${i + j}`), value },
          })),
        },
      });
      await Promise.all(
        Array.from({ length: 900 }, (_, j) => s.put({ key: Buffer.from(`m/${i + 100 + j}`), value })),
      );
    }
    await new Promise((r) => setTimeout(r, 500));
    console.log(
      JSON.stringify({
        bench: 'store.rss.100k_keys',
        unit: 'MB',
        value: Math.round(process.memoryUsage().rss / 1e6),
        keys: s.stats().keys,
      }),
    );
  });
}

export default async function run(): Promise<void> {
  if (process.env.EDGEKEEPER_BENCH_SLOWDISK === '1' && !process.env.EDGEKEEPER_BENCH_CHILD) {
    // Re-run the write benches under strace, which delays every fsync/fdatasync by 15 ms.
    const [strace, ...args] = slowDisk(15);
    const r = spawnSync(
      strace!,
      [...args, process.execPath, '--import', 'tsx', new URL(import.meta.url).pathname],
      { stdio: 'inherit', env: { ...process.env, EDGEKEEPER_BENCH_CHILD: '1' } },
    );
    if (r.status !== 0) throw new Error(`slow-disk bench failed with ${r.status}`);
    return;
  }
  if (process.env.EDGEKEEPER_BENCH_CHILD === 'rss') {
    await rss100k();
    return;
  }
  if (process.env.EDGEKEEPER_BENCH_CHILD) {
    await withStore((s) => concurrent(s, 64, 5000));
    await withStore((s) => concurrent(s, 8, 3000));
    return;
  }
  await withStore((s) => sequential(s, 3000));
  await withStore((s) => concurrent(s, 8, 3000));
  await withStore((s) => concurrent(s, 64, 3000));
  await withStore(ranges);
  await withStore(watchFanout);
  // Resident memory in a fresh process, so the benches above do not count.
  const r = spawnSync(process.execPath, ['--import', 'tsx', new URL(import.meta.url).pathname], {
    stdio: 'inherit',
    env: { ...process.env, EDGEKEEPER_BENCH_CHILD: 'rss' },
  });
  if (r.status !== 0) throw new Error(`RSS bench failed with ${r.status}`);
}

if (process.env.EDGEKEEPER_BENCH_CHILD) await run();
