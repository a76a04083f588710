/**
 * Upgrade and rollback of the database, in-process: a database from an older schema is backed
 * up before its schema steps run, once; a database a newer edgekeeper upgraded is refused
 * untouched, naming the version that wrote it and the backup to restore, and the documented
 * rollback (restore that backup, run the older schema) works; a failed backup migrates nothing.
 * A state directory or database owned by another user is refused with one clear message when
 * the process has no CAP_DAC_OVERRIDE (as under the unit). Needs setpriv (util-linux), root.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { loadConfig } from '../../src/config/index.js';
import {
  allSections,
  daemonMigrations,
  restoreDatabase,
  startDaemon,
  VERSION,
} from '../../src/daemon/index.js';
import { SchemaTooNewError, UpgradeBackupError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { openStore } from '../../src/store/index.js';

const repo = join(import.meta.dirname, '..', '..');
const v1 = daemonMigrations.filter((m) => m.version === 1);

const config = (dir: string, extra: Record<string, string> = {}) =>
  loadConfig({
    env: extra,
    sections: allSections([]),
    flags: { 'data-dir': dir, 'http-listen': '127.0.0.1:0', 'node-name': 'n1', 'log-level': 'silent' },
  });
const start = (dir: string, extra: Record<string, string> = {}) =>
  startDaemon(config(dir, extra), [], { env: {}, logger: silentLogger(), inlineWriter: true });
const hash = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');

/** A node as the version before `daemon 2` left it: the heartbeat table only, and some keys. */
async function olderNode(dir: string): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const store = await openStore({
    file: join(dir, 'edgekeeper.db'),
    inlineWriter: true,
    logger: silentLogger(),
    migrations: v1,
  });
  for (const k of ['a', 'b']) await store.put({ key: Buffer.from(k), value: Buffer.from(`${k}-old`) });
  await store.close();
}

const steps = (file: string) => {
  const db = new Database(file, { readonly: true });
  try {
    return (
      db.prepare('SELECT part, version FROM schema_migrations ORDER BY part, version').all() as {
        part: string;
        version: number;
      }[]
    ).map((r) => `${r.part} ${r.version}`);
  } finally {
    db.close();
  }
};

describe('upgrade and rollback', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'ek-upgrade-'));
  after(() => rmSync(tmp, { recursive: true, force: true }));

  test('schema steps run once, after a backup of the older database; a fresh node takes none', async () => {
    const dir = join(tmp, 'upgrade');
    await olderNode(dir);
    const d = await start(dir);
    await d.stop();
    const backups = readdirSync(join(dir, 'backups'));
    assert.equal(backups.length, 1, backups.join());
    assert.match(backups[0]!, /^edgekeeper-pre-upgrade-\d{8}T\d{9}Z\.db$/);
    // The backup is the database before the upgrade; the database is after it.
    assert.deepEqual(steps(join(dir, 'backups', backups[0]!)), ['daemon 1']);
    assert.deepEqual(steps(join(dir, 'edgekeeper.db')), ['daemon 1', 'daemon 2']);
    const db = new Database(join(dir, 'edgekeeper.db'), { readonly: true });
    assert.deepEqual(db.prepare('SELECT version FROM daemon_versions').all(), [{ version: VERSION }]);
    db.close();
    // Started again: nothing pending, no second backup.
    await (await start(dir)).stop();
    // (-wal and -shm beside the backup come from reading it above)
    assert.equal(readdirSync(join(dir, 'backups')).filter((f) => f.endsWith('.db')).length, 1);
    const fresh = join(tmp, 'fresh');
    await (await start(fresh)).stop();
    assert.ok(!existsSync(join(fresh, 'backups')), 'nothing to back up on a new node');
  });

  test('a database a newer edgekeeper upgraded is refused untouched; restoring the pre-upgrade backup rolls back', async () => {
    const dir = join(tmp, 'newer');
    await olderNode(dir);
    await (await start(dir)).stop();
    const [backup] = readdirSync(join(dir, 'backups'));
    // What a newer version would leave: a schema step this one does not know, its version recorded.
    const db = new Database(join(dir, 'edgekeeper.db'));
    db.prepare("INSERT INTO schema_migrations (part, version) VALUES ('daemon', 3)").run();
    db.prepare("INSERT INTO daemon_versions VALUES ('9.9.9', 1, 9e12)").run();
    db.close();
    const before = hash(join(dir, 'edgekeeper.db'));
    const err = await start(dir).then(
      () => assert.fail('started on a newer database'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof SchemaTooNewError, String(err));
    assert.equal(err.code, 'EDGE_ERR_SCHEMA_TOO_NEW');
    assert.match(
      err.message,
      /has schema daemon 3, this edgekeeper knows up to daemon 2; it was not changed/,
    );
    assert.match(err.message, /install edgekeeper 9\.9\.9 again \(apt install edgekeeper=9\.9\.9\)/);
    assert.ok(
      err.message.includes(`edgekeeper restore ${join(dir, 'backups', backup!)} --data-dir ${dir}`),
      err.message,
    );
    assert.equal(hash(join(dir, 'edgekeeper.db')), before, 'the database is untouched');
    assert.ok(!existsSync(join(dir, 'edgekeeper.pid')), 'the pid file is released');

    // The store refuses it too, for any other opener (CLI backup, restore checks).
    await assert.rejects(
      openStore({
        file: join(dir, 'edgekeeper.db'),
        inlineWriter: true,
        logger: silentLogger(),
        migrations: daemonMigrations,
      }),
      SchemaTooNewError,
    );

    // The rollback: the older schema runs on the restored backup, with the data of before.
    await restoreDatabase(join(dir, 'backups', backup!), dir, Date.now());
    const old = await openStore({
      file: join(dir, 'edgekeeper.db'),
      inlineWriter: true,
      logger: silentLogger(),
      migrations: v1,
    });
    assert.equal(old.range({ key: Buffer.from('a') }).kvs[0]?.value.toString(), 'a-old');
    await old.close();
  });

  test('a backup that cannot be written migrates nothing and says so', async () => {
    const dir = join(tmp, 'nobackup');
    await olderNode(dir);
    const blocker = join(tmp, 'not-a-directory');
    writeFileSync(blocker, 'x');
    const err = await start(dir, { EDGEKEEPER_STORE_BACKUP_DIR: blocker }).then(
      () => assert.fail('migrated without a backup'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof UpgradeBackupError, String(err));
    assert.match(err.message, /before upgrading its schema .*nothing was migrated/);
    assert.deepEqual(steps(join(dir, 'edgekeeper.db')), ['daemon 1']);
  });

  test('a state directory or database of another user: one clear line without CAP_DAC_OVERRIDE', () => {
    const run = (dataDir: string) =>
      spawnSync(
        'setpriv',
        [
          '--bounding-set=-all,+bpf,+perfmon',
          '--inh-caps=-all',
          process.execPath,
          '--import',
          'tsx',
          join(repo, 'src', 'main.ts'),
          'run',
          '--data-dir',
          dataDir,
          '--http-listen',
          '127.0.0.1:0',
        ],
        { cwd: repo, encoding: 'utf8', timeout: 60_000 },
      );
    const foreign = join(tmp, 'foreign');
    mkdirSync(foreign, { mode: 0o700 });
    chownSync(foreign, 1000, 1000);
    let r = run(foreign);
    assert.equal(r.status, 1, `${r.stdout}${r.stderr}`);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(
      lines[0]!,
      /cannot write .*foreign \(EACCES\): it belongs to uid 1000 with mode 0700, and edgekeeper runs as uid 0 without CAP_DAC_OVERRIDE.*chown -R 0:0 .*\[EDGE_ERR_STATE_DIR\]$/,
    );

    const file = join(tmp, 'foreign-db');
    mkdirSync(file, { mode: 0o700 });
    writeFileSync(join(file, 'edgekeeper.db'), '', { mode: 0o600 });
    chownSync(join(file, 'edgekeeper.db'), 1000, 1000);
    r = run(file);
    assert.equal(r.status, 1, `${r.stdout}${r.stderr}`);
    assert.match(r.stderr, /cannot write .*foreign-db\/edgekeeper\.db \(EACCES\).*\[EDGE_ERR_STATE_DIR\]/);
  });
});
