/**
 * The `mqtt` config section and the options the ingest part takes. Values arrive validated and
 * frozen from `src/config/`; tests build `IngestOptions` directly with `ingestDefaults()`.
 */
import type { ConfigSection } from '../config/types.js';

/** `auto` (the default): external when `url` is set (`--mqtt-url`), else embedded. */
export type IngestMode = 'auto' | 'embedded' | 'external';

export interface IngestOptions {
  mode: IngestMode;
  /** Embedded: plain TCP listener `HOST:PORT` (port 0 picks a free one). */
  listen: string;
  /** Embedded: optional TLS listener `HOST:PORT`, needs `tlsCert` and `tlsKey`. */
  tlsListen?: string;
  /** External: `mqtt://host:port` or `mqtts://host:port`. */
  url?: string;
  /** External: fixed client id, so the broker keeps our session (and QoS 1 reports) across restarts. */
  clientId: string;
  /** External: broker credentials. */
  username?: string;
  passwordFile?: string;
  /** External: MQTT protocol version towards the broker (5 keeps the session with sessionExpiryInterval). */
  protocolVersion: 4 | 5;
  /** PEM files. Embedded: the TLS listener's certificate, key and (for client certificates) CA. External: client certificate, key and the CA that signed the broker. */
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  /** Embedded: let devices connect without a password (device id = client id). */
  allowAnonymous: boolean;
  maxPayload: number;
  maxMetrics: number;
  /** Token bucket per device: sustained reports per second and burst size. */
  ratePerSec: number;
  rateBurst: number;
  maxConnections: number;
  /** Embedded: a connection must have logged in this long (ms) after it opened, else it is closed. */
  connectTimeout: number;
  /** Embedded: connections not yet logged in; one more closes the oldest of the busiest address. */
  maxPendingConnections: number;
  /** Embedded: largest remaining length of a packet after CONNECT, refused from its fixed header. */
  maxPacket: number;
  /** Embedded: largest remaining length of a CONNECT. */
  maxConnectPacket: number;
  /** Embedded: most topic filters in one SUBSCRIBE or UNSUBSCRIBE (more closes the connection). */
  maxFilters: number;
  /** Embedded: refused subscriptions one connection may have before it is closed. */
  maxRefusedSubscriptions: number;
  /** Embedded: bytes all connections may hold in unfinished packets and socket buffers. */
  memoryBudget: number;
  /** Embedded: a device that does not read what it is sent for this long (ms) is disconnected. */
  drainTimeout: number;
  /** Embedded: log-in attempts per device id and per source address: bucket size and refill rate; only failures keep the tokens. */
  loginBurst: number;
  loginRatePerSec: number;
  /** Embedded: password checks (scrypt) running at once. */
  loginConcurrency: number;
  /** A device's key under /edgekeeper/devices/ is rewritten at most this often (ms), at once on online/offline. */
  mirrorInterval: number;
  /** A device that sends nothing for this long (ms) is marked offline. */
  silenceTimeout: number;
  /** Reports older than this (ms) are deleted by retention. */
  retentionAge: number;
  /** The reports table is trimmed (oldest first) above roughly this many bytes. */
  retentionBytes: number;
  retentionInterval: number;
  /** Rows kept in the dead-letter table ingest_rejects (oldest dropped first). */
  rejectsMax: number;
  /** Most per-device last-seen series on /metrics (first seen first); the rest are counted. */
  deviceSeries: number;
  /** How far back (ms) a (device, seq, ts) is checked for duplicates. */
  dedupeWindow: number;
  /** A command not delivered within this long (ms) is marked expired. */
  commandTtl: number;
  /** Most reports in one store.write. */
  batchMax: number;
  /**
   * False while the fleet sync's disk budget is full with the policy "stop acknowledging": reports
   * are then held unacknowledged (devices keep and resend them) until it returns true again.
   */
  admit?: () => boolean;
  /** True when an uplink is configured: retention never deletes reports the uplink has not passed. */
  uplinkEnabled?: boolean;
}

// 64 KiB: a report is a few hundred bytes; anything near this is a bug or an attack.
const KIB = 1024;

export const ingestConfigSection: ConfigSection = {
  name: 'mqtt',
  doc: 'MQTT device reports: an embedded broker (default) or an existing broker.',
  fields: {
    mode: {
      type: 'string',
      enum: ['auto', 'embedded', 'external'],
      default: 'auto',
      doc: 'embedded: run a broker inside edgekeeper; external: subscribe to an existing broker at `url`; auto: external when `url` is set.',
    },
    listen: {
      type: 'string',
      default: '127.0.0.1:1883',
      doc: 'Embedded broker listener HOST:PORT (flag --mqtt-listen).',
    },
    tlsListen: {
      type: 'string',
      optional: true,
      doc: 'Embedded broker TLS listener HOST:PORT (needs tlsCert and tlsKey).',
    },
    url: {
      type: 'string',
      optional: true,
      doc: 'External broker URL mqtt://HOST:PORT or mqtts://HOST:PORT (flag --mqtt-url).',
    },
    clientId: {
      type: 'string',
      default: 'edgekeeper-ingest',
      doc: 'External mode: fixed client id of the persistent session.',
    },
    username: { type: 'string', optional: true, doc: 'External mode: broker user name.' },
    passwordFile: { type: 'string', optional: true, doc: 'External mode: file holding the broker password.' },
    protocolVersion: {
      type: 'integer',
      default: 5,
      min: 4,
      max: 5,
      doc: 'External mode: MQTT protocol level (4 = 3.1.1, 5).',
    },
    tlsCert: {
      type: 'string',
      optional: true,
      doc: 'PEM certificate (embedded: TLS listener; external: client certificate).',
    },
    tlsKey: { type: 'string', optional: true, doc: 'PEM private key for tlsCert.' },
    tlsCa: {
      type: 'string',
      optional: true,
      doc: 'PEM CA (embedded: require client certificates signed by it; external: trust the broker).',
    },
    allowAnonymous: {
      type: 'boolean',
      default: false,
      doc: 'Embedded: accept devices without a password (device id = client id).',
    },
    maxPayload: {
      type: 'bytes',
      default: 64 * KIB,
      min: 256,
      max: 16 * 1024 * KIB,
      doc: 'Largest report payload.',
    },
    maxMetrics: { type: 'integer', default: 256, min: 1, max: 10_000, doc: 'Most metrics in one report.' },
    ratePerSec: {
      type: 'number',
      default: 20,
      min: 0.01,
      max: 1_000_000,
      doc: 'Sustained reports per second per device (token bucket).',
    },
    rateBurst: {
      type: 'integer',
      default: 200,
      min: 1,
      max: 10_000_000,
      doc: 'Token bucket size per device.',
    },
    maxConnections: {
      type: 'integer',
      default: 5000,
      min: 1,
      max: 1_000_000,
      doc: 'Most concurrent device connections (embedded).',
    },
    connectTimeout: {
      type: 'duration',
      default: 10_000,
      min: 100,
      max: 300_000,
      doc: 'Embedded: a connection not logged in this long after it opened is closed, whatever it sent.',
    },
    // far above what devices connecting at once need: a log-in takes milliseconds (a password
    // check about 50 ms on a Pi), so 256 at a time is a reconnect storm of thousands per second
    maxPendingConnections: {
      type: 'integer',
      default: 256,
      min: 1,
      max: 100_000,
      doc: 'Embedded: connections not yet logged in; one more closes the oldest of the address with the most.',
    },
    // a report of maxPayload plus its topic and headers fits; 128 KiB per connection is what
    // the parser may hold of one unfinished packet
    maxPacket: {
      type: 'bytes',
      default: 128 * KIB,
      min: 1 * KIB,
      max: 256 * 1024 * KIB - 1,
      doc: 'Embedded: largest packet (remaining length) after CONNECT; a larger one closes the connection as soon as its fixed header arrives. At least maxPayload + 1KiB.',
    },
    // client id, user name and password are at most a few hundred bytes; a will is a status
    maxConnectPacket: {
      type: 'bytes',
      default: 4 * KIB,
      min: 256,
      max: 1024 * KIB,
      doc: 'Embedded: largest CONNECT packet (remaining length).',
    },
    // a device subscribes to one topic, its command topic
    maxFilters: {
      type: 'integer',
      default: 8,
      min: 1,
      max: 10_000,
      doc: 'Embedded: most topic filters in one SUBSCRIBE or UNSUBSCRIBE; more closes the connection.',
    },
    maxRefusedSubscriptions: {
      type: 'integer',
      default: 16,
      min: 1,
      max: 10_000,
      doc: 'Embedded: refused subscriptions one connection may have; the next closes it.',
    },
    memoryBudget: {
      type: 'bytes',
      default: 64 * 1024 * KIB,
      min: 1024 * KIB,
      max: 16 * 1024 * 1024 * KIB,
      doc: 'Embedded: bytes all connections together may hold in unfinished packets and socket buffers; over it the connection holding the most is closed.',
    },
    drainTimeout: {
      type: 'duration',
      default: 30_000,
      min: 1000,
      doc: 'Embedded: a device that does not read what it is sent for this long is disconnected.',
    },
    loginBurst: {
      type: 'integer',
      default: 10,
      min: 1,
      max: 100_000,
      doc: 'Embedded: log-in attempts a device id, and a source address, may make at once; a success gives its attempt back.',
    },
    loginRatePerSec: {
      type: 'number',
      default: 1,
      min: 0.001,
      max: 100_000,
      doc: 'Embedded: failed log-in attempts per second, per device id and per source address, once the burst is spent.',
    },
    // scrypt takes a core for about 50 ms on a Pi; one at a time leaves the other cores to the
    // etcd API and the reports
    loginConcurrency: {
      type: 'integer',
      default: 1,
      min: 1,
      max: 64,
      doc: 'Embedded: password checks (scrypt, a core for about 50 ms on a Pi) running at once; the others wait.',
    },
    mirrorInterval: {
      type: 'duration',
      default: 5000,
      min: 0,
      doc: 'Rewrite /edgekeeper/devices/<id> at most this often per device.',
    },
    silenceTimeout: {
      type: 'duration',
      default: 300_000,
      min: 1000,
      doc: 'A device silent this long is marked offline.',
    },
    retentionAge: {
      type: 'duration',
      default: 30 * 86_400_000,
      min: 60_000,
      doc: 'Delete reports older than this.',
    },
    retentionBytes: {
      type: 'bytes',
      default: 1024 * 1024 * KIB,
      min: 1024 * KIB,
      doc: 'Trim the oldest reports above this size.',
    },
    retentionInterval: { type: 'duration', default: 60_000, min: 1000, doc: 'How often retention runs.' },
    rejectsMax: {
      type: 'integer',
      default: 1000,
      min: 10,
      max: 1_000_000,
      doc: 'Rows kept in the dead-letter table ingest_rejects.',
    },
    deviceSeries: {
      type: 'integer',
      default: 1000,
      min: 0,
      max: 100_000,
      doc: 'Most per-device last-seen series on /metrics (devices first seen first); the rest are counted in edgekeeper_ingest_devices_unexported.',
    },
    dedupeWindow: {
      type: 'duration',
      default: 3_600_000,
      min: 0,
      doc: 'How far back a redelivered report (same device, seq and ts) is recognised.',
    },
    commandTtl: {
      type: 'duration',
      default: 86_400_000,
      min: 1000,
      doc: 'Undelivered commands expire after this.',
    },
    batchMax: {
      type: 'integer',
      default: 500,
      min: 1,
      max: 100_000,
      doc: 'Most reports per write batch (smaller keeps each transaction short for the etcd API writes that share the writer).',
    },
  },
  check(v) {
    const payload = v.maxPayload as number;
    const packet = v.maxPacket as number;
    return packet < payload + KIB
      ? [
          `Expected \`mqtt.maxPacket\` to be at least \`mqtt.maxPayload\` + 1KiB (${payload + KIB}), got ${packet}`,
        ]
      : [];
  },
};

/** Defaults as plain options (what the config loader produces for an empty `mqtt` section). */
export function ingestDefaults(overrides: Partial<IngestOptions> = {}): IngestOptions {
  const o: Record<string, unknown> = {};
  for (const [k, f] of Object.entries(ingestConfigSection.fields)) {
    if ('default' in f && f.default !== undefined) o[k] = f.default;
  }
  return { ...(o as unknown as IngestOptions), ...overrides };
}
