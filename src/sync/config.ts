import type { ConfigSection } from '../config/types.js';

/** The `sync` config section; its values map one to one onto SyncOptions. */
export const syncConfigSection: ConfigSection = {
  name: 'sync',
  doc: 'Store-and-forward upload of reports, probe samples and events to a fleet receiver, and desired state back down.',
  fields: {
    url: {
      type: 'string',
      optional: true,
      doc: 'Fleet receiver base URL (http:// or https://). Absent: the uplink is off and data stays on the node.',
    },
    token: {
      type: 'string',
      optional: true,
      doc: 'Bearer token of this node on the receiver (prefer tokenFile).',
    },
    tokenFile: { type: 'string', optional: true, doc: 'File whose first line is the bearer token.' },
    certFile: {
      type: 'string',
      optional: true,
      doc: 'Client certificate (PEM) whose CN is the node name, instead of a token.',
    },
    keyFile: { type: 'string', optional: true, doc: 'Private key (PEM) of certFile.' },
    caFile: {
      type: 'string',
      optional: true,
      doc: "CA bundle (PEM) to trust for the receiver's certificate.",
    },
    batchMaxRecords: {
      type: 'integer',
      default: 10_000,
      min: 1,
      max: 1_000_000,
      doc: 'Most records in one batch.',
    },
    batchMaxBytes: {
      type: 'bytes',
      default: 2 * 1024 * 1024,
      min: 1024,
      max: 64 * 1024 * 1024,
      doc: 'Most bytes of records (as stored) in one batch, before encoding and compression.',
    },
    compression: {
      type: 'string',
      default: 'gzip',
      enum: ['gzip', 'brotli'],
      doc: 'Batch compression. On columnar batches gzip (level 6) and brotli (quality 4) come out within 3% of each other; gzip is cheaper to decode.',
    },
    desiredPollInterval: {
      type: 'duration',
      default: 60_000,
      min: 1000,
      doc: 'How often to fetch desired state (±20% jitter; also at once after reconnect).',
    },
    retryBase: {
      type: 'duration',
      default: 1000,
      min: 10,
      doc: 'First retry delay; doubles per failure, with jitter.',
    },
    retryMax: {
      type: 'duration',
      default: 300_000,
      min: 100,
      doc: 'Longest retry delay. Retries never stop.',
    },
    requestTimeout: {
      type: 'duration',
      default: 30_000,
      min: 100,
      doc: 'Deadline of one upload, from connect to answer.',
    },
    bandwidth: {
      type: 'bytes',
      default: 0,
      min: 0,
      doc: 'Average upload rate cap in bytes per second on the wire; 0 = none.',
    },
    uploadWindows: {
      type: 'string[]',
      default: [],
      doc: 'node-cron expressions; uploads run only during minutes that match one (e.g. "* 0-5 * * *" = 00:00-05:59). Empty: always.',
    },
    diskBudget: {
      type: 'bytes',
      default: 512 * 1024 * 1024,
      min: 1024,
      doc: 'Most bytes (as stored) waiting to be sent before the policies apply.',
    },
    samplesPolicy: {
      type: 'string',
      default: 'drop-oldest',
      enum: ['drop-oldest'],
      doc: 'Probe samples over the budget: the oldest unsent are deleted first (recorded as sync.gap events).',
    },
    reportsPolicy: {
      type: 'string',
      default: 'stop-ack',
      enum: ['stop-ack', 'drop-oldest'],
      doc: 'Reports over the budget: stop-ack refuses new reports so devices keep them; drop-oldest deletes the oldest unsent (recorded as sync.gap events).',
    },
    idleInterval: {
      type: 'duration',
      default: 1000,
      min: 10,
      doc: 'How often to look for new records when everything is sent.',
    },
    batchDelay: {
      type: 'duration',
      default: 30_000,
      min: 0,
      doc: 'How long new records may wait for more before a batch goes (a full batch or a heartbeat goes at once): every upload moves the cursors, a commit on the SD card.',
    },
    heartbeatInterval: {
      type: 'duration',
      default: 60_000,
      min: 1000,
      doc: 'An empty batch (backlog, applied desired version) at least this often.',
    },
    healthInterval: {
      type: 'duration',
      default: 10_000,
      min: 1000,
      doc: 'How often the node looks at its own health (readiness, alerts, uplink, disk); a change that holds for two looks becomes one event.',
    },
    frameInterval: {
      type: 'duration',
      default: 300_000,
      min: 0,
      doc: 'How often to upload the status frame PNG; 0 = never.',
    },
    budgetInterval: {
      type: 'duration',
      default: 5000,
      min: 100,
      doc: 'How often the backlog is measured against the disk budget.',
    },
  },
};
