/**
 * The ingest part: the ingest thread (the embedded broker or the external subscriber, with the
 * report path) and, on the main thread, the core (commits, registry, dead letters), the
 * downlink, retention, the HTTP routes and the metrics.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { InvalidArgumentError, RequestTooLargeError } from '../errors.js';
import { RepeatLimiter } from '../log.js';
import type { Part, PartContext } from '../part.js';
import type { IngestOptions } from './config.js';
import { IngestCore } from './core.js';
import { addDevice, listDevices, removeDevice, rotateDevice } from './devices.js';
import { Downlink } from './downlink.js';
import { createMetrics } from './metrics.js';
import { DeadLetters } from './rejects.js';
import { Retention, type RetentionResult } from './retention.js';
import { type Address, IngestThread } from './thread.js';
import type { Timer } from '../clock.js';

export interface IngestPart extends Part {
  /** Embedded listeners (port 0 in the options resolves to the real port here). */
  addresses(): Address[];
  /** Run retention now (it also runs every retentionInterval). */
  runRetention(): Promise<RetentionResult>;
  /** Write the device mirror and dead letters now (tests, shutdown). */
  flush(): Promise<void>;
  /** Resolves when reports can flow: listening (embedded) or connected and subscribed (external). */
  ready(): Promise<void>;
}

const MAX_BODY = 4096;
/** Devices named in status(): more than a status frame has room for. */
const ATTENTION_LISTED = 10;
// registering devices and reading what they sent need the local admin token (src/admin.ts);
// the device list is public, as /edgekeeper/devices/ is over the etcd API
const ADMIN = { admin: true };

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > MAX_BODY) throw new RequestTooLargeError(size, MAX_BODY);
    chunks.push(c as Buffer);
  }
  if (size === 0) return {};
  try {
    const v = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
    if (typeof v === 'object' && v !== null && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // answered below
  }
  throw new InvalidArgumentError('request body must be a JSON object');
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function idFrom(body: Record<string, unknown>, url: URL): string {
  const id = body.id ?? url.searchParams.get('id');
  if (typeof id !== 'string' || id === '')
    throw new InvalidArgumentError('give the device id as {"id": "..."} or ?id=');
  return id;
}

export function createIngestPart(ctx: PartContext, opts: IngestOptions): IngestPart {
  // --mqtt-url alone switches to external mode
  const options: IngestOptions = {
    ...opts,
    mode: opts.mode === 'auto' || opts.mode === undefined ? (opts.url ? 'external' : 'embedded') : opts.mode,
  };
  const log = ctx.logger.child({ part: 'ingest' });
  const repeats = new RepeatLimiter(log);
  const metrics = createMetrics(ctx.registry);
  const core = new IngestCore(ctx.store, ctx.clock, metrics, log, options, ctx.slo);
  const source = {
    neverConnected: () => {
      let n = 0;
      for (const { id } of ctx.store.query<{ id: string }>('SELECT id FROM ingest_devices').iterate())
        if (!core.registry.devices.has(id)) n++;
      return n;
    },
    devices: () => core.registry.devices.values(),
    count: () => core.registry.devices.size,
    maxSeries: options.deviceSeries,
  };
  metrics.source.current = source;
  let thread: IngestThread | undefined;
  let addresses: Address[] = [];
  // the downlink's transport is the thread, made at start
  const transport = {
    reachable: (device: string) => thread?.reachable(device) ?? false,
    send: (device: string, payload: Buffer, timeoutMs: number) =>
      thread ? thread.send(device, payload, timeoutMs) : Promise.reject(new Error('ingest is not started')),
    onReachable: undefined as ((device: string) => void) | undefined,
  };
  const downlink = new Downlink(ctx.store, ctx.clock, transport, metrics, log, options.commandTtl);
  const retention = new Retention(ctx.store, ctx.clock, metrics, log, options);
  let retentionTimer: Timer | undefined;
  let started = false;
  let stopping: Promise<void> | undefined;

  ctx.http.add('GET', '/v1/devices', (_req, res) => {
    const live = core.registry.devices;
    send(
      res,
      200,
      listDevices(ctx.store).map((d) => ({ ...d, online: live.get(d.id)?.online ?? d.online })),
    );
  });
  ctx.http.add(
    'POST',
    '/v1/devices',
    async (req, res, url) => {
      const id = idFrom(await readJson(req), url);
      const secret = await addDevice(ctx.store, id, ctx.clock.now());
      send(res, 201, { id, secret });
    },
    ADMIN,
  );
  ctx.http.add(
    'POST',
    '/v1/devices/rotate',
    async (req, res, url) => {
      const id = idFrom(await readJson(req), url);
      const secret = await rotateDevice(ctx.store, id, ctx.clock.now());
      thread?.revoke(id);
      send(res, 200, { id, secret });
    },
    ADMIN,
  );
  const remove = async (req: IncomingMessage, res: ServerResponse, url: URL) => {
    const id = idFrom(req.method === 'DELETE' ? {} : await readJson(req), url);
    const removed = await removeDevice(ctx.store, id);
    thread?.revoke(id);
    core.registry.forget(id);
    send(res, removed ? 200 : 404, { id, removed });
  };
  ctx.http.add('POST', '/v1/devices/remove', remove, ADMIN);
  ctx.http.add('DELETE', '/v1/devices', remove, ADMIN);
  ctx.http.add(
    'GET',
    '/v1/ingest/rejects',
    (_req, res, url) => {
      const limit = Math.min(1000, Math.max(1, Number(url.searchParams.get('limit') ?? 50) || 50));
      send(
        res,
        200,
        DeadLetters.list(ctx.store, limit).map((r) => ({
          ...r,
          head: r.head ? Buffer.from(r.head).toString('hex') : null,
        })),
      );
    },
    ADMIN,
  );

  ctx.addReadinessCheck('ingest', () => {
    if (thread?.down) return `the ingest thread stopped (${thread.down.message}); starting it again`;
    if (!started) return 'ingest is not started';
    if (thread && thread.queued > 50_000) return `ingest has ${thread.queued} reports waiting to be stored`;
    return undefined;
  });

  return {
    name: 'ingest',
    async start() {
      core.registry.load(options.mode === 'embedded');
      core.registry.start();
      thread = new IngestThread(core, options, log, ctx.clock);
      thread.onReachable = (device) => transport.onReachable?.(device);
      // external: not waiting for the first connect; a missing broker must not stop the daemon
      addresses = await thread.start();
      downlink.start();
      const loop = () => {
        retention.run().then(
          () => undefined,
          (err) => repeats.warn({ err }, 'retention failed; retrying next interval'),
        );
        retentionTimer = ctx.clock.setTimeout(loop, options.retentionInterval);
      };
      retentionTimer = ctx.clock.setTimeout(loop, options.retentionInterval);
      started = true;
      log.info({ mode: options.mode }, 'ingest started');
    },
    stop() {
      stopping ??= (async () => {
        retentionTimer?.cancel();
        downlink.stop();
        // reports held by admission were never acknowledged: devices resend them
        core.committer.failHeld(new Error('ingest stopping'));
        await thread?.stop();
        await core.registry.stop();
        await core.rejects.settle();
        started = false;
      })();
      return stopping;
    },
    status() {
      const { online, offline } = core.registry.counts();
      const attention = core.registry.attention(ATTENTION_LISTED);
      return {
        mode: options.mode,
        devices: { online, offline, never: source.neverConnected() },
        connections: options.mode === 'embedded' ? core.connections : null,
        attention: attention.list,
        attentionTotal: attention.total,
        rejecting: attention.rejecting,
        reportsPerMinute: core.ratePerMinute(),
        rejects: Object.fromEntries(core.rejects.counts),
        rejectsUnrecorded: Object.fromEntries(core.rejects.unrecorded),
        queued: thread?.queued ?? 0,
        commandsPending: downlink.pendingCount(),
      };
    },
    addresses: () => addresses,
    ready: () => thread?.ready() ?? Promise.reject(new Error('ingest is not started')),
    runRetention: () => retention.run(),
    async flush() {
      await thread?.flush();
      await core.registry.flushAll();
      await core.rejects.settle();
    },
  };
}
