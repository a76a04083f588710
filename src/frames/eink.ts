import { renameSync, writeFileSync } from 'node:fs';
import type { Clock, Timer } from '../clock.js';
import type { EinkMode } from './types.js';

/** Bytes of one packed 1-bit row: MSB is the leftmost pixel, rows padded to a whole byte. */
export const bitStride = (w: number) => (w + 7) >> 3;

/** Rec. 601 luma, integer weights summing to 256 (the usual fast approximation). */
function luma(r: number, g: number, b: number): number {
  return (77 * r + 150 * g + 29 * b) >> 8;
}

/**
 * RGBA -> packed 1-bit, 1 = black (PBM's convention). `threshold`: luma below it is black.
 * `dither`: Floyd–Steinberg error diffusion (7/16 right, 3/16 down-left, 5/16 down, 1/16
 * down-right) in serpentine-free raster order; `scratch` holds two rows of error (reused).
 */
export function toOneBit(
  rgba: Uint8Array,
  w: number,
  h: number,
  mode: EinkMode,
  threshold = 128,
  out: Uint8Array = new Uint8Array(bitStride(w) * h),
  scratch: Float32Array = new Float32Array(2 * (w + 2)),
): Uint8Array {
  const stride = bitStride(w);
  out.fill(0, 0, stride * h);
  if (mode === 'threshold') {
    let p = 0;
    for (let y = 0; y < h; y++) {
      const row = y * stride;
      for (let x = 0; x < w; x++) {
        if (luma(rgba[p]!, rgba[p + 1]!, rgba[p + 2]!) < threshold) out[row + (x >> 3)]! |= 0x80 >> (x & 7);
        p += 4;
      }
    }
    return out;
  }
  // Two error rows with one cell of padding each side; `cur` and `next` swap every row.
  scratch.fill(0);
  let cur = 0;
  let next = w + 2;
  let p = 0;
  for (let y = 0; y < h; y++) {
    const row = y * stride;
    for (let x = 0; x < w; x++) {
      const v = luma(rgba[p]!, rgba[p + 1]!, rgba[p + 2]!) + scratch[cur + x + 1]!;
      p += 4;
      let err: number;
      if (v < threshold) {
        out[row + (x >> 3)]! |= 0x80 >> (x & 7);
        err = v;
      } else {
        err = v - 255;
      }
      scratch[cur + x + 2]! += (err * 7) / 16;
      scratch[next + x]! += (err * 3) / 16;
      scratch[next + x + 1]! += (err * 5) / 16;
      scratch[next + x + 2]! += err / 16;
    }
    // The row just finished becomes the next "next" row: clear it.
    scratch.fill(0, cur, cur + w + 2);
    const t = cur;
    cur = next;
    next = t;
  }
  return out;
}

/** Binary PBM (P4): header, then the packed rows (1 = black). */
export function toPbm(bits: Uint8Array, w: number, h: number): Buffer {
  const head = Buffer.from(`P4\n${w} ${h}\n`, 'ascii');
  return Buffer.concat([head, bits.subarray(0, bitStride(w) * h)]);
}

/** Write `data` to `path` atomically: a reader sees the old file or the new one, never half. */
export function writeAtomic(path: string, data: Uint8Array): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}

export interface EinkSinkOptions {
  clock: Clock;
  /** Minimum ms between two refreshes; frames in between wait, only the latest is kept. */
  minRefreshMs: number;
  bitmapPath?: string;
  pbmPath?: string;
  /** Write 1 = white in the bitmap file (many panels' controllers want that). PBM stays 1 = black. */
  invert?: boolean;
  onWrite?: (bits: Uint8Array) => void;
  onError?: (err: unknown) => void;
}

/**
 * e-ink output. Panels flash on every refresh and wear out, so refreshes are at least
 * `minRefreshMs` apart: a frame that comes earlier is held (replacing any held one) and written
 * when the interval has passed.
 */
export class EinkSink {
  private lastWrite: number | undefined;
  private pending: Uint8Array | undefined;
  private timer: Timer | undefined;
  private readonly held: Uint8Array;
  private readonly inv: Uint8Array;
  refreshes = 0;
  deferred = 0;

  constructor(
    readonly width: number,
    readonly height: number,
    private readonly opts: EinkSinkOptions,
  ) {
    this.held = new Uint8Array(bitStride(width) * height);
    this.inv = new Uint8Array(bitStride(width) * height);
  }

  /** Offer a new frame (packed, 1 = black). Returns true if it was written now. */
  offer(bits: Uint8Array): boolean {
    const now = this.opts.clock.now();
    if (this.lastWrite === undefined || now - this.lastWrite >= this.opts.minRefreshMs) {
      this.pending = undefined;
      this.timer?.cancel();
      this.timer = undefined;
      this.flush(bits, now);
      return true;
    }
    this.held.set(bits.subarray(0, this.held.length));
    this.pending = this.held;
    this.deferred++;
    if (!this.timer) {
      this.timer = this.opts.clock.setTimeout(
        () => {
          this.timer = undefined;
          const p = this.pending;
          this.pending = undefined;
          if (p) this.flush(p, this.opts.clock.now());
        },
        this.lastWrite + this.opts.minRefreshMs - now,
      );
    }
    return false;
  }

  private flush(bits: Uint8Array, now: number): void {
    this.lastWrite = now;
    try {
      const o = this.opts;
      if (o.bitmapPath) {
        let data = bits;
        if (o.invert) {
          for (let i = 0; i < this.inv.length; i++) this.inv[i] = ~bits[i]! & 0xff;
          data = this.inv;
        }
        writeAtomic(o.bitmapPath, data.subarray(0, this.held.length));
      }
      if (o.pbmPath) writeAtomic(o.pbmPath, toPbm(bits, this.width, this.height));
      this.refreshes++;
      o.onWrite?.(bits);
    } catch (err) {
      this.opts.onError?.(err);
    }
  }

  close(): void {
    this.timer?.cancel();
    this.timer = undefined;
  }
}
