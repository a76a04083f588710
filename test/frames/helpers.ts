/** Shared by the frames tests: draw a fixture to PNG, decode PNGs, compare pixels. */
import { createCanvas, loadImage } from '@napi-rs/canvas';
import {
  type FrameSize,
  type FrameSnapshot,
  layout,
  PngEncoder,
  Renderer,
  toOneBit,
} from '../../src/frames/index.js';

const renderers = new Map<string, Renderer>();
const encoder = new PngEncoder();

/** The PNG the part would serve for `snap` at `size` (1-bit for e-ink sizes). */
export function framePng(snap: FrameSnapshot, size: FrameSize): Buffer {
  let r = renderers.get(size.name);
  if (!r) {
    r = new Renderer(size);
    renderers.set(size.name, r);
  }
  const rgba = r.render(layout(snap, size, r.measure));
  if (size.mono)
    return encoder.encodeBitsSync(
      toOneBit(rgba, size.width, size.height, 'threshold'),
      size.width,
      size.height,
    );
  return encoder.encodeRgbaSync(rgba, size.width, size.height);
}

/** Decode a PNG with canvas (Skia's decoder, not ours) to RGBA. */
export async function decodePng(
  png: Buffer,
): Promise<{ width: number; height: number; data: Uint8ClampedArray }> {
  const img = await loadImage(png);
  const c = createCanvas(img.width, img.height);
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  return { width: img.width, height: img.height, data: ctx.getImageData(0, 0, img.width, img.height).data };
}

/** Pixels whose largest channel difference exceeds `tolerance` (0..255). */
export function diffPixels(a: Uint8ClampedArray, b: Uint8ClampedArray, tolerance = 48): number {
  if (a.length !== b.length) return Number.POSITIVE_INFINITY;
  let n = 0;
  for (let i = 0; i < a.length; i += 4) {
    const d = Math.max(
      Math.abs(a[i]! - b[i]!),
      Math.abs(a[i + 1]! - b[i + 1]!),
      Math.abs(a[i + 2]! - b[i + 2]!),
    );
    if (d > tolerance) n++;
  }
  return n;
}
