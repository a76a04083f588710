/**
 * What clients may hold open on the etcd port, as numbers: connections, streams per connection
 * and in all, watchers per connection and in all, and bytes of requests received but not yet
 * complete. etcd bounds none of these but streams per connection (--max-concurrent-streams,
 * unbounded by default); a Pi cannot afford that: 20,000 half-open streams cost ~126 MB.
 *
 * The guard sees each HTTP/2 stream before grpc-js does (it stands in front of grpc-js's 'stream'
 * listener on the HTTP/2 server grpc-js serves) and reads only the 5-byte gRPC prefixes of what
 * the client sends, so it knows each message's size before its bytes arrive:
 * - a prefix claiming more than the largest request: grpc-js answers RESOURCE_EXHAUSTED from the
 *   prefix, and the guard then resets the stream (NO_ERROR, as grpc-go does when it has answered
 *   before the client finished sending), so the client stops sending after one flow-control
 *   window instead of streaming the claimed size;
 * - an incomplete message's bytes count toward one budget for the whole port; the stream that
 *   would exceed it is reset with ENHANCE_YOUR_CALM (clients report RESOURCE_EXHAUSTED);
 * - streams beyond the total are reset with REFUSED_STREAM (clients may retry: nothing ran),
 *   except a connection's first RESERVED_STREAMS: whoever holds the total, a client that keeps
 *   to a few streams (etcd's clients multiplex everything on one connection) still gets served.
 *   A connection refused more streams than it may hold at once is closed (GOAWAY
 *   ENHANCE_YOUR_CALM): a client that keeps opening streams would otherwise make the server set
 *   up and reset each one on the main thread.
 * Streams per connection are HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS (grpc-js's
 * `grpc.max_concurrent_streams`): clients queue calls beyond it.
 */
import {
  constants as h2,
  type Http2Server,
  type Http2Session,
  type IncomingHttpHeaders,
  type ServerHttp2Stream,
} from 'node:http2';

export interface EtcdLimits {
  /** Open TCP and unix-socket connections on the etcd port; more are closed at accept. */
  maxConnections: number;
  /** Concurrent gRPC streams per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). */
  maxStreamsPerConnection: number;
  /** Concurrent gRPC streams over all connections. */
  maxStreams: number;
  /** Watchers over all watch streams of one connection. */
  maxWatchersPerConnection: number;
  /** Watchers over all connections (gRPC and the JSON gateway). */
  maxWatchers: number;
  /** Bytes of gRPC request messages received but not complete yet, over all streams. */
  maxPendingBytes: number;
}

export const DEFAULT_LIMITS: Readonly<EtcdLimits> = Object.freeze({
  // A node's clients are a few local processes and a handful of remote ones.
  maxConnections: 256,
  // grpc-go and grpc-js clients queue calls beyond it. The abuse bench's stream flood with 1,000:
  // event-loop delay p99 285 ms, put p99 1.3 s; with 128: 175 ms and 292 ms.
  maxStreamsPerConnection: 128,
  // A half-open stream costs ~15 KB (grpc-js and nghttp2; measured, 10,000 of them: +152 MB).
  maxStreams: 2000,
  maxWatchersPerConnection: 20_000,
  maxWatchers: 100_000,
  // 16 requests of etcd's largest size (1.5 MiB) arriving at once.
  maxPendingBytes: 32 * 1024 * 1024,
});

/**
 * The metadata key that tells a gRPC handler which connection its call came on; set on every
 * stream's headers here, so a value a client sends is overwritten.
 */
export const CONNECTION_KEY = 'edgekeeper-connection';

/**
 * Streams a connection may open even when the total is reached. The worst case is therefore
 * maxStreams + RESERVED_STREAMS × maxConnections streams (defaults: 4,048, ~60 MB).
 */
export const RESERVED_STREAMS = 8;

export type Refusal =
  | 'connections'
  | 'streams'
  | 'stream_flood'
  | 'message_too_large'
  | 'pending_bytes'
  | 'watchers'
  | 'watchers_per_connection';

interface Conn {
  id: string;
  streams: number;
  refused: number;
}

export class StreamGuard {
  /** Open gRPC streams. */
  streams = 0;
  /** Bytes of incomplete request messages held. */
  pendingBytes = 0;
  /** Watchers open (gRPC and gateway). */
  watchers = 0;
  private readonly watchersByConn = new Map<string, number>();
  private readonly sessions = new WeakMap<Http2Session, Conn>();
  private nextConn = 0;

  constructor(
    readonly limits: Readonly<EtcdLimits>,
    /** Largest message grpc-js accepts (its max_receive_message_length). */
    private readonly maxMessageBytes: number,
    private readonly refused: (kind: Refusal) => void,
  ) {}

  /**
   * Stand in front of `server`'s 'stream' listeners (grpc-js's): a stream is handed to them only
   * once admitted, so a refused one costs grpc-js nothing. Call after grpc-js has set its
   * listeners up and before any connection reaches the server.
   */
  attach(server: Http2Server): void {
    const theirs = server.listeners('stream') as ((...args: unknown[]) => void)[];
    server.removeAllListeners('stream');
    server.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, ...rest: unknown[]) => {
      if (!this.admit(stream, headers)) return;
      for (const l of theirs) l.call(server, stream, headers, ...rest);
    });
  }

  /**
   * Admit one more watcher on `conn` (undefined: a gateway stream, counted in the total only);
   * returns the reason when a bound is reached. A watcher admitted is given back with `releaseWatcher`.
   */
  admitWatcher(conn: string | undefined): string | undefined {
    if (this.watchers >= this.limits.maxWatchers) {
      this.refused('watchers');
      return `edgekeeper: the server holds its limit of ${this.limits.maxWatchers} watchers; try again later`;
    }
    if (conn !== undefined) {
      const n = this.watchersByConn.get(conn) ?? 0;
      if (n >= this.limits.maxWatchersPerConnection) {
        this.refused('watchers_per_connection');
        return `edgekeeper: a connection may hold at most ${this.limits.maxWatchersPerConnection} watchers`;
      }
      this.watchersByConn.set(conn, n + 1);
    }
    this.watchers++;
    return undefined;
  }

  releaseWatcher(conn: string | undefined): void {
    this.watchers--;
    if (conn === undefined) return;
    const n = (this.watchersByConn.get(conn) ?? 1) - 1;
    if (n > 0) this.watchersByConn.set(conn, n);
    else this.watchersByConn.delete(conn);
  }

  private connectionOf(session: Http2Session | undefined): Conn {
    if (!session) return { id: '', streams: 0, refused: 0 };
    let conn = this.sessions.get(session);
    if (conn === undefined) {
      conn = { id: String(++this.nextConn), streams: 0, refused: 0 };
      this.sessions.set(session, conn);
    }
    return conn;
  }

  /** Count and watch `stream`; false when it was refused (and reset). */
  private admit(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): boolean {
    const conn = this.connectionOf(stream.session);
    if (this.streams >= this.limits.maxStreams && conn.streams >= RESERVED_STREAMS) {
      this.refused('streams');
      stream.on('error', () => {}); // the reset itself, reported on the stream
      stream.close(h2.NGHTTP2_REFUSED_STREAM);
      if (++conn.refused > this.limits.maxStreamsPerConnection && !stream.session?.destroyed) {
        this.refused('stream_flood');
        stream.session?.destroy(undefined, h2.NGHTTP2_ENHANCE_YOUR_CALM);
      }
      return false;
    }
    headers[CONNECTION_KEY] = conn.id;
    this.streams++;
    conn.streams++;
    let held = 0;
    stream.once('close', () => {
      this.streams--;
      conn.streams--;
      this.pendingBytes -= held;
      held = 0;
    });
    // grpc-js handles the stream right after this returns; resetting later lets it see an
    // ordinary cancellation (and send its RESOURCE_EXHAUSTED first).
    const reset = (code: number) => setImmediate(() => stream.close(code));
    let prefix = 0; // bytes of the current 5-byte prefix read
    let size = 0; // the message size being assembled from the prefix
    let left = 0; // bytes of the current message still to come
    const onData = (chunk: Buffer) => {
      let i = 0;
      while (i < chunk.length) {
        if (left === 0) {
          // Byte 0 is the compressed flag, 1..4 the size (big-endian).
          if (prefix > 0) size = size * 256 + chunk[i]!;
          i++;
          if (++prefix < 5) continue;
          prefix = 0;
          if (size > this.maxMessageBytes) {
            // grpc-js answers this call RESOURCE_EXHAUSTED from the same prefix.
            this.refused('message_too_large');
            stream.off('data', onData);
            reset(h2.NGHTTP2_NO_ERROR);
            return;
          }
          left = size;
          size = 0;
        } else {
          const n = Math.min(left, chunk.length - i);
          left -= n;
          i += n;
          held += n;
          this.pendingBytes += n;
          if (left === 0) {
            this.pendingBytes -= held;
            held = 0;
          }
        }
      }
      if (held > 0 && this.pendingBytes > this.limits.maxPendingBytes) {
        this.refused('pending_bytes');
        stream.off('data', onData);
        reset(h2.NGHTTP2_ENHANCE_YOUR_CALM);
      }
    };
    stream.on('data', onData);
    return true;
  }
}
