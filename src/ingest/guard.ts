/**
 * Every socket of the embedded broker, from accept to close, within four bounds:
 * - **log-in deadline**: a connection not logged in (CONNACK 0) within `connectTimeout` of
 *   its accept is closed, whatever it sent (aedes's own timer starts only once bytes reach it
 *   and stops at the CONNECT);
 * - **pending connections**: at most `maxPending` connections not yet logged in; one more
 *   closes the oldest of the address holding the most, so an address that opens sockets and
 *   sends nothing only crowds itself out;
 * - **packets**: each connection's bytes go through a `PacketGate` before a parser sees them;
 * - **memory**: what the parsers hold of packets not yet complete (counted as the bytes pass)
 *   plus the sockets' read and write buffers (summed every second) stay under `memoryBudget`;
 *   over it, the connection holding the most is closed.
 * `closeAll()` ends every socket at shutdown, those that never logged in included.
 */
import type net from 'node:net';
import { type Clock, systemClock, type Timer } from '../clock.js';
import { type GateLimits, PacketGate, type Refusal } from './gate.js';

export interface GuardOptions extends GateLimits {
  connectTimeout: number;
  maxPending: number;
  memoryBudget: number;
}

// how often socket buffers are summed against the budget
const SWEEP_MS = 1000;

/** One socket. `disconnect` is how a refusal is said on it (the MQTT 5 bridge sets it). */
export class Conn {
  gate: PacketGate | undefined;
  pending = true;
  device: string | undefined;
  closed = false;
  timer: Timer | undefined;
  /** Sends what a refusal needs before the socket closes (MQTT 5: DISCONNECT with its code). */
  disconnect: ((code: number) => void) | undefined;
  constructor(
    readonly sock: net.Socket,
    readonly address: string,
  ) {}

  get held(): number {
    return this.gate?.held ?? 0;
  }
}

export class ConnectionGuard {
  private readonly conns = new Set<Conn>();
  private readonly pendingBy = new Map<string, Set<Conn>>();
  private pendingCount = 0;
  /** Sum of the gates' `held`. */
  private held = 0;
  /** Socket buffers at the last sweep. */
  private buffers = 0;
  private sweeper: ReturnType<typeof setInterval> | undefined;

  /** Hears every refusal (to count it and keep a dead letter). */
  onRefused: (conn: Conn, r: Refusal) => void = () => undefined;

  constructor(
    private readonly opts: GuardOptions,
    private readonly clock: Clock = systemClock,
  ) {}

  accept(sock: net.Socket): Conn {
    const conn = new Conn(sock, sock.remoteAddress ?? '?');
    this.conns.add(conn);
    let set = this.pendingBy.get(conn.address);
    if (!set) {
      set = new Set();
      this.pendingBy.set(conn.address, set);
    }
    set.add(conn);
    this.pendingCount++;
    conn.timer = this.clock.setTimeout(
      () =>
        this.refuse(conn, {
          reason: 'timeout',
          detail: `not logged in within ${this.opts.connectTimeout} ms`,
          code: 0x8d, // MQTT 5: keep alive timeout, the nearest
        }),
      this.opts.connectTimeout,
    );
    sock.once('close', () => this.closed(conn));
    if (this.pendingCount > this.opts.maxPending) this.evictPending();
    this.sweeper ??= setInterval(() => this.sweep(), SWEEP_MS).unref();
    return conn;
  }

  /**
   * The check every chunk from `conn` passes before a parser sees it; false when the chunk is
   * refused (the connection is then closing). `level` is the CONNECT's protocol level.
   */
  gate(conn: Conn, level: number): (chunk: Uint8Array) => boolean {
    const gate = new PacketGate(this.opts, level);
    conn.gate = gate;
    return (chunk) => {
      if (conn.closed) return false;
      const before = gate.held;
      const refusal = gate.feed(chunk);
      this.held += gate.held - before;
      if (refusal) {
        this.refuse(conn, refusal);
        return false;
      }
      if (this.held + this.buffers > this.opts.memoryBudget) this.overBudget();
      return !conn.closed;
    };
  }

  /** The connection logged in as `device`: the deadline and the pending count no longer apply. */
  established(conn: Conn, device: string): void {
    conn.device = device;
    this.unpend(conn);
  }

  refuse(conn: Conn, r: Refusal): void {
    if (conn.closed) return;
    this.onRefused(conn, r);
    try {
      conn.disconnect?.(r.code);
    } finally {
      conn.sock.destroy();
      this.closed(conn);
    }
  }

  stats(): { buffered: number; pending: number; connections: number } {
    return { buffered: this.held + this.buffers, pending: this.pendingCount, connections: this.conns.size };
  }

  /** Close every socket (shutdown). */
  closeAll(): void {
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = undefined;
    for (const c of [...this.conns]) {
      c.sock.destroy();
      this.closed(c);
    }
  }

  private closed(conn: Conn): void {
    if (conn.closed) return;
    conn.closed = true;
    this.conns.delete(conn);
    this.unpend(conn);
    this.held -= conn.held;
    if (conn.gate) conn.gate.held = 0;
  }

  private unpend(conn: Conn): void {
    conn.timer?.cancel();
    conn.timer = undefined;
    if (!conn.pending) return;
    conn.pending = false;
    this.pendingCount--;
    const set = this.pendingBy.get(conn.address);
    set?.delete(conn);
    if (set?.size === 0) this.pendingBy.delete(conn.address);
  }

  private evictPending(): void {
    let worst: Set<Conn> | undefined;
    for (const set of this.pendingBy.values()) if (!worst || set.size > worst.size) worst = set;
    const oldest = worst?.values().next().value;
    if (!oldest) return;
    this.refuse(oldest, {
      reason: 'connections',
      detail: `${this.opts.maxPending} connections waiting to log in; the oldest of ${oldest.address}, which has the most, closed`,
      code: 0x9f, // MQTT 5: connection rate exceeded
    });
  }

  /** Close the connections holding the most until the total fits the budget again. */
  private overBudget(): void {
    while (this.held + this.buffers > this.opts.memoryBudget) {
      let worst: Conn | undefined;
      let most = 0;
      for (const c of this.conns) {
        const size = c.held + c.sock.readableLength + c.sock.writableLength;
        if (size > most) {
          most = size;
          worst = c;
        }
      }
      if (!worst) return;
      this.buffers = Math.max(0, this.buffers - worst.sock.readableLength - worst.sock.writableLength);
      this.refuse(worst, {
        reason: 'memory',
        detail: `connections hold more than mqtt.memoryBudget (${this.opts.memoryBudget} bytes); this one held ${most}`,
        code: 0x97, // MQTT 5: quota exceeded
      });
    }
  }

  private sweep(): void {
    let buffers = 0;
    for (const c of this.conns) buffers += c.sock.readableLength + c.sock.writableLength;
    this.buffers = buffers;
    if (this.held + this.buffers > this.opts.memoryBudget) this.overBudget();
  }
}
