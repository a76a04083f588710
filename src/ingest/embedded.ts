/**
 * Embedded mode: an aedes 1.x broker inside the daemon.
 *
 * Ack after commit. aedes handles an incoming QoS 1 PUBLISH as the series
 * `authorizePublish -> write PUBACK -> route` (lib/handlers/publish.js), so the PUBACK is
 * written from the `authorizePublish` callback and nothing else; `published` runs after the
 * PUBACK has left. We therefore store the report inside `authorizePublish` and call its callback
 * only after the commit. aedes processes one socket read of a client at a time and reads the
 * next only when every packet of the batch is done, which is our per-device backpressure.
 * A failed commit calls back with an error: aedes closes the connection without a PUBACK and
 * the device resends.
 *
 * Access. username = device id, password checked (by the main thread, see IngestCore) against
 * the scrypt hash in `ingest_devices`; the client id must be the device id (or empty), so one
 * device cannot take over another's session. A device may publish only to its own `report`/`status` topics and
 * subscribe only to its own `command` topic. Publishing elsewhere closes the connection
 * (MQTT-3.3.5-2 leaves the broker that choice and 3.1.1 has no negative PUBACK); a refused
 * subscription gets SUBACK 0x80.
 */
import net from 'node:net';
import { readFileSync } from 'node:fs';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import type {
  Aedes,
  AedesPublishPacket,
  AuthenticateError,
  Client,
  PublishPacket,
  Subscription,
} from 'aedes';
import mqttPacket from 'mqtt-packet';
import { type Clock, systemClock } from '../clock.js';
import type { Logger } from '../log.js';
import type { IngestOptions } from './config.js';
import type { CommandDelivery } from './downlink.js';
import type { IngestEdge } from './edge.js';
import { type Conn, ConnectionGuard } from './guard.js';
import { commandTopic, parseTopic, sanitize, statusTopic, validDeviceId } from './ids.js';
import { LoginThrottle } from './login.js';
import { parseStatus } from './payload.js';
import { acceptConnection } from './v5bridge.js';

export function parseHostPort(s: string, defPort: number): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*))(?::(\d+))?$/.exec(s.trim());
  if (!m) throw new Error(`bad address ${s}: use HOST:PORT`);
  const host = m[1] ?? (m[2] || '127.0.0.1');
  const port = m[3] === undefined ? defPort : Number(m[3]);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`bad port in ${s}`);
  return { host, port };
}

function authError(message: string, returnCode: 2 | 3 | 4 | 5): AuthenticateError {
  return Object.assign(new Error(message), { returnCode }) as AuthenticateError;
}

export class EmbeddedBroker implements CommandDelivery {
  private broker!: Aedes;
  private servers: net.Server[] = [];
  private readonly deviceOf = new WeakMap<Client, string>();
  private readonly conns = new Map<string, Set<Client>>();
  private readonly keepaliveExpired = new WeakSet<Client>();
  private readonly subscribed = new Set<string>();
  private readonly waitingAck = new Map<string, () => void>();
  private readonly chains = new Map<string, Promise<void>>();
  private addresses: { host: string; port: number; tls: boolean }[] = [];
  readonly guard: ConnectionGuard;
  readonly logins: LoginThrottle;
  /** The connection behind each stream handed to aedes (the socket, or the MQTT 5 bridge). */
  private readonly connOf = new WeakMap<Duplex, Conn>();
  private readonly refusedSubs = new WeakMap<Client, number>();

  constructor(
    private readonly core: IngestEdge,
    private readonly opts: IngestOptions,
    private readonly log: Logger,
    clock: Clock = systemClock,
  ) {
    this.guard = new ConnectionGuard(
      {
        connectTimeout: opts.connectTimeout,
        maxPending: opts.maxPendingConnections,
        memoryBudget: opts.memoryBudget,
        maxPacket: opts.maxPacket,
        maxConnect: opts.maxConnectPacket,
        maxFilters: opts.maxFilters,
      },
      clock,
    );
    this.guard.onRefused = (conn, r) =>
      this.core.reject(r.reason, { device: conn.device, detail: `${conn.address}: ${r.detail}` });
    this.logins = new LoginThrottle(opts, clock);
  }

  async start(): Promise<void> {
    const { Aedes } = await import('aedes');
    // On its first write mqtt-packet builds a Buffer for each of the 65,536 packet ids: ~6 MB of
    // heap that saves one 2-byte allocation per PUBACK. MQTT.js turns the cache off; aedes does not.
    (mqttPacket.writeToStream as { cacheNumbers?: boolean }).cacheNumbers = false;
    this.broker = await Aedes.createBroker({
      // the device id is the client id: allow the same 64 characters as validDeviceId
      maxClientsIdLength: 64,
      heartbeatInterval: 60_000,
      // the guard's deadline runs from the accept; aedes's from the first byte to the CONNECT
      connectTimeout: this.opts.connectTimeout,
      drainTimeout: this.opts.drainTimeout,
      authenticate: (client, username, password, cb) => this.authenticate(client, username, password, cb),
      authorizePublish: (client, packet, cb) => this.authorizePublish(client, packet, cb),
      authorizeSubscribe: (client, sub, cb) => this.authorizeSubscribe(client, sub, cb),
    });
    const b = this.broker;
    b.on('clientReady', (client) => this.connected(client));
    b.on('clientDisconnect', (client) => this.disconnected(client));
    b.on('keepaliveTimeout', (client) => this.keepaliveExpired.add(client));
    b.on('clientError', (client, err) =>
      this.log.debug({ client: sanitize(client.id ?? ''), err: err.message }, 'client error'),
    );
    b.on('ack', (packet, client) => this.acked(packet as PublishPacket | undefined, client));
    b.on('subscribe', (subs, client) => {
      const dev = this.deviceOf.get(client);
      if (dev && subs.some((s) => s.topic === commandTopic(dev) && (s.qos as number) !== 128))
        this.nowReachable(dev);
    });

    // MQTT 5 devices go through a bridge to aedes's 3.1.1 (see v5bridge.ts)
    const aedesHandle = b.handle as (conn: Duplex) => void;
    const handle = (sock: net.Socket) => {
      const conn = this.guard.accept(sock);
      acceptConnection(sock, conn, this.guard, this.opts.maxPacket, (stream) => {
        this.connOf.set(stream, conn);
        aedesHandle(stream);
      });
    };
    const listen = parseHostPort(this.opts.listen, 1883);
    const plain = net.createServer(handle);
    await this.listen(plain, listen.host, listen.port, false);
    if (this.opts.tlsListen) {
      if (!this.opts.tlsCert || !this.opts.tlsKey)
        throw new Error('mqtt.tlsListen needs mqtt.tlsCert and mqtt.tlsKey');
      const t = parseHostPort(this.opts.tlsListen, 8883);
      const server = tls.createServer(
        {
          cert: readFileSync(this.opts.tlsCert),
          key: readFileSync(this.opts.tlsKey),
          ...(this.opts.tlsCa
            ? { ca: readFileSync(this.opts.tlsCa), requestCert: true, rejectUnauthorized: true }
            : {}),
        },
        handle,
      );
      await this.listen(server, t.host, t.port, true);
    }
  }

  private listen(server: net.Server, host: string, port: number, isTls: boolean): Promise<void> {
    // the devices and those still logging in (the guard closes the oldest of the latter)
    server.maxConnections = this.opts.maxConnections + this.opts.maxPendingConnections + 1;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        const a = server.address() as net.AddressInfo;
        this.addresses.push({ host: a.address, port: a.port, tls: isTls });
        this.servers.push(server);
        this.log.info({ host: a.address, port: a.port, tls: isTls }, 'embedded MQTT broker listening');
        resolve();
      });
    });
  }

  address(): { host: string; port: number; tls: boolean }[] {
    return this.addresses;
  }

  private authenticate(
    client: Client,
    username: string | undefined,
    password: Buffer | undefined,
    cb: (err: AuthenticateError | null, ok: boolean | null) => void,
  ): void {
    if (this.broker.connectedClients >= this.opts.maxConnections) {
      this.core.reject('connections', {
        device: username,
        detail: `${this.opts.maxConnections} connections open`,
      });
      cb(authError('too many connections', 3), null);
      return;
    }
    if (username === undefined || username === '') {
      if (!this.opts.allowAnonymous) {
        this.core.reject('auth', {
          device: client.id,
          detail: 'no user name (anonymous access is disabled)',
        });
        cb(authError('not authorized', 5), null);
        return;
      }
      if (!validDeviceId(client.id)) {
        this.core.reject('bad_device_id', {
          device: client.id,
          detail: 'anonymous client id is not a valid device id',
        });
        cb(authError('identifier rejected', 2), null);
        return;
      }
      this.deviceOf.set(client, client.id);
      cb(null, true);
      return;
    }
    if (!validDeviceId(username)) {
      this.core.reject('bad_device_id', { device: username, detail: 'user name is not a valid device id' });
      cb(authError('bad user name or password', 4), null);
      return;
    }
    // a generated id (empty client id, clean session) is fine; another device's id is not
    if (client.id !== username && !client.id.startsWith('aedes_')) {
      this.core.reject('auth', {
        device: username,
        detail: `client id ${sanitize(client.id, 64)} is not the device id`,
      });
      cb(authError('identifier rejected', 2), null);
      return;
    }
    const pw = password ?? Buffer.alloc(0);
    const conn = this.connOf.get(client.conn as Duplex);
    this.logins
      .attempt(
        username,
        conn?.address ?? '?',
        pw,
        () => !(client as unknown as { closed: boolean }).closed,
        () => this.core.checkPassword(username, pw),
      )
      .then(
        (check) => {
          if (check === 'gone') return;
          if (check === 'throttled') {
            this.core.reject('throttled', {
              device: username,
              detail: `${conn?.address ?? '?'}: too many failed log-ins for this device or address; try later`,
            });
            cb(authError('server unavailable', 3), null);
            return;
          }
          if (check === 'ok') {
            this.deviceOf.set(client, username);
            cb(null, true);
            return;
          }
          if (check === 'unknown')
            this.core.reject('unknown_device', {
              device: username,
              detail: 'no such device; add it with `edgekeeper device add`',
            });
          else this.core.reject('auth', { device: username, detail: 'wrong password' });
          cb(authError('bad user name or password', 4), null);
        },
        (err) => {
          this.log.warn({ err }, 'password check failed');
          cb(authError('server unavailable', 3), null);
        },
      );
  }

  /** Close the device's connections (after remove/rotate). */
  revoke(device: string): void {
    this.logins.forget(device);
    for (const c of this.conns.get(device) ?? []) c.close();
  }

  /** What the bounds hold now, for the metrics. */
  stats(): { buffered: number; pending: number; loginsWaiting: number } {
    const g = this.guard.stats();
    return { buffered: g.buffered, pending: g.pending, loginsWaiting: this.logins.queued };
  }

  private authorizePublish(
    client: Client | null,
    packet: PublishPacket,
    cb: (err?: Error | null) => void,
  ): void {
    const topic = packet.topic;
    if (client === null) {
      // a will left behind by an earlier broker instance: only status wills are let through
      const t = parseTopic(topic);
      if (t.ok && t.kind === 'status') this.status(t.device, packet.payload as Buffer, 'will', null);
      cb(t.ok && t.kind === 'status' ? null : new Error('refused'));
      return;
    }
    const dev = this.deviceOf.get(client);
    const t = parseTopic(topic);
    const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
    if (!dev || !t.ok || t.device !== dev || t.kind === 'command') {
      this.core.reject(t.ok ? 'acl' : t.reason, {
        device: dev,
        topic,
        payload,
        detail: `device ${dev ?? '?'} may not publish here`,
      });
      cb(new Error(`device ${dev ?? '?'} may not publish to ${sanitize(topic, 80)}`));
      return;
    }
    if (t.kind === 'status') {
      // client.closed is set before aedes publishes the will
      this.status(
        dev,
        payload,
        (client as unknown as { closed: boolean }).closed ? 'will' : 'status',
        client,
      );
      cb(null);
      return;
    }
    // reports are not kept as retained messages: the table is their home
    packet.retain = false;
    const contentType = (packet as { properties?: { contentType?: string } }).properties?.contentType;
    this.core.report(dev, topic, payload, packet.qos, contentType).then(
      () => cb(null),
      (err: Error) => cb(err),
    );
  }

  private status(dev: string, payload: Buffer, via: 'will' | 'status', client: Client | null): void {
    const online = parseStatus(payload);
    if (online === undefined) {
      this.core.reject('schema', {
        device: dev,
        topic: statusTopic(dev),
        payload,
        detail: 'status must be online/offline or {"online": bool}',
      });
      return;
    }
    if (online) {
      this.core.setOnline(dev, true, via);
      return;
    }
    // a will of a connection that was taken over says nothing while another one is open
    const others = [...(this.conns.get(dev) ?? [])].filter((c) => c !== client);
    if (others.length === 0) this.core.setOnline(dev, false, via);
  }

  private authorizeSubscribe(
    client: Client,
    sub: Subscription,
    cb: (err: Error | null, sub?: Subscription | null) => void,
  ): void {
    const dev = this.deviceOf.get(client);
    if (dev && sub.topic === commandTopic(dev)) {
      cb(null, { ...sub, qos: Math.min(sub.qos, 1) as 0 | 1 });
      return;
    }
    // each refusal is a dead letter on the main thread: a connection gets a few, then is closed
    const refused = (this.refusedSubs.get(client) ?? 0) + 1;
    this.refusedSubs.set(client, refused);
    if (refused > this.opts.maxRefusedSubscriptions) {
      if (refused === this.opts.maxRefusedSubscriptions + 1) {
        this.core.reject('too_many_refusals', {
          device: dev,
          topic: sub.topic,
          detail: `more than ${this.opts.maxRefusedSubscriptions} refused subscriptions; connection closed`,
        });
        client.close();
      }
      cb(null, null);
      return;
    }
    this.core.reject('acl', {
      device: dev,
      topic: sub.topic,
      detail: 'may subscribe only to its own command topic',
    });
    cb(null, null);
  }

  private connected(client: Client): void {
    const dev = this.deviceOf.get(client);
    if (!dev) return;
    const conn = this.connOf.get(client.conn as Duplex);
    if (conn) this.guard.established(conn, dev);
    let set = this.conns.get(dev);
    if (!set) {
      set = new Set();
      this.conns.set(dev, set);
    }
    set.add(client);
    this.core.connection(1);
    this.core.setOnline(dev, true, 'connect');
    // a persistent session restores its subscriptions without a SUBSCRIBE
    if ((client as unknown as { subscriptions: Record<string, unknown> }).subscriptions[commandTopic(dev)])
      this.nowReachable(dev);
  }

  private nowReachable(dev: string): void {
    this.subscribed.add(dev);
    this.core.reachable(dev, true);
  }

  private disconnected(client: Client): void {
    const dev = this.deviceOf.get(client);
    if (!dev) return;
    const set = this.conns.get(dev);
    if (!set?.delete(client)) return;
    this.core.connection(-1);
    if (set.size > 0) return;
    this.conns.delete(dev);
    if (this.subscribed.delete(dev)) this.core.reachable(dev, false);
    this.core.setOnline(dev, false, this.keepaliveExpired.has(client) ? 'keepalive' : 'disconnect');
  }

  // --- downlink ---------------------------------------------------------------------------------

  reachable(device: string): boolean {
    return this.subscribed.has(device) && (this.conns.get(device)?.size ?? 0) > 0;
  }

  /**
   * One command in flight per device: aedes reports a device's PUBACK through its 'ack' event
   * without the original packet for clean sessions, and a device can only receive its own
   * command topic, so the next 'ack' from that device is the answer to the command in flight.
   */
  send(device: string, payload: Buffer, timeoutMs: number): Promise<'delivered'> {
    const prev = this.chains.get(device) ?? Promise.resolve();
    const run = prev.then(
      () =>
        new Promise<'delivered'>((resolve, reject) => {
          const timer = setTimeout(() => {
            if (this.waitingAck.get(device) === done) this.waitingAck.delete(device);
            reject(new Error('not acknowledged in time'));
          }, timeoutMs);
          timer.unref();
          const done = () => {
            clearTimeout(timer);
            resolve('delivered');
          };
          this.waitingAck.set(device, done);
          this.broker.publish(
            { cmd: 'publish', topic: commandTopic(device), payload, qos: 1, retain: false, dup: false },
            (err) => {
              if (err) {
                clearTimeout(timer);
                this.waitingAck.delete(device);
                reject(err);
              }
            },
          );
        }),
    );
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.chains.set(device, tail);
    void tail.then(() => {
      if (this.chains.get(device) === tail) this.chains.delete(device);
    });
    return run;
  }

  private acked(packet: PublishPacket | undefined, client: Client): void {
    const dev = this.deviceOf.get(client);
    if (!dev || (packet && packet.topic !== commandTopic(dev))) return;
    const done = this.waitingAck.get(dev);
    if (done) {
      this.waitingAck.delete(dev);
      done();
    }
  }

  async stop(): Promise<void> {
    // stop accepting, then let aedes close every client, then wait for the listeners
    const closed = this.servers.map((s) => new Promise<void>((r) => s.close(() => r())));
    await new Promise<void>((r) => (this.broker ? this.broker.close(() => r()) : r()));
    // aedes knows only the clients that connected; the listeners wait for every socket
    this.guard.closeAll();
    await Promise.all(closed);
  }
}

export type { AedesPublishPacket };
