/**
 * The daemon's schedules across wall-clock steps (a Pi without a real-time clock: NTP steps it
 * by up to years either way), on a ManualClock whose wall reading steps apart from monotonic
 * time: periodic compaction keeps `retention` of history by elapsed time, the backup schedule
 * runs once (not a burst) after a step forward and keeps running after a step back, and backup
 * rotation keeps the newest backups made, whatever time they carry.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ManualClock } from '../../src/clock.js';
import { Compactor, daemonMigrations, runScheduledBackup } from '../../src/daemon/index.js';
import { CronSchedule } from '../../src/daemon/schedule.js';
import { silentLogger } from '../../src/log.js';
import { openStore } from '../../src/store/index.js';
import type { Store } from '../../src/store/types.js';

const YEAR = 365 * 86_400_000;
const MINUTE = 60_000;
const tick = async () => {
  for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
};

describe('daemon schedules across clock steps', () => {
  let dir: string;
  let store: Store;
  const clock = new ManualClock(Date.UTC(2026, 5, 1, 12, 0, 30));
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ek-clock-'));
    store = await openStore({
      file: join(dir, 'edgekeeper.db'),
      inlineWriter: true,
      clock,
      logger: silentLogger(),
      migrations: daemonMigrations,
    });
  });
  after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('periodic compaction keeps its retention of history when the clock steps forward a year', async () => {
    const c = new Compactor({ store, clock, logger: silentLogger(), mode: 'periodic', retention: 10_000 });
    c.start();
    for (let i = 0; i < 5; i++) {
      await store.put({ key: Buffer.from('k'), value: Buffer.from(String(i)) });
      clock.advance(1000);
      await tick();
      await c.whenIdle();
    }
    clock.step(YEAR);
    await store.put({ key: Buffer.from('k'), value: Buffer.from('after') });
    clock.advance(1000);
    await tick();
    await c.whenIdle();
    await c.stop();
    // 6 s of history exist, retention is 10 s: nothing may be compacted
    assert.equal(store.compactRevision(), 0, 'a step forward compacted away the history');
  });

  test('a step forward runs the backup schedule once, a step back does not stop it', async () => {
    const runs: number[] = [];
    const s = new CronSchedule('*/5 * * * *', clock, async () => {
      runs.push(clock.now());
    });
    s.start();
    const minutes = async (n: number) => {
      for (let i = 0; i < n; i++) {
        clock.advance(MINUTE);
        await tick();
      }
    };
    await minutes(10);
    assert.equal(runs.length, 2, 'every 5 minutes');
    clock.step(YEAR); // a year of missed slots
    await minutes(1);
    await minutes(4);
    assert.ok(runs.length <= 3, `a step forward ran ${runs.length - 2} missed slots`);
    const before = runs.length;
    clock.step(-2 * YEAR);
    await minutes(10);
    assert.equal(runs.length, before + 2, 'the schedule stopped after a step back');
    for (const t of runs.slice(before)) assert.equal(new Date(t).getUTCMinutes() % 5, 0);
    await s.stop();
  });

  test('rotation keeps the newest backups made, also when the clock stepped back', async () => {
    const bdir = join(dir, 'backups');
    const made: string[] = [];
    const t = clock.now();
    // three backups, then the clock goes back a year: the next two carry older times
    for (const at of [t, t + MINUTE, t + 2 * MINUTE, t - YEAR, t - YEAR + MINUTE])
      made.push((await runScheduledBackup(store, bdir, 2, at)).file);
    assert.deepEqual(
      readdirSync(bdir).sort(),
      made
        .slice(-2)
        .map((f) => f.slice(bdir.length + 1))
        .sort(),
    );
  });
});
