/**
 * Framebuffer conversion, pixel by pixel, for RGB565 and XRGB8888, RGB and BGR order, and every
 * rotation; then the sink end to end against a regular file standing in for /dev/fb0 with a
 * sysfs fixture (virtual_size, bits_per_pixel, stride with row padding).
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { FramebufferError } from '../../src/errors.js';
import { type FbFormat, FramebufferSink, readFbInfo, toFramebuffer } from '../../src/frames/index.js';

const tmp = mkdtempSync(join(tmpdir(), 'ek-fb-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** A 4x3 image of distinct known colours: pixel (x, y) has colour COLOURS[y*4+x]. */
const W = 4;
const H = 3;
const COLOURS: [number, number, number][] = [
  [255, 0, 0],
  [0, 255, 0],
  [0, 0, 255],
  [255, 255, 255],
  [0, 0, 0],
  [255, 255, 0],
  [0, 255, 255],
  [255, 0, 255],
  [0x12, 0x34, 0x56],
  [0x80, 0x80, 0x80],
  [0xf8, 0xfc, 0xf8],
  [0x07, 0x03, 0x07],
];
const rgba = new Uint8Array(W * H * 4);
for (const [i, [r, g, b]] of COLOURS.entries()) rgba.set([r, g, b, 255], i * 4);

/** Where source pixel (x, y) lands after a clockwise rotation of the w x h image. */
function rotated(x: number, y: number, rot: number): [number, number] {
  if (rot === 0) return [x, y];
  if (rot === 90) return [H - 1 - y, x];
  if (rot === 180) return [W - 1 - x, H - 1 - y];
  return [y, W - 1 - x];
}

function expectPixel(
  buf: Buffer,
  fmt: FbFormat,
  fx: number,
  fy: number,
  [r, g, b]: [number, number, number],
): void {
  const o = fy * fmt.stride + fx * (fmt.bitsPerPixel / 8);
  if (fmt.bitsPerPixel === 16) {
    const v = buf.readUInt16LE(o);
    const hi = fmt.bgr ? b : r;
    const lo = fmt.bgr ? r : b;
    assert.equal(v >> 11, hi >> 3, `565 high field at ${fx},${fy}`);
    assert.equal((v >> 5) & 0x3f, g >> 2, `565 green at ${fx},${fy}`);
    assert.equal(v & 0x1f, lo >> 3, `565 low field at ${fx},${fy}`);
  } else {
    // XRGB8888 little-endian: B, G, R, X; BGR swaps the first and third bytes.
    assert.deepEqual(
      [...buf.subarray(o, o + 4)],
      fmt.bgr ? [r, g, b, 255] : [b, g, r, 255],
      `8888 at ${fx},${fy}`,
    );
  }
}

for (const bpp of [16, 32] as const) {
  for (const bgr of [false, true]) {
    for (const rotation of [0, 90, 180, 270] as const) {
      test(`toFramebuffer ${bpp} bpp ${bgr ? 'BGR' : 'RGB'} rotation ${rotation}`, () => {
        const [fw, fh] = rotation % 180 === 0 ? [W, H] : [H, W];
        // Two bytes of row padding, as drivers with aligned strides have.
        const fmt: FbFormat = { bitsPerPixel: bpp, stride: fw * (bpp / 8) + 2, bgr, rotation };
        const buf = Buffer.alloc(fmt.stride * fh, 0xaa);
        toFramebuffer(rgba, W, H, fmt, buf);
        for (let y = 0; y < H; y++) {
          for (let x = 0; x < W; x++) {
            const [fx, fy] = rotated(x, y, rotation);
            expectPixel(buf, fmt, fx, fy, COLOURS[y * W + x]!);
          }
        }
        // The byte-by-byte path (source not 4-byte aligned) gives the same bytes as the word path.
        const unaligned = new Uint8Array(rgba.length + 1).subarray(1);
        unaligned.set(rgba);
        const buf2 = Buffer.alloc(fmt.stride * fh, 0xaa);
        toFramebuffer(unaligned, W, H, fmt, buf2);
        assert.deepEqual(buf2, buf);
        // The padding at the end of each row is untouched.
        for (let y = 0; y < fh; y++)
          assert.deepEqual(
            [...buf.subarray(y * fmt.stride + fw * (bpp / 8), (y + 1) * fmt.stride)],
            [0xaa, 0xaa],
          );
      });
    }
  }
}

function fixture(name: string, size: string, bpp: string, stride?: string): { sys: string; dev: string } {
  const sys = join(tmp, name, 'sys');
  const dir = join(sys, 'class', 'graphics', 'fb0');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'virtual_size'), `${size}\n`);
  writeFileSync(join(dir, 'bits_per_pixel'), `${bpp}\n`);
  if (stride) writeFileSync(join(dir, 'stride'), `${stride}\n`);
  const dev = join(tmp, name, 'fb0');
  writeFileSync(dev, Buffer.alloc(0));
  return { sys, dev };
}

test('readFbInfo reads geometry, depth and stride from sysfs; refuses what it cannot drive', () => {
  const a = fixture('info', '480,320', '16', '1024');
  assert.deepEqual(readFbInfo(a.dev, a.sys), { width: 480, height: 320, bitsPerPixel: 16, stride: 1024 });
  const b = fixture('nostride', '320,240', '32');
  assert.equal(readFbInfo(b.dev, b.sys).stride, 1280);
  const c = fixture('bpp24', '320,240', '24');
  assert.throws(
    () => readFbInfo(c.dev, c.sys),
    (e: unknown) => e instanceof FramebufferError && /24 bits per pixel/.test(e.message),
  );
  const d = fixture('garbage', 'x,y', '16');
  assert.throws(() => readFbInfo(d.dev, d.sys), FramebufferError);
  const e = fixture('small-stride', '320,240', '16', '100');
  assert.throws(() => readFbInfo(e.dev, e.sys), /impossible geometry/);
  assert.throws(() => readFbInfo('/dev/sda', e.sys), /not a framebuffer/);
  assert.throws(
    () => readFbInfo(join(tmp, 'none', 'fb7'), join(tmp, 'none')),
    /is the display driver loaded/,
  );
});

test('FramebufferSink writes one whole frame, centred and rotated, into the device file', () => {
  // A portrait 6x8 panel at 32 bpp, rotation 90: the 4x3 image is landscape on it.
  const f = fixture('sink', '6,8', '32', '28');
  const sink = new FramebufferSink(f.dev, { rotation: 90, sysRoot: f.sys });
  assert.deepEqual(sink.logicalSize(), { width: 8, height: 6 });
  sink.write(rgba, W, H);
  sink.close();
  const mem = readFileSync(f.dev);
  assert.equal(mem.length, 28 * 8, 'one full write of stride x height');
  // Logical offset (2, 1) (centred in 8x6) maps to framebuffer offset (6-3-1, 2) = (2, 2).
  const fmt: FbFormat = { bitsPerPixel: 32, stride: 28, bgr: false, rotation: 90 };
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const [fx, fy] = rotated(x, y, 90);
      expectPixel(mem, fmt, fx + 2, fy + 2, COLOURS[y * W + x]!);
    }
  }
  assert.deepEqual([...mem.subarray(0, 4)], [0, 0, 0, 0], 'outside the frame stays as it was (zero)');
  // A frame bigger than the panel is refused with a reason.
  assert.throws(() => sink.write(new Uint8Array(100 * 100 * 4), 100, 100), /does not fit/);
});
