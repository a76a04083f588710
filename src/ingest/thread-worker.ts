/**
 * The ingest thread's entry: the embedded broker or the external subscriber with the report
 * path (edge.ts), talking to the main thread's `IngestThread` (thread.ts) through `Peer`.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { createLogger } from '../log.js';
import { IngestEdge, type PasswordCheck } from './edge.js';
import { EmbeddedBroker } from './embedded.js';
import { ExternalSubscriber } from './external.js';
import { Peer } from './rpc.js';
import type { ThreadData } from './thread.js';
import type { ReportBatch } from './writer.js';

// the queue length reaches the main thread with every batch and event; this catches a queue
// that grows while nothing else moves (admission closed), and carries the broker's bounds
const STATS_MS = 1000;

const { opts, level } = (workerData as { data: ThreadData }).data;
const log = createLogger(level).child({ part: 'ingest', thread: 'ingest' });

// the handlers run on later turns, when everything below exists
const peer: Peer = new Peer(parentPort!, {
  async start() {
    await transport.start();
    return embedded?.address() ?? [];
  },
  ready: () => external?.ready(),
  send: (a: { device: string; payload: Uint8Array; timeoutMs: number }) =>
    transport.send(
      a.device,
      Buffer.from(a.payload.buffer, a.payload.byteOffset, a.payload.length),
      a.timeoutMs,
    ),
  revoke: (a: { device: string }) => embedded?.revoke(a.device),
  flush: () => edge.flush(),
  async stop() {
    clearInterval(stats);
    // embedded: close the clients first, then let their in-flight reports commit (their PUBACKs
    // go nowhere, devices resend and seq de-duplicates); external: commit first so the held
    // PUBACKs still reach the broker, then disconnect
    if (embedded) await embedded.stop();
    await edge.writer.drain();
    if (external) await external.stop();
    edge.flush();
  },
});

const edge: IngestEdge = new IngestEdge(opts, {
  commit: (batch: ReportBatch) => peer.call<number>('commit', { batch, queued: edge.writer.queued }),
  checkPassword: (device, password) => peer.call<PasswordCheck>('auth', { device, password }),
  events: (list) => peer.notify('events', { list, queued: edge.writer.queued }),
});
const embedded = opts.mode === 'embedded' ? new EmbeddedBroker(edge, opts, log) : undefined;
const external = opts.mode === 'external' ? new ExternalSubscriber(edge, opts, log) : undefined;
const transport = (embedded ?? external)!;

let last = '';
const stats = setInterval(() => {
  const now = { queued: edge.writer.queued, bounds: embedded?.stats() };
  const text = JSON.stringify(now);
  if (text === last) return;
  last = text;
  peer.notify('events', { list: [], ...now });
}, STATS_MS);
stats.unref();
