/**
 * Child process for the crash tests: a real store (fsync durability) and the ingest part in the
 * mode given by EK_INGEST_OPTS (JSON IngestOptions overrides). Prints one JSON line
 * {pid, port} when ready; the parent kills it with SIGKILL.
 */
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { systemClock } from '../../src/clock.js';
import { createIngestPart, ingestDefaults, ingestMigrations } from '../../src/ingest/index.js';
import { silentLogger } from '../../src/log.js';
import { openStore } from '../../src/store/index.js';

const dir = process.env.EK_DIR!;
const overrides = JSON.parse(process.env.EK_INGEST_OPTS ?? '{}');
const store = await openStore({
  file: join(dir, 'edgekeeper.db'),
  migrations: ingestMigrations,
  durability: 'fsync',
});
const part = createIngestPart(
  {
    store,
    logger: silentLogger(),
    registry: new Registry(),
    clock: systemClock,
    http: { add: () => undefined },
    stateDir: dir,
    runtimeDir: dir,
    nodeName: 'crash',
    addReadinessCheck: () => undefined,
  },
  ingestDefaults({ listen: '127.0.0.1:0', ...overrides }),
);
await part.start();
// external mode: the broker keeps reports for us only once our session and subscription exist
await part.ready();
console.log(JSON.stringify({ pid: process.pid, port: part.addresses()[0]?.port ?? 0 }));
process.on('SIGTERM', () => {
  void part
    .stop()
    .then(() => store.close())
    .then(() => process.exit(0));
});
