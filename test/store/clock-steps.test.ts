/**
 * Leases across wall-clock steps (a Pi without a real-time clock: NTP steps it by up to years).
 * Deadlines run on the monotonic clock while the process lives; after a restart every lease gets
 * its granted TTL again (the database keeps the TTL, never a wall-clock deadline), so a clock
 * that stepped a year while the node was down neither expires every lease at once nor keeps
 * one forever. The clock is a ManualClock whose wall reading steps apart from monotonic time.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'node:test';
import { ManualClock } from '../../src/clock.js';
import { openStore, type Store } from '../../src/store/index.js';

const YEAR = 365 * 86_400_000;
const b = (s: string) => Buffer.from(s);

async function gone(s: Store, key: string): Promise<boolean> {
  for (let i = 0; i < 100 && s.range({ key: b(key) }).kvs.length > 0; i++)
    await new Promise((r) => setTimeout(r, 10));
  return s.range({ key: b(key) }).kvs.length === 0;
}

for (const [name, step] of [
  ['forward', YEAR],
  ['back', -YEAR],
] as const) {
  test(`a lease outlives a step ${name} of a year by exactly its TTL, in one process and across a restart`, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ek-clock-'));
    const file = join(dir, 's.db');
    const clock = new ManualClock();
    let s = await openStore({ file, durability: 'relaxed', clock, minLeaseTtl: 1 });
    try {
      const l = await s.leaseGrant(10);
      await s.put({ key: b('k'), value: b('v'), lease: l.id });
      clock.advance(2000);
      clock.step(step);
      clock.advance(1000);
      assert.equal(s.leaseTimeToLive(l.id).ttl, 7, 'the step moved the deadline');
      assert.equal(s.range({ key: b('k') }).kvs.length, 1, 'the step expired the lease');
      clock.advance(7500);
      assert.ok(await gone(s, 'k'), 'the lease did not expire after its TTL');

      // a restart: the clock steps again while the node is down
      const l2 = await s.leaseGrant(10);
      await s.put({ key: b('k2'), value: b('v'), lease: l2.id });
      clock.advance(6000);
      await s.close();
      clock.step(step);
      s = await openStore({ file, durability: 'relaxed', clock, minLeaseTtl: 1 });
      assert.equal(s.leaseTimeToLive(l2.id).ttl, 10, 'a lease is re-based to its granted TTL at start');
      clock.advance(5000);
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(s.range({ key: b('k2') }).kvs.length, 1, 'the lease expired early after the restart');
      clock.advance(5500);
      assert.ok(await gone(s, 'k2'), 'the lease lived on after the restart');
    } finally {
      await s.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
