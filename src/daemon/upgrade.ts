/**
 * What the daemon does with its database before the store opens it: refuse a file a newer
 * edgekeeper upgraded (naming that version and the backups to go back to), and back the file up
 * when this version has schema steps to apply, so an upgrade can be rolled back
 * (docs/operations.md, "Upgrade and rollback"). Also checks that the state directory is ours
 * to write, which a root service without CAP_DAC_OVERRIDE cannot take for granted.
 */
import { accessSync, constants, existsSync, statSync } from 'node:fs';
import { mkdir, readdir, rename, rm, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import Database from 'better-sqlite3';
import { SchemaTooNewError, StateDirError, UpgradeBackupError } from '../errors.js';
import { schemaStatus } from '../store/index.js';
import type { Migration } from '../store/types.js';
import { fsyncDir, verifyDatabaseFile } from './backup.js';

/** Pre-upgrade backups kept; older ones are deleted when a new one is taken. */
const KEEP_PRE_UPGRADE = 3;
const PRE_UPGRADE_RE = /^edgekeeper-pre-upgrade-(\d{8}T\d{9}Z)\.db$/;

/** The daemon's record of the versions that ran on this database (the last one names the writer). */
export const VERSIONS_TABLE_SQL =
  'CREATE TABLE daemon_versions (version TEXT PRIMARY KEY, first_start INTEGER NOT NULL, last_start INTEGER NOT NULL) WITHOUT ROWID';
export const RECORD_VERSION_SQL =
  'INSERT INTO daemon_versions (version, first_start, last_start) VALUES (?, ?, ?) ON CONFLICT (version) DO UPDATE SET last_start = excluded.last_start';

/**
 * Throws StateDirError unless this process may create files in `dir` (or create `dir` in its
 * nearest existing parent) and write its database.
 */
export function checkStateDir(dir: string, dbFile: string): void {
  let first = dir;
  while (!existsSync(first) && dirname(first) !== first) first = dirname(first);
  for (const [path, mode] of [
    [first, constants.W_OK | constants.X_OK],
    [dbFile, constants.R_OK | constants.W_OK],
  ] as const) {
    if (path === dbFile && !existsSync(dbFile)) continue;
    try {
      accessSync(path, mode);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EACCES' && code !== 'EPERM' && code !== 'EROFS') throw err;
      const st = statSync(path);
      throw new StateDirError(path, st.uid, st.mode & 0o7777, process.geteuid?.() ?? -1, code);
    }
  }
}

export interface PreparedDatabase {
  /** Schema steps the store will apply ("part version"). */
  pending: string[];
  /** The version that last started on this database, when it says. */
  lastVersion?: string;
  /** The backup taken because steps are pending, when the file held data. */
  backup?: string;
}

/**
 * Runs before the store opens `file`. A file with schema steps this binary does not know is
 * refused untouched (SchemaTooNewError, with the version that wrote it and the pre-upgrade
 * backups in `backupDir`). With steps pending, an online copy goes to
 * `backupDir/edgekeeper-pre-upgrade-<time>.db` (checked, then renamed into place; the newest
 * three are kept) before anything migrates; if that copy fails, nothing migrates either.
 * A damaged or foreign file is left for the store to report.
 */
export async function prepareDatabase(
  file: string,
  migrations: readonly Migration[],
  backupDir: string,
  nowMs: number,
): Promise<PreparedDatabase> {
  if (!existsSync(file)) return { pending: [] };
  let db: Database.Database;
  let status: ReturnType<typeof schemaStatus>;
  let writtenBy: string | undefined;
  let empty: boolean;
  try {
    db = new Database(file, { fileMustExist: true });
  } catch {
    return { pending: [] };
  }
  try {
    try {
      status = schemaStatus(db, migrations);
      empty = !db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table'").get();
      writtenBy = lastVersion(db);
    } catch {
      return { pending: [] }; // not a database we can read: the store says so with its own error
    }
    if (status.newer.length) {
      const hint = await rollbackHint(backupDir, dirname(file), writtenBy);
      throw new SchemaTooNewError(file, status.newer, status.known, hint);
    }
    if (!status.pending.length || empty) return { pending: status.pending, lastVersion: writtenBy };
    const name = `edgekeeper-pre-upgrade-${new Date(nowMs).toISOString().replace(/[-:.]/g, '')}.db`;
    const tmp = join(backupDir, `.${name}.tmp`);
    try {
      await mkdir(backupDir, { recursive: true });
      await db.backup(tmp);
      verifyDatabaseFile(tmp);
      await rename(tmp, join(backupDir, name));
    } catch (err) {
      await rm(tmp, { force: true }).catch(() => {});
      throw new UpgradeBackupError(file, join(backupDir, name), (err as Error).message);
    }
    fsyncDir(backupDir);
    const ours = (await readdir(backupDir)).filter((f) => PRE_UPGRADE_RE.test(f)).sort();
    for (const f of ours.slice(0, Math.max(0, ours.length - KEEP_PRE_UPGRADE)))
      await unlink(join(backupDir, f));
    return { pending: status.pending, lastVersion: writtenBy, backup: join(backupDir, name) };
  } finally {
    db.close();
  }
}

function lastVersion(db: Database.Database): string | undefined {
  const has = db
    .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'daemon_versions'")
    .get();
  if (!has) return undefined;
  const row = db.prepare('SELECT version FROM daemon_versions ORDER BY last_start DESC LIMIT 1').get() as
    | { version: string }
    | undefined;
  return row?.version;
}

async function rollbackHint(
  backupDir: string,
  dataDir: string,
  writtenBy: string | undefined,
): Promise<string> {
  let backups: string[] = [];
  try {
    backups = (await readdir(backupDir)).filter((f) => PRE_UPGRADE_RE.test(f)).sort();
  } catch {
    // no backup directory
  }
  const newest = backups.at(-1);
  const install = writtenBy
    ? `install edgekeeper ${writtenBy} again (apt install edgekeeper=${writtenBy})`
    : 'install the newer edgekeeper again';
  return newest
    ? `${install}, or stop edgekeeper and restore the backup taken before the upgrade: edgekeeper restore ${join(backupDir, newest)} --data-dir ${dataDir}`
    : `${install} (no pre-upgrade backup in ${backupDir})`;
}
