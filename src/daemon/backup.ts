/**
 * Backups: scheduled online copies with rotation, the integrity check every backup and restore
 * goes through, and the restore itself (stopped node only).
 */
import { randomBytes } from 'node:crypto';
import { closeSync, copyFileSync, fsyncSync, openSync } from 'node:fs';
import { mkdir, readdir, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import Database from 'better-sqlite3';
import { CorruptDatabaseError } from '../errors.js';
import {
  appendSha256,
  openEtcdSnapshot,
  type SnapshotMember,
  verifyEtcdSnapshot,
  writeEtcdSnapshot,
} from '../etcd/index.js';
import { exportHistory, importHistory } from '../store/index.js';
import type { Store } from '../store/types.js';

export const DB_FILE = 'edgekeeper.db';
const NAME_RE = /^edgekeeper-(\d{8}T\d{9}Z)\.db$/;

/** `edgekeeper-20261126T093000123Z.db`: sorts by time, never collides within a millisecond. */
export function backupFileName(epochMs: number): string {
  const iso = new Date(epochMs).toISOString(); // 2026-11-26T09:30:00.123Z
  return `edgekeeper-${iso.replace(/[-:.]/g, '')}.db`;
}

/**
 * One scheduled backup: an online copy into `dir` under a temporary name, renamed into place
 * once complete (a half-written file never looks like a backup), then rotation keeps the newest
 * `keep`. Only files with our naming pattern are ever deleted.
 */
export async function runScheduledBackup(
  store: Pick<Store, 'backup'>,
  dir: string,
  keep: number,
  nowMs: number,
): Promise<{ file: string; deleted: string[] }> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const name = backupFileName(nowMs);
  const tmp = join(dir, `.${name}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    // a backup holds what the database does (secret hashes): 0600 like it, whatever the umask
    await writeFile(tmp, '', { mode: 0o600 });
    await store.backup(tmp);
    verifyDatabaseFile(tmp);
    await rename(tmp, join(dir, name));
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  fsyncDir(dir);
  const ours = (await readdir(dir)).filter((f) => NAME_RE.test(f)).sort();
  const deleted = ours.slice(0, Math.max(0, ours.length - keep));
  for (const f of deleted) await unlink(join(dir, f));
  return { file: join(dir, name), deleted };
}

/**
 * Opens `file` with SQLite and runs `PRAGMA integrity_check`. Throws CorruptDatabaseError when
 * it is not a SQLite database, is damaged, or holds no tables (not an edgekeeper database).
 */
export function verifyDatabaseFile(file: string): void {
  let db: Database.Database | undefined;
  try {
    db = new Database(file, { fileMustExist: true });
    const rows = db.pragma('integrity_check') as { integrity_check: string }[];
    const bad = rows.map((r) => r.integrity_check).filter((r) => r !== 'ok');
    if (bad.length > 0) throw new CorruptDatabaseError(file, bad.slice(0, 3).join('; '));
    const tables = db.prepare("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table'").get() as {
      n: number;
    };
    if (tables.n === 0)
      throw new CorruptDatabaseError(file, 'it holds no tables; not an edgekeeper database');
  } catch (err) {
    if (err instanceof CorruptDatabaseError) throw err;
    throw new CorruptDatabaseError(file, (err as Error).message);
  } finally {
    db?.close();
  }
}

export function fsyncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch {
    // Some filesystems refuse fsync on directories; the rename is still atomic.
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

function fsyncFile(file: string): void {
  const fd = openSync(file, 'r+');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Replaces `<dataDir>/edgekeeper.db` with `backup` (the caller has made sure no daemon runs).
 * The backup is verified first; the current database, with its -wal and -shm files, is kept as
 * `edgekeeper.db.pre-restore-<time>` so a wrong restore can be undone.
 */
export async function restoreDatabase(
  backup: string,
  dataDir: string,
  nowMs: number,
): Promise<{ previous?: string }> {
  verifyDatabaseFile(backup);
  await mkdir(dataDir, { recursive: true });
  const tmp = join(dataDir, `.${DB_FILE}.restore-${randomBytes(4).toString('hex')}.tmp`);
  copyFileSync(backup, tmp);
  fsyncFile(tmp);
  return installDatabase(tmp, dataDir, nowMs);
}

/** Moves the current database aside (`.pre-restore-<time>`) and the verified `tmp` into its place. */
async function installDatabase(tmp: string, dataDir: string, nowMs: number): Promise<{ previous?: string }> {
  const target = join(dataDir, DB_FILE);
  let previous: string | undefined;
  const stamp = new Date(nowMs).toISOString().replace(/[-:.]/g, '');
  for (const suffix of ['', '-wal', '-shm']) {
    const from = target + suffix;
    const to = `${target}.pre-restore-${stamp}${suffix}`;
    try {
      await rename(from, to);
      if (suffix === '') previous = to;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        await rm(tmp, { force: true });
        throw err;
      }
    }
  }
  await rename(tmp, target);
  fsyncDir(dirname(target));
  return previous ? { previous: basename(previous) } : {};
}

/**
 * `edgekeeper restore --from-etcd`: an etcd 3.4/3.5 snapshot (its history since the compact
 * revision, its leases) becomes the node's database (the caller has made sure no daemon runs).
 * The snapshot is checked first (SHA-256, bbolt meta, `key` bucket); its rows are imported into a
 * new file in one transaction, which is integrity-checked before it replaces the database (kept
 * as `.pre-restore-<time>`). Any failure removes the new file: the node's data is untouched.
 * The node keeps its cluster and member IDs; the other parts' tables (device reports, probe
 * samples, upload cursors) start empty, the old ones stay in the kept file.
 */
export async function restoreFromEtcdSnapshot(
  snapshot: string,
  dataDir: string,
  nowMs: number,
): Promise<{
  previous?: string;
  revision: number;
  compactRevision: number;
  rows: number;
  keys: number;
  leases: number;
  hasHash: boolean;
  layout: string;
  authEnabled: boolean;
}> {
  const snap = await openEtcdSnapshot(snapshot);
  await mkdir(dataDir, { recursive: true });
  const tmp = join(dataDir, `.${DB_FILE}.etcd-import-${randomBytes(4).toString('hex')}.tmp`);
  try {
    const r = importHistory(tmp, snap.history(), { identityFrom: join(dataDir, DB_FILE) });
    fsyncFile(tmp);
    verifyDatabaseFile(tmp);
    const installed = await installDatabase(tmp, dataDir, nowMs);
    return {
      ...installed,
      ...r,
      compactRevision: snap.compactRevision,
      hasHash: snap.hasHash,
      layout: snap.layout,
      authEnabled: snap.authEnabled,
    };
  } catch (err) {
    for (const suffix of ['', '-wal', '-shm', '-journal']) await rm(tmp + suffix, { force: true });
    throw err;
  } finally {
    snap.close();
  }
}

/**
 * An etcd-format backup (what `etcdctl snapshot save` writes: the bbolt file and its SHA-256)
 * of the store at one revision into `file`: written under a temporary name next to it, then
 * renamed into place. `verify` reads it back through first (synchronous reads: not on a daemon's
 * event loop; the CLI checks what the daemon sends instead).
 */
export async function writeEtcdBackup(
  store: Pick<Store, 'query' | 'revision'>,
  file: string,
  member?: SnapshotMember,
  opts: { verify?: boolean } = {},
): Promise<{ revision: number; rows: number }> {
  const tmp = join(dirname(file), `.${basename(file)}.${randomBytes(4).toString('hex')}.part`);
  try {
    const history = exportHistory(store);
    let written: { revision: number; rows: number };
    try {
      written = await writeEtcdSnapshot(tmp, history, { member });
    } finally {
      history.close();
    }
    await appendSha256(tmp);
    if (opts.verify) await verifyEtcdSnapshot(tmp);
    await rename(tmp, file);
    fsyncDir(dirname(file));
    return { revision: written.revision, rows: written.rows };
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}
