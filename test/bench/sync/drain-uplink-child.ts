/**
 * The bench's node: opens the prepared store, measures idle RSS with the uplink created but not
 * started, then starts it and samples RSS until the reports cursor reaches the last id.
 * argv: <state dir> <receiver url> <compression> <batch records>
 */
import { Registry } from 'prom-client';
import { systemClock } from '../../../src/clock.js';
import { silentLogger } from '../../../src/log.js';
import { openStore } from '../../../src/store/index.js';
import { createSyncPart, syncMigrations } from '../../../src/sync/index.js';
import { SOURCE_MIGRATIONS } from '../../sync/helpers.js';

const [dir, url, compression, batch] = process.argv.slice(2) as [string, string, 'gzip' | 'brotli', string];
const store = await openStore({
  file: `${dir}/edgekeeper.db`,
  migrations: [...syncMigrations, ...SOURCE_MIGRATIONS],
});
const last = (store.query('SELECT max(id) AS m FROM reports').get() as { m: number }).m;
const part = createSyncPart(
  {
    store,
    logger: silentLogger(),
    registry: new Registry(),
    clock: systemClock,
    http: { add() {} },
    stateDir: dir,
    nodeName: 'bench',
    addReadinessCheck() {},
  },
  {
    url,
    token: 'bench-token',
    compression,
    batchMaxRecords: Number(batch),
    batchMaxBytes: 16 * 1024 * 1024,
    idleInterval: 20,
  },
);
const gc = (globalThis as { gc?: () => void }).gc;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const idle: number[] = [];
for (let i = 0; i < 10; i++) {
  gc?.();
  await sleep(100);
  idle.push(process.memoryUsage().rss);
}
idle.sort((a, b) => a - b);
const idleRss = idle[idle.length >> 1]!;
const cpu0 = process.cpuUsage();
const t0 = performance.now();
await part.start();
let firstAckMs: number | undefined;
const rss: [number, number][] = [];
const cursor = store.query<{ position: number }>("SELECT position FROM cursors WHERE name = 'reports'");
for (;;) {
  await sleep(100);
  const t = performance.now() - t0;
  rss.push([Math.round(t), process.memoryUsage().rss]);
  if (firstAckMs === undefined && part.status().lastSuccess !== null) firstAckMs = t;
  if ((cursor.get()?.position ?? 0) >= last) break;
}
const drainMs = performance.now() - t0;
const cpu = process.cpuUsage(cpu0);
await part.stop();
await store.close();
process.stdout.write(
  `${JSON.stringify({ idleRss, rss, firstAckMs, drainMs, cpuUserMs: cpu.user / 1000, cpuSystemMs: cpu.system / 1000 })}\n`,
);
process.exit(0);
