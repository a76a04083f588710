import type { Migration } from '../store/types.js';

/**
 * Ingest's tables. `reports` is the shared shape every part relies on (the fleet sync uploads
 * it by id); the rest is ours. Device ids are checked by `validDeviceId` before they get here.
 */
export const ingestMigrations: Migration[] = [
  {
    part: 'ingest',
    version: 1,
    sql: `
CREATE TABLE IF NOT EXISTS reports(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  device TEXT NOT NULL,
  received_at INTEGER NOT NULL,
  ts INTEGER,
  seq INTEGER,
  body BLOB NOT NULL
);
-- de-duplication of redelivered reports looks up (device, seq); reports without seq are not indexed
CREATE INDEX IF NOT EXISTS reports_device_seq ON reports(device, seq) WHERE seq IS NOT NULL;

-- credentials: scrypt hashes, never the secret itself
CREATE TABLE IF NOT EXISTS ingest_devices(
  id TEXT PRIMARY KEY,
  secret_hash TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);

-- the registry, so first seen and report counts survive restarts
CREATE TABLE IF NOT EXISTS ingest_device_state(
  id TEXT PRIMARY KEY,
  first_seen INTEGER NOT NULL,
  last_seen INTEGER NOT NULL,
  reports INTEGER NOT NULL,
  online INTEGER NOT NULL CHECK (online IN (0, 1)),
  last TEXT
);

-- dead letters: the first bytes of what was refused, bounded by rejectsMax
CREATE TABLE IF NOT EXISTS ingest_rejects(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  ts INTEGER NOT NULL,
  device TEXT,
  topic TEXT,
  reason TEXT NOT NULL,
  detail TEXT,
  size INTEGER NOT NULL,
  head BLOB
);
`,
  },
  {
    part: 'ingest',
    version: 2,
    // De-duplication looks up (ts, device, seq) instead of (device, seq). Led by the device id,
    // each report's index entry went to its own device's corner of the index, so a commit of N
    // reports from N devices dirtied about N index pages, each written whole to the WAL. Led by
    // the device clock, reports that carry `ts` land next to each other: with 200,000 reports
    // stored, 9-12 µs of CPU and 0.5 KB written per report against 31-46 µs and 10 KB without
    // `ts` (npm run bench -- report-insert, three runs). Without `ts` nothing changed.
    sql: `
DROP INDEX IF EXISTS reports_device_seq;
CREATE INDEX IF NOT EXISTS reports_ts_device_seq ON reports(ts, device, seq) WHERE seq IS NOT NULL;
`,
  },
  {
    part: 'ingest',
    version: 3,
    // Wall-clock steps seen by retention: reports up to `report_id` were stamped before a step,
    // `shift` (ms, summed over later steps) brings their received_at to today's clock.
    sql: `
CREATE TABLE IF NOT EXISTS ingest_clock_steps(
  report_id INTEGER PRIMARY KEY,
  shift INTEGER NOT NULL
);
`,
  },
];
