/** The bench's receiver, in its own process so its CPU is measured apart. argv: <database url> */
import { startFleetServer } from '../../../src/sync/index.js';

const srv = await startFleetServer({
  database: process.argv[2]!,
  port: 0,
  nodes: { bench: 'bench-token' },
  poolSize: 4,
});
process.stdout.write(`${JSON.stringify({ url: srv.url })}\n`);
process.once('SIGTERM', () => {
  const cpu = process.cpuUsage();
  process.stdout.write(`${JSON.stringify({ cpuUserMs: cpu.user / 1000, cpuSystemMs: cpu.system / 1000 })}\n`);
  void srv.close().then(() => process.exit(0));
});
