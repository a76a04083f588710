/**
 * A minimal edgekeeper etcd server for the benchmark: opens a store in DIR (durability fsync,
 * the writer in its worker thread, as the daemon runs it) and serves the etcd API on PORT. Run
 * as its own process so its RSS can be measured and the slow-disk strace wrapper can hold it.
 * Usage: node --import tsx test/bench/etcd/serve.ts DIR PORT
 */
import { join } from 'node:path';
import { etcdMigrations, startEtcdServer } from '../../../src/etcd/index.js';
import { openStore } from '../../../src/store/index.js';

const [dir, port] = process.argv.slice(2);
if (!dir || !port) {
  process.stderr.write('usage: serve.ts DIR PORT\n');
  process.exit(2);
}
const store = await openStore({
  file: join(dir, 'edgekeeper.db'),
  durability: 'fsync',
  migrations: etcdMigrations,
});
const server = await startEtcdServer(store, { listen: `127.0.0.1:${port}`, stateDir: dir });
process.stdout.write(`listening ${server.port}\n`);
const stop = async () => {
  await server.close();
  await store.close();
  process.exit(0);
};
process.on('SIGTERM', () => void stop());
process.on('SIGINT', () => void stop());
