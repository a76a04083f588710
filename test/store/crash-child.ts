/**
 * Child process for crash.test.ts: writes unique keys through the store (sequentially and with
 * many in flight) and prints "ack <key> <revision>" after each write is acknowledged, until it is
 * killed.
 */
import { openStore } from '../../src/store/index.js';

const file = process.argv[2]!;
const round = process.argv[3]!;
const s = await openStore({ file, durability: 'fsync' });
process.stdout.write(`ready ${s.revision()}\n`);
let i = 0;
const ack = (key: string, rev: number) => process.stdout.write(`ack ${key} ${rev}\n`);
const sequential = async () => {
  for (;;) {
    const key = `r${round}/seq/${i++}`;
    const r = await s.put({ key: Buffer.from(key), value: Buffer.from(key) });
    ack(key, r.header.revision);
  }
};
const concurrent = async (w: number) => {
  for (let j = 0; ; j++) {
    const key = `r${round}/w${w}/${j}`;
    const t = await s.txn({
      compare: [{ key: Buffer.from(key), target: 'VERSION', result: 'EQUAL', version: 0 }],
      success: [{ put: { key: Buffer.from(key), value: Buffer.from(key) } }],
    });
    ack(key, t.header.revision);
  }
};
await Promise.all([sequential(), ...Array.from({ length: 16 }, (_, w) => concurrent(w))]);
