/**
 * Retention of `reports` by age and by size, oldest first; with an uplink configured, nothing
 * above `cursors.reports` is deleted and what was kept is counted.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ManualClock } from '../../src/clock.js';
import { type Harness, harness, metricValue } from './helpers.js';

async function fill(h: Harness, n: number, receivedAt: number, bodyBytes = 16): Promise<void> {
  const rows = Array.from({ length: n }, (_, i) => [
    'r',
    receivedAt + i,
    null,
    null,
    Buffer.alloc(bodyBytes, 1),
  ]);
  await h.store.write({
    sql: [{ sql: 'INSERT INTO reports(device, received_at, ts, seq, body) VALUES (?, ?, ?, ?, ?)', rows }],
  });
}
const ids = (h: Harness) =>
  h.store
    .query<{ min: number; max: number; n: number }>(
      'SELECT min(id) AS min, max(id) AS max, count(*) AS n FROM reports',
    )
    .get()!;

describe('ingest retention', () => {
  it('deletes reports older than retentionAge, oldest first', async () => {
    const clock = new ManualClock(Date.now());
    const h = await harness({ retentionAge: 3_600_000 }, clock);
    try {
      await fill(h, 300, clock.now() - 7_200_000); // two hours old
      await fill(h, 200, clock.now() - 60_000); // a minute old
      const r = await h.part.runRetention();
      assert.equal(r.deletedAge, 300);
      assert.deepEqual(ids(h), { min: 301, max: 500, n: 200 });
      assert.equal(
        await metricValue(h.registry, 'edgekeeper_ingest_retention_deleted_total', { reason: 'age' }),
        300,
      );
    } finally {
      await h.close();
    }
  });

  it('trims the oldest reports above retentionBytes', async () => {
    const h = await harness({ retentionBytes: 1024 * 1024 });
    try {
      await fill(h, 2000, Date.now(), 1000); // ~2 MB with overhead
      const r = await h.part.runRetention();
      assert.ok(r.deletedSize > 900 && r.deletedSize < 1500, `deleted ${r.deletedSize}`);
      const left = ids(h);
      assert.equal(left.max, 2000, 'the newest are kept');
      assert.equal(left.min, r.deletedSize + 1, 'the oldest went first');
    } finally {
      await h.close();
    }
  });

  it('never deletes reports the uplink has not passed, and counts them', async () => {
    const clock = new ManualClock(Date.now());
    const h = await harness({ retentionAge: 3_600_000, uplinkEnabled: true }, clock);
    try {
      await fill(h, 500, clock.now() - 7_200_000);
      await h.store.write({ sql: [{ sql: "INSERT INTO cursors(name, position) VALUES ('reports', 120)" }] });
      const r = await h.part.runRetention();
      assert.equal(r.deletedAge, 120);
      assert.equal(r.blocked, 380);
      assert.equal(ids(h).min, 121);
      assert.equal(await metricValue(h.registry, 'edgekeeper_ingest_retention_blocked_reports'), 380);
    } finally {
      await h.close();
    }
  });
});
