/**
 * Device load for the ingest benches, run as its own process. Config as JSON in argv[2]:
 *   {port, n, seconds, window, rate?, prefix, seqBase?}
 * Connects n MQTT 3.1.1 devices (client id = prefix + i, anonymous, clean session), prints
 * {"phase":"start"}, publishes QoS 1 reports for `seconds` (each device keeps `window` in flight,
 * or all devices together pace to `rate` per second), prints {"phase":"stopped"}, waits 0.5 s
 * for the last PUBACKs, prints {"phase":"end", acked, sent, elapsed, p50, p99} (publish-to-PUBACK
 * in ms) and exits. Each report carries `seq` and `ts` (the device's clock), as docs/ingest.md asks
 * of devices; EDGEKEEPER_BENCH_REPORT_TS=0 leaves `ts` out (de-duplication then costs more, see
 * the ingest schema). `seq` counts from `seqBase`: the phases of a bench reuse the device ids,
 * and a report repeating an earlier one's seq (and ts) would be taken as a redelivery.
 *
 * Why raw sockets and not MQTT.js: on the 2-core bench machine the devices share the CPU with
 * the broker. Real devices are other machines, so the generator should cost as little as
 * possible, and the same in every phase. Each device is a socket writing pre-framed PUBLISH
 * packets and reading 4-byte PUBACKs; a full MQTT client per device made the generator the
 * bottleneck (it used more CPU than the broker it was measuring).
 */
import net from 'node:net';

const cfg = JSON.parse(process.argv[2]!) as {
  port: number;
  n: number;
  seconds: number;
  window: number;
  rate?: number;
  prefix: string;
  seqBase?: number;
};

const WITH_TS = process.env.EDGEKEEPER_BENCH_REPORT_TS !== '0';

// publish times by packet id; ids cycle through 1..65535 and at most SLOTS are outstanding
const SLOTS = 4096;
const lat: number[] = [];
let acked = 0;
let sent = 0;
let running = false;

function varint(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return out;
}

function str(s: string): Buffer {
  const b = Buffer.from(s);
  return Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b]);
}

function connectPacket(id: string): Buffer {
  // protocol name, level 4 (3.1.1), flags: clean session, keepalive 60 s (MQTT-3.1.2)
  const body = Buffer.concat([str('MQTT'), Buffer.from([4, 0x02, 0, 60]), str(id)]);
  return Buffer.concat([Buffer.from([0x10, ...varint(body.length)]), body]);
}

class Device {
  readonly sock: net.Socket;
  private readonly topic: Buffer;
  private readonly t0 = new Float64Array(SLOTS);
  private nextId = 1;
  private seq = cfg.seqBase ?? 0;
  outstanding = 0;
  private buf: Buffer = Buffer.alloc(0);
  private onConnack?: () => void;

  constructor(readonly id: string) {
    this.topic = str(`edgekeeper/v1/devices/${id}/report`);
    this.sock = net.connect(cfg.port, '127.0.0.1');
    this.sock.setNoDelay(true);
    this.sock.on('data', (d: Buffer) => this.data(d));
    this.sock.on('error', () => undefined);
  }

  connect(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.onConnack = resolve;
      this.sock.once('close', () => reject(new Error(`${this.id}: connection closed`)));
      this.sock.write(connectPacket(this.id));
    });
  }

  publish(): void {
    if (this.outstanding >= SLOTS) return;
    const id = this.nextId;
    this.nextId = id === 65535 ? 1 : id + 1;
    const seq = this.seq++;
    const ts = WITH_TS ? `"ts":${Date.now()},` : '';
    const payload = Buffer.from(`{${ts}"seq":${seq},"metrics":{"v":${seq},"t":21.5}}`);
    const len = this.topic.length + 2 + payload.length;
    const head = Buffer.from([0x32, ...varint(len)]);
    this.t0[id % SLOTS] = performance.now();
    this.outstanding++;
    sent++;
    this.sock.write(Buffer.concat([head, this.topic, Buffer.from([id >> 8, id & 0xff]), payload]));
  }

  private data(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    let i = 0;
    const b = this.buf;
    while (i + 2 <= b.length) {
      // fixed header: type, remaining length (one byte for everything we receive)
      const type = b[i]! >> 4;
      const len = b[i + 1]!;
      if (i + 2 + len > b.length) break;
      if (type === 2) this.onConnack?.();
      else if (type === 4) this.puback((b[i + 2]! << 8) | b[i + 3]!);
      i += 2 + len;
    }
    this.buf = i === b.length ? Buffer.alloc(0) : b.subarray(i);
  }

  private puback(id: number): void {
    this.outstanding--;
    acked++;
    // keep at most 200k samples: enough for p99
    if (lat.length < 200_000) lat.push(performance.now() - this.t0[id % SLOTS]!);
    if (running && !cfg.rate) this.publish();
  }
}

const devices: Device[] = [];
for (let i = 0; i < cfg.n; i += 50) {
  const group = Array.from(
    { length: Math.min(50, cfg.n - i) },
    (_, k) => new Device(`${cfg.prefix}${i + k}`),
  );
  devices.push(...group);
  await Promise.all(group.map((d) => d.connect()));
}

console.log(JSON.stringify({ phase: 'start' }));
running = true;
const t0 = performance.now();
if (cfg.rate) {
  // paced: every device publishes every n/rate seconds, staggered over that period
  const every = (cfg.n / cfg.rate) * 1000;
  devices.forEach((d, i) => {
    const tick = () => {
      if (!running) return;
      d.publish();
      setTimeout(tick, every);
    };
    setTimeout(tick, (i / cfg.n) * every);
  });
} else for (const d of devices) for (let k = 0; k < cfg.window; k++) d.publish();
await new Promise((r) => setTimeout(r, cfg.seconds * 1000));
running = false;
console.log(JSON.stringify({ phase: 'stopped' }));
const elapsed = (performance.now() - t0) / 1000;
const ackedAtEnd = acked;
await new Promise((r) => setTimeout(r, 500));
lat.sort((a, b) => a - b);
const q = (p: number) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] ?? 0;
console.log(JSON.stringify({ phase: 'end', elapsed, acked: ackedAtEnd, sent, p50: q(0.5), p99: q(0.99) }));
for (const d of devices) d.sock.destroy();
process.exit(0);
