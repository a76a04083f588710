/**
 * Status frames: snapshot -> layout -> render -> sinks. The only public face of src/frames/.
 *
 * - `createFramesPart(ctx, {...options, sources})`: the part (interval cadence, HTTP
 *   `GET /frame.png[?size=WxH]`, PNG file, framebuffer, e-ink, metrics).
 * - pure steps for tests and other uses: buildSnapshot, snapshotHash, layout, Renderer (render),
 *   render, PngEncoder, toFramebuffer, readFbInfo, toOneBit, toPbm.
 */
import { Renderer } from './render.js';
import type { FrameSize, Layout } from './types.js';

export { framesCliCommands } from './cli.js';
export { framesConfigSection } from './config.js';
export { bitStride, EinkSink, toOneBit, toPbm } from './eink.js';
export { type FbFormat, type FbInfo, FramebufferSink, readFbInfo, toFramebuffer } from './fb.js';
export { font, registerFonts } from './fonts.js';
export { layout, overallStatus, parseSize, SIZES } from './layout.js';
export { createFramesPart, type FramesPart } from './part.js';
export { PngEncoder } from './png.js';
export { Renderer } from './render.js';
export { buildSnapshot, type SnapshotInputs, snapshotHash } from './snapshot.js';
export { fitText, graphemes, sanitize } from './text.js';
export type * from './types.js';

const shared = new Map<string, Renderer>();

/** Convenience: draw `l` on a per-size shared renderer; returns its RGBA buffer (overwritten next time). */
export function render(l: Layout): Buffer {
  return rendererFor(l.size).render(l);
}

/** The shared renderer of a size (its `measure` is what `layout` needs). */
export function rendererFor(size: FrameSize): Renderer {
  let r = shared.get(size.name);
  if (!r) {
    r = new Renderer(size);
    shared.set(size.name, r);
  }
  return r;
}
