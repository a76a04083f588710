/**
 * Device credentials on a store: used by the running daemon (HTTP routes, broker auth) and by
 * the CLI against a stopped node's state directory. Only scrypt hashes are stored.
 */
import { InvalidArgumentError, KeyNotFoundError } from '../errors.js';
import type { Store } from '../store/types.js';
import { hashSecret, newSecret } from './auth.js';
import { DEVICES_PREFIX, validDeviceId } from './ids.js';

export interface DeviceInfo {
  id: string;
  createdAt: number;
  updatedAt: number;
  online: boolean | null;
  lastSeen: number | null;
  reports: number;
}

function checkId(id: string): void {
  if (!validDeviceId(id)) {
    throw new InvalidArgumentError(
      `device id ${JSON.stringify(String(id).slice(0, 80))} is invalid: use 1-64 characters A-Z a-z 0-9 . _ : - starting with a letter or digit`,
    );
  }
}

export function secretHashOf(store: Store, id: string): string | undefined {
  return store.query<{ secret_hash: string }>('SELECT secret_hash FROM ingest_devices WHERE id = ?').get(id)
    ?.secret_hash;
}

/** Create a device; returns its secret (shown once). Fails when the id exists. */
export async function addDevice(store: Store, id: string, now: number): Promise<string> {
  checkId(id);
  const secret = newSecret();
  const hash = await hashSecret(secret);
  const res = await store.write({
    sql: [
      {
        sql: 'INSERT INTO ingest_devices(id, secret_hash, created_at, updated_at) VALUES (?, ?, ?, ?) ON CONFLICT(id) DO NOTHING',
        params: [id, hash, now, now],
      },
    ],
  });
  if (res.sql[0]?.changes !== 1)
    throw new InvalidArgumentError(
      `device ${id} already exists; use \`edgekeeper device rotate ${id}\` for a new secret`,
    );
  return secret;
}

/** Replace a device's secret; the old one stops working at once (new connections). */
export async function rotateDevice(store: Store, id: string, now: number): Promise<string> {
  checkId(id);
  const secret = newSecret();
  const hash = await hashSecret(secret);
  const res = await store.write({
    sql: [
      {
        sql: 'UPDATE ingest_devices SET secret_hash = ?, updated_at = ? WHERE id = ?',
        params: [hash, now, id],
      },
    ],
  });
  if (res.sql[0]?.changes !== 1) throw new KeyNotFoundError();
  return secret;
}

/** Remove a device's credentials, registry row and /edgekeeper/devices/<id> key. Its reports stay. */
export async function removeDevice(store: Store, id: string): Promise<boolean> {
  checkId(id);
  const res = await store.write({
    sql: [
      { sql: 'DELETE FROM ingest_devices WHERE id = ?', params: [id] },
      { sql: 'DELETE FROM ingest_device_state WHERE id = ?', params: [id] },
    ],
    txn: { success: [{ deleteRange: { key: Buffer.from(DEVICES_PREFIX + id) } }] },
  });
  return (res.sql[0]?.changes ?? 0) + (res.sql[1]?.changes ?? 0) > 0;
}

export function listDevices(store: Store): DeviceInfo[] {
  const rows = store
    .query<{
      id: string;
      created_at: number | null;
      updated_at: number | null;
      online: number | null;
      last_seen: number | null;
      reports: number | null;
    }>(
      `SELECT d.id, d.created_at, d.updated_at, s.online, s.last_seen, s.reports
       FROM ingest_devices d LEFT JOIN ingest_device_state s ON s.id = d.id
       UNION ALL
       SELECT s.id, NULL, NULL, s.online, s.last_seen, s.reports
       FROM ingest_device_state s WHERE s.id NOT IN (SELECT id FROM ingest_devices)
       ORDER BY 1`,
    )
    .all();
  return rows.map((r) => ({
    id: r.id,
    createdAt: r.created_at ?? 0,
    updatedAt: r.updated_at ?? 0,
    online: r.online === null ? null : r.online === 1,
    lastSeen: r.last_seen,
    reports: r.reports ?? 0,
  }));
}
