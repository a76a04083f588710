/**
 * store/history.ts: an export read back through an import is the same store (every key at every
 * revision since the compaction, the leases); an export closed half-way frees its connection;
 * an import refuses to overwrite a file and refuses rows out of revision order.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { EdgeError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { exportHistory, importHistory, openStore } from '../../src/store/index.js';

const b = (s: string) => Buffer.from(s);
const all = { key: Buffer.from([0]), rangeEnd: Buffer.from([0]) };

describe('history export and import', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ek-history-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('export then import gives the same key space at every revision since the compaction', async () => {
    const src = await openStore({ file: join(dir, 'src.db'), inlineWriter: true, logger: silentLogger() });
    const lease = await src.leaseGrant(60, 42n);
    for (let i = 0; i < 30; i++) await src.put({ key: b(`k${i % 7}`), value: b(`v${i}`) });
    await src.put({ key: b('leased'), value: b('x'), lease: lease.id });
    await src.deleteRange({ key: b('k1') });
    await src.txn({ success: [{ put: { key: b('t1'), value: b('1') } }, { deleteRange: { key: b('k2') } }] });
    const compact = src.revision() - 3;
    await src.compact(compact, true);
    await src.put({ key: b('k1'), value: b('back') });
    const h = exportHistory(src);
    let r: ReturnType<typeof importHistory>;
    try {
      r = importHistory(join(dir, 'dst.db'), h);
    } finally {
      h.close();
    }
    const dst = await openStore({ file: join(dir, 'dst.db'), inlineWriter: true, logger: silentLogger() });
    try {
      assert.equal(r.revision, src.revision());
      assert.equal(dst.revision(), src.revision());
      assert.equal(dst.compactRevision(), compact);
      for (let rev = compact; rev <= src.revision(); rev++)
        assert.deepEqual(
          dst.range({ ...all, revision: rev }),
          src.range({ ...all, revision: rev }),
          `rev ${rev}`,
        );
      assert.throws(() => dst.range({ ...all, revision: compact - 1 }), /compacted/);
      assert.deepEqual(dst.leaseList(), [42n]);
      assert.deepEqual(dst.leaseTimeToLive(42n, true).keys.map(String), ['leased']);
    } finally {
      await dst.close();
      await src.close();
    }
  });

  it('an export closed half-way frees its connection', async () => {
    const s = await openStore({ file: join(dir, 'half.db'), inlineWriter: true, logger: silentLogger() });
    try {
      for (let i = 0; i < 5; i++) await s.put({ key: b(`k${i}`), value: b('v') });
      const h = exportHistory(s);
      h.rows.next();
      h.close();
      h.close();
    } finally {
      await s.close();
    }
  });

  it('refuses an existing file and rows out of order', () => {
    const exists = join(dir, 'exists.db');
    writeFileSync(exists, 'x');
    const row = (rev: number) => ({
      rev,
      key: b('k'),
      deleted: false,
      createRev: 2,
      version: 1,
      lease: 0n,
      value: b(''),
    });
    assert.throws(
      () => importHistory(exists, { revision: 1, compactRevision: 0, rows: [], leases: [] }),
      (e: unknown) => e instanceof EdgeError && /exists/.test(e.message),
    );
    const file = join(dir, 'order.db');
    assert.throws(
      () => importHistory(file, { revision: 1, compactRevision: 0, rows: [row(3), row(2)], leases: [] }),
      /out of order/,
    );
    assert.ok(existsSync(file), 'the caller removes the partial file');
  });
});
