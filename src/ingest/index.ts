/**
 * The ingest part's public face: MQTT device reports (embedded aedes broker or an external
 * broker), device registry mirrored under /edgekeeper/devices/, downlink commands, retention.
 */
export { ingestCliCommands } from './cli.js';
export { ingestConfigSection, ingestDefaults, type IngestMode, type IngestOptions } from './config.js';
export { createIngestPart, type IngestPart } from './part.js';
export { ingestMigrations } from './schema.js';
export { decodeBody } from './payload.js';
export type { DeviceDoc } from './registry.js';
