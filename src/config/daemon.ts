/**
 * The daemon's own config sections: node, http, log, store. Parts add theirs through
 * `src/daemon/parts.ts`; the schema is the concatenation of both lists.
 */
import { hostname } from 'node:os';
import cron from 'node-cron';
import { parseDuration } from './schema.js';
import type { ConfigSection } from './types.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

export const nodeSection: ConfigSection = {
  name: 'node',
  doc: 'This node: its name and where its state lives.',
  fields: {
    name: {
      type: 'string',
      default: hostname(),
      doc: 'Node name used in logs, status frames and the uplink. Default: the hostname.',
    },
    dataDir: {
      type: 'string',
      default: './data',
      doc: 'State directory: holds edgekeeper.db, the pid file and, by default, backups.',
    },
    stateDir: { type: 'renamed', to: 'dataDir' },
    runtimeDir: {
      type: 'string',
      optional: true,
      doc: 'Files that need not survive a reboot (status frame PNGs, e-ink bitmaps), kept off the SD card. Default: $RUNTIME_DIRECTORY (systemd), else a directory under /dev/shm named after the data directory.',
    },
  },
  check(v) {
    const problems: string[] = [];
    if (v.name === '') problems.push('Expected `node.name` to be a non-empty string, got ""');
    if (v.dataDir === '') problems.push('Expected `node.dataDir` to be a non-empty path, got ""');
    return problems;
  },
};

export const httpSection: ConfigSection = {
  name: 'http',
  doc: 'Local HTTP: /healthz, /readyz, /metrics and the small JSON API.',
  fields: {
    listen: {
      type: 'hostport',
      default: '127.0.0.1:9480',
      doc: 'Address of the HTTP listener. Keep it on loopback: only its admin routes need a token.',
    },
    auth: {
      type: 'string',
      default: 'token',
      enum: ['token', 'none'],
      doc: 'token: device registration, backups and dead letters need the admin token from `<dataDir>/http.token` (written 0600 at every start); none: any local process may use them.',
    },
    // a handful of local tools and a metrics scraper; each connection may hold a request body
    maxConnections: {
      type: 'integer',
      default: 256,
      min: 1,
      max: 100_000,
      doc: 'Open connections; one more is answered 503 and closed.',
    },
    maxPendingBodyBytes: {
      type: 'bytes',
      default: 8 * MiB,
      min: 1 * KiB,
      max: 1024 * MiB,
      doc: 'Request body bytes (by Content-Length) of all requests being answered at once; one more is answered 503.',
    },
    idleTimeout: {
      type: 'duration',
      default: 60_000,
      min: 1000,
      doc: 'A connection on which nothing moves for this long is closed (also a client that stopped reading a response).',
    },
    // Large enough for any JSON request of the local API; uploads do not go through it.
    maxBodyBytes: {
      type: 'bytes',
      default: 1 * MiB,
      min: 1,
      max: 64 * MiB,
      doc: 'Largest request body; larger ones get 413.',
    },
    address: { type: 'renamed', to: 'listen' },
  },
};

export const logSection: ConfigSection = {
  name: 'log',
  doc: 'pino JSON logs on stdout (journald keeps them under systemd).',
  fields: {
    level: {
      type: 'string',
      default: 'info',
      enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'],
      doc: 'Lowest level written.',
    },
  },
};

export const storeSection: ConfigSection = {
  name: 'store',
  doc: 'The SQLite store: durability, limits, automatic compaction and backups.',
  fields: {
    durability: {
      type: 'string',
      default: 'fsync',
      enum: ['fsync', 'relaxed'],
      doc: 'fsync: every commit reaches the disk before it is acknowledged (as etcd). relaxed: commits reach the OS; a power cut may lose the last ones, never corrupt the file.',
    },
    // etcd's --quota-backend-bytes default.
    quota: {
      type: 'bytes',
      default: 2 * GiB,
      min: 1 * MiB,
      doc: 'Database size quota; past it only deletes, compaction and lease revokes are allowed.',
    },
    // etcd's --max-request-bytes default.
    maxRequestBytes: {
      type: 'bytes',
      default: 1.5 * MiB,
      min: 1 * KiB,
      max: 64 * MiB,
      doc: 'Largest single request.',
    },
    // etcd's --max-txn-ops default.
    maxTxnOps: { type: 'integer', default: 128, min: 1, max: 100_000, doc: 'Most operations in one txn.' },
    watchBufferLimit: {
      type: 'integer',
      default: 10_000,
      min: 1,
      doc: 'Events a slow watcher may hold before it is cancelled.',
    },
    // etcd's minimum TTL at its default election timeout.
    minLeaseTtl: {
      type: 'duration',
      default: 2000,
      min: 1000,
      doc: 'Shortest lease TTL; shorter grants are raised to it (whole seconds).',
    },
    compactionMode: {
      type: 'string',
      default: 'periodic',
      enum: ['periodic', 'revision'],
      doc: "Automatic compaction as etcd's --auto-compaction-mode.",
    },
    compactionRetention: {
      type: 'string',
      default: '1h',
      doc: 'periodic: history to keep as a duration ("1h"); revision: revisions to keep ("10000"). "0" turns automatic compaction off.',
    },
    backupSchedule: {
      type: 'string',
      default: '',
      doc: 'Cron expression (node-cron, 5 or 6 fields) for online backups, e.g. "0 3 * * *"; empty: off.',
    },
    backupDir: {
      type: 'string',
      optional: true,
      doc: 'Where scheduled backups go. Default: <dataDir>/backups.',
    },
    backupKeep: {
      type: 'integer',
      default: 7,
      min: 1,
      max: 10_000,
      doc: 'Scheduled backups kept; older ones are deleted.',
    },
    commitP99Objective: {
      type: 'duration',
      default: 50,
      min: 1,
      doc: "Commit latency objective: edgekeeper_daemon_commit_objective_met is 0 while the p99 of the last minute's commits (at least 20 of them) is above it. A metric and an alert, not a readiness condition.",
    },
    quotaBackendBytes: { type: 'renamed', to: 'quota' },
    autoCompactionMode: { type: 'renamed', to: 'compactionMode' },
    autoCompactionRetention: { type: 'renamed', to: 'compactionRetention' },
  },
  check(v) {
    const problems: string[] = [];
    const retention = String(v.compactionRetention);
    if (v.compactionMode === 'periodic' && parseDuration(retention) === undefined) {
      problems.push(
        `Expected \`store.compactionRetention\` to be a duration ("1h", "30m", "0" for off) in periodic mode, got ${JSON.stringify(retention)}`,
      );
    }
    if (v.compactionMode === 'revision' && !/^\d+$/.test(retention)) {
      problems.push(
        `Expected \`store.compactionRetention\` to be a whole number of revisions ("10000", "0" for off) in revision mode, got ${JSON.stringify(retention)}`,
      );
    }
    const schedule = String(v.backupSchedule);
    if (schedule !== '' && !cron.validate(schedule)) {
      problems.push(
        `Expected \`store.backupSchedule\` to be a cron expression ("0 3 * * *") or "", got ${JSON.stringify(schedule)}`,
      );
    }
    return problems;
  },
};

/** The daemon's sections, in the order they appear in the docs. */
export const daemonSections: ConfigSection[] = [nodeSection, httpSection, logSection, storeSection];

/** The typed view of the daemon's sections (values after validation). */
export interface DaemonConfig {
  node: { name: string; dataDir: string; runtimeDir?: string };
  http: {
    listen: string;
    auth: 'token' | 'none';
    maxBodyBytes: number;
    maxConnections: number;
    maxPendingBodyBytes: number;
    idleTimeout: number;
  };
  log: { level: string };
  store: {
    durability: 'fsync' | 'relaxed';
    quota: number;
    maxRequestBytes: number;
    maxTxnOps: number;
    watchBufferLimit: number;
    minLeaseTtl: number;
    compactionMode: 'periodic' | 'revision';
    compactionRetention: string;
    backupSchedule: string;
    backupDir?: string;
    backupKeep: number;
    commitP99Objective: number;
  };
}
