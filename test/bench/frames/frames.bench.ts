/**
 * Frames bench. Per size: render (layout + draw + pixel read-back), render + PNG encode,
 * render + framebuffer conversion (RGB565 for colour sizes, 1-bit for e-ink), p50/p99 ms and
 * bytes out; the canvas's own PNG encoder as the reference ("peer"); heap and RSS over many
 * 800x480 frames; the longest event-loop block while the real part draws; CPU at one frame per 5 s.
 * Each line is JSON. Run: npm run bench -- frames (or node --import tsx test/bench/frames/frames.bench.ts).
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { mkdtempSync, rmSync } from 'node:fs';
import { setImmediate as turn } from 'node:timers/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Registry } from 'prom-client';
import { systemClock } from '../../../src/clock.js';
import {
  bitStride,
  buildSnapshot,
  createFramesPart,
  type FbFormat,
  type FrameSize,
  type FrameSnapshot,
  layout,
  PngEncoder,
  Renderer,
  SIZES,
  toFramebuffer,
  toOneBit,
} from '../../../src/frames/index.js';
import { silentLogger } from '../../../src/log.js';
import type { PartContext } from '../../../src/part.js';
import type { Store } from '../../../src/store/types.js';
import { inputs } from '../../frames/fixtures.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const pct = (a: number[], p: number) => {
  const s = [...a].sort((x, y) => x - y);
  return Number((s[Math.min(s.length - 1, Math.floor((s.length * p) / 100))] ?? 0).toFixed(3));
};

/** A different snapshot every frame (the online count moves), so nothing is cached. */
function snap(i: number): FrameSnapshot {
  const base = inputs.offline!;
  return buildSnapshot({ ...base, devices: { ...base.devices, online: 29 + (i % 50) } });
}

/**
 * Time `f` n times. The event loop turns between frames, as in the daemon: the canvas frees
 * read-back pixel buffers in finalizers that only run then (a tight synchronous loop would
 * show a leak that the daemon does not have).
 */
async function time(n: number, f: (i: number) => void): Promise<number[] & { cpu: number[] }> {
  for (let i = 0; i < Math.min(50, n); i++) {
    f(i); // warm-up: JIT, glyph caches
    await turn();
  }
  const out = [] as unknown as number[] & { cpu: number[] };
  out.cpu = [];
  for (let i = 0; i < n; i++) {
    const c = process.cpuUsage();
    const t = performance.now();
    f(i);
    out.push(performance.now() - t);
    // CPU time of the same call: on a shared, overloaded machine wall time includes waiting
    // for a core; CPU time does not (it includes the process's helper threads, e.g. GC).
    const d = process.cpuUsage(c);
    out.cpu.push((d.user + d.system) / 1000);
    await turn();
  }
  return out;
}

function emit(o: Record<string, unknown>): void {
  console.log(JSON.stringify(o));
}

async function perSize(size: FrameSize, n: number): Promise<void> {
  const r = new Renderer(size);
  const enc = new PngEncoder();
  const render = (i: number) => r.render(layout(snap(i), size, r.measure));
  const t1 = await time(n, render);
  emit({
    bench: `frames.render.${size.name}`,
    unit: 'ms',
    p50: pct(t1, 50),
    p99: pct(t1, 99),
    n,
    cpu_p50: pct(t1.cpu, 50),
  });

  let bytes = 0;
  const t2 = await time(n, (i) => {
    const rgba = render(i);
    bytes = size.mono
      ? enc.encodeBitsSync(toOneBit(rgba, size.width, size.height, 'threshold'), size.width, size.height)
          .length
      : enc.encodeRgbaSync(rgba, size.width, size.height).length;
  });
  const peerN = Math.min(n, 100);
  const peer = await time(peerN, (i) => {
    render(i);
    r.canvas.encodeSync('png');
  });
  emit({
    bench: `frames.render_png.${size.name}`,
    unit: 'ms',
    p50: pct(t2, 50),
    p99: pct(t2, 99),
    n,
    cpu_p50: pct(t2.cpu, 50),
    bytes,
    peer: 'canvas.encodeSync(png)',
    peer_p50: pct(peer, 50),
    peer_cpu_p50: pct(peer.cpu, 50),
    peer_bytes: r.canvas.encodeSync('png').length,
    ratio: Number((pct(t2, 50) / pct(peer, 50)).toFixed(2)),
  });

  if (size.mono) {
    const bits = new Uint8Array(bitStride(size.width) * size.height);
    const scratch = new Float32Array(2 * (size.width + 2));
    for (const mode of ['threshold', 'dither'] as const) {
      const t3 = await time(n, (i) => toOneBit(render(i), size.width, size.height, mode, 128, bits, scratch));
      emit({
        bench: `frames.render_1bit_${mode}.${size.name}`,
        unit: 'ms',
        p50: pct(t3, 50),
        p99: pct(t3, 99),
        n,
        bytes: bits.length,
      });
    }
  } else {
    for (const bpp of [16, 32] as const) {
      const fmt: FbFormat = { bitsPerPixel: bpp, stride: size.width * (bpp / 8), bgr: false, rotation: 0 };
      const out = Buffer.alloc(fmt.stride * size.height);
      const t3 = await time(n, (i) => toFramebuffer(render(i), size.width, size.height, fmt, out));
      emit({
        bench: `frames.render_fb${bpp === 16 ? 'rgb565' : 'xrgb8888'}.${size.name}`,
        unit: 'ms',
        p50: pct(t3, 50),
        p99: pct(t3, 99),
        n,
        cpu_p50: pct(t3.cpu, 50),
        bytes: out.length,
      });
    }
  }
}

async function memory(n: number, withPng: boolean): Promise<void> {
  const size = SIZES['800x480'];
  const r = new Renderer(size);
  const enc = new PngEncoder();
  const fmt: FbFormat = { bitsPerPixel: 16, stride: 1600, bgr: false, rotation: 0 };
  const fb = Buffer.alloc(1600 * 480);
  const frame = (i: number) => {
    const rgba = r.render(layout(snap(i), size, r.measure));
    toFramebuffer(rgba, 800, 480, fmt, fb);
    if (withPng) enc.encodeRgbaSync(rgba, 800, 480);
  };
  for (let i = 0; i < 200; i++) {
    frame(i);
    await turn();
  }
  gc();
  await turn();
  const m0 = process.memoryUsage();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let peakRss = 0;
  for (let i = 0; i < n; i++) {
    frame(i);
    await turn();
    if (i % 100 === 0) peakRss = Math.max(peakRss, process.memoryUsage().rss);
  }
  const wall = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  gc();
  await turn();
  const m1 = process.memoryUsage();
  const cpuPerFrameMs = (cpu.user + cpu.system) / 1000 / n;
  emit({
    bench: `frames.memory.800x480${withPng ? '.png' : '.fb'}`,
    unit: 'MB',
    n,
    heap_before: Number((m0.heapUsed / 1e6).toFixed(2)),
    heap_after: Number((m1.heapUsed / 1e6).toFixed(2)),
    rss_before: Number((m0.rss / 1e6).toFixed(1)),
    rss_after: Number((m1.rss / 1e6).toFixed(1)),
    rss_peak: Number((peakRss / 1e6).toFixed(1)),
    external_after: Number((m1.external / 1e6).toFixed(2)),
    wall_ms_per_frame: Number((wall / n).toFixed(3)),
    cpu_ms_per_frame: Number(cpuPerFrameMs.toFixed(3)),
    // One frame every 5 s (the default interval), as a share of one core.
    cpu_percent_at_5s: Number(((cpuPerFrameMs / 5000) * 100).toFixed(4)),
  });
}

/** The real part, drawing 800x480 + framebuffer-sized work through renderNow: how long is the loop blocked? */
async function eventLoop(frames: number): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ek-frames-bench-'));
  let i = 0;
  const ctx: PartContext = {
    store: { stats: () => ({ revision: 1, dbSize: 1 }) } as unknown as Store,
    logger: silentLogger(),
    registry: new Registry(),
    clock: systemClock,
    http: { add: () => {} },
    stateDir: dir,
    runtimeDir: dir,
    nodeName: 'bench',
    addReadinessCheck: () => {},
  };
  const base = inputs.offline!;
  const part = createFramesPart(ctx, {
    sizes: ['800x480'],
    pngFile: true,
    interval: 3_600_000,
    sources: {
      devices: () => ({ ...base.devices, online: i++ }),
      alerts: () => base.alerts,
      system: () => base.system,
    },
  });
  for (let k = 0; k < 20; k++) await part.renderNow();
  const h = monitorEventLoopDelay({ resolution: 1 });
  h.enable();
  const rss0 = process.memoryUsage().rss;
  let peak = rss0;
  const t = performance.now();
  for (let k = 0; k < frames; k++) {
    await part.renderNow();
    if (k % 20 === 0) peak = Math.max(peak, process.memoryUsage().rss);
  }
  const per = (performance.now() - t) / frames;
  emit({
    bench: 'frames.part_memory.800x480',
    unit: 'MB',
    n: frames,
    rss_before: Number((rss0 / 1e6).toFixed(1)),
    rss_peak: Number((peak / 1e6).toFixed(1)),
    rss_after: Number((process.memoryUsage().rss / 1e6).toFixed(1)),
    heap_after: Number((process.memoryUsage().heapUsed / 1e6).toFixed(2)),
  });
  h.disable();
  // The part's own histogram: the synchronous part of each frame (layout, draw, read-back,
  // sink conversion), as bucket upper bounds.
  const hist = (await ctx.registry.getMetricsAsJSON()).find(
    (m) => m.name === 'edgekeeper_frames_render_seconds',
  );
  const buckets = (hist?.values ?? [])
    .filter(
      (v) => v.labels.le !== undefined && (v as { metricName?: string }).metricName?.endsWith('_bucket'),
    )
    .map((v) => ({
      le: v.labels.le === '+Inf' ? Number.POSITIVE_INFINITY : Number(v.labels.le),
      count: Number(v.value),
    }));
  const total = buckets.find((b) => b.le === Number.POSITIVE_INFINITY)?.count ?? 0;
  const q = (p: number) => (buckets.find((b) => b.count >= total * p)?.le ?? Number.NaN) * 1000;
  emit({
    bench: 'frames.part_sync_section.800x480',
    unit: 'ms',
    p50_le: q(0.5),
    p99_le: q(0.99),
    n: total,
    note: 'bucket upper bounds of edgekeeper_frames_render_seconds',
  });
  await part.stop();
  rmSync(dir, { recursive: true, force: true });
  emit({
    bench: 'frames.part_event_loop_delay.800x480',
    unit: 'ms',
    p50: Number((h.percentile(50) / 1e6).toFixed(3)),
    p99: Number((h.percentile(99) / 1e6).toFixed(3)),
    max: Number((h.max / 1e6).toFixed(3)),
    n: frames,
    wall_ms_per_frame: Number(per.toFixed(3)),
  });
}

export default async function run(): Promise<void> {
  const n = Number(process.env.FRAMES_BENCH_N ?? 150);
  const only = process.env.FRAMES_BENCH_SIZES?.split(',');
  for (const size of Object.values(SIZES)) if (!only || only.includes(size.name)) await perSize(size, n);
  if (process.env.FRAMES_BENCH_SIZES) return;
  if (process.env.FRAMES_BENCH_ONLY !== 'part') {
    await memory(Number(process.env.FRAMES_BENCH_MEM_N ?? 10_000), false);
    await memory(Number(process.env.FRAMES_BENCH_MEM_PNG_N ?? 1_000), true);
  }
  await eventLoop(Number(process.env.FRAMES_BENCH_PART_N ?? 1_000));
}

if (import.meta.url === `file://${process.argv[1]}`) await run();
