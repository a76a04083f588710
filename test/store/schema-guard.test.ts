/**
 * The schema guard: an older binary never writes to a schema it does not know. A database whose
 * base schema (user_version) or a part's migration is newer than this binary knows is refused
 * with SchemaTooNewError naming both versions, before anything is changed; steps of a part this
 * binary has no migrations for are left alone; schemaStatus says what an open would apply.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { SchemaTooNewError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { openStore, schemaStatus } from '../../src/store/index.js';
import type { Migration } from '../../src/store/types.js';

const parts: Migration[] = [
  { part: 'alpha', version: 1, sql: 'CREATE TABLE alpha_a (x)' },
  { part: 'alpha', version: 2, sql: 'CREATE TABLE alpha_b (x)' },
  { part: 'beta', version: 1, sql: 'CREATE TABLE beta_a (x)' },
];

describe('schema guard', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'ek-schema-'));
  after(() => rmSync(tmp, { recursive: true, force: true }));
  const open = (file: string, migrations = parts) =>
    openStore({ file, inlineWriter: true, logger: silentLogger(), migrations });

  test('schemaStatus: every step pending on a new file, none after an open', async () => {
    const file = join(tmp, 'status.db');
    const raw = new Database(file);
    const status = schemaStatus(raw, parts);
    raw.close();
    await (await open(file)).close();
    const after = new Database(file);
    const base = after.pragma('user_version', { simple: true }) as number;
    assert.ok(base >= 1);
    const storeSteps = Array.from({ length: base }, (_, i) => `store ${i + 1}`);
    assert.deepEqual(status, {
      pending: [...storeSteps, 'alpha 1', 'alpha 2', 'beta 1'],
      newer: [],
      known: [],
    });
    assert.deepEqual(schemaStatus(after, parts), { pending: [], newer: [], known: [] });
    assert.deepEqual(schemaStatus(after, [...parts, { part: 'alpha', version: 3, sql: '' }]).pending, [
      'alpha 3',
    ]);
    after.close();
  });

  test("a part's newer migration is refused, naming both versions, and nothing changes", async () => {
    const file = join(tmp, 'part.db');
    await (await open(file)).close();
    const db = new Database(file);
    db.prepare("INSERT INTO schema_migrations VALUES ('alpha', 3)").run();
    db.close();
    // beta 2 would be applied if the guard did not stop the open first.
    const err = await open(file, [
      ...parts,
      { part: 'beta', version: 2, sql: 'CREATE TABLE beta_b (x)' },
    ]).then(
      () => assert.fail('opened'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof SchemaTooNewError);
    assert.ok(err.message.startsWith(`database ${file} was upgraded by a newer edgekeeper`), err.message);
    assert.match(err.message, /has schema alpha 3, this edgekeeper knows up to alpha 2; it was not changed/);
    assert.deepEqual(err.newer, ['alpha 3']);
    const check = new Database(file);
    assert.equal(
      (check.prepare("SELECT count(*) AS n FROM sqlite_master WHERE name = 'beta_b'").get() as { n: number })
        .n,
      0,
    );
    check.close();
  });

  test('a newer base schema (user_version) is refused', async () => {
    const file = join(tmp, 'base.db');
    await (await open(file)).close();
    const db = new Database(file);
    const base = db.pragma('user_version', { simple: true }) as number;
    db.pragma(`user_version = ${base + 5}`);
    db.close();
    await assert.rejects(
      open(file),
      new RegExp(`has schema store ${base + 5}, this edgekeeper knows up to store ${base};`),
    );
    const check = new Database(file);
    assert.equal(check.pragma('user_version', { simple: true }), base + 5);
    check.close();
  });

  test('steps of a part this binary has no migrations for are not judged', async () => {
    const file = join(tmp, 'other.db');
    await (await open(file)).close();
    const db = new Database(file);
    db.prepare("INSERT INTO schema_migrations VALUES ('gamma', 5)").run();
    db.close();
    await (await open(file)).close();
  });
});
