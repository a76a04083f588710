/**
 * The ingest thread ending on its own: devices go offline with reason `restart`, the thread is
 * started again on the same port, the restart is counted, and reports flow again. Ending the
 * worker from outside is the fault here: nothing a device sends can crash the thread on demand.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import type { Worker } from 'node:worker_threads';
import { Registry } from 'prom-client';
import { systemClock } from '../../src/clock.js';
import { IngestCore } from '../../src/ingest/core.js';
import { ingestDefaults } from '../../src/ingest/index.js';
import { createMetrics } from '../../src/ingest/metrics.js';
import { IngestThread } from '../../src/ingest/thread.js';
import { silentLogger } from '../../src/log.js';
import type { Store } from '../../src/store/types.js';
import {
  device,
  endClient,
  metricValue,
  openTestStore,
  publish,
  reportCount,
  tempDir,
  waitFor,
} from './helpers.js';

describe('ingest thread', () => {
  let dir: string;
  let store: Store;
  let registry: Registry;
  let core: IngestCore;
  let thread: IngestThread;

  before(async () => {
    dir = tempDir();
    store = await openTestStore(dir);
    registry = new Registry();
    const opts = ingestDefaults({
      mode: 'embedded',
      listen: '127.0.0.1:0',
      allowAnonymous: true,
      mirrorInterval: 0,
    });
    core = new IngestCore(store, systemClock, createMetrics(registry), silentLogger(), opts);
    core.registry.load(true);
    core.registry.start();
    thread = new IngestThread(core, opts, silentLogger(), systemClock);
  });
  after(async () => {
    await thread.stop();
    await core.registry.stop();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('is started again on the same port after it ends on its own, and reports flow again', async () => {
    const [addr] = await thread.start();
    const url = `mqtt://127.0.0.1:${addr!.port}`;
    const c = await device(url, 'r1', undefined, { username: undefined });
    await publish(c, 'edgekeeper/v1/devices/r1/report', '{"seq":1,"metrics":{"x":1}}', 1);
    await waitFor(() => core.registry.devices.get('r1')?.online, 'r1 online');
    const closed = new Promise<void>((r) => c.once('close', () => r()));

    await (thread as unknown as { worker: Worker }).worker.terminate();
    await closed;
    assert.ok(thread.down, 'the thread is down until it runs again');
    const d = core.registry.devices.get('r1')!;
    assert.equal(d.online, false);
    assert.equal(d.reason, 'restart');
    assert.equal(core.connections, 0);

    await waitFor(() => thread.down === undefined, 'the thread running again');
    assert.equal(await metricValue(registry, 'edgekeeper_ingest_thread_restarts_total'), 1);
    await endClient(c, true);
    const again = await device(url, 'r1', undefined, { username: undefined });
    await publish(again, 'edgekeeper/v1/devices/r1/report', '{"seq":2,"metrics":{"x":2}}', 1);
    assert.equal(reportCount(store, 'r1'), 2);
    await waitFor(() => core.registry.devices.get('r1')?.online, 'r1 online again');
    await endClient(again);
  });
});
