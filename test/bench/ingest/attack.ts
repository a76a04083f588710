/**
 * The attacker of the abuse bench, its own process (the bench raises its descriptor limit). Config
 * as JSON in argv[2]: {kind, port, from, seconds, ...}; prints one JSON line with what it saw and
 * exits. Every socket comes from `from` (a loopback address other than the devices' 127.0.0.1, as
 * another host would). Kinds:
 * - huge: `conns` connections, half before log-in (a CONNECT) and half logged in as `device` (a
 *   PUBLISH), each sends a fixed header claiming 256 MB and streams bytes until closed;
 * - idle: `conns` sockets that send nothing, opened as fast as possible and held `seconds`;
 * - subscribe: logged in as `device`, SUBSCRIBE packets of 10,000 filters, again on every close;
 * - login: wrong-secret log-ins for `device`, `inFlight` at once, for `seconds`;
 * - grpcPrefix: on the etcd port, `conns` HTTP/2 connections each open Put streams one after
 *   another whose gRPC prefix claims 100 MB, and stream bytes until the stream is closed;
 * - grpcStreams: on the etcd port, `streams` half-open Put streams (headers, never a message) and
 *   `watches` watch streams with one watcher each, 1,000 per connection, held `seconds`;
 * - none: nothing for `seconds` (the bench's control: how much the put p99 moves on its own).
 * Times are ms; "refuse" is from the first byte of the attack to the close (or the CONNACK).
 */
import http2 from 'node:http2';
import net from 'node:net';
import mqttPacket from 'mqtt-packet';

const cfg = JSON.parse(process.argv[2]!) as {
  kind: 'none' | 'huge' | 'idle' | 'subscribe' | 'login' | 'grpcPrefix' | 'grpcStreams';
  port: number;
  from: string;
  seconds: number;
  conns?: number;
  device?: string;
  secret?: string;
  inFlight?: number;
  streams?: number;
  watches?: number;
};

const HUGE = 268_435_455;

function connect(): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port: cfg.port, host: '127.0.0.1', localAddress: cfg.from });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

function header(first: number, remaining: number): Buffer {
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

function connectPacket(id: string, password: string, clientId: string): Buffer {
  return mqttPacket.generate({
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion: 4,
    clean: true,
    clientId,
    username: id,
    password: Buffer.from(password),
    keepalive: 60,
  });
}

/** Logs in; resolves with the socket and the CONNACK return code (-1: closed without one). */
function login(
  id: string,
  password: string,
  clientId = id,
): Promise<{ s: net.Socket; code: number; ms: number }> {
  return connect().then(
    (s) =>
      new Promise((resolve) => {
        const t0 = performance.now();
        let buf = Buffer.alloc(0);
        const done = (code: number) => {
          s.off('data', onData);
          resolve({ s, code, ms: performance.now() - t0 });
        };
        const onData = (d: Buffer) => {
          buf = Buffer.concat([buf, d]);
          if (buf.length >= 4 && buf[0] === 0x20) done(buf[3]!);
        };
        s.on('data', onData);
        s.once('close', () => done(-1));
        s.on('error', () => undefined);
        s.write(connectPacket(id, password, clientId));
      }),
    () => ({ s: new net.Socket(), code: -2, ms: 0 }),
  );
}

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(s.length * q))]! : Number.NaN;
}

async function huge(): Promise<Record<string, unknown>> {
  const n = cfg.conns ?? 4;
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  const one = async (loggedIn: boolean) => {
    let s: net.Socket;
    if (loggedIn) {
      // an empty client id: two connections of one device, neither taking the other over
      const l = await login(cfg.device!, cfg.secret!, '');
      if (l.code !== 0) return { refusedMs: Number.NaN, sent: 0, code: l.code };
      s = l.s;
    } else s = await connect();
    let closed = false;
    const closedAt = new Promise<number>((r) =>
      s.once('close', () => {
        closed = true;
        r(performance.now());
      }),
    );
    s.on('error', () => undefined);
    const t0 = performance.now();
    s.write(header(loggedIn ? 0x30 : 0x10, HUGE));
    if (!loggedIn) s.write(Buffer.from([0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 2, 0, 60]));
    let sent = 0;
    const end = t0 + cfg.seconds * 1000;
    while (!closed && performance.now() < end && sent < HUGE) {
      const ok = s.write(chunk);
      sent += chunk.length;
      if (!ok)
        await Promise.race([
          new Promise((r) => s.once('drain', r)),
          closedAt,
          new Promise((r) => setTimeout(r, 200)),
        ]);
    }
    const refusedMs = closed ? (await closedAt) - t0 : Number.NaN;
    s.destroy();
    return { refusedMs, sent };
  };
  const rs = await Promise.all(Array.from({ length: n }, (_, i) => one(i % 2 === 1)));
  return {
    connections: n,
    closed: rs.filter((r) => Number.isFinite(r.refusedMs)).length,
    refuseMsMax: Math.max(...rs.map((r) => r.refusedMs)),
    bytesSentMax: Math.max(...rs.map((r) => r.sent)),
  };
}

async function idle(): Promise<Record<string, unknown>> {
  const n = cfg.conns ?? 5000;
  const socks: { s: net.Socket; at: number; closedMs?: number }[] = [];
  let failed = 0;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    try {
      const s = await connect();
      const e = { s, at: performance.now() };
      s.on('error', () => undefined);
      s.once('close', () => {
        (e as { closedMs?: number }).closedMs = performance.now() - e.at;
      });
      socks.push(e);
    } catch {
      failed++;
    }
  }
  const openedMs = performance.now() - t0;
  await new Promise((r) => setTimeout(r, cfg.seconds * 1000));
  const closed = socks.filter((x) => x.closedMs !== undefined).map((x) => x.closedMs!);
  const out = {
    sockets: n,
    connectFailed: failed,
    openedMs,
    stillOpen: socks.length - closed.length,
    closedP50Ms: quantile(closed, 0.5),
    closedMaxMs: closed.length ? Math.max(...closed) : Number.NaN,
  };
  for (const x of socks) x.s.destroy();
  return out;
}

async function subscribe(): Promise<Record<string, unknown>> {
  const subscriptions = Array.from({ length: 10_000 }, (_, i) => ({ topic: `flood/${i}`, qos: 1 as const }));
  const packet = mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions });
  const end = performance.now() + cfg.seconds * 1000;
  const refused: number[] = [];
  let packets = 0;
  let logins = 0;
  while (performance.now() < end) {
    const l = await login(cfg.device!, cfg.secret!);
    logins++;
    if (l.code !== 0) {
      l.s.destroy();
      await new Promise((r) => setTimeout(r, 50));
      continue;
    }
    const t0 = performance.now();
    const closed = new Promise<void>((r) => l.s.once('close', () => r()));
    // as many as the connection takes until it is closed, or 2 s
    const until = Math.min(end, t0 + 2000);
    let open = true;
    void closed.then(() => (open = false));
    while (open && performance.now() < until) {
      const ok = l.s.write(packet);
      packets++;
      if (!ok)
        await Promise.race([
          new Promise((r) => l.s.once('drain', r)),
          closed,
          new Promise((r) => setTimeout(r, 100)),
        ]);
      else await new Promise((r) => setImmediate(r));
    }
    if (!open) refused.push(performance.now() - t0);
    l.s.destroy();
  }
  return { logins, packets, filtersSent: packets * 10_000, refusedP50Ms: quantile(refused, 0.5) };
}

async function loginFlood(): Promise<Record<string, unknown>> {
  const end = performance.now() + cfg.seconds * 1000;
  const codes: Record<string, number> = {};
  const lat: number[] = [];
  const worker = async () => {
    while (performance.now() < end) {
      const l = await login(cfg.device!, 'not-the-secret');
      l.s.destroy();
      codes[l.code] = (codes[l.code] ?? 0) + 1;
      lat.push(l.ms);
    }
  };
  await Promise.all(Array.from({ length: cfg.inFlight ?? 40 }, worker));
  return {
    attempts: lat.length,
    perSecond: lat.length / cfg.seconds,
    // 4: password checked and wrong; 3: throttled unchecked; -1: closed without a CONNACK
    codes,
    connackP50Ms: quantile(lat, 0.5),
    connackP99Ms: quantile(lat, 0.99),
  };
}

function h2session(): http2.ClientHttp2Session {
  const s = http2.connect(`http://127.0.0.1:${cfg.port}`, {
    createConnection: () => net.connect({ port: cfg.port, host: '127.0.0.1', localAddress: cfg.from }),
  });
  s.on('error', () => undefined);
  return s;
}

function h2stream(s: http2.ClientHttp2Session, path: string): http2.ClientHttp2Stream {
  const req = s.request({
    ':method': 'POST',
    ':path': path,
    'content-type': 'application/grpc',
    te: 'trailers',
  });
  req.on('error', () => undefined);
  req.on('data', () => undefined);
  return req;
}

async function grpcPrefix(): Promise<Record<string, unknown>> {
  const end = performance.now() + cfg.seconds * 1000;
  const sent: number[] = [];
  const refused: number[] = [];
  const chunk = Buffer.alloc(64 * 1024);
  const prefix = Buffer.from([0, 0x06, 0x40, 0, 0]); // 100 MiB
  const worker = async () => {
    const s = h2session();
    while (performance.now() < end && !s.destroyed) {
      const req = h2stream(s, '/etcdserverpb.KV/Put');
      const t0 = performance.now();
      let n = 0;
      req.write(prefix);
      while (!req.closed && n < 100 * 1024 * 1024 && performance.now() < end + 60_000) {
        n += chunk.length;
        if (!req.write(chunk))
          await Promise.race([
            new Promise((r) => req.once('drain', r)),
            new Promise((r) => req.once('close', r)),
            new Promise((r) => setTimeout(r, 1000)),
          ]);
      }
      if (!req.closed) await new Promise((r) => req.once('close', r));
      sent.push(n);
      refused.push(performance.now() - t0);
    }
    s.destroy();
  };
  await Promise.all(Array.from({ length: cfg.conns ?? 4 }, worker));
  return {
    claims: sent.length,
    sentBytesP50: quantile(sent, 0.5),
    sentBytesMax: Math.max(...sent),
    refusedP50Ms: quantile(refused, 0.5),
    refusedP99Ms: quantile(refused, 0.99),
  };
}

async function grpcStreams(): Promise<Record<string, unknown>> {
  const t0 = performance.now();
  const sessions: http2.ClientHttp2Session[] = [];
  const all: http2.ClientHttp2Stream[] = [];
  const open = (n: number, path: string, first?: Buffer) => {
    for (let i = 0; i < n; i += 1000) {
      const s = h2session();
      sessions.push(s);
      for (let j = i; j < Math.min(n, i + 1000); j++) {
        const req = h2stream(s, path);
        if (first) req.write(first);
        all.push(req);
      }
    }
  };
  open(cfg.streams ?? 20_000, '/etcdserverpb.KV/Put');
  // WatchRequest { create_request { key: "/w" } }
  const create = Buffer.from([0x0a, 0x04, 0x0a, 0x02, 0x2f, 0x77]);
  const framed = Buffer.concat([Buffer.from([0, 0, 0, 0, create.length]), create]);
  open(cfg.watches ?? 2000, '/etcdserverpb.Watch/Watch', framed);
  await new Promise((r) => setTimeout(r, cfg.seconds * 1000));
  const closed = all.filter((r) => r.closed);
  const out = {
    opened: all.length,
    connections: sessions.length,
    refused: closed.filter((r) => r.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM).length,
    closedOther: closed.filter((r) => r.rstCode !== http2.constants.NGHTTP2_REFUSED_STREAM).length,
    heldOpen: all.length - closed.length,
    seconds: (performance.now() - t0) / 1000,
  };
  for (const s of sessions) s.destroy();
  return out;
}

const none = async () => {
  await new Promise((r) => setTimeout(r, cfg.seconds * 1000));
  return {};
};

const run = { none, huge, idle, subscribe, login: loginFlood, grpcPrefix, grpcStreams }[cfg.kind];
run().then(
  (r) => {
    console.log(JSON.stringify(r));
    process.exit(0);
  },
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
