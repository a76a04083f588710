/**
 * The first look at a device's bytes, before an MQTT parser buffers them. The parsers (aedes's
 * and the MQTT 5 bridge's, both mqtt-packet) keep every byte of a packet until the packet is
 * complete, whatever its fixed header claims: a header saying 256 MB made them buffer 256 MB.
 * The gate follows the packet framing (MQTT-2.2: a type byte, then a remaining length of 1 to 4
 * bytes) over the byte stream as it passes, without keeping it, and refuses:
 * - a first packet that is not CONNECT (MQTT-3.1.0-1) and a second CONNECT (MQTT-3.1.0-2);
 * - a remaining length longer than 4 bytes (MQTT-2.2.3);
 * - a CONNECT over `maxConnect` and any other packet over `maxPacket`, as soon as the length
 *   is read, before its body arrives;
 * - a SUBSCRIBE or UNSUBSCRIBE with more than `maxFilters` topic filters (its body, at most
 *   `maxPacket` bytes, is the only one copied: filters are counted once it is complete).
 * `held` is what the parser behind the gate holds of the packet not yet complete: the share of
 * the memory budget (see guard.ts) this connection uses.
 */
import type { RejectReason } from './payload.js';

export interface GateLimits {
  /** Largest remaining length of any packet after CONNECT. */
  maxPacket: number;
  /** Largest remaining length of the CONNECT. */
  maxConnect: number;
  /** Most topic filters in one SUBSCRIBE or UNSUBSCRIBE. */
  maxFilters: number;
}

export interface Refusal {
  reason: RejectReason;
  detail: string;
  /** The MQTT 5 DISCONNECT reason code that says it (MQTT-3.14.2.1). */
  code: number;
}

const CONNECT = 1;
const SUBSCRIBE = 8;
const UNSUBSCRIBE = 10;
// MQTT 5 reason codes
const PROTOCOL_ERROR = 0x82;
const PACKET_TOO_LARGE = 0x95;
const QUOTA_EXCEEDED = 0x97;

enum State {
  Type,
  Length,
  Body,
}

export class PacketGate {
  /** Bytes of the packet not yet complete that were let through (the parser holds them). */
  held = 0;
  private state = State.Type;
  private type = 0;
  private length = 0;
  private lengthBytes = 0;
  private remaining = 0;
  private packets = 0;
  private body: Buffer | undefined;
  private bodyAt = 0;

  /** `version`: the protocol level the CONNECT announced (5 has properties before the filters). */
  constructor(
    private readonly limits: GateLimits,
    private readonly version: number,
  ) {}

  /** Follow `chunk`; a refusal means the connection must close and `chunk` must not be parsed. */
  feed(chunk: Uint8Array): Refusal | undefined {
    let i = 0;
    const n = chunk.length;
    while (i < n) {
      if (this.state === State.Body) {
        const take = Math.min(this.remaining, n - i);
        if (this.body) {
          this.body.set(chunk.subarray(i, i + take), this.bodyAt);
          this.bodyAt += take;
        }
        i += take;
        this.held += take;
        this.remaining -= take;
        if (this.remaining === 0) {
          const r = this.done();
          if (r) return r;
        }
        continue;
      }
      const b = chunk[i++]!;
      this.held++;
      if (this.state === State.Type) {
        this.type = b >> 4;
        if (this.packets === 0 && this.type !== CONNECT)
          return refuse('protocol', `first packet is of type ${this.type}, not CONNECT`, PROTOCOL_ERROR);
        if (this.packets > 0 && this.type === CONNECT)
          return refuse('protocol', 'a second CONNECT', PROTOCOL_ERROR);
        this.state = State.Length;
        this.length = 0;
        this.lengthBytes = 0;
        continue;
      }
      // State.Length: 7 bits per byte, least significant first, at most 4 bytes
      this.length += (b & 0x7f) * 128 ** this.lengthBytes;
      this.lengthBytes++;
      if (b & 0x80) {
        if (this.lengthBytes === 4)
          return refuse('protocol', 'remaining length longer than 4 bytes', PROTOCOL_ERROR);
        continue;
      }
      const limit = this.packets === 0 ? this.limits.maxConnect : this.limits.maxPacket;
      if (this.length > limit) {
        const what = this.packets === 0 ? 'CONNECT' : `packet of type ${this.type}`;
        return refuse('too_large', `${what} of ${this.length} bytes exceeds ${limit}`, PACKET_TOO_LARGE);
      }
      this.remaining = this.length;
      if (this.type === SUBSCRIBE || this.type === UNSUBSCRIBE) {
        this.body = Buffer.allocUnsafe(this.length);
        this.bodyAt = 0;
      }
      this.state = State.Body;
      if (this.remaining === 0) {
        const r = this.done();
        if (r) return r;
      }
    }
    return undefined;
  }

  private done(): Refusal | undefined {
    this.packets++;
    this.held = 0;
    this.state = State.Type;
    const body = this.body;
    if (!body) return undefined;
    this.body = undefined;
    const filters = countFilters(body, this.type === SUBSCRIBE, this.version === 5);
    if (filters > this.limits.maxFilters) {
      const what = this.type === SUBSCRIBE ? 'SUBSCRIBE' : 'UNSUBSCRIBE';
      return refuse(
        'too_many_filters',
        `${what} with ${filters} topic filters (at most ${this.limits.maxFilters})`,
        QUOTA_EXCEEDED,
      );
    }
    return undefined;
  }
}

function refuse(reason: RejectReason, detail: string, code: number): Refusal {
  return { reason, detail, code };
}

/**
 * Topic filters in a SUBSCRIBE (each followed by an options byte) or UNSUBSCRIBE body: packet
 * id, MQTT 5 properties, then length-prefixed filters (MQTT-3.8.3, 3.10.3). A body cut short
 * counts what it holds; the parser refuses it as malformed.
 */
function countFilters(body: Buffer, subscribe: boolean, v5: boolean): number {
  let at = 2;
  if (v5) {
    let len = 0;
    for (let k = 0; k < 4 && at < body.length; k++) {
      const b = body[at++]!;
      len += (b & 0x7f) * 128 ** k;
      if (!(b & 0x80)) break;
    }
    at += len;
  }
  let count = 0;
  while (at + 2 <= body.length) {
    at += 2 + body.readUInt16BE(at) + (subscribe ? 1 : 0);
    count++;
  }
  return count;
}
