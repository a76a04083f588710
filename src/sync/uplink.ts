/**
 * The uplink: reads the append-only source tables by committed cursor, uploads batches, and moves
 * the cursors only after the receiver acknowledged, in one store write with the batch sequence.
 *
 * Why nothing is lost or duplicated:
 * - A batch's sequence number is the last acknowledged one + 1, committed with the cursors. After
 *   a crash the node rebuilds batch N from the committed cursors; if the receiver had stored N
 *   already, it answers "duplicate" with the ids N covered, and the cursors move to those. Rows
 *   are never skipped (cursors move only to acknowledged ids) and never stored twice (the
 *   receiver keys batches by (node, seq) and records by (node, id)).
 * - The disk budget never deletes rows of the batch in flight (ids up to its end are protected),
 *   and every deletion is one store write with the `sync.gap` event that reports it.
 * - Reading streams `LIMIT batchMaxRecords` rows at a time: a backlog of millions costs one batch
 *   of memory.
 */
import { readFileSync } from 'node:fs';
import { Agent as HttpAgent, type IncomingMessage, request as httpRequest } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { brotliCompressSync, constants as zc, gzipSync } from 'node:zlib';
import cron from 'node-cron';
import { Counter, Gauge } from 'prom-client';
import type { Timer } from '../clock.js';
import { ConfigError, SyncUploadError } from '../errors.js';
import { RepeatLimiter } from '../log.js';
import type { PartContext } from '../part.js';
import { prefixEnd } from '../store/index.js';
import type { RequestOp } from '../store/types.js';
import {
  type Batch,
  BatchEncoder,
  type EventRecord,
  type HealthSummary,
  type ReportRecord,
  type SampleRecord,
} from './codec.js';
import { clip, HealthTracker, type Observation } from './health.js';
import type { SyncOptions, SyncPart, SyncState, SyncStatus } from './types.js';

export const DESIRED_PREFIX = '/edgekeeper/desired/';
/** Holds the applied desired version, next to the keys, written in the same revision. */
export const DESIRED_VERSION_KEY = `${DESIRED_PREFIX}.version`;

type Source = 'events' | 'reports' | 'probe_samples';
const SOURCES: Source[] = ['events', 'reports', 'probe_samples']; // priority order
const SHORT: Record<Source, 'events' | 'reports' | 'samples'> = {
  events: 'events',
  reports: 'reports',
  probe_samples: 'samples',
};
/** The column holding each source's time, for "oldest unsent age". */
const TIME_COL: Record<Source, string> = { events: 'ts', reports: 'received_at', probe_samples: 'ts' };
const SELECT: Record<Source, string> = {
  events: 'SELECT id, ts, kind, subject, data FROM events WHERE id > ? ORDER BY id LIMIT ?',
  reports: 'SELECT id, device, received_at, ts, seq, body FROM reports WHERE id > ? ORDER BY id LIMIT ?',
  probe_samples: 'SELECT id, ts, probe, metric, data FROM probe_samples WHERE id > ? ORDER BY id LIMIT ?',
};
/** Bytes a row takes as stored, for the batch size and the disk budget. */
const ROW_BYTES: Record<Source, string> = {
  events: 'length(kind) + coalesce(length(subject), 0) + coalesce(length(data), 0) + 24',
  reports: 'length(device) + length(body) + 32',
  probe_samples: 'length(probe) + length(metric) + length(data) + 24',
};

/** The sync part's own table (a Migration): batch sequence and desired-state bookkeeping. */
export const SYNC_STATE_SQL =
  'CREATE TABLE sync_state (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID';

interface Pending {
  batch: { seq: number; applied: string | null };
  /** Rows being encoded; dropped once compressed. */
  enc?: BatchEncoder;
  header?: Omit<Batch, 'events' | 'reports' | 'samples'>;
  counts: Record<Source, number>;
  body: Buffer;
  records: number;
  upTo: Partial<Record<Source, number>>;
  attempts: number;
}

interface Ack {
  seq: number;
  duplicate: boolean;
  upTo: { events: number | null; reports: number | null; samples: number | null };
}

/** While the SLO guard makes bulk work yield, uploads pause, re-checked this often... */
const YIELD_RECHECK_MS = 1000;
/** ...but at most this long in a row: then one batch goes. */
const YIELD_MAX_PAUSE_MS = 60_000;

export function createUplink(ctx: PartContext, options: SyncOptions): SyncPart {
  const log = ctx.logger.child({ part: 'sync' });
  // A full disk fails the loop and the budget check every round: one line a minute each.
  const repeats = new RepeatLimiter(log);
  const { store, clock } = ctx;
  const random = options.random ?? Math.random;
  const o = {
    batchMaxRecords: options.batchMaxRecords ?? 10_000,
    batchMaxBytes: options.batchMaxBytes ?? 2 * 1024 * 1024,
    compression: options.compression ?? 'gzip',
    desiredPollInterval: options.desiredPollInterval ?? 60_000,
    retryBase: options.retryBase ?? 1000,
    retryMax: options.retryMax ?? 300_000,
    requestTimeout: options.requestTimeout ?? 30_000,
    bandwidth: options.bandwidth ?? 0,
    diskBudget: options.diskBudget ?? 512 * 1024 * 1024,
    reportsPolicy: options.reportsPolicy ?? 'stop-ack',
    idleInterval: options.idleInterval ?? 1000,
    batchDelay: options.batchDelay ?? 30_000,
    heartbeatInterval: options.heartbeatInterval ?? 60_000,
    frameInterval: options.frameInterval ?? 300_000,
    budgetInterval: options.budgetInterval ?? 5000,
    healthInterval: options.healthInterval ?? 10_000,
  };
  const enabled = !!options.url;
  const node = ctx.nodeName;
  const base = enabled ? new URL(options.url!) : undefined;
  const tls = base?.protocol === 'https:';
  let token: string | undefined = options.token;
  const agent = tls
    ? new HttpsAgent({
        keepAlive: true,
        maxSockets: 2,
        cert: options.certFile ? readFileSync(options.certFile) : undefined,
        key: options.keyFile ? readFileSync(options.keyFile) : undefined,
        ca: options.caFile ? readFileSync(options.caFile) : undefined,
      })
    : new HttpAgent({ keepAlive: true, maxSockets: 2 });
  const badWindows = (options.uploadWindows ?? [])
    .map((expr, i) =>
      cron.validate(expr)
        ? undefined
        : `Expected \`sync.uploadWindows[${i}]\` to be a cron expression, got ${JSON.stringify(expr)}`,
    )
    .filter((x): x is string => x !== undefined);
  if (badWindows.length) throw new ConfigError(badWindows);
  const windows = (options.uploadWindows ?? []).map((expr) => cron.createTask(expr, () => {}));

  // --- metrics -------------------------------------------------------------------------------
  const reg = ctx.registry;
  const mDepth = new Gauge({
    name: 'edgekeeper_sync_queue_depth_records',
    help: 'Records waiting to be uploaded, per source table',
    labelNames: ['source'],
    registers: [reg],
  });
  const mBacklogBytes = new Gauge({
    name: 'edgekeeper_sync_backlog_bytes',
    help: 'Estimated bytes (as stored) waiting to be uploaded; compared with sync.diskBudget',
    registers: [reg],
  });
  const mOldest = new Gauge({
    name: 'edgekeeper_sync_oldest_unsent_age_seconds',
    help: 'Age of the oldest record waiting to be uploaded (0 when none)',
    registers: [reg],
  });
  const mBytes = new Counter({
    name: 'edgekeeper_sync_sent_bytes_total',
    help: 'Batch bytes acknowledged, on the wire',
    registers: [reg],
  });
  const mRecords = new Counter({
    name: 'edgekeeper_sync_sent_records_total',
    help: 'Records acknowledged by the receiver, per source table',
    labelNames: ['source'],
    registers: [reg],
  });
  const mBatches = new Counter({
    name: 'edgekeeper_sync_batches_sent_total',
    help: 'Batches acknowledged',
    registers: [reg],
  });
  const mRetried = new Counter({
    name: 'edgekeeper_sync_batches_retried_total',
    help: 'Upload attempts that failed and will be retried',
    registers: [reg],
  });
  const mDropped = new Counter({
    name: 'edgekeeper_sync_dropped_records_total',
    help: 'Unsent records deleted by the disk budget policy (each drop is also a sync.gap event)',
    labelNames: ['source'],
    registers: [reg],
  });
  const mLastSuccess = new Gauge({
    name: 'edgekeeper_sync_last_success_timestamp_seconds',
    help: 'Unix time of the last acknowledged upload',
    registers: [reg],
  });

  // --- state -----------------------------------------------------------------------------------
  let state: SyncState = enabled ? 'retrying' : 'disabled';
  let running = false;
  let loopDone: Promise<void> = Promise.resolve();
  let wake: (() => void) | undefined;
  let sleepTimer: Timer | undefined;
  let seq = 0;
  let dropEpoch = 0;
  const preparing = new Set<Pending>();
  let stream = '0';
  const cursors: Record<Source, number> = { events: 0, reports: 0, probe_samples: 0 };
  let pending: Pending | undefined;
  let failures = 0;
  let netFailures = 0;
  let lastSuccess: number | null = null;
  let lastError: string | null = null;
  let lastSentAt = Number.NEGATIVE_INFINITY; // monotonic
  let appliedVersion: string | null = null;
  let reportedApplied: string | null = null;
  let desiredEtag: string | null = null;
  let admit = true;
  let dropped = 0;
  let nextSendAt = 0; // bandwidth cap
  const backlog = { events: 0, reports: 0, samples: 0 };
  let backlogBytes = 0;
  let oldestAge: number | null = null;
  const timers: Timer[] = [];
  let budgetRunning: Promise<void> | undefined;
  let desiredRunning: Promise<void> | undefined;
  let frameRunning: Promise<void> | undefined;
  let tracker: HealthTracker | undefined;

  function tableExists(t: string): boolean {
    return !!store.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(t);
  }

  function loadState(): void {
    for (const r of store
      .query<{ name: string; position: number }>('SELECT name, position FROM cursors')
      .all()) {
      if (r.name in cursors) cursors[r.name as Source] = r.position;
    }
    const kv = new Map(
      store
        .query<{ name: string; value: string }>('SELECT name, value FROM sync_state')
        .all()
        .map((r) => [r.name, r.value]),
    );
    seq = Number(kv.get('seq') ?? 0);
    appliedVersion = kv.get('desired_version') ?? null;
    reportedApplied = kv.get('reported_applied') ?? null;
    desiredEtag = kv.get('desired_etag') ?? null;
  }

  // --- batches ---------------------------------------------------------------------------------

  /** When records were first found waiting for a batch (see batchDelay); undefined: none. */
  let waitingSince: number | undefined;

  /** Read the next batch after the cursors (and after `after`, the batch in flight). */
  function buildBatch(
    after: Record<Source, number>,
    maxRecords: number,
    batchSeq: number,
  ): Pending | undefined {
    let room = maxRecords;
    let bytes = 0;
    const enc = new BatchEncoder();
    const counts: Record<Source, number> = { events: 0, reports: 0, probe_samples: 0 };
    const upTo: Partial<Record<Source, number>> = {};
    for (const src of SOURCES) {
      if (room <= 0 || bytes >= o.batchMaxBytes) break;
      if (!tableExists(src)) continue;
      // Synchronous iteration: nothing else runs on the read connection until it ends. Each row
      // goes into the encoder's columns at once, so rows never pile up in memory.
      for (const row of store.query<Record<string, unknown>>(SELECT[src]).iterate(after[src], room)) {
        if (src === 'events') {
          const r = row as unknown as EventRecord;
          enc.events.push(r);
          bytes += r.kind.length + (r.subject?.length ?? 0) + (r.data?.length ?? 0) + 24;
        } else if (src === 'reports') {
          const r = row as unknown as ReportRecord;
          enc.reports.add(r);
          bytes += r.device.length + r.body.length + 32;
        } else {
          const r = row as unknown as SampleRecord;
          enc.samples.push(r);
          bytes += r.probe.length + r.metric.length + r.data.length + 24;
        }
        upTo[src] = row.id as number;
        counts[src]++;
        room--;
        if (bytes >= o.batchMaxBytes) break;
      }
    }
    const records = maxRecords - room;
    const heartbeatDue = clock.monotonic() - lastSentAt >= o.heartbeatInterval;
    if (records === 0 && appliedVersion === reportedApplied && !heartbeatDue) return undefined;
    // A few new records wait up to batchDelay for more: on an SD card every upload also costs a
    // commit (the cursors move), and a node with one device reporting once a second would
    // otherwise commit twice per report.
    const full = room <= 0 || bytes >= o.batchMaxBytes;
    if (records > 0 && !full && !heartbeatDue && appliedVersion === reportedApplied) {
      waitingSince ??= clock.monotonic();
      if (clock.monotonic() - waitingSince < o.batchDelay) return undefined;
    }
    waitingSince = undefined;
    const header = {
      node,
      stream,
      seq: batchSeq,
      sentAt: clock.now(),
      applied: appliedVersion,
      backlog: { ...backlog },
      health: healthSummary(),
    };
    return {
      batch: { seq: batchSeq, applied: appliedVersion },
      enc,
      header,
      counts,
      body: Buffer.alloc(0),
      records,
      upTo,
      attempts: 0,
    };
  }

  async function compress(p: Pending): Promise<void> {
    const raw = p.enc!.finish(p.header!);
    // Rows are not needed once encoded; release them before the upload.
    p.enc = undefined;
    p.header = undefined;
    // Synchronous on purpose: a batch compresses in a few ms, and the thread pool's async zlib
    // leaves per-thread malloc arenas behind that grow RSS by 10+ MB on a long drain.
    p.body =
      o.compression === 'gzip'
        ? gzipSync(raw, { level: 6 })
        : brotliCompressSync(raw, {
            params: {
              // Quality 4: most of brotli's gain at gzip-like CPU; the size hint saves reallocations.
              [zc.BROTLI_PARAM_QUALITY]: 4,
              // A 256 KiB window holds a whole batch's columns; the default 4 MiB only costs memory.
              [zc.BROTLI_PARAM_LGWIN]: 18,
              [zc.BROTLI_PARAM_SIZE_HINT]: raw.length,
            },
          });
  }

  function request(
    method: string,
    path: string,
    body: Buffer | undefined,
    headers: Record<string, string>,
  ): Promise<{ status: number; headers: IncomingMessage['headers']; body: Buffer }> {
    return new Promise((resolve, reject) => {
      const url = new URL(path, base);
      const h: Record<string, string | number> = { ...headers };
      if (token) h.Authorization = `Bearer ${token}`;
      if (body) h['Content-Length'] = body.length;
      const req = (tls ? httpsRequest : httpRequest)(url, { method, agent, headers: h });
      const timer = clock.setTimeout(() => {
        req.destroy(new SyncUploadError(`no answer from ${url.host} within ${o.requestTimeout} ms`));
      }, o.requestTimeout);
      req.on('error', (err) => {
        timer.cancel();
        reject(err);
      });
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          // Answers are small JSON; a receiver sending megabytes is broken.
          if (size > 1024 * 1024) req.destroy(new SyncUploadError('answer larger than 1 MiB'));
          else chunks.push(c);
        });
        res.on('end', () => {
          timer.cancel();
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) });
        });
        res.on('error', (err) => {
          timer.cancel();
          reject(err);
        });
      });
      req.end(body);
    });
  }

  function retryAfterMs(h: string | string[] | undefined): number | undefined {
    if (typeof h !== 'string') return undefined;
    const secs = Number(h);
    const ms = Number.isFinite(secs) ? secs * 1000 : Date.parse(h) - clock.now();
    // An hour at most: a typo on the receiver must not park the node for days.
    return Number.isFinite(ms) ? Math.min(Math.max(ms, 0), 3_600_000) : undefined;
  }

  async function send(p: Pending): Promise<Ack> {
    const res = await request('POST', `/v1/nodes/${encodeURIComponent(node)}/batches`, p.body, {
      'Content-Type': 'application/cbor',
      'Content-Encoding': o.compression === 'gzip' ? 'gzip' : 'br',
      'Idempotency-Key': `${node}:${p.batch.seq}`,
    });
    if (res.status !== 200) {
      let detail = res.body.toString('utf8').slice(0, 300);
      try {
        const j = JSON.parse(detail) as { code?: string; message?: string };
        detail = `${j.code ?? ''} ${j.message ?? ''}`.trim();
      } catch {
        // Not JSON (a proxy's error page): keep the text.
      }
      throw new SyncUploadError(
        `receiver answered ${res.status}: ${detail}`,
        res.status,
        retryAfterMs(res.headers['retry-after']),
      );
    }
    const ack = JSON.parse(res.body.toString('utf8')) as Ack;
    if (ack.seq !== p.batch.seq || typeof ack.upTo !== 'object' || ack.upTo === null)
      throw new SyncUploadError(
        `receiver acknowledged batch ${String(ack.seq)} instead of ${p.batch.seq}`,
        502,
      );
    return ack;
  }

  /** Commit the acknowledged batch: cursors and sequence in one store write. */
  async function commit(p: Pending, ack: Ack): Promise<void> {
    const next = { ...cursors };
    for (const src of SOURCES) {
      const v = ack.upTo[SHORT[src]];
      if (typeof v === 'number' && v > next[src]) next[src] = v;
    }
    await store.write({
      sql: [
        {
          sql: 'INSERT INTO cursors (name, position) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET position = max(position, excluded.position)',
          rows: SOURCES.map((s) => [s, next[s]]),
        },
        {
          sql: 'INSERT INTO sync_state (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value',
          rows: [
            ['seq', String(p.batch.seq)],
            ['reported_applied', p.batch.applied ?? ''],
          ],
        },
      ],
    });
    seq = p.batch.seq;
    reportedApplied = p.batch.applied;
    for (const src of SOURCES) cursors[src] = next[src];
    const c = p.counts;
    for (const src of SOURCES) {
      const same = (ack.upTo[SHORT[src]] ?? undefined) === p.upTo[src];
      forget(src, !ack.duplicate || same ? (c?.[src] ?? 0) : undefined);
    }
    if (!ack.duplicate && c)
      for (const src of SOURCES) if (c[src]) mRecords.inc({ source: SHORT[src] }, c[src]);
    mBytes.inc(p.body.length);
    mBatches.inc();
    lastSuccess = clock.now();
    lastSentAt = clock.monotonic();
    mLastSuccess.set(lastSuccess / 1000);
  }

  // --- sleeping, windows, bandwidth --------------------------------------------------------------

  function sleep(ms: number): Promise<void> {
    // Stopping: an upload cut by stop() must not start a backoff nobody will wake.
    if (!running) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        sleepTimer?.cancel();
        sleepTimer = undefined;
        wake = undefined;
        resolve();
      };
      wake = done;
      sleepTimer = clock.setTimeout(done, Math.max(0, ms));
    });
  }

  function inWindow(at = clock.now()): boolean {
    if (windows.length === 0) return true;
    const d = new Date(at);
    d.setSeconds(0, 0); // windows are whole minutes; node-cron's match also checks seconds
    return windows.some((w) => w.match(d));
  }

  function backoff(attempt: number, retryAfter?: number): number {
    if (retryAfter !== undefined) return retryAfter + random() * Math.min(1000, o.retryBase);
    const ceiling = Math.min(o.retryMax, o.retryBase * 2 ** Math.min(attempt, 30));
    // "Equal jitter": at least half the delay, so retries never hammer, never synchronised.
    return ceiling / 2 + (random() * ceiling) / 2;
  }

  function setState(s: SyncState): void {
    if (s === state) return;
    const wasDown = state === 'retrying' || state === 'offline';
    state = s;
    if (s === 'ok' && wasDown) {
      log.info({ seq }, 'fleet receiver reachable again; uploading the backlog');
      // At once after reconnect: desired state may have changed while we were away.
      triggerDesired();
    }
  }

  // --- the upload loop -----------------------------------------------------------------------------

  /** Read, encode and compress the batch after `after`; undefined when there is nothing to send. */
  async function prepare(
    after: Record<Source, number>,
    maxRecords: number,
    batchSeq: number,
  ): Promise<Pending | undefined> {
    // Read only what is durable: a batch still syncing is committed but not yet acknowledged, and
    // a power cut could take it back after the receiver stored it.
    await store.settled();
    const p = buildBatch(after, maxRecords, batchSeq);
    if (!p) return undefined;
    // Protected from the budget from now on, like the batch in flight.
    preparing.add(p);
    try {
      await compress(p);
    } finally {
      preparing.delete(p);
    }
    return p;
  }

  async function loop(): Promise<void> {
    let maxRecords = o.batchMaxRecords;
    let yieldingSince: number | undefined;
    // The next batch, read and compressed while the current one is on the wire (the receiver and
    // PostgreSQL work meanwhile). Used only if the current one is acknowledged as sent, not as a
    // duplicate covering other ids.
    let next: { after: Record<Source, number>; epoch: number; p: Promise<Pending | undefined> } | undefined;
    while (running) {
      try {
        if (!inWindow()) {
          // Re-check at the next whole minute.
          await sleep(60_000 - (clock.now() % 60_000) + 10);
          continue;
        }
        // While bulk work yields to interactive traffic (the SLO guard), uploads pause; one batch
        // still goes every YIELD_MAX_PAUSE_MS so a guard that never lets go cannot stop the uplink.
        if (ctx.slo?.yielding()) {
          yieldingSince ??= clock.monotonic();
          if (clock.monotonic() - yieldingSince < YIELD_MAX_PAUSE_MS) {
            await sleep(YIELD_RECHECK_MS);
            continue;
          }
          yieldingSince = clock.monotonic();
        } else yieldingSince = undefined;
        if (!pending) {
          // Never read a batch while the budget is deleting rows: it could pick up rows that are
          // about to be reported as dropped.
          if (budgetRunning) await budgetRunning;
          const spec = next;
          next = undefined;
          const p =
            spec && spec.epoch === dropEpoch && SOURCES.every((src) => spec.after[src] === cursors[src])
              ? ((await spec.p) ?? (await prepare(cursors, maxRecords, seq + 1)))
              : await prepare(cursors, maxRecords, seq + 1);
          if (!p) {
            await sleep(o.idleInterval);
            continue;
          }
          pending = p;
        }
        const p = pending;
        if (o.bandwidth > 0) {
          const now = clock.monotonic();
          if (nextSendAt > now) {
            await sleep(nextSendAt - now);
            if (!running) break;
          }
          nextSendAt = Math.max(nextSendAt, clock.monotonic()) + (p.body.length / o.bandwidth) * 1000;
        }
        p.attempts++;
        let ack: Ack;
        if (p.attempts === 1 && p.records > 0) {
          const after = { ...cursors };
          for (const src of SOURCES) after[src] = p.upTo[src] ?? cursors[src];
          const specSeq = p.batch.seq + 1;
          // Start after the current event-loop turn so the upload's request goes out first.
          next = {
            after,
            // A budget drop after this point may delete rows the speculative batch read.
            epoch: dropEpoch,
            p: new Promise((r) => setImmediate(r)).then(() =>
              running ? prepare(after, maxRecords, specSeq) : undefined,
            ),
          };
          next.p.catch(() => {});
        }
        try {
          ack = await send(p);
        } catch (err) {
          // The speculative batch may hold rows the disk budget drops while we back off.
          next = undefined;
          failures++;
          mRetried.inc();
          const e = err as SyncUploadError & { code?: string };
          const httpStatus = e instanceof SyncUploadError ? e.httpStatus : undefined;
          lastError = e.message;
          if (httpStatus === undefined) netFailures++;
          else netFailures = 0;
          setState(netFailures >= 3 ? 'offline' : 'retrying');
          if (httpStatus === 413 && p.records > 1) {
            // The receiver's size limit is below ours: rebuild smaller with the same seq.
            maxRecords = Math.max(1, Math.floor(p.records / 2));
            log.warn({ maxRecords }, 'receiver refused the batch as too large; sending smaller batches');
            pending = undefined;
            continue;
          }
          const delay = backoff(failures - 1, e instanceof SyncUploadError ? e.retryAfterMs : undefined);
          const level = failures === 1 || failures % 20 === 0 ? 'warn' : 'debug';
          log[level](
            { seq: p.batch.seq, attempt: p.attempts, delayMs: Math.round(delay), err: e.message },
            httpStatus && httpStatus < 500 && httpStatus !== 429
              ? 'fleet receiver refused the batch; check the node token and the receiver log, retrying'
              : 'upload failed; data stays queued and will be retried',
          );
          await sleep(delay);
          continue;
        }
        await commit(p, ack);
        if (ack.duplicate && next && SOURCES.some((src) => next!.after[src] !== cursors[src]))
          next = undefined;
        pending = undefined;
        failures = 0;
        netFailures = 0;
        lastError = null;
        setState('ok');
        if (ack.duplicate)
          log.info({ seq: p.batch.seq }, 'receiver already had this batch; cursors moved to what it stored');
      } catch (err) {
        // A store failure (disk full, closed): keep the data, try again later.
        if (!running) break;
        lastError = (err as Error).message;
        repeats.error({ err }, 'sync loop failed; retrying');
        pending = undefined;
        await sleep(backoff(failures++));
      }
    }
  }

  // --- backlog and disk budget -------------------------------------------------------------------

  /**
   * Rows above the cursor, kept without scanning the backlog: one exact count at start (or after
   * a surprise), then new ids (max(id) grows by one per row: AUTOINCREMENT ids are not skipped,
   * and nothing but the budget deletes above the cursor) less rows acknowledged or dropped.
   */
  const known: Partial<Record<Source, { count: number; maxId: number }>> = {};
  function backlogCount(src: Source): number {
    const maxId = store.query<{ m: number | null }>(`SELECT max(id) AS m FROM ${src}`).get()?.m ?? 0;
    let k = known[src];
    if (!k) {
      const n =
        store.query<{ n: number }>(`SELECT count(*) AS n FROM ${src} WHERE id > ?`).get(cursors[src])?.n ?? 0;
      k = { count: n, maxId };
    } else k = { count: k.count + Math.max(0, maxId - k.maxId), maxId };
    if (maxId <= cursors[src]) k.count = 0;
    known[src] = k;
    return Math.max(0, k.count);
  }
  function forget(src: Source, rows: number | undefined): void {
    const k = known[src];
    if (!k) return;
    if (rows === undefined) delete known[src];
    else k.count -= rows;
  }

  /** Average stored size of the newest rows (the backlog's rows look like them). */
  function avgRowBytes(src: Source): number {
    const r = store
      .query<{ b: number | null }>(
        `SELECT avg(b) AS b FROM (SELECT ${ROW_BYTES[src]} AS b FROM ${src} ORDER BY id DESC LIMIT 256)`,
      )
      .get();
    return r?.b ?? 0;
  }

  function measure(): void {
    let bytes = 0;
    let oldest: number | null = null;
    for (const src of SOURCES) {
      if (!tableExists(src)) {
        backlog[SHORT[src]] = 0;
        mDepth.set({ source: SHORT[src] }, 0);
        continue;
      }
      const r = { n: backlogCount(src) };
      bytes += r.n * avgRowBytes(src);
      backlog[SHORT[src]] = r.n;
      mDepth.set({ source: SHORT[src] }, r.n);
      if (r.n > 0) {
        const t = store
          .query<{ t: number }>(`SELECT ${TIME_COL[src]} AS t FROM ${src} WHERE id > ? ORDER BY id LIMIT 1`)
          .get(cursors[src]);
        if (t && (oldest === null || t.t < oldest)) oldest = t.t;
      }
    }
    backlogBytes = bytes;
    oldestAge = oldest === null ? null : Math.max(0, (clock.now() - oldest) / 1000);
    mBacklogBytes.set(bytes);
    mOldest.set(oldestAge ?? 0);
  }

  /** Delete the oldest unsent rows of `src` worth about `excess` bytes; returns bytes freed. */
  async function dropOldest(src: Source, excess: number): Promise<number> {
    let freed = 0;
    while (freed < excess && running) {
      // Never touch the batch in flight: it may be stored already.
      let floor = Math.max(cursors[src], pending?.upTo[src] ?? 0);
      for (const q of preparing) floor = Math.max(floor, q.upTo[src] ?? 0);
      // Pick the range in chunks so one write stays short for the writer.
      const rows = store
        .query<{ id: number; b: number }>(
          `SELECT id, ${ROW_BYTES[src]} AS b FROM ${src} WHERE id > ? ORDER BY id LIMIT 5000`,
        )
        .all(Math.max(floor, lastDropped[src]));
      if (rows.length === 0) break;
      let to = rows[0]!.id;
      let chunk = 0;
      let n = 0;
      for (const r of rows) {
        to = r.id;
        chunk += r.b;
        n++;
        if (freed + chunk >= excess) break;
      }
      const from = rows[0]!.id;
      // Ids only grow and nothing else deletes above the cursor, so [from, to] holds exactly n rows.
      await store.write({
        freesSpace: true,
        sql: [
          { sql: `DELETE FROM ${src} WHERE id >= ? AND id <= ?`, params: [from, to] },
          {
            sql: 'INSERT INTO events (ts, kind, subject, data) VALUES (?, ?, ?, ?)',
            params: [
              clock.now(),
              'sync.gap',
              src,
              JSON.stringify({
                table: src,
                fromId: from,
                toId: to,
                count: n,
                reason: 'disk budget',
                policy: 'drop-oldest',
              }),
            ],
          },
        ],
      });
      lastDropped[src] = to;
      forget(src, n);
      dropEpoch++;
      freed += chunk;
      dropped += n;
      mDropped.inc({ source: SHORT[src] }, n);
      log.warn(
        { table: src, fromId: from, toId: to, count: n },
        'disk budget reached: dropped the oldest unsent records (recorded as a sync.gap event)',
      );
    }
    return freed;
  }
  const lastDropped: Record<Source, number> = { events: 0, reports: 0, probe_samples: 0 };

  async function enforceBudget(): Promise<void> {
    measure();
    if (backlogBytes <= o.diskBudget) {
      // Hysteresis: reports are admitted again once below 90% of the budget.
      if (!admit && backlogBytes <= o.diskBudget * 0.9) {
        admit = true;
        log.info({ backlogBytes }, 'backlog back under the disk budget; accepting reports again');
      }
      return;
    }
    const target = o.diskBudget * 0.9;
    let excess = backlogBytes - target;
    if (tableExists('probe_samples')) excess -= await dropOldest('probe_samples', excess);
    if (excess > 0 && tableExists('reports')) {
      if (o.reportsPolicy === 'drop-oldest') excess -= await dropOldest('reports', excess);
      else if (admit) {
        admit = false;
        log.warn(
          { backlogBytes, diskBudget: o.diskBudget },
          'disk budget reached: no longer acknowledging reports (devices keep them) until the backlog drains',
        );
      }
    }
    measure();
  }

  function runBudget(): void {
    if (budgetRunning || !running) return;
    budgetRunning = enforceBudget()
      .catch((err: unknown) => repeats.error({ err }, 'disk budget check failed'))
      .finally(() => {
        budgetRunning = undefined;
      });
  }

  // --- desired state -------------------------------------------------------------------------------

  async function pollDesired(): Promise<void> {
    if (!inWindow()) return;
    const res = await request('GET', `/v1/nodes/${encodeURIComponent(node)}/desired`, undefined, {
      ...(desiredEtag ? { 'If-None-Match': desiredEtag } : {}),
    });
    if (res.status === 304 || res.status === 204) return;
    if (res.status !== 200)
      throw new SyncUploadError(`desired state: receiver answered ${res.status}`, res.status);
    const doc = JSON.parse(res.body.toString('utf8')) as { version?: unknown; keys?: unknown };
    const version = String(doc.version ?? '');
    const keys = doc.keys;
    if (!version || keys === null || typeof keys !== 'object' || Array.isArray(keys))
      throw new SyncUploadError('desired state is not {version, keys}', 502);
    const etag = typeof res.headers.etag === 'string' ? res.headers.etag : `"${version}"`;
    await applyDesired(version, keys as Record<string, unknown>, etag);
  }

  /** Replace the keys under the desired prefix and record the version, in one revision. */
  async function applyDesired(version: string, keys: Record<string, unknown>, etag: string): Promise<void> {
    const prefix = Buffer.from(DESIRED_PREFIX);
    const current = store.range({ key: prefix, rangeEnd: prefixEnd(prefix), keysOnly: true });
    const want = new Map<string, Buffer>();
    for (const [k, v] of Object.entries(keys)) {
      if (k === '' || k.startsWith('.'))
        throw new SyncUploadError(`desired key ${JSON.stringify(k)} is reserved`, 502);
      want.set(DESIRED_PREFIX + k, Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)));
    }
    const ops: RequestOp[] = [];
    for (const kv of current.kvs) {
      const k = kv.key.toString();
      if (!want.has(k) && k !== DESIRED_VERSION_KEY) ops.push({ deleteRange: { key: kv.key } });
    }
    for (const [k, v] of want) ops.push({ put: { key: Buffer.from(k), value: v } });
    ops.push({ put: { key: Buffer.from(DESIRED_VERSION_KEY), value: Buffer.from(version) } });
    await store.write({
      sql: [
        {
          sql: 'INSERT INTO sync_state (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value',
          rows: [
            ['desired_version', version],
            ['desired_etag', etag],
          ],
        },
      ],
      txn: { success: ops },
    });
    appliedVersion = version;
    desiredEtag = etag;
    log.info({ version, keys: want.size }, 'desired state applied');
    kick();
  }

  function triggerDesired(): void {
    if (desiredRunning || !running) return;
    desiredRunning = pollDesired()
      .catch((err: unknown) => {
        lastError = `desired state: ${(err as Error).message}`;
        log.warn({ err: (err as Error).message }, 'could not fetch desired state; will ask again');
      })
      .finally(() => {
        desiredRunning = undefined;
      });
  }

  function scheduleDesired(): void {
    if (!running) return;
    const delay = o.desiredPollInterval * (0.8 + random() * 0.4);
    timers.push(
      clock.setTimeout(() => {
        triggerDesired();
        scheduleDesired();
      }, delay),
    );
  }

  // --- status frame --------------------------------------------------------------------------------

  async function uploadFrame(): Promise<void> {
    if (!options.framePng || !inWindow() || state !== 'ok') return;
    const png = await options.framePng();
    if (!png) return;
    const res = await request('PUT', `/v1/nodes/${encodeURIComponent(node)}/frame`, png, {
      'Content-Type': 'image/png',
    });
    if (res.status >= 300)
      throw new SyncUploadError(`frame upload: receiver answered ${res.status}`, res.status);
  }

  function scheduleFrame(first: number): void {
    if (!running || !options.framePng || o.frameInterval <= 0) return;
    timers.push(
      clock.setTimeout(() => {
        if (!frameRunning)
          frameRunning = uploadFrame()
            .catch((err: unknown) =>
              log.debug({ err: (err as Error).message }, 'frame upload failed; next one later'),
            )
            .finally(() => {
              frameRunning = undefined;
            });
        scheduleFrame(o.frameInterval);
      }, first),
    );
  }

  function scheduleBudget(): void {
    if (!running) return;
    timers.push(
      clock.setTimeout(() => {
        runBudget();
        scheduleBudget();
      }, o.budgetInterval),
    );
  }

  function kick(): void {
    wake?.();
  }

  // --- node health ---------------------------------------------------------------------------------

  /** File system use at or above this counts as a full disk: SQLite's next page may not fit. */
  const FS_FULL_RATIO = 0.98;

  function observe(): Observation {
    const h = options.health?.();
    const st = store.stats();
    const used = h?.diskUsedBytes;
    const total = h?.diskTotalBytes;
    const fsFull = used !== undefined && total !== undefined && total > 0 && used / total >= FS_FULL_RATIO;
    return {
      ready: h?.ready ?? true,
      failing: h?.failing ?? {},
      alerts: h ? h.alerts : [],
      uplinkDown: state === 'retrying' || state === 'offline',
      uplink: { state, ...(lastError ? { lastError: clip(lastError) } : {}) },
      diskFull: st.noSpace ? 'quota' : !admit ? 'budget' : fsFull ? 'filesystem' : undefined,
      disk: {
        dbBytes: st.dbSize,
        quotaBytes: st.quota,
        backlogBytes: Math.round(backlogBytes),
        budgetBytes: o.diskBudget,
        usedBytes: used,
        totalBytes: total,
      },
    };
  }

  function healthSummary(): HealthSummary | undefined {
    if (!tracker) return undefined;
    const ob = tracker.current();
    const disk: HealthSummary['disk'] = { full: ob.diskFull !== undefined };
    for (const [k, v] of Object.entries(ob.disk)) if (v !== undefined) disk[k as 'dbBytes'] = v;
    return {
      ready: ob.ready,
      failing: Object.fromEntries(Object.entries(ob.failing).map(([k, v]) => [clip(k, 100), clip(v)])),
      alerts: (ob.alerts ?? []).slice(0, 16).map((a) => ({ severity: a.severity, text: clip(a.text) })),
      // The uplink's state now, not at the last look: a batch on its way means it is up.
      uplink: { state, ...(lastError ? { lastError: clip(lastError) } : {}) },
      disk,
      ...(oldestAge !== null ? { oldestUnsentSeconds: Math.round(oldestAge) } : {}),
      nextContactSeconds: nextContactSeconds(),
    };
  }

  /**
   * The longest the receiver should wait for this node's next batch: a heartbeat interval, or,
   * with upload windows, until the first window minute after it. Worked out at most once a
   * minute (it scans up to 8 days of minutes).
   */
  let nextContact = { minute: -1, seconds: 0 };
  function nextContactSeconds(): number {
    const now = clock.now();
    const minute = Math.floor(now / 60_000);
    if (minute === nextContact.minute) return nextContact.seconds;
    const from = now + o.heartbeatInterval;
    let at = from;
    if (windows.length > 0 && !inWindow(from)) {
      at = Math.ceil(from / 60_000) * 60_000;
      const limit = at + 8 * 86_400_000;
      while (at < limit && !inWindow(at)) at += 60_000;
    }
    nextContact = { minute, seconds: Math.ceil((at - now + o.idleInterval) / 1000) };
    return nextContact.seconds;
  }

  function scheduleHealth(): void {
    if (!running || !tracker) return;
    timers.push(
      clock.setTimeout(() => {
        // New event rows go up at once rather than after the next idle look (never cutting a
        // retry's backoff short).
        void tracker?.tick().then((n) => n > 0 && state === 'ok' && kick());
        scheduleHealth();
      }, o.healthInterval),
    );
  }

  // Registered at creation (the daemon may mount routes before starting parts); a disabled
  // uplink answers too, with state `disabled`.
  ctx.addReadinessCheck('sync', () =>
    admit
      ? undefined
      : `sync backlog ${backlogBytes} bytes is over the disk budget ${o.diskBudget}; reports are refused`,
  );
  ctx.http.add('GET', '/v1/sync/status', (_req, res) => {
    const body = JSON.stringify(status());
    res.writeHead(200, { 'Content-Type': 'application/json' }).end(body);
  });

  return {
    name: 'sync',
    async start() {
      if (running) return;
      if (!enabled) {
        log.info('sync.url is not set: the uplink is off, data stays on this node');
        return;
      }
      if (!token && options.tokenFile) token = readFileSync(options.tokenFile, 'utf8').split('\n')[0]!.trim();
      if (!token && !options.certFile)
        log.warn('sync has neither a token nor a client certificate; the receiver will refuse uploads');
      loadState();
      // The database's random identity names this node's stream of batches at the receiver.
      stream = store.identity().clusterId.toString(16);
      running = true;
      tracker = new HealthTracker(store, clock, log, observe);
      void tracker.tick();
      scheduleHealth();
      loopDone = loop();
      // Measured once the first batch is on the wire: counting a large backlog takes a moment and
      // must not delay the first upload.
      setImmediate(() => {
        if (running) runBudget();
      });
      triggerDesired();
      scheduleDesired();
      scheduleBudget();
      scheduleFrame(Math.min(o.frameInterval, 10_000));
      log.info({ url: base!.origin, seq, cursors }, 'uplink started');
    },
    async stop() {
      if (!running) {
        agent.destroy();
        for (const w of windows) await w.destroy();
        return;
      }
      running = false;
      for (const t of timers) t.cancel();
      timers.length = 0;
      kick();
      agent.destroy();
      await loopDone;
      await Promise.allSettled([budgetRunning, desiredRunning, frameRunning, tracker?.settle()]);
      for (const w of windows) await w.destroy();
      state = 'disabled';
    },
    status,
    admitReports: () => admit,
    kick,
  };

  function status(): SyncStatus {
    return {
      state,
      backlog: { ...backlog },
      backlogBytes,
      oldestUnsentAgeSeconds: oldestAge,
      lastSuccess: lastSuccess === null ? null : new Date(lastSuccess).toISOString(),
      lastError,
      seq,
      desiredVersion: appliedVersion,
      admittingReports: admit,
      droppedRecords: dropped,
    };
  }
}
