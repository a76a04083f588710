/**
 * etcd snapshots: the bbolt file etcd's `Maintenance.Snapshot` streams, written from the store's
 * history and read back into it. bbolt.ts holds the file format, backend.ts etcd's layout in it.
 */
export { BoltReader, BoltWriter, type BoltWriterOptions } from './bbolt.js';
export {
  appendSha256,
  type EtcdSnapshot,
  openEtcdSnapshot,
  revisionKey,
  type SnapshotMember,
  verifyEtcdSnapshot,
  writeEtcdSnapshot,
} from './backend.js';
