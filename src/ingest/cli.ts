/**
 * `edgekeeper device add|list|remove|rotate` and `edgekeeper ingest rejects`, against a running
 * daemon over its local HTTP API (`--http`, default 127.0.0.1:9480) or against a stopped node's
 * state directory (`--data-dir`), opening the database directly.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { type CliCommand, type CliOption, DEFAULT_HTTP, daemonJson, defineCommand, output } from '../cli.js';
import { EdgeError, FileError, KeyNotFoundError, UsageError } from '../errors.js';
import type { Store } from '../store/types.js';
import { addDevice, type DeviceInfo, listDevices, removeDevice, rotateDevice } from './devices.js';
import { DeadLetters, type RejectRow } from './rejects.js';
import { ingestMigrations } from './schema.js';

const DEVICE_USAGE = `Usage: edgekeeper device <add|list|remove|rotate> [ID] [--http HOST:PORT | --data-dir DIR] [-w ...]

  add ID       create a device; prints its secret once, as the last word of the output
  list         list devices (online state, last seen, reports); -w table (default), simple or json
  remove ID    delete the device's credentials and registry entry (its reports stay)
  rotate ID    give the device a new secret; the old one stops working

  --http HOST:PORT   a running daemon's local API (default ${DEFAULT_HTTP})
  --data-dir DIR     a stopped node's state directory (opens DIR/edgekeeper.db)
  -w, --write-out    table, simple or json (--json is -w json)`;

const INGEST_USAGE = `Usage: edgekeeper ingest rejects [--limit N] [--http HOST:PORT | --data-dir DIR] [-w simple|table|json]

  rejects      the newest entries of the dead-letter table: refused reports, connections and
               subscriptions with their reason and first bytes. The table is a sample (at most
               one row per device and reason a second, 50 rows a second); every reject is
               counted in edgekeeper_ingest_rejects_total, the ones left out of the table in
               edgekeeper_ingest_rejects_unrecorded_total.`;

const TARGET: Record<string, CliOption> = {
  http: { type: 'string', value: 'HOST:PORT', default: DEFAULT_HTTP },
  'data-dir': { type: 'string', value: 'DIR' },
};

async function withStore<T>(dataDir: string, fn: (s: Store) => Promise<T>): Promise<T> {
  const file = join(dataDir, 'edgekeeper.db');
  // Opening would create an empty database: a wrong --data-dir must say so instead.
  if (!existsSync(file))
    throw new FileError(`no database at ${file}: is ${dataDir} a node's state directory?`);
  const { openStore } = await import('../store/index.js');
  const store = await openStore({
    file,
    migrations: ingestMigrations,
    inlineWriter: true,
  });
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

const HINT = 'is it running? For a stopped node use --data-dir DIR';
const noDevice = (id: string) => new EdgeError('EDGE_ERR_KEY_NOT_FOUND', `no device ${id}`, 404);

function fmtTime(ms: number | null): string {
  return ms ? new Date(ms).toISOString() : '-';
}

const deviceCommand = defineCommand({
  name: 'device',
  summary: 'Manage MQTT devices: add, list, remove, rotate secrets.',
  usage: DEVICE_USAGE,
  subcommands: { add: [1, 1], list: [0, 0], remove: [1, 1], rotate: [1, 1] },
  options: TARGET,
  formats: ['simple', 'table', 'json'],
  defaultFormat: (sub) => (sub === 'list' ? 'table' : 'simple'),
  async main({ values, sub, args, format }) {
    const dataDir = values['data-dir'] as string | undefined;
    const http = values.http as string;
    const now = Date.now();
    const id = args[0]!;
    switch (sub) {
      case 'add':
      case 'rotate': {
        const secret = dataDir
          ? await withStore(dataDir, (s) =>
              sub === 'add' ? addDevice(s, id, now) : rotateDevice(s, id, now),
            ).catch((err: unknown) => {
              throw err instanceof KeyNotFoundError ? noDevice(id) : err;
            })
          : (
              await daemonJson<{ secret?: string }>(
                http,
                'POST',
                sub === 'add' ? '/v1/devices' : '/v1/devices/rotate',
                { id },
                HINT,
              )
            ).body.secret;
        if (!secret) throw noDevice(id);
        output(format, {
          json: { id, secret },
          // The secret is the last word, so scripts can take it with `awk '{print $NF}'`.
          simple: () =>
            `device ${id} ${sub === 'add' ? 'added' : 'rotated'}; MQTT user name ${id}, password (shown once): ${secret}`,
        });
        return 0;
      }
      case 'remove': {
        const removed = dataDir
          ? await withStore(dataDir, (s) => removeDevice(s, id))
          : (await daemonJson<{ removed: boolean }>(http, 'POST', '/v1/devices/remove', { id }, HINT)).body
              .removed;
        if (!removed) throw noDevice(id);
        output(format, { json: { id, removed }, simple: () => `device ${id} removed` });
        return 0;
      }
      default: {
        const list = dataDir
          ? await withStore(dataDir, async (s) => listDevices(s))
          : (await daemonJson<DeviceInfo[]>(http, 'GET', '/v1/devices', undefined, HINT)).body;
        const state = (d: DeviceInfo) => (d.online === null ? 'never' : d.online ? 'online' : 'offline');
        output(format, {
          json: list,
          table: list.map((d) => ({
            id: d.id,
            state: state(d),
            lastSeen: fmtTime(d.lastSeen),
            reports: d.reports,
          })),
          simple: () => list.map((d) => `${d.id} ${state(d)} ${fmtTime(d.lastSeen)} ${d.reports}`),
        });
        return 0;
      }
    }
  },
});

const ingestCommand = defineCommand({
  name: 'ingest',
  summary: 'Inspect MQTT ingest: rejected input (dead letters).',
  usage: INGEST_USAGE,
  subcommands: { rejects: [0, 0] },
  options: { ...TARGET, limit: { type: 'string', value: 'N', default: '50' } },
  formats: ['simple', 'table', 'json'],
  async main({ values, format }) {
    const limit = Number(values.limit);
    if (!/^\d+$/.test(String(values.limit)) || limit < 1 || limit > 1000)
      throw new UsageError(`--limit must be 1..1000, got ${JSON.stringify(values.limit)}`);
    // As served over HTTP: the first bytes hex-encoded.
    type Row = Omit<RejectRow, 'head'> & { head: string | null };
    const dataDir = values['data-dir'] as string | undefined;
    const rows: Row[] = dataDir
      ? await withStore(dataDir, async (s) =>
          DeadLetters.list(s, limit).map((r) => ({
            ...r,
            head: r.head ? Buffer.from(r.head).toString('hex') : null,
          })),
        )
      : (
          await daemonJson<Row[]>(
            values.http as string,
            'GET',
            `/v1/ingest/rejects?limit=${limit}`,
            undefined,
            HINT,
          )
        ).body;
    output(format, {
      json: rows,
      table: rows.map((r) => ({
        time: fmtTime(r.ts),
        reason: r.reason,
        device: r.device,
        topic: r.topic,
        size: r.size,
        detail: r.detail,
      })),
      simple: () => {
        if (rows.length === 0) return 'no rejected input recorded';
        return rows.flatMap((r) => [
          `${fmtTime(r.ts)} ${r.reason.padEnd(16)} device=${r.device ?? '-'} topic=${r.topic ?? '-'} size=${r.size} ${r.detail ?? ''}`,
          ...(r.head ? [`    head: ${r.head.slice(0, 96)}`] : []),
        ]);
      },
    });
    return 0;
  },
});

export const ingestCliCommands: CliCommand[] = [deviceCommand, ingestCommand];
