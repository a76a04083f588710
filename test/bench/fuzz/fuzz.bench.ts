/**
 * The long form of the fuzzers that `npm test` runs for a few seconds each (test/fuzz.ts):
 * every target for EDGEKEEPER_FUZZ_SECONDS (default 60) with a new random seed, or
 * EDGEKEEPER_FUZZ_SEED to replay one; EDGEKEEPER_FUZZ_TARGETS=name,name picks targets. One JSON
 * line per target: inputs tried, seconds, the seed, and how much the heap (after a full
 * collection) and RSS grew over the run. A failing input stops the bench with fast-check's report
 * (the input shrunk, and the seed and path that replay it).
 */
import { configTargets } from '../../config/fuzz.js';
import { daemonTargets } from '../../daemon/fuzz.js';
import { etcdTargets } from '../../etcd/fuzz.js';
import { type FuzzTarget, fuzzSeconds, runFuzz } from '../../fuzz.js';
import { ingestTargets } from '../../ingest/fuzz.js';
import { syncTargets } from '../../sync/fuzz.js';

export default async function fuzzBench(): Promise<void> {
  const all: FuzzTarget[] = [
    ...ingestTargets,
    ...etcdTargets,
    ...syncTargets,
    ...configTargets,
    ...daemonTargets,
  ];
  const pick = process.env.EDGEKEEPER_FUZZ_TARGETS?.split(',').filter(Boolean);
  const seed = Number.isInteger(Number(process.env.EDGEKEEPER_FUZZ_SEED))
    ? Number(process.env.EDGEKEEPER_FUZZ_SEED)
    : Math.floor(Math.random() * 2 ** 31);
  const path = process.env.EDGEKEEPER_FUZZ_PATH;
  for (const t of all) {
    if (pick && !pick.includes(t.name)) continue;
    const r = await runFuzz(t, { seconds: fuzzSeconds(60), seed, ...(path ? { path } : {}) });
    console.log(
      JSON.stringify({
        bench: `fuzz.${r.name}`,
        unit: 'inputs',
        n: r.runs,
        seconds: Math.round(r.seconds * 10) / 10,
        perSecond: Math.round(r.runs / r.seconds),
        seed: r.seed,
        heapGrowthMB: Math.round(r.heapGrowthMB * 10) / 10,
        rssGrowthMB: Math.round(r.rssGrowthMB * 10) / 10,
      }),
    );
  }
}
