/**
 * The fleet sync's fuzz targets (fuzz.ts), a few seconds each with a fixed seed; the bench
 * runs them longer (`npm run bench -- fuzz`).
 */
import { describe, it } from 'node:test';
import { fuzzSeconds, runFuzz, testSeed } from '../fuzz.js';
import { syncTargets } from './fuzz.js';

describe('fleet sync, fuzzed batches', () => {
  for (const t of syncTargets)
    it(`${t.name}: every input is answered, nothing crashes, memory stays bounded`, async (ctx) => {
      const r = await runFuzz(t, { seconds: fuzzSeconds(3), seed: testSeed() });
      ctx.diagnostic(JSON.stringify(r));
    });
});
