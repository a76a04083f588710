/** The sync config section and the uplink's checks at creation; the uplink off without a URL. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Registry } from 'prom-client';
import { systemClock } from '../../src/clock.js';
import { silentLogger } from '../../src/log.js';
import type { PartContext } from '../../src/part.js';
import type { Store } from '../../src/store/types.js';
import { createSyncPart, syncCliCommands, syncConfigSection, syncMigrations } from '../../src/sync/index.js';

function ctx(): PartContext {
  return {
    store: {} as Store, // never touched: a disabled uplink and a refused config do not use the store
    logger: silentLogger(),
    registry: new Registry(),
    clock: systemClock,
    http: { add: () => {} },
    stateDir: '/nonexistent',
    runtimeDir: '/nonexistent',
    nodeName: 'n',
    addReadinessCheck: () => {},
  };
}

test('the sync section documents every field and names itself sync', () => {
  assert.equal(syncConfigSection.name, 'sync');
  for (const [k, f] of Object.entries(syncConfigSection.fields))
    assert.ok(f.doc && f.doc.length > 10, `${k} is documented`);
  assert.equal(syncConfigSection.fields.url?.type, 'string');
  assert.deepEqual(
    syncMigrations.map((m) => [m.part, m.version]),
    [['sync', 1]],
  );
  assert.deepEqual(
    syncCliCommands.map((c) => c.name),
    ['fleet-server', 'fleet-node', 'sync'],
  );
});

test('without a URL the uplink is disabled and does nothing', async () => {
  const part = createSyncPart(ctx(), {});
  await part.start();
  assert.equal(part.status().state, 'disabled');
  assert.equal(part.admitReports(), true);
  await part.stop();
});

test('a bad upload window is refused at creation with its config path', () => {
  assert.throws(
    () => createSyncPart(ctx(), { url: 'http://127.0.0.1:1', uploadWindows: ['0 1 * * *', 'every night'] }),
    (e: Error & { code?: string }) =>
      e.code === 'EDGE_ERR_CONFIG' &&
      e.message.includes('sync.uploadWindows[1]') &&
      !e.message.includes('[0]'),
  );
});
