/**
 * Fuzz targets of what `edgekeeper restore` reads: a real backup (SQLite) and a real etcd
 * snapshot (bbolt, with or without its SHA-256) of a node with keys, history and a lease,
 * mutated (bytes changed, cut short; the snapshot's hash made to match again, so the structure
 * itself is read), into verifyDatabaseFile / restoreDatabase and verifyEtcdSnapshot /
 * restoreFromEtcdSnapshot. Each is accepted, or refused with an EdgeError with its code; a
 * refused restore leaves the node's database exactly as it was and no temporary file behind.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import {
  daemonMigrations,
  parts,
  restoreDatabase,
  restoreFromEtcdSnapshot,
  verifyDatabaseFile,
  writeEtcdBackup,
} from '../../src/daemon/index.js';
import { EdgeError } from '../../src/errors.js';
import { verifyEtcdSnapshot } from '../../src/etcd/index.js';
import { silentLogger } from '../../src/log.js';
import { openStore } from '../../src/store/index.js';
import type { FuzzTarget } from '../fuzz.js';

const b = (s: string) => Buffer.from(s);
const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');

/** A node's database with keys, history, a compaction and a lease; its backup and etcd snapshot. */
async function sources(dir: string): Promise<{ backup: Buffer; snapshot: Buffer; db: string }> {
  const db = join(dir, 'node', 'edgekeeper.db');
  mkdirSync(join(dir, 'node'));
  const store = await openStore({
    file: db,
    inlineWriter: true,
    logger: silentLogger(),
    migrations: [...daemonMigrations, ...parts.flatMap((p) => p.migrations ?? [])],
  });
  try {
    for (let i = 0; i < 40; i++) await store.put({ key: b(`/k/${i % 9}`), value: b(`v${i}`.repeat(i)) });
    const lease = await store.leaseGrant(600);
    await store.put({ key: b('/leased'), value: b('x'), lease: lease.id });
    await store.compact(store.revision() - 10);
    await store.backup(join(dir, 'backup.db'));
    await writeEtcdBackup(store, join(dir, 'snap.db'));
  } finally {
    await store.close();
  }
  return { backup: readFileSync(join(dir, 'backup.db')), snapshot: readFileSync(join(dir, 'snap.db')), db };
}

const mutation = fc.record({
  flips: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }),
  cut: fc.option(fc.nat(), { nil: undefined }),
});

function mutate(src: Buffer, m: { flips: [number, number][]; cut?: number }): Buffer {
  const out = Buffer.from(src);
  for (const [i, v] of m.flips) out[i % out.length] = v;
  return m.cut === undefined ? out : out.subarray(0, m.cut % (out.length + 1));
}

function refusedWithCode(err: unknown): void {
  assert.ok(err instanceof EdgeError, `not an EdgeError: ${(err as Error)?.stack}`);
  assert.match(err.code, /^EDGE_ERR_/);
}

/** Runs `restore` into `node` (holding `db`); on refusal the database must be as it was. */
async function restoreInto(node: string, db: string, restore: () => Promise<unknown>): Promise<void> {
  const before = sha(db);
  try {
    await restore();
  } catch (err) {
    refusedWithCode(err);
    assert.equal(sha(db), before, 'a refused restore changed the database');
    assert.deepEqual(
      readdirSync(node).filter((f) => f.includes('.tmp')),
      [],
      'temporary files left behind',
    );
    return;
  }
  // accepted: the restored database verifies; put the original back for the next input
  verifyDatabaseFile(db);
  for (const f of readdirSync(node)) if (f !== 'orig.db') rmSync(join(node, f));
  copyFileSync(join(node, 'orig.db'), db);
}

export const backupTarget: FuzzTarget = {
  name: 'daemon.backup_restore',
  async setup() {
    const dir = mkdtempSync(join(tmpdir(), 'ek-fuzz-backup-'));
    const src = await sources(dir);
    const node = join(dir, 'node');
    copyFileSync(src.db, join(node, 'orig.db'));
    const file = join(dir, 'in.db');
    return {
      property: fc.asyncProperty(mutation, fc.boolean(), async (m, restore) => {
        writeFileSync(file, mutate(src.backup, m));
        try {
          verifyDatabaseFile(file);
        } catch (err) {
          refusedWithCode(err);
        }
        if (restore) await restoreInto(node, src.db, () => restoreDatabase(file, node, Date.now()));
      }),
      close: async () => rmSync(dir, { recursive: true, force: true }),
    };
  },
};

export const snapshotTarget: FuzzTarget = {
  name: 'daemon.etcd_snapshot_restore',
  async setup() {
    const dir = mkdtempSync(join(tmpdir(), 'ek-fuzz-snap-'));
    const src = await sources(dir);
    const node = join(dir, 'node');
    copyFileSync(src.db, join(node, 'orig.db'));
    const file = join(dir, 'in.snap');
    // the bbolt file without its 32-byte SHA-256
    const bolt = src.snapshot.subarray(0, src.snapshot.length - 32);
    return {
      property: fc.asyncProperty(
        mutation,
        fc.constantFrom('rehash', 'raw', 'old-hash'),
        fc.boolean(),
        async (m, hash, restore) => {
          const body = mutate(bolt, m);
          const tail =
            hash === 'rehash'
              ? createHash('sha256').update(body).digest()
              : hash === 'old-hash'
                ? src.snapshot.subarray(-32)
                : Buffer.alloc(0);
          writeFileSync(file, Buffer.concat([body, tail]));
          try {
            await verifyEtcdSnapshot(file);
          } catch (err) {
            refusedWithCode(err);
          }
          if (restore) await restoreInto(node, src.db, () => restoreFromEtcdSnapshot(file, node, Date.now()));
        },
      ),
      close: async () => rmSync(dir, { recursive: true, force: true }),
    };
  },
};

export const daemonTargets = [backupTarget, snapshotTarget];
