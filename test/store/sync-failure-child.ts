/**
 * Child process for sync-failure.test.ts: puts keys one after another (and a few at once) and
 * prints "ack <key> <revision>", "err <key> <code>" per write and "fatal" when the store reports
 * a failed sync; it exits after 40 failed writes, or after 300 rounds.
 */
import { openStore } from '../../src/store/index.js';

const file = process.argv[2]!;
const out = (s: string) => process.stdout.write(`${s}\n`);
const s = await openStore({ file, durability: 'fsync', onFatal: () => out('fatal') });
let failures = 0;
for (let i = 0; failures < 40 && i < 300; i++) {
  const keys = Array.from({ length: 1 + (i % 4) }, (_, j) => `k/${i}/${j}`);
  await Promise.all(
    keys.map((key) =>
      s.put({ key: Buffer.from(key), value: Buffer.from(key) }).then(
        (r) => out(`ack ${key} ${r.header.revision}`),
        (e: { code?: string }) => {
          failures++;
          out(`err ${key} ${e.code}`);
        },
      ),
    ),
  );
}
await s.close().catch(() => {});
