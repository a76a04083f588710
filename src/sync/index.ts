/**
 * The sync part's public face: the uplink (store-and-forward upload of events, reports and probe
 * samples; desired state back down) and the reference fleet receiver on PostgreSQL.
 */
import type { CliCommand, PartContext } from '../part.js';
import type { Migration } from '../store/types.js';
import type { FleetServer, FleetServerOptions } from './receiver/server.js';
import { fleetNodeCommand, fleetServerCommand, syncCommand } from './cli.js';
import type { SyncOptions, SyncPart } from './types.js';
import { createUplink, SYNC_STATE_SQL } from './uplink.js';

export { syncConfigSection } from './config.js';
export type { FleetServer, FleetServerOptions } from './receiver/server.js';
export type { NodeHealthInput, SyncOptions, SyncPart, SyncState, SyncStatus } from './types.js';
export { DESIRED_PREFIX, DESIRED_VERSION_KEY } from './uplink.js';

/**
 * The reference fleet receiver. Loaded on demand: it pulls in the PostgreSQL client, which a
 * node running `edgekeeper run` never needs.
 */
export async function startFleetServer(opts: FleetServerOptions): Promise<FleetServer> {
  return (await import('./receiver/server.js')).startFleetServer(opts);
}

/** The uplink. With no `options.url` it starts as `disabled` and does nothing. */
export function createSyncPart(ctx: PartContext, options: SyncOptions): SyncPart {
  return createUplink(ctx, options);
}

/** The sync part's tables in the node's SQLite file (the `cursors` table is the store's). */
export const syncMigrations: Migration[] = [{ part: 'sync', version: 1, sql: SYNC_STATE_SQL }];

export const syncCliCommands: CliCommand[] = [fleetServerCommand, fleetNodeCommand, syncCommand];
