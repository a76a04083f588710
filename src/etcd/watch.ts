/**
 * etcd's Watch service: one bidirectional stream carries many watchers. Responses follow etcd's
 * v3rpc watch server: a `created` response before any event, `canceled` with `compact_revision`
 * for a compacted start revision (header revision 0, as etcd's mvcc sends it), a `canceled`
 * reply to a cancel request, progress responses with watch_id -1, fragments when asked for.
 *
 * Backpressure: once the stream holds more than `STREAM_QUEUE_MESSAGES` unsent responses or
 * about `STREAM_QUEUE_BYTES` of events, every watcher of the stream is paused; the store buffers
 * up to its limit and then cancels the slow watcher, which we report with a `cancel_reason`. On
 * 'drain' (the stream's queue is empty) the watchers resume. Memory per stream is therefore
 * bounded by that queue plus the store's per-watcher buffer. The bound is deliberately larger
 * than the stream's own high-water mark (16 messages): one put seen by 1,000 watchers is 1,000
 * responses, and pausing and resuming every watcher each 16 of them cost more CPU than the
 * responses themselves (measured, 1,000 watchers of one key: ~21 -> ~18 ms of server CPU per put).
 */
import { CompactedError, StoreClosedError, WatchOverflowError } from '../errors.js';
import type { WatchEvent, WatchHandle, WatchOptions } from '../store/types.js';
import type { EtcdContext } from './context.js';
import { toGrpcError } from './errors.js';
import { kvOut, type WireKv } from './kv.js';
import { buf, num } from './proto.js';
import type { Methods, Msg as M, StreamCall } from './rpc.js';

/** etcd's clientv3.InvalidWatchID: progress responses and failed creates carry it. */
const INVALID_WATCH_ID = -1;
/** Watchers one stream may hold; a create beyond it is refused with a reason (bounded memory). */
export const MAX_WATCHERS_PER_STREAM = 100_000;
/** Per-event protobuf overhead beyond key and value bytes, for the fragment size estimate. */
const EVENT_OVERHEAD = 48;
/** Unsent responses (any size) a stream may queue before its watchers are paused. */
const STREAM_QUEUE_MESSAGES = 4096;
/** Estimated unsent event bytes a stream may queue before its watchers are paused. */
const STREAM_QUEUE_BYTES = 4 * 1024 * 1024;
/** Size estimate of a response without events. */
const RESPONSE_OVERHEAD = 64;

interface WireEvent {
  type: number | undefined;
  kv: WireKv;
  prev_kv?: WireKv;
}

interface Entry {
  id: number;
  handle: WatchHandle | undefined;
  fragment: boolean;
  progressNotify: boolean;
  /** Events were sent since the last progress tick (etcd then skips the notify). */
  sentSinceTick: boolean;
  done: boolean;
}

function eventOut(ev: WatchEvent): WireEvent {
  const out: WireEvent = { type: ev.type === 'PUT' ? undefined : 1, kv: kvOut(ev.kv) };
  if (ev.prevKv) out.prev_kv = kvOut(ev.prevKv);
  return out;
}

function eventSize(ev: WatchEvent): number {
  let n = EVENT_OVERHEAD + ev.kv.key.length + ev.kv.value.length;
  if (ev.prevKv) n += EVENT_OVERHEAD + ev.prevKv.key.length + ev.prevKv.value.length;
  return n;
}

class WatchStream {
  private readonly watchers = new Map<number, Entry>();
  private nextId = 0;
  private paused = false;
  private closed = false;
  /** Estimated bytes of responses handed to the stream and not yet written out. */
  private queuedBytes = 0;
  private progressTimer: NodeJS.Timeout | undefined;
  private pendingProgress: NodeJS.Timeout | undefined;

  constructor(
    private readonly ctx: EtcdContext,
    private readonly call: StreamCall,
  ) {
    call.on('data', (m: M) => this.onRequest(m));
    // No 'end' handler: like etcd, a stream whose client stops sending keeps its watchers (a
    // gateway client's request body ends right after its create request).
    call.on('cancelled', () => this.close(false));
    call.on('error', () => this.close(false));
    call.on('close', () => this.close(false));
    call.on('drain', () => this.onDrain());
    if (ctx.progressNotifyMs > 0) {
      this.progressTimer = setInterval(() => this.progressTick(), ctx.progressNotifyMs);
      this.progressTimer.unref();
    }
  }

  private onRequest(m: M): void {
    if (this.closed) return;
    if (m.create_request) this.create(m.create_request);
    else if (m.cancel_request) this.cancel(num(m.cancel_request.watch_id));
    else if (m.progress_request) this.progress();
    this.ctx.metrics.count('Watch', 0);
  }

  private send(msg: object, bytes = RESPONSE_OVERHEAD): void {
    if (this.closed) return;
    this.queuedBytes += bytes;
    this.call.write(msg, () => {
      this.queuedBytes -= bytes;
    });
    if (
      !this.paused &&
      (this.call.writableLength >= STREAM_QUEUE_MESSAGES || this.queuedBytes >= STREAM_QUEUE_BYTES)
    ) {
      this.paused = true;
      for (const e of this.watchers.values()) e.handle?.pause();
    }
  }

  private onDrain(): void {
    if (!this.paused || this.closed) return;
    this.paused = false;
    for (const e of this.watchers.values()) {
      if (this.paused) break; // resuming refilled the buffer; wait for the next drain
      e.handle?.resume();
    }
  }

  private create(c: M): void {
    const { ctx } = this;
    const key = buf(c.key);
    const rangeEnd = buf(c.range_end);
    const requested = num(c.watch_id);
    const rev = ctx.store.revision();
    const refuse = (reason: string) =>
      this.send({
        header: ctx.hdr(rev),
        watch_id: INVALID_WATCH_ID,
        created: true,
        canceled: true,
        cancel_reason: reason,
      });
    // etcd checks READ on the range when a watch is created (and not again while it runs).
    if (ctx.auth.enabled) {
      const why = ctx.auth.watchRefusal(this.call, key, rangeEnd);
      if (why) {
        refuse(why);
        return;
      }
    }
    // etcd's mvcc: a range whose end is not after its start watches nothing and is refused.
    const fromKey = rangeEnd.length === 1 && rangeEnd[0] === 0;
    if (rangeEnd.length > 0 && !fromKey && Buffer.compare(key, rangeEnd) >= 0) {
      refuse('mvcc: watcher range is empty');
      return;
    }
    if (requested !== 0 && this.watchers.has(requested)) {
      refuse('mvcc: duplicate watch ID provided on the WatchStream');
      return;
    }
    if (this.watchers.size >= MAX_WATCHERS_PER_STREAM) {
      ctx.metrics.badInput.inc({ kind: 'watchers_per_stream' });
      refuse(
        `edgekeeper: a watch stream may hold at most ${MAX_WATCHERS_PER_STREAM} watchers; open another stream`,
      );
      return;
    }
    const over = ctx.guard.admitWatcher(this.call.connection);
    if (over !== undefined) {
      refuse(over);
      return;
    }
    let id = requested;
    if (id === 0) {
      // etcd numbers auto IDs from 0 per stream, skipping IDs the client chose.
      while (this.watchers.has(this.nextId)) this.nextId++;
      id = this.nextId++;
    }
    const filters: number[] = c.filters ?? [];
    const opts: WatchOptions = { key };
    if (rangeEnd.length) opts.rangeEnd = rangeEnd;
    const start = num(c.start_revision);
    if (start > 0) opts.startRevision = start;
    if (c.prev_kv) opts.prevKv = true;
    if (filters.includes(0)) opts.noPut = true;
    if (filters.includes(1)) opts.noDelete = true;
    const entry: Entry = {
      id,
      handle: undefined,
      fragment: !!c.fragment,
      progressNotify: !!c.progress_notify,
      sentSinceTick: false,
      done: false,
    };
    this.watchers.set(id, entry);
    // The created response goes out before any event of this watcher (etcd's order).
    this.send({ header: ctx.hdr(rev), watch_id: id, created: true });
    try {
      entry.handle = ctx.store.watch(opts, {
        onEvents: (events, revision) => this.onEvents(entry, events, revision),
        onCancel: (reason) => this.onCancel(entry, reason),
      });
      if (entry.done) entry.handle.cancel();
      else if (this.paused) entry.handle.pause();
    } catch (err) {
      this.onCancel(entry, err as Error);
    }
  }

  private onEvents(entry: Entry, events: WatchEvent[], revision: number): void {
    if (entry.done || this.closed || events.length === 0) return;
    entry.sentSinceTick = true;
    const { ctx } = this;
    if (entry.fragment && events.length > 1) {
      let total = 0;
      for (const ev of events) total += eventSize(ev);
      if (total >= ctx.maxRequestBytes) {
        this.sendFragments(entry, events, revision);
        return;
      }
    }
    const wire = new Array<WireEvent>(events.length);
    let bytes = RESPONSE_OVERHEAD;
    for (let i = 0; i < events.length; i++) {
      wire[i] = eventOut(events[i]!);
      bytes += eventSize(events[i]!);
    }
    this.send({ header: ctx.hdr(revision), watch_id: entry.id, events: wire }, bytes);
  }

  /** etcd's fragmenting: pieces under max-request-bytes, each with >= 1 event, `fragment` on all but the last. */
  private sendFragments(entry: Entry, events: WatchEvent[], revision: number): void {
    const limit = this.ctx.maxRequestBytes;
    let i = 0;
    while (i < events.length) {
      const piece: WireEvent[] = [];
      let size = 0;
      while (i < events.length) {
        const s = eventSize(events[i]!);
        if (piece.length > 0 && size + s >= limit) break;
        piece.push(eventOut(events[i]!));
        size += s;
        i++;
      }
      const last = i === events.length;
      const msg: Record<string, unknown> = {
        header: this.ctx.hdr(revision),
        watch_id: entry.id,
        events: piece,
      };
      if (!last) msg.fragment = true;
      this.send(msg, size + RESPONSE_OVERHEAD);
    }
  }

  /** The watcher leaves this stream and gives its place back to the guard. */
  private remove(entry: Entry): void {
    entry.done = true;
    this.watchers.delete(entry.id);
    this.ctx.guard.releaseWatcher(this.call.connection);
  }

  private onCancel(entry: Entry, reason: Error): void {
    if (entry.done) return;
    this.remove(entry);
    const { ctx } = this;
    if (reason instanceof CompactedError) {
      ctx.metrics.watchCancels.inc({ reason: 'compacted' });
      // etcd's mvcc sends the compacted notice without a revision: its header revision is 0.
      this.send({
        header: ctx.hdr(0),
        watch_id: entry.id,
        canceled: true,
        compact_revision: reason.compactRevision,
      });
      return;
    }
    let why: string;
    if (reason instanceof WatchOverflowError) {
      ctx.metrics.watchCancels.inc({ reason: 'slow_consumer' });
      why = `edgekeeper: ${reason.message}; read the watch stream faster or watch a narrower range`;
    } else if (reason instanceof StoreClosedError) {
      ctx.metrics.watchCancels.inc({ reason: 'shutdown' });
      why = 'etcdserver: server stopped';
    } else {
      ctx.metrics.watchCancels.inc({ reason: 'error' });
      why = toGrpcError(reason).details;
    }
    this.send({
      header: ctx.hdr(ctx.store.revision()),
      watch_id: entry.id,
      canceled: true,
      cancel_reason: why,
    });
  }

  private cancel(id: number): void {
    const entry = this.watchers.get(id);
    // etcd answers a cancel of an unknown watch ID with nothing.
    if (!entry) return;
    this.remove(entry);
    entry.handle?.cancel();
    this.send({ header: this.ctx.hdr(this.ctx.store.revision()), watch_id: id, canceled: true });
  }

  /**
   * etcd >= 3.5.13: a progress response is sent once every watcher of the stream is synced, with
   * the revision they are all current to; until then we retry shortly (etcd defers it likewise).
   */
  private progress(): void {
    if (this.pendingProgress) return;
    const attempt = () => {
      this.pendingProgress = undefined;
      if (this.closed) return;
      let rev = this.ctx.store.revision();
      for (const e of this.watchers.values()) {
        const p = e.handle?.progressRevision();
        if (p === undefined) {
          this.pendingProgress = setTimeout(attempt, 10);
          this.pendingProgress.unref();
          return;
        }
        if (p < rev) rev = p;
      }
      this.send({ header: this.ctx.hdr(rev), watch_id: INVALID_WATCH_ID });
    };
    attempt();
  }

  /** progress_notify: an empty response to each synced, idle watcher that asked for it. */
  private progressTick(): void {
    for (const e of this.watchers.values()) {
      if (!e.progressNotify) continue;
      if (e.sentSinceTick) {
        e.sentSinceTick = false;
        continue;
      }
      const p = e.handle?.progressRevision();
      if (p !== undefined) this.send({ header: this.ctx.hdr(p), watch_id: e.id });
    }
  }

  close(endStream: boolean): void {
    if (this.closed) return;
    this.closed = true;
    if (this.progressTimer) clearInterval(this.progressTimer);
    if (this.pendingProgress) clearTimeout(this.pendingProgress);
    for (const e of this.watchers.values()) {
      this.remove(e);
      e.handle?.cancel();
    }
    if (endStream) {
      try {
        this.call.end();
      } catch {
        // the stream is already gone
      }
    }
  }
}

export function watchMethods(ctx: EtcdContext): Methods {
  return {
    Watch: (call: StreamCall) => {
      const s = new WatchStream(ctx, call);
      ctx.watchStreams.add(s);
      call.on('close', () => ctx.watchStreams.delete(s));
      call.on('cancelled', () => ctx.watchStreams.delete(s));
    },
  };
}
