import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { endianness } from 'node:os';
import { basename, join } from 'node:path';
import { FramebufferError } from '../errors.js';
import type { Rotation } from './types.js';

/** Pixel words in framebuffer memory are little-endian on every board we target; views need the host to match. */
const LITTLE_ENDIAN = endianness() === 'LE';

/** What the kernel says about /dev/fbN (sysfs `class/graphics/fbN`). */
export interface FbInfo {
  /** Visible-plus-virtual geometry in pixels (`virtual_size` "W,H"). */
  width: number;
  height: number;
  bitsPerPixel: 16 | 32;
  /** Bytes per row (`stride`), at least width * bytes per pixel. */
  stride: number;
}

export interface FbFormat {
  bitsPerPixel: 16 | 32;
  stride: number;
  /** Blue in the high bits (RGB565 -> BGR565; XRGB8888 bytes B,G,R,X -> R,G,B,X). */
  bgr: boolean;
  rotation: Rotation;
}

function readSys(dir: string, name: string): string {
  try {
    return readFileSync(join(dir, name), 'utf8').trim();
  } catch (err) {
    throw new FramebufferError(
      `cannot read ${join(dir, name)}: ${(err as Error).message}; is the display driver loaded?`,
    );
  }
}

/** Geometry, depth and stride of `device` (e.g. /dev/fb0) from `<sysRoot>/class/graphics/fbN/`. */
export function readFbInfo(device: string, sysRoot = '/sys'): FbInfo {
  const name = basename(device);
  if (!/^fb\d+$/.test(name))
    throw new FramebufferError(`${device} is not a framebuffer device name (expected /dev/fbN)`);
  const dir = join(sysRoot, 'class', 'graphics', name);
  const size = /^(\d+),(\d+)$/.exec(readSys(dir, 'virtual_size'));
  const bpp = Number(readSys(dir, 'bits_per_pixel'));
  if (!size) throw new FramebufferError(`${dir}/virtual_size is not "W,H"`);
  const width = Number(size[1]);
  const height = Number(size[2]);
  if (bpp !== 16 && bpp !== 32) {
    throw new FramebufferError(
      `${device} has ${bpp} bits per pixel; edgekeeper writes 16 (RGB565) or 32 (XRGB8888)`,
    );
  }
  // Old kernels lack `stride`; then rows are packed.
  let stride = width * (bpp / 8);
  try {
    const s = Number(readFileSync(join(dir, 'stride'), 'utf8').trim());
    if (Number.isInteger(s) && s > 0) stride = s;
  } catch {
    // keep the packed stride
  }
  if (width < 1 || height < 1 || width > 8192 || height > 8192 || stride < width * (bpp / 8)) {
    throw new FramebufferError(
      `${device} reports an impossible geometry ${width}x${height}, stride ${stride}`,
    );
  }
  return { width, height, bitsPerPixel: bpp, stride };
}

/**
 * Convert an RGBA image (w x h) into framebuffer memory `out` (fbW x fbH, `fmt.stride` bytes a
 * row), rotated clockwise by `fmt.rotation` and placed at (ox, oy) of the framebuffer. Pixels of
 * `out` outside the image are left as they are. Rotation 90/270 needs fbW >= h + ox, fbH >= w + oy.
 */
export function toFramebuffer(
  rgba: Uint8Array,
  w: number,
  h: number,
  fmt: FbFormat,
  out: Buffer,
  ox = 0,
  oy = 0,
): void {
  const rot = fmt.rotation;
  const bpp = fmt.bitsPerPixel / 8;
  const stride = fmt.stride;
  // Destination step for one source pixel to the right (dx) and one row down (dy), in bytes.
  let start: number;
  let dx: number;
  let dy: number;
  if (rot === 0) {
    start = oy * stride + ox * bpp;
    dx = bpp;
    dy = stride;
  } else if (rot === 90) {
    // source (x, y) -> fb (h-1-y, x)
    start = oy * stride + (ox + h - 1) * bpp;
    dx = stride;
    dy = -bpp;
  } else if (rot === 180) {
    // source (x, y) -> fb (w-1-x, h-1-y)
    start = (oy + h - 1) * stride + (ox + w - 1) * bpp;
    dx = -bpp;
    dy = -stride;
  } else {
    // 270: source (x, y) -> fb (y, w-1-x)
    start = (oy + w - 1) * stride + ox * bpp;
    dx = -stride;
    dy = bpp;
  }
  const bgr = fmt.bgr;
  if (LITTLE_ENDIAN && rgba.byteOffset % 4 === 0 && out.byteOffset % bpp === 0 && stride % bpp === 0) {
    // Whole pixels at a time through typed-array views: about 3x faster than byte by byte.
    const src = new Uint32Array(rgba.buffer, rgba.byteOffset, w * h);
    let i = 0;
    if (bpp === 2) {
      const dst = new Uint16Array(out.buffer, out.byteOffset, out.length >> 1);
      const s0 = start >> 1;
      const sx = dx >> 1;
      const sy = dy >> 1;
      for (let y = 0; y < h; y++) {
        let o = s0 + y * sy;
        for (let x = 0; x < w; x++) {
          const v = src[i++]!; // bytes R, G, B, A -> r | g << 8 | b << 16
          dst[o] = bgr
            ? ((v >> 8) & 0xf800) | ((v >> 5) & 0x7e0) | ((v & 0xff) >> 3)
            : ((v & 0xf8) << 8) | ((v >> 5) & 0x7e0) | ((v >> 19) & 0x1f);
          o += sx;
        }
      }
    } else {
      const dst = new Uint32Array(out.buffer, out.byteOffset, out.length >> 2);
      const s0 = start >> 2;
      const sx = dx >> 2;
      const sy = dy >> 2;
      for (let y = 0; y < h; y++) {
        let o = s0 + y * sy;
        for (let x = 0; x < w; x++) {
          const v = src[i++]!;
          dst[o] = bgr
            ? (v & 0xffffff) | 0xff000000
            : ((v & 0xff) << 16) | (v & 0xff00) | ((v >> 16) & 0xff) | 0xff000000;
          o += sx;
        }
      }
    }
    return;
  }
  let p = 0;
  if (bpp === 2) {
    for (let y = 0; y < h; y++) {
      let o = start + y * dy;
      for (let x = 0; x < w; x++) {
        const r = rgba[p]!;
        const g = rgba[p + 1]!;
        const b = rgba[p + 2]!;
        const v = bgr
          ? ((b & 0xf8) << 8) | ((g & 0xfc) << 3) | (r >> 3)
          : ((r & 0xf8) << 8) | ((g & 0xfc) << 3) | (b >> 3);
        // Little-endian 16-bit words, as on every Pi framebuffer.
        out[o] = v & 0xff;
        out[o + 1] = v >> 8;
        o += dx;
        p += 4;
      }
    }
  } else {
    for (let y = 0; y < h; y++) {
      let o = start + y * dy;
      for (let x = 0; x < w; x++) {
        // XRGB8888 little-endian: bytes B, G, R, X (BGR order swaps R and B).
        out[o] = bgr ? rgba[p]! : rgba[p + 2]!;
        out[o + 1] = rgba[p + 1]!;
        out[o + 2] = bgr ? rgba[p + 2]! : rgba[p]!;
        out[o + 3] = 0xff;
        o += dx;
        p += 4;
      }
    }
  }
}

/**
 * Writes frames to a Linux framebuffer: one conversion into a reused buffer and one positioned
 * write of the whole visible memory per frame. The frame is centred on a larger screen.
 */
export class FramebufferSink {
  readonly info: FbInfo;
  private readonly buf: Buffer;
  private fd: number | undefined;
  readonly fmt: FbFormat;

  constructor(
    readonly device: string,
    opts: { rotation?: Rotation; bgr?: boolean; sysRoot?: string } = {},
  ) {
    this.info = readFbInfo(device, opts.sysRoot);
    this.fmt = {
      bitsPerPixel: this.info.bitsPerPixel,
      stride: this.info.stride,
      bgr: opts.bgr ?? false,
      rotation: opts.rotation ?? 0,
    };
    this.buf = Buffer.alloc(this.info.stride * this.info.height);
  }

  /** The frame size that fits best: logical (rotated) geometry. */
  logicalSize(): { width: number; height: number } {
    const r = this.fmt.rotation;
    return r === 90 || r === 270
      ? { width: this.info.height, height: this.info.width }
      : { width: this.info.width, height: this.info.height };
  }

  write(rgba: Uint8Array, w: number, h: number): void {
    const logical = this.logicalSize();
    if (w > logical.width || h > logical.height) {
      throw new FramebufferError(
        `frame ${w}x${h} does not fit ${this.device} (${logical.width}x${logical.height} after rotation)`,
      );
    }
    // Centre in logical coordinates, then map the offset into framebuffer coordinates.
    const lx = Math.floor((logical.width - w) / 2);
    const ly = Math.floor((logical.height - h) / 2);
    const r = this.fmt.rotation;
    const [ox, oy] =
      r === 0
        ? [lx, ly]
        : r === 180
          ? [logical.width - w - lx, logical.height - h - ly]
          : r === 90
            ? [logical.height - h - ly, lx]
            : [ly, logical.width - w - lx];
    toFramebuffer(rgba, w, h, this.fmt, this.buf, ox, oy);
    if (this.fd === undefined) this.fd = openSync(this.device, 'r+');
    try {
      writeSync(this.fd, this.buf, 0, this.buf.length, 0);
    } catch (err) {
      // A display that went away (unplugged SPI panel): reopen on the next frame.
      this.close();
      throw new FramebufferError(`write to ${this.device} failed: ${(err as Error).message}`, { cause: err });
    }
  }

  close(): void {
    if (this.fd !== undefined) {
      try {
        closeSync(this.fd);
      } catch {
        // already gone
      }
      this.fd = undefined;
    }
  }
}
