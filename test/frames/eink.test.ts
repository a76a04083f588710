/**
 * e-ink: 1-bit threshold and Floyd–Steinberg conversion, packed rows and PBM (P4), and the
 * minimum interval between refreshes (driven by a ManualClock).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ManualClock } from '../../src/clock.js';
import { bitStride, EinkSink, toOneBit, toPbm } from '../../src/frames/index.js';
import { decodePng } from './helpers.js';
import { PngEncoder } from '../../src/frames/index.js';

const tmp = mkdtempSync(join(tmpdir(), 'ek-eink-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function grey(w: number, h: number, f: (x: number, y: number) => number): Uint8Array {
  const out = new Uint8Array(w * h * 4);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) out.set([f(x, y), f(x, y), f(x, y), 255], (y * w + x) * 4);
  return out;
}
const bit = (bits: Uint8Array, w: number, x: number, y: number) =>
  (bits[y * bitStride(w) + (x >> 3)]! >> (7 - (x & 7))) & 1;

test('threshold: darker than the threshold is black (1), MSB first, rows padded to a byte', () => {
  const w = 10;
  const h = 2;
  const img = grey(w, h, (x) => (x < 3 ? 0 : x < 6 ? 127 : x < 8 ? 128 : 255));
  const bits = toOneBit(img, w, h, 'threshold', 128);
  assert.equal(bits.length, 4);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) assert.equal(bit(bits, w, x, y), x < 6 ? 1 : 0, `${x},${y}`);
  assert.equal(bits[1]! & 0x3f, 0, 'padding bits are zero');
  // Colour goes through luma: pure blue is dark, pure yellow is light.
  const c = new Uint8Array([0, 0, 255, 255, 255, 255, 0, 255]);
  const cb = toOneBit(c, 2, 1, 'threshold');
  assert.equal(cb[0], 0b1000_0000);
});

test('dither: a flat grey becomes a mix in proportion, a flat black or white stays flat', () => {
  const w = 64;
  const h = 64;
  const count = (bits: Uint8Array) => {
    let n = 0;
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) n += bit(bits, w, x, y);
    return n;
  };
  const half = count(
    toOneBit(
      grey(w, h, () => 128),
      w,
      h,
      'dither',
    ),
  );
  assert.ok(Math.abs(half / (w * h) - 0.5) < 0.05, `50% grey -> ${half} black of ${w * h}`);
  const quarter = count(
    toOneBit(
      grey(w, h, () => 191),
      w,
      h,
      'dither',
    ),
  );
  assert.ok(Math.abs(quarter / (w * h) - 0.25) < 0.05, `75% grey -> ${quarter} black`);
  assert.equal(
    count(
      toOneBit(
        grey(w, h, () => 0),
        w,
        h,
        'dither',
      ),
    ),
    w * h,
  );
  assert.equal(
    count(
      toOneBit(
        grey(w, h, () => 255),
        w,
        h,
        'dither',
      ),
    ),
    0,
  );
  // Threshold of the same grey is all one colour: dithering really is different.
  assert.equal(
    count(
      toOneBit(
        grey(w, h, () => 128),
        w,
        h,
        'threshold',
      ),
    ),
    0,
  );
});

test('PBM P4 and the 1-bit PNG carry the same pixels', async () => {
  const w = 13;
  const h = 5;
  const img = grey(w, h, (x, y) => ((x + y) % 3 === 0 ? 0 : 255));
  const bits = toOneBit(img, w, h, 'threshold');
  const pbm = toPbm(bits, w, h);
  assert.equal(pbm.subarray(0, 8).toString('ascii'), 'P4\n13 5\n');
  assert.equal(pbm.length, 8 + 2 * 5);
  const png = await decodePng(new PngEncoder().encodeBitsSync(bits, w, h));
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++)
      assert.equal(png.data[(y * w + x) * 4], (x + y) % 3 === 0 ? 0 : 255, `${x},${y}`);
  }
});

test('EinkSink keeps refreshes at least minRefresh apart and writes the latest held frame', () => {
  const clock = new ManualClock();
  const bitmapPath = join(tmp, 'eink.bin');
  const pbmPath = join(tmp, 'eink.pbm');
  const writes: number[] = [];
  const sink = new EinkSink(8, 2, {
    clock,
    minRefreshMs: 60_000,
    bitmapPath,
    pbmPath,
    onWrite: (b) => writes.push(b[0]!),
  });
  assert.equal(sink.offer(new Uint8Array([1, 1])), true, 'first frame is written at once');
  assert.deepEqual([...readFileSync(bitmapPath)], [1, 1]);
  assert.equal(readFileSync(pbmPath).toString('latin1'), 'P4\n8 2\n\x01\x01');
  clock.advance(10_000);
  assert.equal(sink.offer(new Uint8Array([2, 2])), false, 'too soon: held');
  clock.advance(10_000);
  assert.equal(sink.offer(new Uint8Array([3, 3])), false, 'replaces the held frame');
  assert.deepEqual(writes, [1]);
  clock.advance(39_999);
  assert.deepEqual(writes, [1], 'not before the interval');
  clock.advance(1);
  assert.deepEqual(writes, [1, 3], 'latest frame written when the interval passed');
  assert.deepEqual([...readFileSync(bitmapPath)], [3, 3]);
  assert.equal(sink.refreshes, 2);
  assert.equal(sink.deferred, 2);
  assert.ok(!existsSync(`${bitmapPath}.tmp-${process.pid}`), 'atomic write leaves no temp file');
  sink.close();
});

test('EinkSink invert writes 1 = white in the bitmap, PBM unchanged', () => {
  const clock = new ManualClock();
  const bitmapPath = join(tmp, 'inv.bin');
  const pbmPath = join(tmp, 'inv.pbm');
  const sink = new EinkSink(8, 1, { clock, minRefreshMs: 0, bitmapPath, pbmPath, invert: true });
  sink.offer(new Uint8Array([0b1010_0000]));
  assert.deepEqual([...readFileSync(bitmapPath)], [0b0101_1111]);
  assert.equal(readFileSync(pbmPath)[readFileSync(pbmPath).length - 1], 0b1010_0000);
});

test('EinkSink reports a failed write and keeps going', () => {
  const clock = new ManualClock();
  const errors: unknown[] = [];
  const sink = new EinkSink(8, 1, {
    clock,
    minRefreshMs: 0,
    bitmapPath: join(tmp, 'no', 'such', 'dir', 'x.bin'),
    onError: (e) => errors.push(e),
  });
  sink.offer(new Uint8Array([1]));
  assert.equal(errors.length, 1);
  assert.equal(sink.refreshes, 0);
});
