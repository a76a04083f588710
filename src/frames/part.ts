import { rename, writeFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { setImmediate as yieldLoop } from 'node:timers/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Counter, Histogram } from 'prom-client';
import type { Timer } from '../clock.js';
import { ConfigError, type EdgeError, FrameSizeError, FramebufferError } from '../errors.js';
import { HostReader } from '../host.js';
import type { Part, PartContext } from '../part.js';
import { bitStride, EinkSink, toOneBit } from './eink.js';
import { FramebufferSink } from './fb.js';
import { layout, parseSize, SIZES } from './layout.js';
import { PngEncoder } from './png.js';
import { Renderer } from './render.js';
import { buildSnapshot, snapshotHash } from './snapshot.js';
import type { FrameSize, FrameSnapshot, FrameSources, FramesOptions, Rotation, SizeName } from './types.js';

const ALL_SIZES = Object.keys(SIZES) as SizeName[];

type GcFn = (opts: { type: 'minor'; execution: 'sync' }) => void;
let minorGcFn: GcFn | null | undefined;

/**
 * A young-generation collection after each tick. The canvas hands pixel read-backs to JS as
 * native buffers V8 barely counts, so freed frames wait for a GC that JS allocations trigger
 * much later (measured through this part, 1,000 frames at 800x480: RSS 175 MB without, 137 MB
 * with; in a bare read-back loop +95 MB vs +10 MB). A scavenge of a small young generation
 * costs well under a millisecond. Where the flag cannot be set, nothing happens.
 */
function minorGc(): void {
  if (minorGcFn === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      const fn = runInNewContext('gc') as unknown;
      minorGcFn = typeof fn === 'function' ? (fn as GcFn) : null;
    } catch {
      minorGcFn = null;
    }
  }
  minorGcFn?.({ type: 'minor', execution: 'sync' });
}

/** Per size: one renderer, one encoder, the 1-bit buffers, the latest frame. Reused forever. */
interface SizeState {
  size: FrameSize;
  renderer: Renderer;
  encoder: PngEncoder;
  bits?: Uint8Array;
  scratch?: Float32Array;
  hash?: string;
  png?: Buffer;
  etag?: string;
  /** Frames of one size are produced one at a time (the pixel buffers are shared). */
  chain: Promise<void>;
}

export interface FramesPart extends Part {
  /** Draw now (all configured sizes) if the snapshot changed; resolves when the sinks are done. */
  renderNow(): Promise<void>;
  /** The latest PNG of `size` (default: the first configured size), or undefined before the first frame. */
  latestPng(size?: SizeName): Buffer | undefined;
  /** The latest snapshot drawn. */
  latestSnapshot(): FrameSnapshot | undefined;
}

function validSizes(list: readonly string[] | undefined): FrameSize[] {
  const out: FrameSize[] = [];
  const problems: string[] = [];
  for (const [i, s] of (list ?? ['800x480']).entries()) {
    const size = parseSize(s);
    if (!size)
      problems.push(
        `Expected \`frames.sizes[${i}]\` to be one of ${ALL_SIZES.join(', ')}, got ${JSON.stringify(String(s).slice(0, 32))}`,
      );
    else if (!out.includes(size)) out.push(size);
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return out;
}

/** Whether an If-None-Match header matches `etag` (RFC 9110 13.1.2: weak comparison). */
function etagMatches(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  return header.split(',').some((t) => {
    const v = t.trim();
    return v === '*' || v.replace(/^W\//, '') === etag;
  });
}

function sendError(res: ServerResponse, err: EdgeError): void {
  const body = JSON.stringify({ code: err.code, message: err.message });
  res.writeHead(err.status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

/** How much longer the frame interval is while the SLO guard makes bulk work yield. */
const YIELD_SLOWDOWN = 4;

export function createFramesPart(
  ctx: PartContext,
  options: FramesOptions & { sources: FrameSources },
): FramesPart {
  const log = ctx.logger.child({ part: 'frames' });
  const clock = ctx.clock;
  const sources = options.sources ?? {};
  const interval = options.interval ?? 5000;
  const configured = validSizes(options.sizes);
  const startedAt = clock.now();
  // The daemon's reader (one vcgencmd poller on a Pi), unless a test points at fixture roots.
  const system =
    ctx.host && options.procRoot === undefined && options.sysRoot === undefined
      ? ctx.host
      : new HostReader({
          procRoot: options.procRoot,
          sysRoot: options.sysRoot,
          diskPath: ctx.stateDir,
          now: () => clock.now(),
          vcgencmd: false,
        });
  const rotation: Rotation = options.framebufferRotation ?? 0;
  if (![0, 90, 180, 270].includes(rotation)) {
    throw new ConfigError([
      `Expected \`frames.framebufferRotation\` to be 0, 90, 180 or 270, got ${rotation}`,
    ]);
  }

  const registers = [ctx.registry];
  const rendered = new Counter({
    name: 'edgekeeper_frames_rendered_total',
    help: 'Frames drawn, per size.',
    labelNames: ['size'],
    registers,
  });
  const skipped = new Counter({
    name: 'edgekeeper_frames_skipped_total',
    help: 'Frame ticks that drew nothing because the snapshot had not changed, per size.',
    labelNames: ['size'],
    registers,
  });
  const renderSeconds = new Histogram({
    name: 'edgekeeper_frames_render_seconds',
    help: 'Time the event loop spends on one frame (layout, draw, pixel read-back, sink conversion), per size.',
    labelNames: ['size'],
    buckets: [0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1],
    registers,
  });
  const sinkErrors = new Counter({
    name: 'edgekeeper_frames_sink_errors_total',
    help: 'Failed sink writes, per sink.',
    labelNames: ['sink'],
    registers,
  });
  const httpRequests = new Counter({
    name: 'edgekeeper_frames_http_requests_total',
    help: 'GET /frame.png requests by status code.',
    labelNames: ['code'],
    registers,
  });
  const einkDeferred = new Counter({
    name: 'edgekeeper_frames_eink_deferred_total',
    help: 'e-ink frames held back by the minimum refresh interval.',
    registers,
  });

  const states = new Map<SizeName, SizeState>();
  const stateOf = (size: FrameSize): SizeState => {
    let s = states.get(size.name);
    if (!s) {
      s = { size, renderer: new Renderer(size), encoder: new PngEncoder(), chain: Promise.resolve() };
      if (size.mono) {
        s.bits = new Uint8Array(bitStride(size.width) * size.height);
        s.scratch = new Float32Array(2 * (size.width + 2));
      }
      states.set(size.name, s);
    }
    return s;
  };

  const lastErrors = new Map<string, string>();
  const sinkFailed = (sink: string, err: unknown) => {
    sinkErrors.inc({ sink });
    const msg = err instanceof Error ? err.message : String(err);
    // Log when the error changes, not every frame: a missing display would flood the journal.
    if (lastErrors.get(sink) !== msg) {
      lastErrors.set(sink, msg);
      log.warn({ sink, err: msg }, `frame sink ${sink} failed: ${msg}; frames still go to the other sinks`);
    }
  };
  const sinkOk = (sink: string) => {
    if (lastErrors.delete(sink)) log.info({ sink }, `frame sink ${sink} works again`);
  };

  // --- sinks -----------------------------------------------------------------------------------
  let fb: FramebufferSink | undefined;
  let fbSize: FrameSize | undefined;
  let eink: EinkSink | undefined;
  const einkSize = options.einkSize ? parseSize(options.einkSize) : undefined;
  if (options.einkSize && !einkSize?.mono) {
    throw new ConfigError([
      `Expected \`frames.einkSize\` to be 250x122 or 296x128, got ${JSON.stringify(options.einkSize)}`,
    ]);
  }

  function openFramebuffer(): void {
    if (!options.framebuffer) return;
    try {
      fb = new FramebufferSink(options.framebuffer, {
        rotation,
        bgr: options.framebufferBgr,
        sysRoot: options.sysRoot,
      });
      const { width, height } = fb.logicalSize();
      // The largest colour layout that fits the panel; a larger panel shows it centred.
      fbSize = Object.values(SIZES)
        .filter((s) => !s.mono && s.width <= width && s.height <= height)
        .sort((a, b) => b.width * b.height - a.width * a.height)[0];
      if (!fbSize) {
        throw new FramebufferError(
          `${options.framebuffer} is ${width}x${height}: smaller than the smallest colour frame (320x240)`,
        );
      }
      log.info(
        { device: options.framebuffer, ...fb.info, rotation, size: fbSize.name },
        'drawing frames on the framebuffer',
      );
    } catch (err) {
      fb = undefined;
      fbSize = undefined;
      sinkFailed('framebuffer', err);
    }
  }

  let latest: FrameSnapshot | undefined;
  let primary = configured[0] ?? SIZES['800x480'];

  function snapshot(): FrameSnapshot {
    const call = <T>(name: string, f: (() => T | undefined) | undefined): T | undefined => {
      try {
        return f?.();
      } catch (err) {
        // A broken source must not stop the frame: that part shows as unknown.
        sinkFailed(`source:${name}`, err);
        return undefined;
      }
    };
    const store =
      call('store', sources.store) ??
      call('store', () => {
        const st = ctx.store.stats();
        return {
          revision: st.revision,
          commitLatencyMs: st.commitLatencyMs,
          dbSize: st.dbSize,
          noSpace: st.noSpace,
        };
      });
    return buildSnapshot({
      node: ctx.nodeName,
      time: clock.now(),
      timeZone: options.timeZone,
      startedAt,
      store,
      devices: call('devices', sources.devices),
      probes: call('probes', sources.probes),
      uplink: call('uplink', sources.uplink),
      system: sources.system ? call('system', sources.system) : system.read(),
      alerts: call('alerts', sources.alerts),
    });
  }

  async function writePngFile(size: FrameSize, png: Buffer): Promise<void> {
    const path = join(ctx.runtimeDir, `frame-${size.name}.png`);
    const tmp = `${path}.tmp`;
    try {
      await writeFile(tmp, png);
      await rename(tmp, path);
      sinkOk('png');
    } catch (err) {
      sinkFailed('png', err);
    }
  }

  /** Draw `snap` at `size` unless it is what that size shows already. */
  function produce(size: FrameSize, snap: FrameSnapshot, hash: string): Promise<void> {
    const st = stateOf(size);
    const run = async () => {
      if (st.hash === hash && st.png) {
        skipped.inc({ size: size.name });
        return;
      }
      const t0 = performance.now();
      const rgba = st.renderer.render(layout(snap, size, st.renderer.measure));
      let png: Buffer;
      if (size.mono) {
        toOneBit(
          rgba,
          size.width,
          size.height,
          options.einkMode ?? 'threshold',
          options.einkThreshold ?? 128,
          st.bits,
          st.scratch,
        );
        png = st.encoder.encodeBitsSync(st.bits!, size.width, size.height);
        if (eink && einkSize === size && !eink.offer(st.bits!)) einkDeferred.inc();
      }
      if (fb && fbSize === size) {
        try {
          fb.write(rgba, size.width, size.height);
          sinkOk('framebuffer');
        } catch (err) {
          sinkFailed('framebuffer', err);
        }
      }
      renderSeconds.observe({ size: size.name }, (performance.now() - t0) / 1000);
      // The deflate runs on the libuv pool; the rgba buffer stays ours until it is done (chain).
      if (!size.mono) png = await st.encoder.encodeRgba(rgba, size.width, size.height);
      st.png = png!;
      st.hash = hash;
      st.etag = `"${size.name}-${hash}"`;
      rendered.inc({ size: size.name });
      if (options.pngFile !== false) await writePngFile(size, st.png);
    };
    const next = st.chain.then(run, run);
    st.chain = next.catch(() => {});
    return next;
  }

  function sizesToDraw(): FrameSize[] {
    const list = [...configured];
    if (fbSize && !list.includes(fbSize)) list.push(fbSize);
    if (einkSize && !list.includes(einkSize)) list.push(einkSize);
    return list;
  }

  async function tick(): Promise<void> {
    const snap = snapshot();
    latest = snap;
    const hash = snapshotHash(snap);
    for (const size of sizesToDraw()) {
      try {
        await produce(size, snap, hash);
      } catch (err) {
        sinkFailed('render', err);
      }
      // Give ingest and the etcd API a turn between sizes.
      await yieldLoop();
    }
    minorGc();
  }

  let timer: Timer | undefined;
  let running = false;
  let inFlight: Promise<void> | undefined;
  const schedule = (ms: number) => {
    timer = clock.setTimeout(() => {
      timer = undefined;
      inFlight = tick().finally(() => {
        inFlight = undefined;
        // While bulk work yields to interactive traffic (the SLO guard), frames come 4x less often.
        if (running) schedule(ctx.slo?.yielding() ? interval * YIELD_SLOWDOWN : interval);
      });
    }, ms);
  };

  async function handleFrame(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const q = url.searchParams.get('size');
    const size = q === null ? primary : parseSize(q);
    if (!size) {
      httpRequests.inc({ code: '400' });
      sendError(res, new FrameSizeError(q ?? '', ALL_SIZES));
      return;
    }
    const snap = snapshot();
    await produce(size, snap, snapshotHash(snap));
    const st = stateOf(size);
    const etag = st.etag!;
    if (etagMatches(req.headers['if-none-match'], etag)) {
      httpRequests.inc({ code: '304' });
      res.writeHead(304, { etag, 'cache-control': 'no-cache' });
      res.end();
      return;
    }
    httpRequests.inc({ code: '200' });
    res.writeHead(200, {
      'content-type': 'image/png',
      'content-length': st.png!.length,
      etag,
      'cache-control': 'no-cache',
    });
    res.end(st.png);
  }

  let routeAdded = false;
  const part: FramesPart = {
    name: 'frames',
    async start() {
      if (!routeAdded) {
        ctx.http.add('GET', '/frame.png', handleFrame);
        routeAdded = true;
      }
      if (options.enabled === false || running) return;
      running = true;
      openFramebuffer();
      if (einkSize) {
        eink = new EinkSink(einkSize.width, einkSize.height, {
          clock,
          minRefreshMs: options.einkMinRefresh ?? 180_000,
          bitmapPath: options.einkBitmapPath ?? join(ctx.runtimeDir, 'eink.bin'),
          pbmPath: options.einkPbmPath ?? join(ctx.runtimeDir, 'eink.pbm'),
          invert: options.einkInvert,
          onError: (err) => sinkFailed('eink', err),
          onWrite: () => sinkOk('eink'),
        });
      }
      primary = configured[0] ?? fbSize ?? SIZES['800x480'];
      schedule(0);
    },
    async stop() {
      running = false;
      timer?.cancel();
      timer = undefined;
      await inFlight;
      await Promise.all([...states.values()].map((s) => s.chain));
      fb?.close();
      eink?.close();
    },
    status() {
      return {
        sizes: sizesToDraw().map((s) => s.name),
        framebuffer: fb
          ? { device: fb.device, size: fbSize?.name, ...fb.info, rotation }
          : options.framebuffer
            ? 'unavailable'
            : undefined,
        eink: eink ? { size: einkSize?.name, refreshes: eink.refreshes, deferred: eink.deferred } : undefined,
        lastFrameAt: latest?.time,
        errors: Object.fromEntries(lastErrors),
      };
    },
    renderNow: () => tick(),
    latestPng: (size) => (size ? states.get(size)?.png : states.get(primary.name)?.png),
    latestSnapshot: () => latest,
  };
  return part;
}
