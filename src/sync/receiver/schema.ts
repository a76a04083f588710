/**
 * The fleet receiver's PostgreSQL schema, as ordered migrations. Several receivers may start at
 * once against one database: migrations run under a transaction-scoped advisory lock, so exactly
 * one applies each step and the others see it done.
 */
import type pg from 'pg';

// An arbitrary constant that names "edgekeeper fleet schema" among advisory locks.
const MIGRATION_LOCK = 0x65_6b_66_6c; // "ekfl"

export const FLEET_MIGRATIONS: { version: number; sql: string }[] = [
  {
    version: 1,
    sql: `
CREATE TABLE fleet_nodes (
  id serial PRIMARY KEY,
  name text NOT NULL UNIQUE,
  -- sha256 hex of the node's bearer token; NULL = only a client certificate authenticates it.
  token_hash text,
  created_at timestamptz NOT NULL DEFAULT now(),
  last_seen timestamptz,
  last_seq bigint NOT NULL DEFAULT 0,
  backlog jsonb,
  applied_version text
);
-- A node's database: sequence numbers and record ids count within one stream, so a node whose
-- database was re-created (new SD card) starts afresh instead of colliding with its past.
CREATE TABLE fleet_streams (
  id serial PRIMARY KEY,
  node_id integer NOT NULL REFERENCES fleet_nodes(id),
  stream text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (node_id, stream)
);
-- One row per stored batch: the idempotency key (node, seq) is enforced here, and the ids each
-- batch covered let a retried batch be answered with what was stored the first time.
CREATE TABLE fleet_batches (
  node_id integer NOT NULL REFERENCES fleet_nodes(id),
  stream_id integer NOT NULL REFERENCES fleet_streams(id),
  seq bigint NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now(),
  records integer NOT NULL,
  wire_bytes integer NOT NULL,
  events_to bigint,
  reports_to bigint,
  samples_to bigint,
  PRIMARY KEY (stream_id, seq)
);
-- Records keep the node's own ids; the primary key refuses a record stored twice. (No foreign
-- key on stream_id: it would cost a lookup per row on the hot path; fleet_batches has one.)
CREATE TABLE fleet_events (
  node_id integer NOT NULL REFERENCES fleet_nodes(id),
  stream_id integer NOT NULL,
  id bigint NOT NULL,
  ts_ms bigint NOT NULL,
  kind text NOT NULL,
  subject text,
  data text,
  PRIMARY KEY (stream_id, id)
);
CREATE TABLE fleet_reports (
  node_id integer NOT NULL REFERENCES fleet_nodes(id),
  stream_id integer NOT NULL,
  id bigint NOT NULL,
  device text NOT NULL,
  received_at_ms bigint NOT NULL,
  ts_ms bigint,
  seq bigint,
  -- json, not jsonb: stored as validated text, which PostgreSQL ingests about twice as fast; the
  -- ->> operators and expression indexes work the same ((metrics->>'temp')::float8).
  metrics json NOT NULL,
  state jsonb,
  tags jsonb,
  other jsonb,
  PRIMARY KEY (stream_id, id)
);
CREATE TABLE fleet_samples (
  node_id integer NOT NULL REFERENCES fleet_nodes(id),
  stream_id integer NOT NULL,
  id bigint NOT NULL,
  ts_ms bigint NOT NULL,
  probe text NOT NULL,
  metric text NOT NULL,
  data jsonb,
  PRIMARY KEY (stream_id, id)
);
CREATE TABLE fleet_desired (
  node_id integer PRIMARY KEY REFERENCES fleet_nodes(id),
  version bigint NOT NULL,
  keys jsonb NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE fleet_frames (
  node_id integer PRIMARY KEY REFERENCES fleet_nodes(id),
  png bytea NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);
`,
  },
  {
    // Node lifecycle and health, proper times next to the node's milliseconds, browser sessions.
    // Adding the stored time columns rewrites the record tables once (ACCESS EXCLUSIVE while it
    // runs): about 2 s per million reports on the development machine.
    version: 2,
    sql: `
ALTER TABLE fleet_nodes
  ADD COLUMN status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked', 'decommissioned')),
  ADD COLUMN status_at timestamptz,
  -- 'file': --node / --nodes-file keep its token; 'api': changed through the admin API or CLI,
  -- after which the nodes file no longer touches it. Nodes of schema 1 came from the file.
  ADD COLUMN managed_by text NOT NULL DEFAULT 'file' CHECK (managed_by IN ('file', 'api')),
  ADD COLUMN token_at timestamptz,
  -- The last upload refused because the node is revoked (written at most once a minute).
  ADD COLUMN refused_at timestamptz,
  -- The node's health summary of its latest batch, as stored (see codec.ts HealthSummary).
  ADD COLUMN health_summary jsonb,
  -- From that summary: 0 ok, 1 warn, 2 alert, and the worst problem in words.
  ADD COLUMN health_level smallint NOT NULL DEFAULT 0 CHECK (health_level BETWEEN 0 AND 2),
  ADD COLUMN health_reason text,
  -- The node's clock when it built its latest batch, and when it promised the next one.
  ADD COLUMN sent_at timestamptz,
  ADD COLUMN expect_by timestamptz;
UPDATE fleet_nodes SET token_at = created_at WHERE token_hash IS NOT NULL;
ALTER TABLE fleet_batches ADD COLUMN sent_at timestamptz;
-- Node times are milliseconds since the epoch; a time outside years 1-9999 (a node's broken
-- clock) has no timestamptz and stays NULL rather than refusing the batch.
CREATE FUNCTION fleet_ms_time(ms bigint) RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS 'SELECT CASE WHEN ms BETWEEN -62135596800000 AND 253402300799999 THEN to_timestamp(ms / 1000.0) END';
ALTER TABLE fleet_events ADD COLUMN ts timestamptz GENERATED ALWAYS AS (fleet_ms_time(ts_ms)) STORED;
ALTER TABLE fleet_reports
  ADD COLUMN received_at timestamptz GENERATED ALWAYS AS (fleet_ms_time(received_at_ms)) STORED,
  ADD COLUMN ts timestamptz GENERATED ALWAYS AS (fleet_ms_time(ts_ms)) STORED;
ALTER TABLE fleet_samples ADD COLUMN ts timestamptz GENERATED ALWAYS AS (fleet_ms_time(ts_ms)) STORED;
-- A node's page shows its latest events.
CREATE INDEX fleet_events_node_time ON fleet_events (node_id, ts_ms DESC);
-- Browser sessions of the operator pages: the cookie holds a random id, stored here hashed.
CREATE TABLE fleet_sessions (
  id_hash text PRIMARY KEY,
  csrf text NOT NULL,
  -- Which admin token the session was opened with: another token ends every session.
  key_id text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL
);
`,
  },
];

/** Bring the database to the newest schema; safe to call from several receivers at once. */
export async function migrate(pool: pg.Pool): Promise<number> {
  const c = await pool.connect();
  try {
    await c.query('BEGIN');
    await c.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
    await c.query('CREATE TABLE IF NOT EXISTS fleet_schema (version integer NOT NULL)');
    const r = await c.query<{ v: number | null }>('SELECT max(version) AS v FROM fleet_schema');
    let current = r.rows[0]?.v ?? 0;
    for (const m of FLEET_MIGRATIONS) {
      if (m.version <= current) continue;
      await c.query(m.sql);
      await c.query('INSERT INTO fleet_schema(version) VALUES ($1)', [m.version]);
      current = m.version;
    }
    await c.query('COMMIT');
    return current;
  } catch (err) {
    await c.query('ROLLBACK').catch(() => {});
    throw err;
  } finally {
    c.release();
  }
}
