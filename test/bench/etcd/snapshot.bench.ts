/**
 * etcd-format snapshots against real etcd 3.4 in one run: the same history (REVS puts of 128-byte
 * values over REVS/10 keys, then a compaction at half of it) loaded into edgekeeper (in this
 * process) and a real etcd, then `etcdctl snapshot save` from each (wall time, file size), the
 * growth of the snapshotting server's memory while it snapshots (edgekeeper: this process's RSS
 * sampled every 5 ms; etcd: its VmRSS the same way), and the way back: `edgekeeper restore
 * --from-etcd` of etcd's file against `etcdctl snapshot restore` of edgekeeper's.
 * EDGEKEEPER_BENCH_SNAPSHOT_REVS sets REVS (default 100,000).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { restoreFromEtcdSnapshot } from '../../../src/daemon/index.js';
import { EtcdClient } from '../../../src/etcd/cli.js';
import { ETCDCTL_BIN, etcdctl, startEdge, startRealEtcd } from '../../etcd/helpers.js';
import { memoryMb } from '../proc.js';

const REVS = Number(process.env.EDGEKEEPER_BENCH_SNAPSHOT_REVS ?? 100_000);
const VALUE = Buffer.alloc(128, 0x76);

async function load(c: EtcdClient): Promise<void> {
  const inFlight = 64;
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < REVS; i = next++)
      await c.call('etcdserverpb.KV', 'Put', { key: Buffer.from(`/bench/${i % (REVS / 10)}`), value: VALUE });
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  await c.call('etcdserverpb.KV', 'Compact', { revision: Math.floor(REVS / 2), physical: true });
}

/** Runs `fn` while sampling `rss()` every 5 ms; returns its wall time and the RSS growth. */
async function measured(
  rss: () => number,
  fn: () => Promise<unknown>,
): Promise<{ ms: number; rssGrowthMb: number }> {
  const base = rss();
  let peak = base;
  const t = setInterval(() => {
    peak = Math.max(peak, rss());
  }, 5);
  const start = performance.now();
  try {
    await fn();
  } finally {
    clearInterval(t);
  }
  return { ms: performance.now() - start, rssGrowthMb: Math.max(0, Math.max(peak, rss()) - base) };
}

export default async function bench(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ek-snapbench-'));
  const edge = await startEdge();
  const etcd = await startRealEtcd();
  const ec = new EtcdClient(edge.endpoint);
  const rc = new EtcdClient(etcd.endpoint);
  try {
    await Promise.all([load(ec), load(rc)]);
    const files = { edgekeeper: join(dir, 'edge.snap'), etcd: join(dir, 'etcd.snap') };
    const save = async (endpoint: string, file: string) => {
      const r = await etcdctl(endpoint, ['snapshot', 'save', file]);
      if (r.status !== 0) throw new Error(r.stderr);
    };
    const mine = await measured(
      () => process.memoryUsage().rss / 2 ** 20,
      () => save(edge.endpoint, files.edgekeeper),
    );
    const theirs = await measured(
      () => memoryMb(etcd.proc.pid!).rss,
      () => save(etcd.endpoint, files.etcd),
    );
    const size = (f: string) => statSync(f).size;
    const line = (o: object) => process.stdout.write(`${JSON.stringify(o)}\n`);
    line({
      bench: 'snapshot save',
      unit: 'ms',
      n: REVS,
      peer: 'etcd',
      p50: theirs.ms,
      bytes: size(files.etcd),
      rssGrowthMb: theirs.rssGrowthMb,
    });
    line({
      bench: 'snapshot save',
      unit: 'ms',
      n: REVS,
      peer: 'edgekeeper',
      p50: mine.ms,
      bytes: size(files.edgekeeper),
      rssGrowthMb: mine.rssGrowthMb,
      ratio: mine.ms / theirs.ms,
    });
    const imp = await measured(
      () => process.memoryUsage().rss / 2 ** 20,
      () => restoreFromEtcdSnapshot(files.etcd, join(dir, 'node'), Date.now()),
    );
    const start = performance.now();
    const r = spawnSync(
      ETCDCTL_BIN,
      ['snapshot', 'restore', files.edgekeeper, '--data-dir', join(dir, 'etcd-restored')],
      { env: { ...process.env, ETCDCTL_API: '3' } },
    );
    if (r.status !== 0) throw new Error(String(r.stderr));
    const restoreMs = performance.now() - start;
    line({ bench: 'snapshot restore', unit: 'ms', n: REVS, peer: 'etcd', p50: restoreMs });
    line({
      bench: 'snapshot restore',
      unit: 'ms',
      n: REVS,
      peer: 'edgekeeper',
      p50: imp.ms,
      rssGrowthMb: imp.rssGrowthMb,
      ratio: imp.ms / restoreMs,
    });
  } finally {
    ec.close();
    rc.close();
    await Promise.all([edge.close(), etcd.close()]);
    rmSync(dir, { recursive: true, force: true });
  }
}
