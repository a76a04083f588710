/** The log2 histogram model: bucket mapping, deltas, percentile estimates, storage form. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { bucketHigh, bucketIndex, bucketLow, Log2Histogram } from '../../src/probes/histogram.js';

describe('Log2Histogram', () => {
  it("maps bpftrace's buckets [0],[1],[2,3],[4,7].. to indexes 0,1,2,3..", () => {
    assert.deepEqual([0, 1, 2, 4, 8, 1024].map(bucketIndex), [0, 1, 2, 3, 4, 11]);
    assert.deepEqual([bucketLow(3), bucketHigh(3)], [4, 8]);
    assert.deepEqual([bucketLow(0), bucketHigh(0)], [0, 1]);
  });

  it('merges deltas and keeps empty inner buckets out of the counts', () => {
    const h = Log2Histogram.fromRaw([
      { min: 64, max: 127, count: 3 },
      { min: 128, max: 255, count: 0 },
      { min: 256, max: 511, count: 1 },
    ]);
    h.add(Log2Histogram.fromRaw([{ min: 64, max: 127, count: 2 }]));
    assert.equal(h.total, 6);
    assert.deepEqual(h.toPairs(), [
      [7, 5],
      [9, 1],
    ]);
  });

  it('estimates percentiles inside the bucket holding them', () => {
    // 100 values: 90 in [64,128), 9 in [1024,2048), 1 in [65536,131072).
    const h = Log2Histogram.fromRaw([
      { min: 64, max: 127, count: 90 },
      { min: 1024, max: 2047, count: 9 },
      { min: 65536, max: 131071, count: 1 },
    ]);
    const p = h.percentiles()!;
    assert.ok(p.p50 >= 64 && p.p50 < 128, `p50 ${p.p50}`);
    assert.ok(p.p90 >= 64 && p.p90 <= 128, `p90 ${p.p90}`);
    assert.ok(p.p99 >= 1024 && p.p99 <= 2048, `p99 ${p.p99}`);
    assert.equal(h.percentile(1), 131072);
    assert.equal(new Log2Histogram().percentiles(), undefined);
  });

  it('treats an lhist open-ended bucket by its minimum', () => {
    const h = Log2Histogram.fromRaw([{ min: 8, max: undefined, count: 4 }]);
    assert.deepEqual(h.toPairs(), [[4, 4]]);
  });

  it('estimates the sum from bucket midpoints', () => {
    const h = Log2Histogram.fromRaw([{ min: 4, max: 7, count: 2 }]);
    assert.equal(h.sumEstimate(), 12);
  });
});
