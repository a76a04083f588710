/**
 * External mode: MQTT.js subscribes to an existing broker (mosquitto, EMQX) with a fixed client
 * id and a persistent session (3.1.1 `clean: false`; 5 `cleanStart: false` with a session expiry),
 * so the broker keeps QoS 1 reports for us while edgekeeper restarts.
 *
 * Ack after commit with MQTT.js. Its `customHandleAcks` is honoured only for MQTT 5, and MQTT.js
 * handles incoming packets strictly one at a time, writing the PUBACK when `handleMessage`
 * calls back; waiting there for the commit would serialise ingest at one commit per report (a
 * few hundred per second). So `handleMessage` (meant to be overridden) hands the report to the
 * core and returns at once, and we hold the PUBACK packet itself: `_sendPacket` is wrapped so a
 * PUBACK whose report is not yet committed is written only after the commit, and dropped if the
 * connection was replaced meanwhile (the broker then redelivers with DUP and `seq` de-duplicates).
 * The broker's in-flight window bounds how many reports wait for us: raise mosquitto's
 * `max_inflight_messages` (3.1.1) or rely on our MQTT 5 Receive Maximum (a few batches).
 */
import { readFileSync } from 'node:fs';
import type { Logger } from '../log.js';
import type { IngestOptions } from './config.js';
import type { CommandDelivery } from './downlink.js';
import type { IngestEdge } from './edge.js';
import { commandTopic, parseTopic, TOPIC_PREFIX } from './ids.js';
import { parseStatus } from './payload.js';

type SendPacket = (
  packet: { cmd: string; messageId?: number },
  cb?: (err?: Error) => void,
  cbStorePut?: unknown,
  noStore?: boolean,
) => void;

// a week: long enough for any restart, short enough that an abandoned session goes away
const SESSION_EXPIRY_S = 7 * 86_400;
// MQTT 5 Receive Maximum, in batches of `batchMax`: two batches being written and more gathering
// keep the writer busy; a larger window only moves the broker's queue into our memory (with
// 65535, 1,000 devices flat out queued ~60,000 reports here: a second of latency and +150 MB).
const RECEIVE_BATCHES = 4;
// MQTT.js handles every packet of a socket read (up to 64 KB, hundreds of reports) before the
// event loop turns; yielding after this many lets etcd requests in between.
const YIELD_EVERY = 64;

export class ExternalSubscriber implements CommandDelivery {
  // biome-ignore lint/suspicious/noExplicitAny: MQTT.js's client type is only used through a few calls
  private client: any;
  // biome-ignore lint/suspicious/noExplicitAny: reaching MQTT.js's private _sendPacket (see above)
  private raw: any;
  private generation = 0;
  /** Message ids whose PUBACK is due, written together at the end of this tick. */
  private acks: number[] = [];
  private sinceYield = 0;
  private readonly held = new Map<number, { gen: number; done: Promise<unknown> }>();
  private connectedOnce!: Promise<void>;

  constructor(
    private readonly core: IngestEdge,
    private readonly opts: IngestOptions,
    private readonly log: Logger,
  ) {}

  async start(): Promise<void> {
    if (!this.opts.url) throw new Error('mqtt.mode is external but mqtt.url is not set');
    const mqtt = await import('mqtt');
    const v5 = this.opts.protocolVersion === 5;
    const options: Record<string, unknown> = {
      clientId: this.opts.clientId,
      clean: false,
      protocolVersion: this.opts.protocolVersion,
      keepalive: 30,
      reconnectPeriod: 1000,
      connectTimeout: 10_000,
      resubscribe: false,
      // MQTT.js traces every packet through `debug` even when it is off: ~1% of a core flat out
      log: () => undefined,
    };
    if (v5)
      options.properties = {
        sessionExpiryInterval: SESSION_EXPIRY_S,
        receiveMaximum: Math.min(65535, RECEIVE_BATCHES * this.opts.batchMax),
      };
    if (this.opts.username) options.username = this.opts.username;
    if (this.opts.passwordFile) options.password = readFileSync(this.opts.passwordFile, 'utf8').trim();
    if (this.opts.tlsCa) options.ca = readFileSync(this.opts.tlsCa);
    if (this.opts.tlsCert) options.cert = readFileSync(this.opts.tlsCert);
    if (this.opts.tlsKey) options.key = readFileSync(this.opts.tlsKey);

    const client = mqtt.connect(this.opts.url, options);
    this.client = client;
    this.raw = client;
    // every incoming PUBLISH (QoS 0 and 1) passes through handleMessage before MQTT.js acks it
    this.raw.handleMessage = (
      packet: {
        topic: string;
        payload: Buffer;
        messageId?: number;
        qos: number;
        properties?: { contentType?: string };
      },
      callback: () => void,
    ) => {
      const done = this.handle(packet.topic, packet.payload, packet.qos, packet.properties?.contentType);
      if (packet.qos > 0 && packet.messageId !== undefined)
        this.held.set(packet.messageId, { gen: this.generation, done });
      // failures are handled where the held PUBACK is released
      done.catch(() => undefined);
      if (++this.sinceYield < YIELD_EVERY) callback();
      else {
        this.sinceYield = 0;
        setImmediate(callback);
      }
    };
    const orig = (this.raw._sendPacket as SendPacket).bind(client);
    const wrapped: SendPacket = (packet, cb, cbStorePut, noStore) => {
      const h =
        packet.cmd === 'puback' && packet.messageId !== undefined
          ? this.held.get(packet.messageId)
          : undefined;
      if (!h) return orig(packet, cb, cbStorePut, noStore);
      this.held.delete(packet.messageId!);
      // let MQTT.js go on with the next packet now; the PUBACK itself waits for the commit
      cb?.();
      h.done.then(
        () => {
          if (h.gen !== this.generation || !client.connected) return;
          this.ack(packet.messageId!);
        },
        (err: Error) => {
          // not committed: never acknowledge; reconnecting makes the broker redeliver
          this.log.warn({ err }, 'a report could not be stored; reconnecting so the broker redelivers it');
          if (h.gen === this.generation) client.stream?.destroy();
        },
      );
    };
    this.raw._sendPacket = wrapped;

    let subscribed!: () => void;
    this.connectedOnce = new Promise((resolve) => (subscribed = resolve));
    client.on('connect', (connack: { sessionPresent: boolean }) => {
      this.generation++;
      this.core.linkUp(true);
      this.log.info(
        { url: this.opts.url, sessionPresent: connack.sessionPresent },
        'connected to the external MQTT broker',
      );
      client.subscribe(
        [`${TOPIC_PREFIX}+/report`, `${TOPIC_PREFIX}+/status`],
        { qos: 1 },
        (err: Error | null) => {
          if (err) this.log.error({ err }, 'subscribing to device topics failed');
          else subscribed();
        },
      );
    });
    client.on('close', () => this.core.linkUp(false));
    client.on('error', (err: Error) =>
      this.log.warn({ err: err.message }, 'external MQTT broker error; reconnecting'),
    );
    client.on('offline', () =>
      this.log.warn(
        { url: this.opts.url },
        'external MQTT broker unreachable; the broker keeps our session while we reconnect',
      ),
    );
  }

  /**
   * PUBACK for `messageId`, written with the others released in this tick as one socket write
   * of bare 4-byte PUBACKs (type 4, remaining length 2, packet id). MQTT 5 allows that form for
   * reason code Success without properties (3.4.2.1), so it serves both versions, and skips
   * MQTT.js's packet encoder and a stream write per acknowledgement.
   */
  private ack(messageId: number): void {
    if (this.acks.push(messageId) > 1) return;
    process.nextTick(() => {
      const ids = this.acks;
      this.acks = [];
      const stream = this.client?.stream;
      if (!stream || !this.client.connected) return;
      const buf = Buffer.allocUnsafe(4 * ids.length);
      for (let i = 0; i < ids.length; i++) {
        buf[4 * i] = 0x40;
        buf[4 * i + 1] = 2;
        buf.writeUInt16BE(ids[i]!, 4 * i + 2);
      }
      stream.write(buf);
    });
  }

  /** Resolves once connected and subscribed for the first time. */
  ready(): Promise<void> {
    return this.connectedOnce;
  }

  private async handle(topic: string, payload: Buffer, qos: number, contentType?: string): Promise<void> {
    const t = parseTopic(topic);
    if (!t.ok) {
      this.core.reject(t.reason, { topic, payload, detail: 'not a device report or status topic' });
      return;
    }
    if (t.kind === 'report') {
      await this.core.report(t.device, topic, payload, qos, contentType);
      return;
    }
    if (t.kind === 'status') {
      const online = parseStatus(payload);
      if (online === undefined) {
        // an empty retained message (a cleared status) carries no state
        if (payload.length > 0)
          this.core.reject('schema', {
            device: t.device,
            topic,
            payload,
            detail: 'status must be online/offline or {"online": bool}',
          });
        return;
      }
      this.core.setOnline(t.device, online, 'status');
    }
  }

  reachable(_device: string): boolean {
    // the broker keeps the command for an offline device (retained), so it is always worth sending
    return this.client?.connected === true;
  }

  send(device: string, payload: Buffer, timeoutMs: number): Promise<'published'> {
    return new Promise((resolve, reject) => {
      const opts: Record<string, unknown> = { qos: 1, retain: true };
      if (this.opts.protocolVersion === 5)
        opts.properties = { messageExpiryInterval: Math.max(1, Math.ceil(timeoutMs / 1000)) };
      this.client.publish(commandTopic(device), payload, opts, (err?: Error) =>
        err ? reject(err) : resolve('published'),
      );
    });
  }

  async stop(): Promise<void> {
    if (!this.client) return;
    // held PUBACKs of reports still committing are released by the writer drain before this
    await new Promise<void>((r) => this.client.end(false, {}, () => r()));
  }
}
