/**
 * The uplink across wall-clock steps: the batch delay, the heartbeat and the bandwidth cap are
 * durations, measured on the monotonic clock, so a step back of a year neither parks uploads for
 * a year nor, forward, sends a burst. The clock is a ManualClock whose wall reading steps while
 * monotonic time runs on; the receiver is the real one on PostgreSQL.
 *
 * Needs: PostgreSQL 15, root.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ManualClock } from '../../src/clock.js';
import {
  createSyncPart,
  type FleetServer,
  type SyncOptions,
  startFleetServer,
} from '../../src/sync/index.js';
import { insertReports, makeContext, openNodeStore, tempDir, waitFor } from './helpers.js';
import { startPostgres, type TestPostgres } from './pg.js';

const YEAR = 365 * 86_400_000;
const FAST: SyncOptions = {
  batchMaxRecords: 50,
  idleInterval: 20,
  batchDelay: 0,
  retryBase: 10,
  retryMax: 150,
  budgetInterval: 50,
  desiredPollInterval: 200,
  heartbeatInterval: 60_000,
  requestTimeout: 5000,
};

describe('uplink across clock steps', () => {
  let pg: TestPostgres;
  let srv: FleetServer;
  const cleanups: (() => Promise<void> | void)[] = [];
  before(async () => {
    pg = await startPostgres();
    srv = await startFleetServer({
      database: pg.url,
      port: 0,
      adminToken: 'admin',
      nodes: { delay: 'tok-delay', bandwidth: 'tok-bandwidth' },
    });
  });
  after(async () => {
    for (const c of cleanups.reverse()) await c();
    await srv?.close();
    pg?.stop();
  });

  async function node(name: string, opts: SyncOptions, clock: ManualClock) {
    const t = tempDir();
    const store = await openNodeStore(t.dir, { clock });
    const part = createSyncPart(makeContext(store, name, t.dir, clock), {
      url: srv.url,
      token: `tok-${name}`,
      ...FAST,
      ...opts,
    });
    cleanups.push(async () => {
      await part.stop();
      await store.close();
      t.remove();
    });
    return { store, part };
  }
  const uploaded = async (name: string) =>
    Number(
      (
        await srv.pool.query(
          'SELECT count(*) AS n FROM fleet_reports r JOIN fleet_nodes n ON n.id = r.node_id WHERE n.name = $1',
          [name],
        )
      ).rows[0].n,
    );
  const run = async (clock: ManualClock, ms: number, steps: number) => {
    for (let i = 0; i < steps; i++) {
      clock.advance(ms);
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  test('a batch waiting for its delay goes after the delay although the clock stepped back a year', async () => {
    const clock = new ManualClock(Date.now());
    const { store, part } = await node('delay', { batchDelay: 30_000 }, clock);
    await part.start();
    await new Promise((r) => setTimeout(r, 300));
    await insertReports(store, 3);
    await run(clock, 5000, 2); // the delay has started
    assert.equal(await uploaded('delay'), 0);
    clock.step(-YEAR);
    for (let i = 0; i < 30 && (await uploaded('delay')) < 3; i++) await run(clock, 5000, 1);
    assert.equal(await uploaded('delay'), 3);
  });

  test('the bandwidth cap paces by elapsed time: a step back of a year does not stop uploads', async () => {
    const clock = new ManualClock(Date.now());
    const { store, part } = await node('bandwidth', { bandwidth: 100 }, clock);
    await insertReports(store, 200);
    await part.start();
    await waitFor('the first batch', async () => (await uploaded('bandwidth')) === 50);
    clock.step(-YEAR);
    for (let i = 0; i < 50 && (await uploaded('bandwidth')) < 200; i++) await run(clock, 60_000, 1);
    assert.equal(await uploaded('bandwidth'), 200);
  });
});
