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
const makePart = () =>
  createSyncPart(
    {
      store,
      logger: silentLogger(),
      registry: new Registry(),
      clock: systemClock,
      http: { add() {} },
      stateDir: dir,
      runtimeDir: dir,
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
      batchDelay: 0,
    },
  );
const setCursor = (position: number) =>
  store.write({
    sql: [
      { sql: "INSERT OR REPLACE INTO cursors (name, position) VALUES ('reports', ?)", params: [position] },
    ],
  });
const gc = (globalThis as { gc?: () => void }).gc;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
// Idle: the uplink running with nothing to send (cursor at the end), as on a caught-up node.
await setCursor(last);
const idlePart = makePart();
await idlePart.start();
const idle: number[] = [];
for (let i = 0; i < 20; i++) {
  if (i === 10) gc?.();
  await sleep(100);
  if (i >= 10) idle.push(process.memoryUsage().rss);
}
await idlePart.stop();
idle.sort((a, b) => a - b);
const idleRss = idle[idle.length >> 1]!;
await setCursor(0);
const part = makePart();
const cpu0 = process.cpuUsage();
const t0 = performance.now();
await part.start();
let firstAckMs: number | undefined;
const rss: [number, number][] = [];
const cursor = store.query<{ position: number }>("SELECT position FROM cursors WHERE name = 'reports'");
for (;;) {
  await sleep(100);
  const t = performance.now() - t0;
  const mu = process.memoryUsage();
  rss.push([Math.round(t), mu.rss]);
  if (process.env.EK_MEMDEBUG)
    process.stderr.write(
      `${Math.round(t)} rss ${(mu.rss / 1048576).toFixed(0)} heapTotal ${(mu.heapTotal / 1048576).toFixed(0)} heapUsed ${(mu.heapUsed / 1048576).toFixed(0)} external ${(mu.external / 1048576).toFixed(0)} ab ${(mu.arrayBuffers / 1048576).toFixed(0)}\n`,
    );
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
