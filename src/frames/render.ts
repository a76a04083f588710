import type { Canvas, SKRSContext2D } from '@napi-rs/canvas';
import { canvas, registerFonts } from './fonts.js';
import type { FrameSize, Layout, MeasureText, Tone } from './types.js';

/** Dark theme for backlit panels: light text on near-black, status in green/amber/red. */
const COLOUR: Record<Tone, string> = {
  bg: '#0d1117',
  panel: '#161b22',
  fg: '#e6edf3',
  dim: '#8b949e',
  ok: '#3fb950',
  warn: '#d29922',
  bad: '#f85149',
  info: '#58a6ff',
  accent: '#79c0ff',
  invfg: '#0d1117',
};

/** e-ink: black on white; every role is one of the two. */
const MONO: Record<Tone, string> = {
  bg: '#ffffff',
  panel: '#ffffff',
  fg: '#000000',
  dim: '#000000',
  ok: '#000000',
  warn: '#000000',
  bad: '#000000',
  info: '#000000',
  accent: '#000000',
  invfg: '#ffffff',
};

/**
 * getImageData allocates its result; above glibc's mmap threshold (128 KiB by default) each
 * allocation is a fresh mmap whose pages fault in one by one, which costs ~3.5 ms for a full
 * 800x480 frame on this VM. Reading in strips that stay below it takes ~0.3 ms.
 */
const STRIP_BYTES = 120 * 1024;

/** Combining marks (Unicode category M): a Zalgo name can stack them into other rows. */
const STACKING = /\p{M}/u;

/**
 * Draws layouts for one size on one canvas, reused frame after frame, and reads the pixels
 * back into one reused RGBA buffer. Not reentrant: one render at a time per Renderer.
 */
export class Renderer {
  readonly canvas: Canvas;
  readonly ctx: SKRSContext2D;
  /** RGBA, row-major, width*4 bytes a row; overwritten by every `render`. */
  readonly rgba: Buffer;
  private lastFont = '';
  private lastFill = '';

  constructor(readonly size: FrameSize) {
    registerFonts();
    this.canvas = canvas().createCanvas(size.width, size.height);
    this.ctx = this.canvas.getContext('2d', { alpha: false });
    this.rgba = Buffer.alloc(size.width * size.height * 4);
  }

  /** measureText on this canvas, for `layout`. */
  readonly measure: MeasureText = (text, f) => {
    this.setFont(f);
    return this.ctx.measureText(text).width;
  };

  private setFont(f: string): void {
    if (f !== this.lastFont) {
      this.ctx.font = f;
      this.lastFont = f;
    }
  }

  private setFill(c: string): void {
    if (c !== this.lastFill) {
      this.ctx.fillStyle = c;
      this.lastFill = c;
    }
  }

  /** Draw `layout` and read the pixels into `this.rgba`. */
  render(layout: Layout): Buffer {
    const ctx = this.ctx;
    const pal = this.size.mono ? MONO : COLOUR;
    this.lastFill = '';
    ctx.textBaseline = 'middle';
    for (const e of layout.elements) {
      if (e.kind === 'rect') {
        this.setFill(pal[e.tone]);
        ctx.fillRect(e.x, e.y, e.w, e.h);
      } else if (e.kind === 'text') {
        this.setFill(pal[e.tone]);
        this.setFont(e.font);
        ctx.textAlign = e.align;
        const x = e.align === 'left' ? e.x : e.align === 'right' ? e.x + e.w : e.x + e.w / 2;
        if (STACKING.test(e.text)) {
          // Stacked combining marks can rise far above the line: keep them inside the slot.
          // Only then, because save/clip/restore triples the cost of a text.
          ctx.save();
          ctx.beginPath();
          ctx.rect(e.x, e.y, e.w, e.h);
          ctx.clip();
          ctx.fillText(e.text, x, e.y + e.h / 2);
          ctx.restore();
          this.lastFill = '';
          this.lastFont = '';
        } else {
          ctx.fillText(e.text, x, e.y + e.h / 2);
        }
      } else {
        this.drawSpark(e.x, e.y, e.w, e.h, e.values, e.max, pal[e.tone], pal.dim);
      }
    }
    this.readPixels();
    return this.rgba;
  }

  private drawSpark(
    x: number,
    y: number,
    w: number,
    h: number,
    values: (number | undefined)[],
    max: number,
    fill: string,
    dim: string,
  ): void {
    const n = values.length;
    if (n === 0) return;
    const gap = Math.max(1, Math.round(w / n / 6));
    const bw = (w - gap * (n + 1)) / n;
    const inner = h - 4;
    for (let i = 0; i < n; i++) {
      const v = values[i];
      const bx = x + gap + i * (bw + gap);
      if (v === undefined) {
        // No data for that minute: a dim dash on the baseline, not a zero-height bar.
        this.setFill(dim);
        this.ctx.fillRect(bx, y + h - 3, bw, 1);
        continue;
      }
      const bh = max > 0 ? Math.max(1, Math.round((v / max) * inner)) : 1;
      this.setFill(fill);
      this.ctx.fillRect(bx, y + h - 2 - bh, bw, bh);
    }
  }

  private readPixels(): void {
    const { width, height } = this.size;
    const rows = Math.max(1, Math.floor(STRIP_BYTES / (width * 4)));
    for (let y = 0; y < height; y += rows) {
      const h = Math.min(rows, height - y);
      const img = this.ctx.getImageData(0, y, width, h);
      this.rgba.set(img.data, y * width * 4);
    }
  }
}
