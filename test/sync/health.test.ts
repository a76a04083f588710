/**
 * The node's health as it goes up to the fleet, on a real SQLite store: a change that holds for
 * two looks becomes one event row, a steady state or a one-look flicker writes nothing, numbers
 * changing inside an alert's text write nothing, a restart neither repeats nor loses a change,
 * and a database over its quota still records that its disk is full.
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { ManualClock } from '../../src/clock.js';
import { silentLogger } from '../../src/log.js';
import type { Store } from '../../src/store/types.js';
import { alertKey, HealthTracker, type Observation } from '../../src/sync/health.js';
import { openNodeStore, tempDir } from './helpers.js';

function healthy(over: Partial<Observation> = {}): Observation {
  return {
    ready: true,
    failing: {},
    alerts: [],
    uplinkDown: false,
    uplink: { state: 'ok' },
    disk: { dbBytes: 1000, quotaBytes: 2000 },
    ...over,
  };
}

function events(store: Store): { kind: string; subject: string | null; data: Record<string, unknown> }[] {
  return store
    .query<{ kind: string; subject: string | null; data: string }>(
      'SELECT kind, subject, data FROM events ORDER BY id',
    )
    .all()
    .map((e) => ({ kind: e.kind, subject: e.subject, data: JSON.parse(e.data) as Record<string, unknown> }));
}

describe('node health tracker', () => {
  const dirs: { remove(): void }[] = [];
  const stores: Store[] = [];
  after(async () => {
    for (const s of stores) await s.close();
    for (const d of dirs) d.remove();
  });

  async function setup(quotaBytes?: number) {
    const t = tempDir();
    dirs.push(t);
    const clock = new ManualClock(1_700_000_000_000);
    const store = await openNodeStore(t.dir, { clock });
    stores.push(store);
    let obs = healthy();
    const make = () =>
      new HealthTracker(store, clock, silentLogger(), () => {
        if (quotaBytes !== undefined)
          return { ...obs, diskFull: store.stats().noSpace ? 'quota' : undefined };
        return obs;
      });
    const tracker = make();
    const look = async (o: Observation, n = 1) => {
      obs = o;
      for (let i = 0; i < n; i++) {
        clock.advance(10_000);
        await tracker.tick();
      }
    };
    return { store, clock, tracker, look, make, set: (o: Observation) => (obs = o) };
  }

  test('a steady state writes nothing after the first record; a one-look flicker writes nothing', async () => {
    const { store, look } = await setup();
    await look(healthy(), 2);
    assert.deepEqual(
      events(store).map((e) => e.kind),
      ['node.ready'],
    );
    const changes = () => store.query<{ n: number }>('SELECT total_changes() AS n').get()!.n;
    const before = changes();
    await look(healthy(), 50);
    // One look not ready, then ready again: no row.
    await look(healthy({ ready: false, failing: { store: 'store commit p99 90 ms > objective 50 ms' } }));
    await look(healthy(), 3);
    assert.equal(changes(), before, 'no write while nothing changes');
    assert.equal(events(store).length, 1);
  });

  test('readiness, alerts, uplink and disk changes: one row each, with what is wrong', async () => {
    const { store, look } = await setup();
    await look(healthy(), 2);
    const sick = healthy({
      ready: false,
      failing: { store: 'store commit p99 90 ms > objective 50 ms' },
      alerts: [
        { severity: 'warning', text: 'disk 91% full' },
        { severity: 'critical', text: 'probe <b>fsync</b> stopped: budget' },
      ],
      uplinkDown: true,
      uplink: { state: 'offline', lastError: 'connect ECONNREFUSED' },
      diskFull: 'filesystem',
      disk: { usedBytes: 99, totalBytes: 100 },
    });
    await look(sick, 2);
    // The disk fills further: the alert's number changes, nothing else does.
    const fuller: Observation = {
      ...sick,
      alerts: [
        { severity: 'warning', text: 'disk 97% full' },
        { severity: 'critical', text: 'probe <b>fsync</b> stopped: budget' },
      ],
    };
    await look(fuller, 3);
    // A second readiness check fails too: a new not_ready row naming both.
    await look({ ...fuller, failing: { ...sick.failing, sync: 'sync backlog over the disk budget' } }, 2);
    await look(healthy(), 2);
    const got = events(store).slice(1);
    assert.deepEqual(
      got.map((e) => `${e.kind} ${e.subject ?? ''}`.trim()),
      [
        'node.not_ready',
        'alert.raised disk 91% full',
        'alert.raised probe <b>fsync</b> stopped',
        'uplink.down',
        'disk.full filesystem',
        'node.not_ready',
        'node.ready',
        'alert.cleared disk 91% full',
        'alert.cleared probe <b>fsync</b> stopped',
        'uplink.up',
        'disk.ok',
      ],
    );
    assert.deepEqual(got[0]!.data, { failing: { store: 'store commit p99 90 ms > objective 50 ms' } });
    assert.deepEqual(got[2]!.data, { severity: 'critical', text: 'probe <b>fsync</b> stopped: budget' });
    assert.deepEqual(got[3]!.data, { state: 'offline', lastError: 'connect ECONNREFUSED' });
    assert.equal(got[4]!.data.reason, 'filesystem');
    assert.deepEqual(Object.keys(got[5]!.data.failing as object).sort(), ['store', 'sync']);
    // The clear carries the alert's last text.
    assert.equal(got[7]!.data.text, 'disk 97% full');
    assert.equal(got[9]!.data.downSeconds, 70, 'first look down at 30 s, first look up at 100 s');
  });

  test('unknown alerts (no frame drawn yet) clear nothing', async () => {
    const { store, look } = await setup();
    await look(healthy({ alerts: [{ severity: 'warning', text: 'SoC 82 °C: the CPU throttles' }] }), 2);
    await look(healthy({ alerts: undefined }), 5);
    assert.deepEqual(
      events(store).map((e) => e.kind),
      ['node.ready', 'alert.raised'],
    );
  });

  test('a restart neither repeats nor loses a change', async () => {
    const { store, look, make, set } = await setup();
    await look(healthy({ alerts: [{ severity: 'warning', text: 'disk 91% full' }] }), 2);
    assert.equal(events(store).length, 2);
    // Same state after restart: nothing new. Changed while down: recorded once it holds.
    const again = make();
    await again.tick();
    await again.tick();
    assert.equal(events(store).length, 2);
    set(healthy());
    const third = make();
    await third.tick();
    await third.tick();
    assert.deepEqual(
      events(store).map((e) => e.kind),
      ['node.ready', 'alert.raised', 'alert.cleared'],
    );
  });

  test('a database over its quota still records disk.full', async () => {
    const t = tempDir();
    dirs.push(t);
    const { openStore } = await import('../../src/store/index.js');
    const { syncMigrations } = await import('../../src/sync/index.js');
    const store = await openStore({
      file: `${t.dir}/q.db`,
      durability: 'relaxed',
      quotaBytes: 64 * 1024,
      migrations: syncMigrations,
    });
    stores.push(store);
    const clock = new ManualClock(1_700_000_000_000);
    const tracker = new HealthTracker(store, clock, silentLogger(), () =>
      healthy({ diskFull: store.stats().noSpace ? 'quota' : undefined }),
    );
    await tracker.tick();
    await tracker.tick();
    // Fill past the quota through the etcd side, as a local application would.
    for (let i = 0; i < 40 && !store.stats().noSpace; i++)
      await store.put({ key: Buffer.from(`/fill/${i}`), value: Buffer.alloc(8 * 1024, i) }).catch(() => {});
    assert.ok(store.stats().noSpace, 'the database is over its quota');
    await tracker.tick();
    await tracker.tick();
    assert.deepEqual(
      events(store).map((e) => `${e.kind} ${e.subject ?? ''}`.trim()),
      ['node.ready', 'disk.full quota'],
    );
  });

  test('alert identity ignores numbers and what follows the first colon', () => {
    assert.equal(alertKey('warning', 'disk 91% full').key, alertKey('warning', 'disk 97% full').key);
    assert.equal(
      alertKey('warning', 'uplink retrying: ECONNRESET').key,
      alertKey('warning', 'uplink retrying: 503').key,
    );
    assert.notEqual(alertKey('warning', 'disk 91% full').key, alertKey('critical', 'disk 91% full').key);
  });
});
