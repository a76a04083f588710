/**
 * The store: etcd's verbs over the revision log. Everything runs on the caller's thread: reads
 * from the in-memory key index and the log, writes through the single group-committing writer
 * (which syncs off the event loop), committed events to the watch hub; checkpoints and VACUUM on
 * the maintenance thread.
 *
 * Reads see exactly the durable revisions: `rev` moves only when a batch's sync has returned, and
 * a range at `rev` walks back past rows a newer, not yet durable batch has written.
 */
import { createHash } from 'node:crypto';
import { statSync } from 'node:fs';
import type Database from 'better-sqlite3';
import { type Clock, systemClock } from '../clock.js';
import { EdgeError, InvalidArgumentError, LeaseTtlTooLargeError } from '../errors.js';
import { type Logger, silentLogger } from '../log.js';
import type { ChangeEvent, Engine, EngineRequest, EngineResult } from './engine.js';
import { Lessor } from './lessor.js';
import { type CheckpointResult, Maintenance } from './maintenance.js';
import { StoreMetrics } from './metrics.js';
import { rangeAt } from './range.js';
import { Recipes } from './recipes.js';
import type {
  CompactResponse,
  DeleteRangeRequest,
  DeleteRangeResponse,
  KeyValue,
  LeaderKey,
  LeaseGrantResponse,
  LeaseKeepAliveResponse,
  LeaseTimeToLiveResponse,
  PutRequest,
  PutResponse,
  RangeRequest,
  RangeResponse,
  ReadStatement,
  ResponseHeader,
  Store,
  StoreOptions,
  StoreStats,
  TxnRequest,
  TxnResponse,
  WatchHandle,
  WatchListener,
  WatchOptions,
  WriteRequest,
  WriteResponse,
} from './types.js';
import { checkKey, checkRevisionArg, checkSize, checkTxn, type Limits } from './validate.js';
import { WatchHub } from './watch.js';
import { type DurableBatch, Writer } from './writer.js';

/** etcd's MaxLeaseTTL. */
const MAX_LEASE_TTL = 9_000_000_000;
/** Rows examined per physical compaction step; keeps each step's transaction short. */
const COMPACT_STEP_IDS = 4096;
/** Commit latency percentiles cover at most this many recent commits... */
const LATENCY_SAMPLES = 1000;
/** ...made within this window, so one slow commit does not count for ever on an idle node... */
const LATENCY_WINDOW_MS = 60_000;
/** ...and need this many to say anything: two slow commits of ten are not a p99. */
const LATENCY_MIN_SAMPLES = 20;

export async function openStore(options: StoreOptions): Promise<Store> {
  const s = new SqliteStore(options);
  await s.open();
  return s;
}

class SqliteStore implements Store {
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly limits: Limits;
  private readonly minTtl: number;
  private readonly writer: Writer;
  private readonly lessor: Lessor;
  private readonly recipes: Recipes;
  private readonly metrics?: StoreMetrics;
  private readonly maintenance: Maintenance;
  private readonly engine: Engine;
  private hub!: WatchHub;
  private rev = 1;
  private compactRev = 0;
  private keys = 0;
  private noSpace = false;
  private ids = { clusterId: 0n, memberId: 0n };
  /** The last commits' durations and (monotonic) times, for the latency window in stats(). */
  private readonly latencies = new Float64Array(LATENCY_SAMPLES);
  private readonly latencyAt = new Float64Array(LATENCY_SAMPLES);
  private latencyCount = 0;
  private readonly queries = new Map<string, Database.Statement>();
  private compaction: Promise<void> = Promise.resolve();
  private closed = false;
  private readonly commitListeners = new Set<(c: { commitSeconds: number; fsyncSeconds?: number }) => void>();

  constructor(private readonly opts: StoreOptions) {
    this.clock = opts.clock ?? systemClock;
    this.log = (opts.logger ?? silentLogger()).child({ part: 'store' });
    this.limits = {
      maxRequestBytes: opts.maxRequestBytes ?? 1.5 * 1024 * 1024,
      maxTxnOps: opts.maxTxnOps ?? 128,
    };
    this.minTtl = opts.minLeaseTtl ?? 2;
    this.writer = new Writer(
      {
        file: opts.file,
        durability: opts.durability ?? 'fsync',
        quotaBytes: opts.quotaBytes ?? 2 * 1024 ** 3,
        migrations: opts.migrations ?? [],
        maxPending: 100_000,
        maxBatch: 2048,
        bulkRowsPerBatch: 1024,
      },
      (b, r) => this.onBatch(b, r),
      () => this.hub?.wantsPrev ?? false,
      (e) => this.onFatal(e),
    );
    this.engine = this.writer.engine;
    this.maintenance = new Maintenance(
      opts.file,
      this.log,
      () => this.writer.active || this.writer.pending > 0,
      (r) => this.onCheckpoint(r),
      (fn) => this.writer.runExclusive(fn),
    );
    this.lessor = new Lessor(this.clock, (id) => this.expire(id));
    this.recipes = new Recipes(this);
    if (opts.registry) this.metrics = new StoreMetrics(opts.registry, this);
  }

  async open(): Promise<void> {
    let o: ReturnType<Writer['open']>;
    try {
      o = this.writer.open();
    } catch (e) {
      // Stop the maintenance thread too, or it keeps the process alive.
      await this.maintenance.close().catch(() => {});
      this.engine.close();
      throw e;
    }
    this.rev = o.revision;
    this.compactRev = o.compactRevision;
    this.keys = o.keys;
    this.ids = { clusterId: o.clusterId, memberId: o.memberId };
    this.hub = new WatchHub(
      this.engine.log,
      this.rev,
      () => this.compactRev,
      this.opts.watchBufferLimit ?? 10_000,
    );
    for (const [id, ttl] of o.leases) this.lessor.add(id, ttl);
    this.lessor.start();
    this.maintenance.start();
    this.log.info(
      {
        file: this.opts.file,
        revision: this.rev,
        compactRevision: this.compactRev,
        keys: this.keys,
        leases: o.leases.length,
      },
      'store opened',
    );
  }

  // --- the writer's results -------------------------------------------------------------------

  private onBatch(b: DurableBatch, reqs: EngineRequest[]): void {
    const end = performance.now();
    const cause = this.maintenance.causeDuring(end - b.syncMs, end) ?? 'fsync';
    const changes: { rev: number; events: ChangeEvent[] }[] = [];
    for (const r of b.results)
      if (r.ok && r.events && r.events.length > 0) changes.push({ rev: r.rev, events: r.events });
    const compactMoved = b.compactRevision !== this.compactRev;
    this.rev = b.revision;
    this.compactRev = b.compactRevision;
    this.keys = b.keys;
    if (b.noSpace !== this.noSpace) {
      this.noSpace = b.noSpace;
      if (b.noSpace)
        this.log.error(
          { quota: this.opts.quotaBytes },
          'database is over its quota: writes are refused until keys are deleted and history compacted',
        );
      else this.log.info('database is back under its quota: writes accepted again');
    }
    this.hub.publish(changes, b.revision);
    if (compactMoved) this.hub.compacted();
    const slot = this.latencyCount++ % LATENCY_SAMPLES;
    this.latencies[slot] = b.commitMs;
    this.latencyAt[slot] = this.clock.monotonic();
    this.metrics?.onBatch(b, reqs.length, cause);
    if (this.commitListeners.size > 0) {
      const c = { commitSeconds: b.commitMs / 1000, fsyncSeconds: b.synced ? b.syncMs / 1000 : undefined };
      for (const l of this.commitListeners) l(c);
    }
  }

  onCommit(listener: (c: { commitSeconds: number; fsyncSeconds?: number }) => void): () => void {
    this.commitListeners.add(listener);
    return () => this.commitListeners.delete(listener);
  }

  private onCheckpoint(r: CheckpointResult): void {
    this.metrics?.onCheckpoint(r);
    // The writer held its queue for this one: every request that came meanwhile waited.
    if (r.cause === 'wal-restart') this.metrics?.stall(r.cause, r.ms);
  }

  /** A WAL sync failed: nothing written after it can be acknowledged any more. */
  private onFatal(e: Error): void {
    this.log.fatal(
      { err: e },
      'the disk failed to sync the WAL: this process can no longer tell what is durable, so it accepts no more writes; restart it (under systemd this happens by itself) and check the disk',
    );
    this.metrics?.error('EDGE_ERR_STORAGE');
    this.opts.onFatal?.(e);
  }

  private async submit(req: EngineRequest): Promise<EngineResult & { ok: true }> {
    const r = await this.writer.submit(req);
    if (!r.ok) {
      this.metrics?.error(r.error.code);
      throw r.error;
    }
    return r;
  }

  private fail(e: unknown): never {
    if (e instanceof EdgeError) this.metrics?.error(e.code);
    throw e;
  }

  // --- KV -------------------------------------------------------------------------------------

  range(req: RangeRequest): RangeResponse {
    try {
      checkKey(req.key);
      checkRevisionArg('revision', req.revision);
      const r = rangeAt(this.engine.space, this.engine.log, req, this.rev, this.compactRev);
      return { header: { revision: this.rev }, ...r };
    } catch (e) {
      return this.fail(e);
    }
  }

  async put(req: PutRequest): Promise<PutResponse> {
    try {
      checkKey(req.key);
      checkSize(req.key.length + (req.value?.length ?? 0), this.limits);
    } catch (e) {
      this.fail(e);
    }
    const txn = await this.txnRaw({ success: [{ put: req }] });
    const put = (txn.responses[0] as { put: PutResponse }).put;
    return { header: { revision: txn.header.revision }, ...(put.prevKv ? { prevKv: put.prevKv } : {}) };
  }

  async deleteRange(req: DeleteRangeRequest): Promise<DeleteRangeResponse> {
    try {
      checkKey(req.key);
    } catch (e) {
      this.fail(e);
    }
    const txn = await this.txnRaw({ success: [{ deleteRange: req }] });
    const d = (txn.responses[0] as { deleteRange: DeleteRangeResponse }).deleteRange;
    return { header: { revision: txn.header.revision }, deleted: d.deleted, prevKvs: d.prevKvs };
  }

  async txn(req: TxnRequest): Promise<TxnResponse> {
    try {
      checkTxn(req, this.limits);
    } catch (e) {
      this.fail(e);
    }
    return this.txnRaw(req);
  }

  private async txnRaw(txn: TxnRequest, freesSpace = false): Promise<TxnResponse> {
    const r = await this.submit({ t: 'txn', txn, freesSpace });
    return (r.value as { txn: TxnResponse }).txn;
  }

  async compact(revision: number, physical = false): Promise<CompactResponse> {
    try {
      checkRevisionArg('revision', revision);
    } catch (e) {
      this.fail(e);
    }
    const r = await this.submit({ t: 'compact', rev: revision });
    const maxId = (r.value as { maxId: number }).maxId;
    this.log.info({ revision, maxId }, 'compacted');
    // Rows go in short steps queued behind other writes, so writers never wait long.
    const run = this.compaction.then(async () => {
      let deleted = 0;
      for (let from = 0; from < maxId; from += COMPACT_STEP_IDS) {
        const step = await this.submit({
          t: 'compactChunk',
          rev: revision,
          fromId: from,
          toId: from + COMPACT_STEP_IDS,
        });
        deleted += (step.value as { deleted: number }).deleted;
      }
      this.metrics?.compacted(deleted);
      this.log.info({ revision, deleted }, 'compaction removed old revisions');
    });
    this.compaction = run.catch((e) =>
      this.log.warn({ err: e, revision }, 'compaction step failed; it continues at the next compaction'),
    );
    if (physical) await run;
    return { header: { revision: this.rev } };
  }

  // --- leases ---------------------------------------------------------------------------------

  async leaseGrant(ttl: number, id = 0n): Promise<LeaseGrantResponse> {
    if (!Number.isSafeInteger(ttl)) this.fail(new InvalidArgumentError('lease TTL must be an integer'));
    if (ttl > MAX_LEASE_TTL) this.fail(new LeaseTtlTooLargeError(ttl, MAX_LEASE_TTL));
    if (id < 0n) this.fail(new InvalidArgumentError('lease ID must be positive'));
    const granted = Math.max(ttl, this.minTtl);
    const r = await this.submit({ t: 'grant', id, ttl: granted });
    const v = r.value as { id: bigint; ttl: number };
    this.lessor.add(v.id, v.ttl);
    return { header: { revision: r.rev }, id: v.id, ttl: v.ttl };
  }

  async leaseRevoke(id: bigint): Promise<ResponseHeader> {
    const r = await this.submit({ t: 'revoke', id });
    this.lessor.remove(id);
    return { revision: r.rev };
  }

  private expire(id: bigint): void {
    this.writer.submit({ t: 'revoke', id, expired: true }).then(
      (r) => {
        if (r.ok || r.error.code === 'EDGE_ERR_LEASE_NOT_FOUND') {
          this.lessor.remove(id);
          this.metrics?.leaseExpired();
        } else this.lessor.retry(id);
      },
      () => this.lessor.retry(id),
    );
  }

  leaseKeepAlive(id: bigint): LeaseKeepAliveResponse {
    try {
      return { header: { revision: this.rev }, id, ttl: this.lessor.keepAlive(id) };
    } catch (e) {
      return this.fail(e);
    }
  }

  leaseTimeToLive(id: bigint, keys = false): LeaseTimeToLiveResponse {
    try {
      const t = this.lessor.timeToLive(id);
      return {
        header: { revision: this.rev },
        id,
        ttl: t.ttl,
        grantedTtl: t.granted,
        keys: keys ? this.leaseKeysAt(id) : [],
      };
    } catch (e) {
      return this.fail(e);
    }
  }

  /** Keys attached to a lease as of the durable revision. */
  private leaseKeysAt(id: bigint): Buffer[] {
    const out: Buffer[] = [];
    for (const k of this.engine.space.leaseKeys(id)) {
      const key = Buffer.from(k, 'latin1');
      if (this.engine.versionAt(key, this.rev)?.lease === id) out.push(key);
    }
    return out;
  }

  leaseList(): bigint[] {
    return this.lessor.list();
  }

  /** True while the lease exists and is not being revoked (for recipes and callers). */
  hasLease(id: bigint): boolean {
    return this.lessor.has(id);
  }

  // --- watch ----------------------------------------------------------------------------------

  watch(opts: WatchOptions, listener: WatchListener): WatchHandle {
    try {
      checkKey(opts.key);
      checkRevisionArg('startRevision', opts.startRevision);
      return this.hub.watch(opts, listener);
    } catch (e) {
      return this.fail(e);
    }
  }

  // --- recipes --------------------------------------------------------------------------------

  lock(name: Buffer, lease: bigint, signal?: AbortSignal) {
    return this.recipes.lock(name, lease, signal);
  }
  unlock(key: Buffer) {
    return this.recipes.unlock(key);
  }
  campaign(name: Buffer, lease: bigint, value: Buffer, signal?: AbortSignal) {
    return this.recipes.campaign(name, lease, value, signal);
  }
  proclaim(leader: LeaderKey, value: Buffer) {
    return this.recipes.proclaim(leader, value);
  }
  leader(name: Buffer): KeyValue | undefined {
    return this.recipes.leader(name);
  }
  resign(leader: LeaderKey) {
    return this.recipes.resign(leader);
  }

  // --- generic writes -------------------------------------------------------------------------

  async write(req: WriteRequest): Promise<WriteResponse> {
    if (req.txn) {
      try {
        checkTxn(req.txn, this.limits);
      } catch (e) {
        this.fail(e);
      }
    }
    const r = await this.submit({ t: 'txn', txn: req.txn, sql: req.sql, freesSpace: req.freesSpace });
    return r.value as WriteResponse;
  }

  settled(): Promise<void> {
    return this.writer.settled();
  }

  query<R = unknown>(sql: string): ReadStatement<R> {
    let s = this.queries.get(sql);
    if (!s) {
      s = this.engine.db.prepare(sql);
      // The connection is the writer's: a part writes through write(), never here. (EXPLAIN
      // reports the statement it explains as writing, but never runs it.)
      if (!s.readonly && !/^\s*EXPLAIN\b/i.test(sql))
        throw new InvalidArgumentError('store.query() takes statements that only read');
      this.queries.set(sql, s);
    }
    return s as unknown as ReadStatement<R>;
  }

  // --- status and maintenance -----------------------------------------------------------------

  revision(): number {
    return this.rev;
  }

  get pendingWrites(): number {
    return this.writer.pending;
  }

  compactRevision(): number {
    return this.compactRev;
  }

  stats(): StoreStats {
    const db = this.engine.db;
    const pageSize = db.pragma('page_size', { simple: true }) as number;
    const pages = db.pragma('page_count', { simple: true }) as number;
    const free = db.pragma('freelist_count', { simple: true }) as number;
    let walSize = 0;
    try {
      walSize = statSync(`${this.opts.file}-wal`).size;
    } catch {
      // No WAL file yet.
    }
    const since = this.clock.monotonic() - LATENCY_WINDOW_MS;
    const recent: number[] = [];
    for (let i = Math.min(this.latencyCount, LATENCY_SAMPLES) - 1; i >= 0; i--)
      if (this.latencyAt[i]! >= since) recent.push(this.latencies[i]!);
    let commitLatencyMs: StoreStats['commitLatencyMs'];
    if (recent.length >= LATENCY_MIN_SAMPLES) {
      recent.sort((a, b) => a - b);
      const n = recent.length;
      commitLatencyMs = {
        p50: recent[Math.floor(n * 0.5)]!,
        p99: recent[Math.min(n - 1, Math.floor(n * 0.99))]!,
      };
    }
    return {
      revision: this.rev,
      compactRevision: this.compactRev,
      dbSize: pages * pageSize,
      dbSizeInUse: (pages - free) * pageSize,
      walSize,
      quota: this.opts.quotaBytes ?? 2 * 1024 ** 3,
      keys: this.keys,
      leases: this.lessor.size,
      watchers: this.hub.size,
      noSpace: this.noSpace,
      commitLatencyMs,
    };
  }

  identity() {
    return { ...this.ids };
  }

  hashKv(revision = 0) {
    const rev = revision > 0 ? revision : this.rev;
    const r = this.range({ key: Buffer.from([0]), rangeEnd: Buffer.from([0]), revision: rev });
    const h = createHash('sha256');
    for (const kv of r.kvs) {
      h.update(kv.key);
      h.update(`\0${kv.createRevision}\0${kv.modRevision}\0${kv.version}\0${kv.lease}\0`);
      h.update(kv.value);
    }
    return {
      hash: h.digest().readUInt32BE(0),
      compactRevision: this.compactRev,
      revision: r.header.revision,
    };
  }

  async backup(file: string): Promise<void> {
    await this.maintenance.duringBackup(() => this.engine.db.backup(file));
  }

  async defragment(): Promise<void> {
    await this.compaction;
    await this.writer.runExclusive(() => this.maintenance.vacuum());
    const noSpace = this.engine.refreshSpace();
    if (this.noSpace && !noSpace)
      this.log.info('database is back under its quota after defragmentation: writes accepted again');
    this.noSpace = noSpace;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.lessor.stop();
    this.hub.closeAll();
    await this.compaction;
    await this.maintenance.close();
    await this.writer.close();
    this.log.info({ revision: this.rev }, 'store closed');
  }
}

/** Queued writes, for metrics. */
export function pendingWrites(s: Store): number {
  return s instanceof SqliteStore ? s.pendingWrites : 0;
}
