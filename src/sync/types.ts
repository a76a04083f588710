/**
 * The uplink's options and status. The option names are the `sync` config section's keys
 * (durations in ms, sizes in bytes), plus two hooks the daemon may pass.
 */
import type { Part } from '../part.js';
import type { AlertSeverity } from './codec.js';

export type Compression = 'gzip' | 'brotli';
export type ReportsPolicy = 'stop-ack' | 'drop-oldest';
export type SamplesPolicy = 'drop-oldest';

export interface SyncOptions {
  /** Receiver base URL, e.g. https://fleet.example.com; absent = uplink off. */
  url?: string;
  /** Bearer token, or a file holding it (first line). */
  token?: string;
  tokenFile?: string;
  /** Client certificate instead of (or as well as) a token; PEM files. */
  certFile?: string;
  keyFile?: string;
  /** CA bundle to trust for the receiver's certificate. */
  caFile?: string;
  /** Most records in one batch; default 10,000. */
  batchMaxRecords?: number;
  /** Most bytes of records (as stored) in one batch; default 2 MiB. */
  batchMaxBytes?: number;
  /** Default gzip: on columnar batches it measured as small as brotli quality 4 (6.5 vs 6.7 bytes a report). */
  compression?: Compression;
  /** How often to ask for desired state; default 60 s (±20% jitter). */
  desiredPollInterval?: number;
  /** First retry delay; default 1 s. */
  retryBase?: number;
  /** Longest retry delay; default 5 min. */
  retryMax?: number;
  /** One upload's deadline, connect to response; default 30 s. */
  requestTimeout?: number;
  /** Average upload rate limit in bytes per second on the wire; 0 = none. */
  bandwidth?: number;
  /** node-cron expressions; uploads run only during minutes that match one. Empty = always. */
  uploadWindows?: readonly string[];
  /** Most bytes (as stored) waiting to be sent before the policies below apply; default 512 MiB. */
  diskBudget?: number;
  samplesPolicy?: SamplesPolicy;
  /** stop-ack: ingest stops acknowledging reports (devices keep them); drop-oldest: delete the oldest unsent. */
  reportsPolicy?: ReportsPolicy;
  /** How often to look for new records when everything is sent; default 1 s. */
  idleInterval?: number;
  /** New records wait this long for more before a batch goes (ms). Default 30 s. */
  batchDelay?: number;
  /** An empty batch (backlog, applied version, last seen) at least this often; default 60 s. */
  heartbeatInterval?: number;
  /** How often to upload the status frame; default 5 min; 0 = never. */
  frameInterval?: number;
  /** How often the backlog is measured for metrics and the disk budget; default 5 s. */
  budgetInterval?: number;
  /** How often the node's health is looked at; a change held for two looks is recorded. Default 10 s. */
  healthInterval?: number;
  /** The node's health (readiness, alerts), wired by the daemon. Absent: ready, alerts unknown. */
  health?: () => NodeHealthInput;
  /** Status frame PNG source (from the frames part, wired by the daemon). */
  framePng?: () => Promise<Buffer | undefined>;
  /** Random numbers in [0, 1) for jitter; injected in tests. */
  random?: () => number;
}

export type SyncState = 'ok' | 'retrying' | 'offline' | 'disabled';

/**
 * The node's health as the daemon sees it, handed to the uplink, which only observes it: the
 * readiness checks, the alerts a status frame would show, and the file system of the state
 * directory. The uplink adds its own state and the store's quota.
 */
export interface NodeHealthInput {
  ready: boolean;
  /** Failing readiness checks by name, each with what is wrong. */
  failing: Record<string, string>;
  /** Current alerts; undefined while nobody knows them yet (which is not "no alerts"). */
  alerts?: { severity: AlertSeverity; text: string }[];
  diskUsedBytes?: number;
  diskTotalBytes?: number;
}

export interface SyncStatus extends Record<string, unknown> {
  state: SyncState;
  /** Records waiting, per source table. */
  backlog: { events: number; reports: number; samples: number };
  /** Estimated bytes waiting (as stored). */
  backlogBytes: number;
  /** Age in seconds of the oldest record waiting, or null when nothing waits. */
  oldestUnsentAgeSeconds: number | null;
  /** ISO time of the last acknowledged upload, or null. */
  lastSuccess: string | null;
  lastError: string | null;
  /** Sequence number of the last acknowledged batch. */
  seq: number;
  desiredVersion: string | null;
  /** False while reports are refused under the stop-ack policy. */
  admittingReports: boolean;
  droppedRecords: number;
}

export interface SyncPart extends Part {
  status(): SyncStatus;
  /** False while the disk budget is full under the stop-ack policy: ingest must not acknowledge reports. */
  admitReports(): boolean;
  /** Wake the uplink now (new records, a test). */
  kick(): void;
}
