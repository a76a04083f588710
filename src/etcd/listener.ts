/**
 * One listener for both of etcd's client protocols, as etcd's cmux does: a connection that opens
 * with the HTTP/2 client preface is gRPC, anything else is HTTP/1.x for the JSON gateway.
 *
 * With TLS we terminate it here and then look at the first bytes the same way. ALPN offers
 * `http/1.1` before `h2`, and the server's order decides: gRPC clients (grpc-go, grpc-js) offer
 * only `h2` and get it; curl, browsers and Python's HTTP clients offer both and get HTTP/1.1,
 * which the gateway serves. (etcd serves JSON over HTTP/2 as well; a client that insists on
 * HTTP/2 for JSON reaches grpc-js, which answers 415.)
 *
 * Only the first bytes of a connection pass through here; then the socket belongs to grpc-js's
 * HTTP/2 server or to the HTTP/1 server, and the gRPC path runs exactly as before.
 */
import { type Server as NetServer, createServer as netCreateServer, type Socket } from 'node:net';
import { createServer as tlsCreateServer, type TlsOptions, type TLSSocket } from 'node:tls';

/** The HTTP/2 client connection preface (RFC 9113 §3.4). */
const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
/** A client that connects and sends nothing is dropped after this long. */
const FIRST_BYTES_TIMEOUT_MS = 30_000;

export interface Handoff {
  /** A connection that opened with the HTTP/2 preface (already unshifted back into the socket). */
  grpc(socket: Socket): void;
  /** Any other connection (its first bytes unshifted back). */
  http(socket: Socket): void;
  /** A connection that failed before it could be handed on (TLS handshake, silence, reset). */
  dropped(reason: 'tls' | 'timeout' | 'connections'): void;
}

export class SharedListener {
  private readonly servers: NetServer[] = [];
  private readonly pending = new Set<Socket>();
  /** Every open connection accepted here, whoever serves it now. */
  private readonly open = new Set<Socket>();

  constructor(
    private readonly handoff: Handoff,
    private readonly opts: { maxConnections?: number; firstBytesTimeoutMs?: number } = {},
  ) {}

  /** Connections open now. */
  get openCount(): number {
    return this.open.size;
  }

  /** Listen on TCP `host:port` (port 0: any free port); resolves with the bound port. */
  listenTcp(host: string, port: number, tls?: TlsOptions): Promise<number> {
    let server: NetServer;
    if (tls) {
      const t = tlsCreateServer({ ...tls, ALPNProtocols: ['http/1.1', 'h2'] });
      t.on('secureConnection', (s: TLSSocket) => this.sniff(s));
      t.on('tlsClientError', (_err, s) => {
        this.handoff.dropped('tls');
        s.destroy();
      });
      server = t;
    } else {
      server = netCreateServer({ noDelay: true }, (s) => this.sniff(s));
    }
    return this.listen(server, (cb) => server.listen({ host, port }, cb)).then(() => {
      const a = server.address();
      return typeof a === 'object' && a ? a.port : 0;
    });
  }

  /** Listen on a unix socket (the caller removes a stale file first). */
  listenUnix(path: string): Promise<void> {
    const server = netCreateServer((s) => this.sniff(s));
    return this.listen(server, (cb) => server.listen(path, cb));
  }

  /**
   * Stop accepting; connections not yet handed on are dropped. Resolves once every connection
   * accepted here has closed: those handed on close with their server, or by `destroyAll`.
   */
  close(): Promise<void> {
    for (const s of this.pending) s.destroy();
    this.pending.clear();
    return Promise.all(
      this.servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))),
    ).then(() => {});
  }

  /** End every connection still open (after the servers they were handed to have shut down). */
  destroyAll(): void {
    for (const s of this.open) s.destroy();
    this.open.clear();
  }

  private listen(server: NetServer, start: (cb: () => void) => void): Promise<void> {
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      start(() => {
        server.off('error', reject);
        // After listening, an accept error (EMFILE) must not crash the daemon.
        server.on('error', () => {});
        this.servers.push(server);
        resolve();
      });
    });
  }

  private sniff(socket: Socket): void {
    if (this.open.size >= (this.opts.maxConnections ?? Number.POSITIVE_INFINITY)) {
      // Closed before a byte is read: the bound holds whatever the client sends.
      this.handoff.dropped('connections');
      socket.destroy();
      return;
    }
    this.open.add(socket);
    socket.once('close', () => this.open.delete(socket));
    this.pending.add(socket);
    let head: Buffer | undefined;
    const finish = () => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', finish);
      socket.off('error', onError);
      this.pending.delete(socket);
    };
    const onError = () => {
      finish();
      socket.destroy();
    };
    const timer = setTimeout(() => {
      finish();
      this.handoff.dropped('timeout');
      socket.destroy();
    }, this.opts.firstBytesTimeoutMs ?? FIRST_BYTES_TIMEOUT_MS);
    timer.unref();
    const onData = (chunk: Buffer) => {
      head = head ? Buffer.concat([head, chunk]) : chunk;
      const n = Math.min(head.length, PREFACE.length);
      const h2 = head.compare(PREFACE, 0, n, 0, n) === 0;
      if (h2 && head.length < PREFACE.length) return;
      finish();
      // Give the bytes back: both servers read what is buffered before reading the socket.
      socket.pause();
      socket.unshift(head);
      if (h2) {
        // Node's plain HTTP/2 server refuses a TLS socket without a negotiated protocol; this
        // one spoke the preface, so it is HTTP/2 whatever ALPN said.
        if ((socket as TLSSocket).alpnProtocol === false)
          Object.defineProperty(socket, 'alpnProtocol', { value: 'h2' });
        this.handoff.grpc(socket);
      } else {
        this.handoff.http(socket);
        socket.resume();
      }
    };
    socket.on('data', onData);
    socket.on('close', finish);
    socket.on('error', onError);
  }
}
