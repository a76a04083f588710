/**
 * MQTT 5 devices on the embedded broker. aedes 1.x speaks 3.1.1 only (it answers a level-5
 * CONNECT with "unacceptable protocol version"), so a connection whose CONNECT says level 5 is
 * bridged: we parse the device's MQTT 5 packets, hand aedes their 3.1.1 form through an
 * in-memory stream, and translate aedes's answers back to MQTT 5. What a 3.1.1 broker cannot
 * express is mapped or refused:
 * - session: kept (3.1.1 `clean: false`) when the Session Expiry Interval is > 0, else clean;
 * - CONNACK return codes become MQTT 5 reason codes (MQTT-3.2.2.2), SUBACK 0x80 becomes 0x87;
 * - DISCONNECT with reason 0x04 ("with will message") closes without a DISCONNECT so the will
 *   is published (MQTT-3.14.2.1);
 * - properties (content type, user properties, topic aliases) are dropped; a topic alias, which
 *   we never allow (Topic Alias Maximum 0, the default), closes the connection; AUTH is refused.
 * The report format is then told apart by its first byte, as for 3.1.1 devices.
 * mqtt-packet is the parser both aedes and MQTT.js use (installed with them).
 */
import { Duplex } from 'node:stream';
import type net from 'node:net';
import mqttPacket from 'mqtt-packet';
import type { Conn, ConnectionGuard } from './guard.js';

// 3.1.1 CONNACK return code -> MQTT 5 reason code
const CONNACK_V5: Record<number, number> = { 0: 0, 1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87 };

/**
 * Peek at the first bytes of a connection, then hand it on with every later chunk going through
 * the guard's packet gate first: `plain(sock)` for MQTT 3.x (bytes put back), or
 * `plain(stream)` with an MQTT 3.1.1 view of an MQTT 5 connection.
 */
export function acceptConnection(
  sock: net.Socket,
  conn: Conn,
  guard: ConnectionGuard,
  maxPacket: number,
  plain: (s: Duplex) => void,
): void {
  let buf: Buffer = Buffer.alloc(0);
  const onData = (d: Buffer) => {
    buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
    const level = connectLevel(buf);
    if (level === undefined && buf.length < 64) return;
    sock.off('data', onData);
    sock.pause();
    const pass = guard.gate(conn, level ?? 0);
    if (level === 5) {
      plain(bridge(sock, buf, pass, conn, maxPacket));
      return;
    }
    gateReads(sock, pass);
    // aedes reads with 'readable' + read(), which sees the bytes put back
    sock.unshift(buf);
    plain(sock);
  };
  sock.on('data', onData);
  sock.on('error', () => undefined);
}

/**
 * aedes reads a connection with `read()` on 'readable' and parses what it gets; the gate sees
 * each chunk first, and a refused one is never returned (the socket is closing by then).
 */
function gateReads(sock: net.Socket, pass: (chunk: Uint8Array) => boolean): void {
  const read = sock.read;
  sock.read = function gatedRead(this: net.Socket, n?: number) {
    const chunk = read.call(this, n) as Buffer | null;
    return chunk === null || pass(chunk) ? chunk : null;
  };
}

/** The protocol level of a CONNECT at the start of `b`, undefined until enough bytes arrived. */
function connectLevel(b: Buffer): number | undefined {
  if (b.length < 1) return undefined;
  if (b[0] !== 0x10) return -1;
  let i = 1;
  // remaining length: 1 to 4 bytes (MQTT-2.2.3)
  while (i < b.length && i < 5 && (b[i]! & 0x80) !== 0) i++;
  i++;
  if (b.length < i + 2) return undefined;
  const nameLen = b.readUInt16BE(i);
  const at = i + 2 + nameLen;
  return b.length > at ? b[at] : undefined;
}

type Pkt = Record<string, unknown> & { cmd: string };

/** A PUBLISH with the fields both versions share: properties stay behind (see docs/ingest.md). */
function publishFields(p: Pkt): Pkt {
  return {
    cmd: 'publish',
    topic: p.topic,
    payload: p.payload,
    qos: p.qos,
    retain: p.retain,
    dup: p.dup,
    messageId: p.messageId,
  };
}

function bridge(
  sock: net.Socket,
  first: Buffer,
  pass: (chunk: Uint8Array) => boolean,
  conn: Conn,
  maxPacket: number,
): Duplex {
  const fromDevice = mqttPacket.parser({ protocolVersion: 5 });
  const fromBroker = mqttPacket.parser({ protocolVersion: 4 });
  const unsubCounts = new Map<number, number>();
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    sock.destroy();
    inner.push(null);
    inner.destroy();
  };
  const inner = new Duplex({
    read() {
      sock.resume();
    },
    write(chunk: Buffer, _enc, cb) {
      fromBroker.parse(chunk);
      // a device that does not read holds aedes's writes back, as a plain socket does
      if (!sock.writableNeedDrain || sock.destroyed) return cb();
      let called = false;
      const go = () => {
        if (called) return;
        called = true;
        sock.off('drain', go);
        sock.off('close', go);
        cb();
      };
      sock.once('drain', go);
      sock.once('close', go);
    },
    final(cb) {
      sock.end();
      cb();
    },
    destroy(err, cb) {
      if (!closed) {
        closed = true;
        sock.destroy();
      }
      cb(err);
    },
  });
  const toBroker = (p: Pkt) => {
    if (!inner.push(mqttPacket.generate(p as unknown as mqttPacket.Packet))) sock.pause();
  };
  const toDevice = (p: Pkt) => {
    if (!sock.destroyed)
      sock.write(mqttPacket.generate(p as unknown as mqttPacket.Packet, { protocolVersion: 5 }));
  };
  let connacked = false;
  // after the CONNACK, a refusal is said with a DISCONNECT and its reason code (MQTT-4.13.2)
  conn.disconnect = (code) => {
    if (connacked) toDevice({ cmd: 'disconnect', reasonCode: code });
  };

  fromDevice.on('packet', (raw: unknown) => {
    // biome-ignore lint/suspicious/noExplicitAny: mqtt-packet packets are a union we only read fields of
    const p = raw as Pkt & Record<string, any>;
    switch (p.cmd) {
      case 'connect': {
        const expiry = (p.properties?.sessionExpiryInterval as number | undefined) ?? 0;
        const out: Pkt = {
          cmd: 'connect',
          protocolId: 'MQTT',
          protocolVersion: 4,
          clean: !(expiry > 0),
          clientId: p.clientId,
          keepalive: p.keepalive,
        };
        if (p.username !== undefined) out.username = p.username;
        if (p.password !== undefined) out.password = p.password;
        if (p.will)
          out.will = { topic: p.will.topic, payload: p.will.payload, qos: p.will.qos, retain: p.will.retain };
        toBroker(out);
        return;
      }
      case 'publish':
        if (p.properties?.topicAlias !== undefined) return close();
        toBroker(publishFields(p));
        return;
      case 'subscribe':
        toBroker({
          cmd: 'subscribe',
          messageId: p.messageId,
          subscriptions: (p.subscriptions as { topic: string; qos: number }[]).map((s) => ({
            topic: s.topic,
            qos: s.qos,
          })),
        });
        return;
      case 'unsubscribe':
        unsubCounts.set(p.messageId, (p.unsubscriptions as string[]).length);
        toBroker({ cmd: 'unsubscribe', messageId: p.messageId, unsubscriptions: p.unsubscriptions });
        return;
      case 'puback':
      case 'pubrec':
      case 'pubrel':
      case 'pubcomp':
        toBroker({ cmd: p.cmd, messageId: p.messageId });
        return;
      case 'pingreq':
        toBroker({ cmd: 'pingreq' });
        return;
      case 'disconnect':
        // 0x04: disconnect with will message -> close without DISCONNECT so aedes sends the will
        if (p.reasonCode !== 0x04) toBroker({ cmd: 'disconnect' });
        close();
        return;
      default:
        // AUTH and anything else a 3.1.1 broker cannot do
        close();
    }
  });
  fromDevice.on('error', close);

  fromBroker.on('packet', (raw: unknown) => {
    // biome-ignore lint/suspicious/noExplicitAny: mqtt-packet packets are a union we only read fields of
    const p = raw as Pkt & Record<string, any>;
    switch (p.cmd) {
      case 'connack':
        connacked = p.returnCode === 0;
        toDevice({
          cmd: 'connack',
          sessionPresent: p.sessionPresent,
          reasonCode: CONNACK_V5[p.returnCode as number] ?? 0x80,
          // so that a device does not send what the gate refuses (MQTT-3.2.2.3.6); the gate
          // counts the remaining length, this the whole packet, so the header's 5 bytes on top
          ...(p.returnCode === 0 ? { properties: { maximumPacketSize: maxPacket + 5 } } : {}),
        });
        return;
      case 'publish':
        toDevice(publishFields(p));
        return;
      case 'suback':
        toDevice({
          cmd: 'suback',
          messageId: p.messageId,
          granted: (p.granted as number[]).map((g) => (g === 128 ? 0x87 : g)),
        });
        return;
      case 'unsuback':
        toDevice({
          cmd: 'unsuback',
          messageId: p.messageId,
          granted: Array(unsubCounts.get(p.messageId) ?? 1).fill(0),
        });
        unsubCounts.delete(p.messageId);
        return;
      default:
        toDevice({ cmd: p.cmd, messageId: p.messageId });
    }
  });

  sock.on('data', (d: Buffer) => {
    if (pass(d)) fromDevice.parse(d);
  });
  sock.on('close', () => {
    if (!closed) {
      closed = true;
      inner.push(null);
      inner.destroy();
    }
  });
  sock.on('error', () => undefined);
  if (pass(first)) fromDevice.parse(first);
  (inner as Duplex & { remoteAddress?: string }).remoteAddress = sock.remoteAddress;
  return inner;
}
