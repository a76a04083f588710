/**
 * Device load for the ingest benches, run as a child process so the devices' CPU and memory are
 * not counted as the broker's. Config as JSON in argv[2]:
 *   {url, n, seconds, window, rate?, prefix}
 * Connects n anonymous MQTT.js 3.1.1 clients (client id = prefix + i), prints {"phase":"start"},
 * publishes QoS 1 reports for `seconds` (each device keeps `window` in flight, or paces to a
 * total of `rate` per second), prints {"phase":"end", acked, sent, p50, p99} (publish-to-PUBACK
 * in ms) and exits.
 */
import mqtt, { type MqttClient } from 'mqtt';

const cfg = JSON.parse(process.argv[2]!) as {
  url: string;
  n: number;
  seconds: number;
  window: number;
  rate?: number;
  prefix: string;
};
const clients: MqttClient[] = [];
const lat: number[] = [];
let acked = 0;
let sent = 0;
let running = false;

for (let i = 0; i < cfg.n; i += 50) {
  await Promise.all(
    Array.from({ length: Math.min(50, cfg.n - i) }, (_, k) => {
      const id = `${cfg.prefix}${i + k}`;
      // anonymous: scrypt costs only at connect and 1,000 checks would dominate the set-up
      const c = mqtt.connect(cfg.url, { clientId: id, reconnectPeriod: 0, keepalive: 60 });
      clients.push(c);
      return new Promise<void>((resolve, reject) => {
        c.once('connect', () => resolve());
        c.once('error', reject);
      });
    }),
  );
}

function pump(c: MqttClient, id: string, state: { seq: number }): void {
  if (!running) return;
  const seq = state.seq++;
  const t0 = performance.now();
  sent++;
  c.publish(
    `edgekeeper/v1/devices/${id}/report`,
    `{"seq":${seq},"metrics":{"v":${seq},"t":21.5}}`,
    { qos: 1 },
    (err) => {
      if (err) return;
      acked++;
      // keep at most 200k samples: enough for p99
      if (lat.length < 200_000) lat.push(performance.now() - t0);
      if (!cfg.rate) pump(c, id, state);
    },
  );
}

console.log(JSON.stringify({ phase: 'start' }));
running = true;
const t0 = performance.now();
clients.forEach((c, i) => {
  const id = `${cfg.prefix}${i}`;
  const state = { seq: 0 };
  if (cfg.rate) {
    // paced: each device publishes every n/rate seconds, staggered
    const every = (cfg.n / cfg.rate) * 1000;
    const tick = () => {
      if (!running) return;
      pump(c, id, state);
      setTimeout(tick, every);
    };
    setTimeout(tick, (i / cfg.n) * every);
  } else for (let k = 0; k < cfg.window; k++) pump(c, id, state);
});
await new Promise((r) => setTimeout(r, cfg.seconds * 1000));
running = false;
const elapsed = (performance.now() - t0) / 1000;
const ackedAtEnd = acked;
await new Promise((r) => setTimeout(r, 500));
lat.sort((a, b) => a - b);
const q = (p: number) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] ?? 0;
console.log(JSON.stringify({ phase: 'end', elapsed, acked: ackedAtEnd, sent, p50: q(0.5), p99: q(0.99) }));
for (const c of clients) c.end(true);
process.exit(0);
