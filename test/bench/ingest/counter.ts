/**
 * The raw-rate subscriber for the ingest benches, run as its own process: it subscribes to every
 * device's report topic at QoS 1 and only counts. It uses the same MQTT client (MQTT.js) and, for
 * MQTT 5, the session options of edgekeeper's external mode, so the raw phase and the ingest phase differ only in what is done
 * per message. Config as JSON in argv[2]: {url, protocolVersion, receiveMaximum} (MQTT 5: the
 * daemon's Receive Maximum, so both get the same in-flight window from the broker). Prints
 * {"ready":true}, then answers every line on stdin with {"count": n}.
 */
import { createInterface } from 'node:readline';
import mqtt from 'mqtt';

const cfg = JSON.parse(process.argv[2]!) as { url: string; protocolVersion: 4 | 5; receiveMaximum: number };
let count = 0;
const c = mqtt.connect(cfg.url, {
  clientId: `bench-counter-${process.pid}`,
  protocolVersion: cfg.protocolVersion,
  reconnectPeriod: 0,
  // MQTT 5: a persistent session as external mode's, but ending with the connection, so the
  // broker does not queue reports for a counter that is gone while the next phase runs
  ...(cfg.protocolVersion === 5
    ? { clean: false, properties: { sessionExpiryInterval: 0, receiveMaximum: cfg.receiveMaximum } }
    : { clean: true }),
});
c.on('message', () => count++);
c.on('error', (err) => {
  process.stderr.write(`counter: ${err.message}\n`);
  process.exit(1);
});
c.once('connect', () =>
  c.subscribe('edgekeeper/v1/devices/+/report', { qos: 1 }, (err) => {
    if (err) throw err;
    console.log(JSON.stringify({ ready: true }));
  }),
);
createInterface({ input: process.stdin }).on('line', () => console.log(JSON.stringify({ count })));
process.stdin.on('end', () => c.end(true, {}, () => process.exit(0)));
