/**
 * The frames part end to end: a real store (SQLite), a real HTTP server on 127.0.0.1, the PNG
 * file, the framebuffer sink on a regular file with a sysfs fixture, e-ink files, cadence on a
 * ManualClock, skip-when-unchanged, HTTP ETag/304 and bad sizes, the `frame` CLI command, and a
 * source that throws.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Registry } from 'prom-client';
import { ManualClock } from '../../src/clock.js';
import {
  createFramesPart,
  type DevicesInput,
  type FramesPart,
  framesCliCommands,
} from '../../src/frames/index.js';
import { silentLogger } from '../../src/log.js';
import type { HttpRoutes, PartContext, RouteHandler } from '../../src/part.js';
import { openStore } from '../../src/store/index.js';
import type { Store } from '../../src/store/types.js';
import { capture } from '../capture.js';
import { inputs, T0 } from './fixtures.js';
import { decodePng } from './helpers.js';

const tmp = mkdtempSync(join(tmpdir(), 'ek-frames-part-'));
const stateDir = join(tmp, 'state');
mkdirSync(stateDir);
let store: Store;
let server: Server;
let port: number;
const routes = new Map<string, RouteHandler>();
const registry = new Registry();
const clock = new ManualClock(T0);
let part: FramesPart;
let devices: DevicesInput | undefined = inputs.healthy!.devices;
let devicesThrow = false;

// Framebuffer fixture: an 800x480 XRGB8888 panel.
const sysRoot = join(tmp, 'sys');
const fbDir = join(sysRoot, 'class', 'graphics', 'fb0');
const fbDev = join(tmp, 'fb0');

/** The daemon's HTTP boundary, reduced to what a part sees: exact paths, one handler each. */
const http: HttpRoutes = { add: (method, path, handler) => routes.set(`${method} ${path}`, handler) };

before(async () => {
  mkdirSync(fbDir, { recursive: true });
  writeFileSync(join(fbDir, 'virtual_size'), '800,480\n');
  writeFileSync(join(fbDir, 'bits_per_pixel'), '32\n');
  writeFileSync(join(fbDir, 'stride'), '3200\n');
  writeFileSync(fbDev, Buffer.alloc(0));
  store = await openStore({ file: join(stateDir, 'edgekeeper.db'), inlineWriter: true });
  await store.put({ key: Buffer.from('a'), value: Buffer.from('1') });
  server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const h = routes.get(`${req.method} ${url.pathname}`);
    if (!h) {
      res.writeHead(404).end();
      return;
    }
    Promise.resolve(h(req, res, url)).catch((err: Error) => {
      res.writeHead(500).end(err.message);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as AddressInfo).port;
  const ctx: PartContext = {
    store,
    logger: silentLogger(),
    registry,
    clock,
    http,
    stateDir,
    runtimeDir: stateDir,
    nodeName: 'test-node',
    addReadinessCheck: () => {},
  };
  part = createFramesPart(ctx, {
    sizes: ['800x480', '480x320'],
    interval: 5000,
    timeZone: 'UTC',
    framebuffer: fbDev,
    sysRoot,
    einkSize: '250x122',
    einkMinRefresh: 60_000,
    sources: {
      devices: () => {
        if (devicesThrow) throw new Error('registry exploded');
        return devices;
      },
      uplink: () => inputs.healthy!.uplink,
      probes: () => inputs.healthy!.probes,
      system: () => inputs.healthy!.system,
      alerts: () => [],
    },
  });
  await part.start();
});

after(async () => {
  await part?.stop();
  await new Promise((r) => server?.close(r));
  await store?.close();
  rmSync(tmp, { recursive: true, force: true });
});

async function metric(name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  const v = (m?.values ?? []).find((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val));
  return Number(v?.value ?? 0);
}

async function until(what: string, f: () => Promise<boolean> | boolean): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await f()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** Run the `frame` command in this process, as `edgekeeper frame ...` would. */
async function runCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const cmd = framesCliCommands.find((c) => c.name === 'frame')!;
  const r = await capture(() => cmd.run(args));
  return { code: r.code, stdout: r.out, stderr: r.err };
}

const get = (path: string, headers: Record<string, string> = {}) =>
  fetch(`http://127.0.0.1:${port}${path}`, { headers });

test('the first tick draws every size into every sink', async () => {
  clock.advance(0);
  const sizes = ['800x480', '480x320', '250x122'];
  await until(
    'first frames',
    async () => (await metric('edgekeeper_frames_rendered_total', { size: '250x122' })) >= 1,
  );
  // a frame is counted when drawn; its file is renamed into place right after
  await until('frame files', () => sizes.every((s) => existsSync(join(stateDir, `frame-${s}.png`))));
  for (const s of sizes) {
    const png = await decodePng(readFileSync(join(stateDir, `frame-${s}.png`)));
    assert.equal(`${png.width}x${png.height}`, s);
  }
  const fb = readFileSync(fbDev);
  assert.equal(fb.length, 3200 * 480, 'one whole framebuffer');
  assert.ok(
    fb.some((b, i) => i % 4 !== 3 && b !== 0),
    'pixels were written',
  );
  // The frame's top-left pixel is the header panel colour (#161b22) as B, G, R, X.
  assert.deepEqual([...fb.subarray(0, 4)], [0x22, 0x1b, 0x16, 0xff]);
  assert.equal(readFileSync(join(stateDir, 'eink.bin')).length, 32 * 122);
  assert.equal(readFileSync(join(stateDir, 'eink.pbm')).subarray(0, 11).toString(), 'P4\n250 122\n');
  assert.ok(part.latestPng('800x480')?.subarray(1, 4).toString() === 'PNG');
  assert.equal(part.latestSnapshot()?.store?.revision, 2, 'store revision read from the real store');
});

test('an unchanged snapshot draws nothing; a change draws a new frame', async () => {
  const before = await metric('edgekeeper_frames_rendered_total', { size: '800x480' });
  const skippedBefore = await metric('edgekeeper_frames_skipped_total', { size: '800x480' });
  const mtime = statSync(join(stateDir, 'frame-800x480.png')).mtimeMs;
  // The next tick is armed only when the previous one has finished.
  await until('the next tick to be armed', () => clock.pending > 0);
  clock.advance(5000); // next tick, same minute on the clock
  await until(
    'skip',
    async () => (await metric('edgekeeper_frames_skipped_total', { size: '800x480' })) > skippedBefore,
  );
  assert.equal(await metric('edgekeeper_frames_rendered_total', { size: '800x480' }), before);
  assert.equal(statSync(join(stateDir, 'frame-800x480.png')).mtimeMs, mtime);
  devices = { ...inputs.offline!.devices };
  await part.renderNow();
  assert.equal(await metric('edgekeeper_frames_rendered_total', { size: '800x480' }), before + 1);
  assert.equal(part.latestSnapshot()?.devices?.offline, 13);
});

test('e-ink refreshes wait for the minimum interval', async () => {
  const pbm = () => readFileSync(join(stateDir, 'eink.pbm'));
  const first = pbm();
  devices = { ...inputs.healthy!.devices, online: 7 };
  await part.renderNow();
  assert.ok((await metric('edgekeeper_frames_eink_deferred_total')) >= 1);
  assert.deepEqual(pbm(), first, 'held back');
  await until('the next tick to be armed', () => clock.pending > 0);
  clock.advance(60_000);
  await until('e-ink refresh', () => !pbm().equals(first));
});

test('GET /frame.png: 200 PNG with ETag, 304 on If-None-Match, other sizes, 400 for bad sizes', async () => {
  const r1 = await get('/frame.png');
  assert.equal(r1.status, 200);
  assert.equal(r1.headers.get('content-type'), 'image/png');
  const etag = r1.headers.get('etag');
  assert.ok(etag?.startsWith('"800x480-'));
  const img = await decodePng(Buffer.from(await r1.arrayBuffer()));
  assert.equal(img.width, 800);
  const r2 = await get('/frame.png', { 'if-none-match': etag! });
  assert.equal(r2.status, 304);
  assert.equal(r2.headers.get('etag'), etag);
  const r3 = await get('/frame.png', { 'if-none-match': `W/"other", ${etag}` });
  assert.equal(r3.status, 304);
  // A new snapshot changes the ETag.
  devices = { ...inputs.healthy!.devices, online: 8 };
  const r4 = await get('/frame.png', { 'if-none-match': etag! });
  assert.equal(r4.status, 200);
  assert.notEqual(r4.headers.get('etag'), etag);
  for (const s of ['320x240', '296x128', '250x122']) {
    const r = await get(`/frame.png?size=${s}`);
    assert.equal(r.status, 200, s);
    const d = await decodePng(Buffer.from(await r.arrayBuffer()));
    assert.equal(`${d.width}x${d.height}`, s);
  }
  const bad400 = await metric('edgekeeper_frames_http_requests_total', { code: '400' });
  for (const q of ['999x999', '800X480', '', '800x480%00', 'x'.repeat(5000), '../../etc/passwd']) {
    const r = await get(`/frame.png?size=${encodeURIComponent(q)}`);
    assert.equal(r.status, 400, q.slice(0, 20));
    assert.match(r.headers.get('content-type') ?? '', /application\/json/);
    const body = (await r.json()) as { code: string; message: string };
    assert.equal(body.code, 'EDGE_ERR_FRAME_SIZE');
    assert.ok(body.message.length < 200, 'hostile input is not echoed in full');
  }
  assert.equal(await metric('edgekeeper_frames_http_requests_total', { code: '400' }), bad400 + 6);
  // Still serving after the bad requests.
  assert.equal((await get('/frame.png?size=480x320')).status, 200);
});

test('edgekeeper frame --size --out fetches from the running daemon (in its own process)', async () => {
  const out = join(tmp, 'status.png');
  const ok = await runCli(['--size', '480x320', '--out', out, '--http', `127.0.0.1:${port}`]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /wrote .*status\.png/);
  const d = await decodePng(readFileSync(out));
  assert.equal(`${d.width}x${d.height}`, '480x320');
  assert.equal((await runCli(['--size', '1x1', '--http', `127.0.0.1:${port}`])).code, 2);
  assert.equal((await runCli(['--bogus'])).code, 2);
  // A port nothing listens on: a fresh listener's port after closing it.
  const dead = createServer();
  await new Promise<void>((r) => dead.listen(0, '127.0.0.1', r));
  const deadPort = (dead.address() as AddressInfo).port;
  await new Promise((r) => dead.close(r));
  const down = await runCli(['--out', join(tmp, 'x.png'), '--http', `127.0.0.1:${deadPort}`]);
  assert.equal(down.code, 1);
  assert.match(
    down.stderr,
    /^edgekeeper frame: nothing answers at 127\.0\.0\.1:\d+ .*\[EDGE_ERR_UNREACHABLE\]\n$/,
  );
  assert.ok(!existsSync(join(tmp, 'x.png')));
});

test('a source that throws shows as unknown, is counted, and the frame is still drawn', async () => {
  devicesThrow = true;
  try {
    const before = await metric('edgekeeper_frames_rendered_total', { size: '800x480' });
    await part.renderNow();
    assert.equal(part.latestSnapshot()?.devices, undefined);
    assert.equal(await metric('edgekeeper_frames_rendered_total', { size: '800x480' }), before + 1);
    assert.ok((await metric('edgekeeper_frames_sink_errors_total', { sink: 'source:devices' })) >= 1);
  } finally {
    devicesThrow = false;
  }
});

test('status() reports sizes and sinks; stop is idempotent', async () => {
  const st = part.status!();
  assert.deepEqual(st.sizes, ['800x480', '480x320', '250x122']);
  assert.equal((st.framebuffer as { size: string }).size, '800x480');
  await part.stop();
  await part.stop();
});

test('bad options are refused at creation with the config path', () => {
  const ctx = {
    store,
    logger: silentLogger(),
    registry: new Registry(),
    clock,
    http,
    stateDir,
    runtimeDir: stateDir,
    nodeName: 'x',
    addReadinessCheck: () => {},
  };
  assert.throws(
    () => createFramesPart(ctx, { sizes: ['800x480', '1024x768' as '800x480'], sources: {} }),
    /`frames.sizes\[1\]`.*1024x768/,
  );
  assert.throws(
    () => createFramesPart(ctx, { framebufferRotation: 45 as 90, sources: {} }),
    /`frames.framebufferRotation`/,
  );
  assert.throws(
    () => createFramesPart(ctx, { einkSize: '800x480' as '250x122', sources: {} }),
    /`frames.einkSize`/,
  );
});

test('a framebuffer that cannot be used is reported; frames still go to the other sinks', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ek-frames-nofb-'));
  try {
    const reg = new Registry();
    const ctx = {
      store,
      logger: silentLogger(),
      registry: reg,
      clock,
      http: { add: () => {} },
      stateDir: dir,
      runtimeDir: dir,
      nodeName: 'x',
      addReadinessCheck: () => {},
    };
    const p = createFramesPart(ctx, { framebuffer: '/dev/fb9', sysRoot: join(dir, 'nosys'), sources: {} });
    await p.start();
    await p.renderNow();
    assert.ok(existsSync(join(dir, 'frame-800x480.png')));
    assert.equal(p.status!().framebuffer, 'unavailable');
    const m = (await reg.getMetricsAsJSON()).find((x) => x.name === 'edgekeeper_frames_sink_errors_total');
    assert.ok(m?.values.some((v) => v.labels.sink === 'framebuffer' && Number(v.value) >= 1));
    await p.stop();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
