/**
 * The fuzzing harness: every decoder's fuzz target (test/<part>/fuzz.ts) runs here, in `npm test`
 * briefly with a fixed seed (test/<part>/fuzz.test.ts) and for longer in the bench
 * (`npm run bench -- fuzz`, test/bench/fuzz/fuzz.bench.ts). fast-check generates the inputs,
 * runs the property until its time is up, and on a failure shrinks the input and prints it with
 * the seed and path that replay it (EDGEKEEPER_FUZZ_SEED, EDGEKEEPER_FUZZ_PATH).
 *
 * A property holds when every input is answered: success, or an error of the kind the decoder
 * promises (an EdgeError with its code, a refused connection), never another exception, a crash
 * or a hang. Memory is checked over the whole run: the heap after a full collection may not have
 * grown by more than `maxHeapGrowthMB`.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import fc from 'fast-check';

export interface FuzzTarget {
  name: string;
  /** Build what the property needs (a broker, files); `close` undoes it. */
  setup(): Promise<FuzzSetup>;
}

export interface FuzzSetup {
  // biome-ignore lint/suspicious/noExplicitAny: each target's property has its own input types
  property: fc.IAsyncProperty<any> | fc.IProperty<any>;
  /** Checked after the run: the thing under test is still well (answers, no restarts). */
  after?(): Promise<void>;
  close(): Promise<void>;
}

export interface FuzzResult {
  name: string;
  runs: number;
  seconds: number;
  seed: number;
  heapGrowthMB: number;
  rssGrowthMB: number;
}

/** Seconds per target: a few in `npm test`, more through EDGEKEEPER_FUZZ_SECONDS (the bench's default is 60). */
export function fuzzSeconds(fallback: number): number {
  const v = Number(process.env.EDGEKEEPER_FUZZ_SECONDS);
  return Number.isFinite(v) && v > 0 ? v : fallback;
}

// the test runs are reproducible; the bench draws a new seed unless one is given
export const TEST_SEED = 20251202;

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

function heapMB(): { heap: number; rss: number } {
  gc();
  const m = process.memoryUsage();
  return { heap: m.heapUsed / 2 ** 20, rss: m.rss / 2 ** 20 };
}

/**
 * Runs `target` for `seconds` with `seed`; throws fast-check's report when an input breaks the
 * property, or when the heap grew by more than `maxHeapGrowthMB`.
 */
export async function runFuzz(
  target: FuzzTarget,
  opts: { seconds: number; seed: number; maxHeapGrowthMB?: number; path?: string },
): Promise<FuzzResult> {
  const s = await target.setup();
  try {
    let runs = 0;
    const before = heapMB();
    const t0 = performance.now();
    await fc.assert(s.property as fc.IAsyncProperty<unknown>, {
      plugins: [
        fc.beforeEach(() => {
          runs++;
        }),
      ],
      seed: opts.seed,
      ...(opts.path ? { path: opts.path } : {}),
      // the time decides, not the count
      numRuns: Number.MAX_SAFE_INTEGER,
      interruptAfterTimeLimit: opts.seconds * 1000,
      markInterruptAsFailure: false,
    });
    const seconds = (performance.now() - t0) / 1000;
    await s.after?.();
    const end = heapMB();
    const result: FuzzResult = {
      name: target.name,
      runs,
      seconds,
      seed: opts.seed,
      heapGrowthMB: end.heap - before.heap,
      rssGrowthMB: end.rss - before.rss,
    };
    const max = opts.maxHeapGrowthMB ?? 32;
    if (result.heapGrowthMB > max)
      throw new Error(
        `${target.name}: the heap grew by ${result.heapGrowthMB.toFixed(1)} MB over ${runs} inputs (at most ${max})`,
      );
    return result;
  } finally {
    await s.close();
  }
}

/** `npm test`'s run of a part's targets: a fixed seed, a few seconds each. */
export function testSeed(): number {
  const v = Number(process.env.EDGEKEEPER_FUZZ_SEED);
  return Number.isInteger(v) ? v : TEST_SEED;
}
