/**
 * A repeating failure is logged once per cause per interval, with how many were left out; a
 * new cause is logged at once. Time is driven by hand.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import test from 'node:test';
import { pino } from 'pino';
import { RepeatLimiter } from '../src/log.js';

function capture() {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      cb();
    },
  });
  return { lines, logger: pino({ level: 'info' }, sink) };
}

test('a failure repeated every tick: one line per cause per interval, with the count left out', async () => {
  const { lines, logger } = capture();
  let now = 0;
  const r = new RepeatLimiter(logger, 60_000, () => now);
  const full = Object.assign(new Error('disk full'), { code: 'EDGE_ERR_STORAGE' });
  // 6 minutes of a 100 ms tick on a full disk.
  for (; now < 360_000; now += 100) r.error({ err: full }, 'storing probe samples failed');
  // Another cause in between is logged at once.
  r.error({ err: new Error('database is locked') }, 'storing probe samples failed');
  r.warn({ err: full }, 'sync loop failed');
  await new Promise((res) => setImmediate(res));
  const samples = lines.filter((l) => String(l.msg).startsWith('storing probe samples failed'));
  assert.equal(samples.length, 7); // 6 intervals of the disk full, and the locked database
  assert.equal(samples[0]!.suppressed, undefined);
  assert.equal(samples[1]!.suppressed, 599);
  assert.match(String(samples[1]!.msg), /599 more like it left out in the last 60 s/);
  assert.equal(samples[0]!.level, 50);
  assert.equal(lines.filter((l) => l.msg === 'sync loop failed').length, 1);
});
