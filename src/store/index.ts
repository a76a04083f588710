/**
 * The store part's public face: etcd v3 semantics on one SQLite file. The contract (every
 * revision, ordering and error rule) is documented in ./types.ts.
 */
export { openStore, pendingWrites } from './store.js';
export { prefixEnd } from './keys.js';
export { blobColumn } from './columns.js';
export {
  exportHistory,
  type HistoryExport,
  type HistoryImport,
  type HistoryLease,
  type HistoryRow,
  importHistory,
} from './history.js';
export { type SchemaStatus, schemaStatus } from './sql/schema.js';
export type * from './types.js';
