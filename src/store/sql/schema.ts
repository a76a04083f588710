/**
 * The store's own schema, versioned with PRAGMA user_version; other parts' tables come as
 * `Migration`s recorded in `schema_migrations`. Each step runs once, in its own transaction.
 */
import type Database from 'better-sqlite3';
import { SchemaTooNewError } from '../../errors.js';
import type { Migration } from '../types.js';

const BASE: string[] = [
  // 1: the revision log, the current key space, leases, node events and upload cursors.
  `
  CREATE TABLE meta (name TEXT PRIMARY KEY, value ANY) WITHOUT ROWID, STRICT;
  -- Every change to a key, in revision order (rowid order = revision order). Compaction removes
  -- rows below the compact revision that a later row supersedes.
  CREATE TABLE kv_log (
    id INTEGER PRIMARY KEY,
    rev INTEGER NOT NULL CHECK (rev > 1),
    key BLOB NOT NULL CHECK (length(key) > 0),
    deleted INTEGER NOT NULL CHECK (deleted IN (0, 1)),
    create_rev INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL,
    value BLOB NOT NULL
  ) STRICT;
  CREATE UNIQUE INDEX kv_log_key_rev ON kv_log (key, rev);
  CREATE INDEX kv_log_rev ON kv_log (rev);
  -- The live key space; the value stays in kv_log (log_id) so it is stored once.
  CREATE TABLE kv (
    key BLOB PRIMARY KEY,
    log_id INTEGER NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL,
    version INTEGER NOT NULL CHECK (version > 0),
    lease INTEGER NOT NULL
  ) WITHOUT ROWID, STRICT;
  CREATE INDEX kv_lease ON kv (lease) WHERE lease <> 0;
  CREATE TABLE leases (id INTEGER PRIMARY KEY CHECK (id <> 0), ttl INTEGER NOT NULL CHECK (ttl > 0)) STRICT;
  CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT,
    data TEXT
  );
  CREATE TABLE cursors (name TEXT PRIMARY KEY, position INTEGER NOT NULL) WITHOUT ROWID;
  CREATE TABLE schema_migrations (part TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (part, version)) WITHOUT ROWID;
  INSERT INTO meta (name, value) VALUES ('revision', 1), ('compact_revision', 0);
  `,
  // 2: the log alone on disk. A put used to dirty five B-tree pages, three of them chosen by its
  // key (kv, kv_log_key_rev, kv_lease): on an SD card each is a page written to the WAL and again
  // at checkpoint. Now the key index lives in memory (keyspace.ts) and a put appends one row; each
  // row points at the previous row of its key (prev_id), which is all history reads need. prev_id
  // sits before the value so it stays in the row's first page when the value overflows.
  `
  CREATE TABLE kv_log_v2 (
    id INTEGER PRIMARY KEY,
    rev INTEGER NOT NULL CHECK (rev > 1),
    key BLOB NOT NULL CHECK (length(key) > 0),
    deleted INTEGER NOT NULL CHECK (deleted IN (0, 1)),
    create_rev INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL,
    prev_id INTEGER,
    value BLOB NOT NULL
  ) STRICT;
  INSERT INTO kv_log_v2 (id, rev, key, deleted, create_rev, version, lease, prev_id, value)
    SELECT l.id, l.rev, l.key, l.deleted, l.create_rev, l.version, l.lease,
      (SELECT p.id FROM kv_log p WHERE p.key = l.key AND p.rev < l.rev ORDER BY p.rev DESC LIMIT 1),
      l.value
    FROM kv_log l ORDER BY l.id;
  DROP TABLE kv;
  DROP TABLE kv_log;
  ALTER TABLE kv_log_v2 RENAME TO kv_log;
  `,
];

/** Where a database stands against the schema this binary knows; steps read "part version". */
export interface SchemaStatus {
  /** Steps this binary would apply ("store 1" is the base schema). */
  pending: string[];
  /** Steps the file has that this binary does not know: a newer edgekeeper wrote them. */
  newer: string[];
  /** For each part in `newer`, the last step this binary knows. */
  known: string[];
}

/**
 * Compares the file's `user_version` and `schema_migrations` with the base schema and `parts`.
 * A part this binary has no migrations for at all is not judged (its tables are not ours to read).
 */
export function schemaStatus(db: Database.Database, parts: readonly Migration[]): SchemaStatus {
  const current = db.pragma('user_version', { simple: true }) as number;
  const out: SchemaStatus = { pending: [], newer: [], known: [] };
  for (let v = current; v < BASE.length; v++) out.pending.push(`store ${v + 1}`);
  if (current > BASE.length) {
    out.newer.push(`store ${current}`);
    out.known.push(`store ${BASE.length}`);
  }
  const hasTable = db
    .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")
    .get();
  const rows = hasTable
    ? (db.prepare('SELECT part, version FROM schema_migrations ORDER BY part, version').all() as {
        part: string;
        version: number;
      }[])
    : [];
  const last = new Map<string, number>();
  for (const m of parts) last.set(m.part, Math.max(last.get(m.part) ?? 0, m.version));
  const done = new Set(rows.map((r) => `${r.part} ${r.version}`));
  for (const r of rows) {
    const max = last.get(r.part);
    if (max !== undefined && r.version > max) {
      out.newer.push(`${r.part} ${r.version}`);
      if (!out.known.includes(`${r.part} ${max}`)) out.known.push(`${r.part} ${max}`);
    }
  }
  for (const m of [...parts].sort((a, b) => a.part.localeCompare(b.part) || a.version - b.version)) {
    if (!done.has(`${m.part} ${m.version}`)) out.pending.push(`${m.part} ${m.version}`);
  }
  return out;
}

/**
 * Apply the base schema and the parts' migrations; throws on failure. A file with steps this
 * binary does not know is refused untouched (SchemaTooNewError): an older edgekeeper must not
 * write to a schema it cannot read.
 */
export function migrate(db: Database.Database, parts: readonly Migration[]): void {
  const status = schemaStatus(db, parts);
  if (status.newer.length) throw new SchemaTooNewError(db.name, status.newer, status.known);
  const current = db.pragma('user_version', { simple: true }) as number;
  for (let v = current; v < BASE.length; v++) {
    db.transaction(() => {
      db.exec(BASE[v]!);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
  const done = new Set(
    (
      db.prepare('SELECT part, version FROM schema_migrations').all() as { part: string; version: number }[]
    ).map((r) => `${r.part}:${r.version}`),
  );
  const sorted = [...parts].sort((a, b) => a.part.localeCompare(b.part) || a.version - b.version);
  for (const m of sorted) {
    if (done.has(`${m.part}:${m.version}`)) continue;
    db.transaction(() => {
      db.exec(m.sql);
      db.prepare('INSERT INTO schema_migrations (part, version) VALUES (?, ?)').run(m.part, m.version);
    })();
  }
}
