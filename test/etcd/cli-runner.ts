/** Runs one etcd CLI command in its own process, as `edgekeeper <command>` will (for api.test.ts). */
import { etcdCliCommands } from '../../src/etcd/index.js';

const [name, ...args] = process.argv.slice(2);
const cmd = etcdCliCommands.find((c) => c.name === name);
if (!cmd) {
  process.stderr.write(`unknown command ${name}\n`);
  process.exit(2);
}
process.exitCode = await cmd.run(args);
