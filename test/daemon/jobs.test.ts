/**
 * The daemon's scheduled work against the real SQLite store: automatic compaction in both
 * modes (time driven by a ManualClock), scheduled backups with rotation and their integrity
 * check, the store readiness check, and the heartbeat that gates the systemd watchdog.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Registry } from 'prom-client';
import { ManualClock } from '../../src/clock.js';
import {
  Compactor,
  daemonMigrations,
  Heartbeat,
  JobRecorder,
  registerObjectiveMetrics,
  runScheduledBackup,
  storeReadinessCheck,
  verifyDatabaseFile,
} from '../../src/daemon/index.js';
import { CompactedError, CorruptDatabaseError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { openStore } from '../../src/store/index.js';
import type { Store, WriteRequest, WriteResponse } from '../../src/store/types.js';

const key = (s: string) => Buffer.from(s);

async function putN(store: Store, n: number): Promise<void> {
  for (let i = 0; i < n; i++) await store.put({ key: key(`k${i % 3}`), value: key(`v${i}`) });
}

/** Lets promise chains started by timers run to completion. */
let store: Store;

/**
 * Let timers' callbacks run, then wait until every write queued so far is durable: a write of
 * nothing queues behind them in the writer and settles after their batch has synced.
 */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  await store.write({});
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

describe('daemon jobs on the real store', () => {
  let dir: string;
  const clock = new ManualClock();

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ek-jobs-'));
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

  test('revision mode compacts to current - retention and records the run', async () => {
    await putN(store, 10); // revisions 2..11
    const registry = new Registry();
    const jobs = new JobRecorder(registry, silentLogger(), clock);
    const c = new Compactor({ store, clock, logger: silentLogger(), mode: 'revision', retention: 5, jobs });
    assert.equal(await c.runOnce(), store.revision() - 5);
    assert.equal(store.compactRevision(), store.revision() - 5);
    assert.throws(
      () => store.range({ key: key('k0'), revision: store.compactRevision() - 1 }),
      CompactedError,
    );
    assert.equal(await c.runOnce(), undefined, 'nothing new to compact');
    // Scheduled: every 5 minutes.
    c.start();
    await putN(store, 3);
    clock.advance(5 * 60_000);
    await settle();
    await c.whenIdle();
    await c.stop();
    assert.equal(store.compactRevision(), store.revision() - 5);
    const text = await registry.metrics();
    assert.match(text, /edgekeeper_daemon_jobs_total\{job="compaction",result="ok"\} 1/);
  });

  test('periodic mode compacts to the revision that was current `retention` ago', async () => {
    const registry = new Registry();
    const jobs = new JobRecorder(registry, silentLogger(), clock);
    const retention = 10_000;
    const c = new Compactor({ store, clock, logger: silentLogger(), mode: 'periodic', retention, jobs });
    assert.equal(c.interval, 1000);
    c.start(); // samples (t0, r0)
    const revAt: number[] = [store.revision()];
    for (let s = 1; s <= 10; s++) {
      await putN(store, 2);
      clock.advance(1000);
      await settle();
      await c.whenIdle();
      revAt.push(store.revision());
    }
    // At t0+10s the sample from t0 is `retention` old: history before it goes.
    assert.equal(store.compactRevision(), revAt[0]);
    const before = store.compactRevision();
    await putN(store, 2);
    clock.advance(1000);
    await settle();
    await c.whenIdle();
    await c.stop();
    // At t0+11s the sample taken at t0+1s (after the first 2 puts' tick) is the cut.
    assert.ok(store.compactRevision() > before, 'compaction moved forward');
    assert.equal(store.compactRevision(), revAt[0]! + 2);
    // History newer than `retention` is still readable.
    assert.ok(store.range({ key: key('k0'), revision: revAt[5]! }).header.revision > 0);
    assert.match(
      await registry.metrics(),
      /edgekeeper_daemon_jobs_total\{job="compaction",result="skipped"\} \d+/,
    );
  });

  test('retention 0 turns compaction off', async () => {
    const c = new Compactor({ store, clock, logger: silentLogger(), mode: 'periodic', retention: 0 });
    assert.equal(c.enabled, false);
    c.start();
    await c.stop();
  });

  test('scheduled backups are complete, verified copies, rotated to `keep`', async () => {
    const bdir = join(dir, 'backups');
    writeFileSync(join(dir, 'backups-not-ours.db'), 'x');
    const made: string[] = [];
    for (let i = 0; i < 4; i++) {
      await store.put({ key: key('backup-marker'), value: key(String(i)) });
      const r = await runScheduledBackup(store, bdir, 2, clock.now() + i * 1000);
      made.push(r.file);
    }
    const files = readdirSync(bdir).sort();
    assert.equal(files.length, 2, files.join(','));
    assert.deepEqual(
      files.map((f) => join(bdir, f)),
      made.slice(2),
    );
    for (const f of files) verifyDatabaseFile(join(bdir, f));
    // The newest copy holds the newest write.
    const copy = await openStore({
      file: made[3]!,
      inlineWriter: true,
      logger: silentLogger(),
      migrations: daemonMigrations,
    });
    try {
      assert.equal(copy.range({ key: key('backup-marker') }).kvs[0]?.value.toString(), '3');
    } finally {
      await copy.close();
    }
  });

  test('the integrity check refuses garbage and damaged files', () => {
    const junk = join(dir, 'junk.db');
    writeFileSync(junk, Buffer.alloc(8192, 0x41));
    assert.throws(() => verifyDatabaseFile(junk), CorruptDatabaseError);
    const empty = join(dir, 'empty.db');
    writeFileSync(empty, '');
    assert.throws(() => verifyDatabaseFile(empty), /no tables/);
    assert.throws(() => verifyDatabaseFile(join(dir, 'missing.db')), CorruptDatabaseError);
  });

  test('store readiness means "can serve": a missed commit objective is a metric, never a 503', async () => {
    const reg = new Registry();
    // An objective no real commit can meet: every p99 is above it.
    registerObjectiveMetrics(reg, store, 0.000001);
    const sample = async (name: string) =>
      (await reg.getSingleMetric(name)!.get()).values.map((v) => v.value);
    // Fewer than 20 commits in the last minute: no p99, and no verdict either way.
    const fresh = await openStore({
      file: join(dir, 'fresh.db'),
      inlineWriter: true,
      clock,
      logger: silentLogger(),
      migrations: daemonMigrations,
    });
    try {
      const idle = new Registry();
      registerObjectiveMetrics(idle, fresh, 50);
      await fresh.put({ key: key('one'), value: key('slow') });
      assert.deepEqual(
        (await idle.getSingleMetric('edgekeeper_daemon_commit_objective_met')!.get()).values,
        [],
      );
      assert.match(await idle.metrics(), /# TYPE edgekeeper_daemon_commit_objective_met gauge/);
    } finally {
      await fresh.close();
    }
    for (let i = 0; i < 20; i++) await store.put({ key: key('p99'), value: key('x') });
    assert.equal(storeReadinessCheck(store)(), undefined, 'ready although every commit misses the objective');
    assert.deepEqual(await sample('edgekeeper_daemon_commit_objective_met'), [0]);
    const p99 = (await sample('edgekeeper_daemon_commit_p99_seconds'))[0]!;
    assert.ok(p99 > 0.000001 / 1000 && p99 < 60, `p99 ${p99} s`);
    assert.deepEqual(await sample('edgekeeper_daemon_commit_objective_seconds'), [0.000001 / 1000]);
    const met = new Registry();
    registerObjectiveMetrics(met, store, 60_000);
    assert.deepEqual(
      (await met.getSingleMetric('edgekeeper_daemon_commit_objective_met')!.get()).values.map((v) => v.value),
      [1],
    );

    const closed = {
      stats: () => {
        throw new Error('the store is closed');
      },
    };
    assert.equal(storeReadinessCheck(closed)(), 'store does not answer: the store is closed');
    const full = { stats: () => ({ ...store.stats(), noSpace: true, dbSize: 2048, quota: 1024 }) };
    assert.match(
      storeReadinessCheck(full)() ?? '',
      /^database is over its quota \(2048 > 1024 bytes\): writes are refused/,
    );
    const stalled = { problem: () => 'store has not committed a write for 6000 ms' };
    assert.equal(storeReadinessCheck(store, stalled)(), 'store has not committed a write for 6000 ms');
  });

  test('heartbeat commits through the real writer and pings on each commit', async () => {
    let pings = 0;
    const hb = new Heartbeat({
      store,
      clock,
      logger: silentLogger(),
      intervalMs: 1000,
      onCommitted: () => pings++,
    });
    hb.start();
    await settle();
    for (let i = 0; i < 3; i++) {
      clock.advance(1000);
      await settle();
    }
    await hb.stop();
    assert.ok(pings >= 3, `pings ${pings}`);
    assert.equal(hb.problem(), undefined);
  });

  test('a stuck writer stops the watchdog pings and fails readiness; recovery resumes them', async () => {
    // A writer that hangs on demand: the one fault the real store cannot be made to show.
    let hang = false;
    const waiting: (() => void)[] = [];
    const stuck = {
      write(_req: WriteRequest): Promise<WriteResponse> {
        if (!hang) return Promise.resolve({ sql: [] });
        return new Promise((resolve) => waiting.push(() => resolve({ sql: [] })));
      },
    };
    let pings = 0;
    const hb = new Heartbeat({
      store: stuck,
      clock,
      logger: silentLogger(),
      intervalMs: 1000,
      stallMs: 2500,
      onCommitted: () => pings++,
    });
    hb.start();
    await settle();
    assert.equal(pings, 1);
    hang = true;
    for (let i = 0; i < 5; i++) {
      clock.advance(1000);
      await settle();
    }
    assert.equal(pings, 1, 'no pings while the write hangs');
    assert.match(hb.problem() ?? '', /^store has not committed a write for \d+ ms$/);
    const check = storeReadinessCheck(store, hb);
    assert.match(check() ?? '', /has not committed/);
    hang = false;
    for (const w of waiting.splice(0)) w();
    await settle();
    assert.equal(hb.problem(), undefined);
    clock.advance(1000);
    await settle();
    assert.ok(pings >= 3, `pings resume: ${pings}`);
    await hb.stop();
  });
});
