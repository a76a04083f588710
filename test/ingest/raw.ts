/** Raw MQTT sockets for the abuse tests: exact bytes on the wire, whatever a client library allows. */
import net from 'node:net';
import mqttPacket from 'mqtt-packet';

export interface Raw {
  sock: net.Socket;
  /** Packets received, parsed (MQTT 3.1.1 or 5 as connected). */
  packets: mqttPacket.Packet[];
  closed: Promise<void>;
  isClosed(): boolean;
  send(b: Uint8Array): void;
  /** Resolves with the next packet of `cmd` (or undefined if the socket closes first). */
  next(cmd: string): Promise<mqttPacket.Packet | undefined>;
}

/** A fixed header: type/flags byte and the remaining length (MQTT-2.2.3), without a body. */
export function header(first: number, remaining: number): Buffer {
  const out = [first];
  let x = remaining;
  do {
    let b = x % 128;
    x = Math.floor(x / 128);
    if (x > 0) b |= 0x80;
    out.push(b);
  } while (x > 0);
  return Buffer.from(out);
}

export function open(port: number, localAddress = '127.0.0.1', protocolVersion: 4 | 5 = 4): Promise<Raw> {
  const sock = net.connect({ port, host: '127.0.0.1', localAddress });
  const parser = mqttPacket.parser({ protocolVersion });
  const packets: mqttPacket.Packet[] = [];
  const waiters: { cmd: string; resolve: (p: mqttPacket.Packet | undefined) => void }[] = [];
  let isClosed = false;
  parser.on('packet', (p) => {
    packets.push(p);
    for (const w of waiters.filter((x) => x.cmd === p.cmd)) {
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve(p);
    }
  });
  parser.on('error', () => undefined);
  sock.on('data', (d) => parser.parse(d));
  sock.on('error', () => undefined);
  const closed = new Promise<void>((r) =>
    sock.once('close', () => {
      isClosed = true;
      for (const w of waiters.splice(0)) w.resolve(undefined);
      r();
    }),
  );
  return new Promise((resolve, reject) => {
    sock.once('error', reject);
    sock.once('connect', () =>
      resolve({
        sock,
        packets,
        closed,
        isClosed: () => isClosed,
        send: (b) => {
          if (!sock.destroyed) sock.write(b);
        },
        next: (cmd) => {
          const have = packets.find((p) => p.cmd === cmd);
          if (have) {
            packets.splice(packets.indexOf(have), 1);
            return Promise.resolve(have);
          }
          if (isClosed) return Promise.resolve(undefined);
          return new Promise((r) => waiters.push({ cmd, resolve: r }));
        },
      }),
    );
  });
}

/** A raw device logged in as `id`; rejects unless the CONNACK says success. */
export async function login(
  port: number,
  id: string,
  secret: string,
  opts: { protocolVersion?: 4 | 5; localAddress?: string } = {},
): Promise<Raw> {
  const { raw, code } = await attempt(port, id, secret, opts);
  if (code !== 0) throw new Error(`login of ${id} refused: ${code}`);
  return raw;
}

/** One log-in: the CONNACK's return (or reason) code, -1 when the socket closed without one. */
export async function attempt(
  port: number,
  id: string,
  secret: string,
  opts: { protocolVersion?: 4 | 5; localAddress?: string } = {},
): Promise<{ raw: Raw; code: number }> {
  const v = opts.protocolVersion ?? 4;
  const r = await open(port, opts.localAddress, v);
  r.send(
    mqttPacket.generate(
      {
        cmd: 'connect',
        protocolId: 'MQTT',
        protocolVersion: v,
        clean: true,
        clientId: id,
        username: id,
        password: Buffer.from(secret),
        keepalive: 60,
      },
      { protocolVersion: v },
    ),
  );
  const ack = (await r.next('connack')) as mqttPacket.IConnackPacket | undefined;
  return { raw: r, code: ack?.returnCode ?? ack?.reasonCode ?? -1 };
}

/** Resolves true when `r` closes within `ms`, false if it is still open then. */
export function closesWithin(r: Raw, ms: number): Promise<boolean> {
  return Promise.race([
    r.closed.then(() => true),
    new Promise<boolean>((res) => setTimeout(() => res(false), ms).unref()),
  ]);
}
