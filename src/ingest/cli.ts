/**
 * `edgekeeper device add|list|remove|rotate` and `edgekeeper ingest rejects`, against a running
 * daemon over its local HTTP API (`--http`, default 127.0.0.1:9480) or against a stopped node's
 * state directory (`--data-dir`), opening the database directly.
 */
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { AdminTokenError, adminFetch } from '../admin.js';
import type { CliCommand } from '../part.js';
import type { Store } from '../store/types.js';
import { addDevice, type DeviceInfo, listDevices, removeDevice, rotateDevice } from './devices.js';
import { DeadLetters, type RejectRow } from './rejects.js';
import { ingestMigrations } from './schema.js';

const DEVICE_USAGE = `Usage: edgekeeper device <add|list|remove|rotate> [ID] [--http HOST:PORT | --data-dir DIR] [--json]

  add ID       create a device; prints its secret once, as the last word of the output
  list         list devices (online state, last seen, reports)
  remove ID    delete the device's credentials and registry entry (its reports stay)
  rotate ID    give the device a new secret; the old one stops working

  --http HOST:PORT   a running daemon's local API (default 127.0.0.1:9480)
  --data-dir DIR     a stopped node's state directory (opens DIR/edgekeeper.db)
  --json             machine-readable output (list)`;

const INGEST_USAGE = `Usage: edgekeeper ingest rejects [--limit N] [--http HOST:PORT | --data-dir DIR] [--json]

  rejects      the newest entries of the dead-letter table: refused reports, connections and
               subscriptions with their reason and first bytes`;

interface Target {
  http: string;
  dataDir?: string;
}

async function withStore<T>(dataDir: string, fn: (s: Store) => Promise<T>): Promise<T> {
  const { openStore } = await import('../store/index.js');
  const store = await openStore({
    file: join(dataDir, 'edgekeeper.db'),
    migrations: ingestMigrations,
    inlineWriter: true,
  });
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

async function http<T>(t: Target, method: string, path: string, body?: unknown): Promise<T> {
  let res: Response;
  try {
    res = await adminFetch(`http://${t.http}${path}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    if (err instanceof AdminTokenError) throw err;
    throw new Error(
      `cannot reach the daemon at ${t.http} (${(err as Error).message}); is it running? For a stopped node use --data-dir`,
    );
  }
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = { message: text };
  }
  if (!res.ok && res.status !== 404) {
    const m = (json as { message?: string }).message ?? text;
    throw new Error(`daemon answered ${res.status}: ${m}`);
  }
  return json as T;
}

function fmtTime(ms: number | null): string {
  return ms ? new Date(ms).toISOString() : '-';
}

async function deviceMain(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      http: { type: 'string', default: '127.0.0.1:9480' },
      'data-dir': { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const [sub, id] = positionals;
  if (values.help || !sub) {
    console.log(DEVICE_USAGE);
    return values.help ? 0 : 2;
  }
  const t: Target = { http: values.http!, dataDir: values['data-dir'] };
  const now = Date.now();
  const needId = () => {
    if (!id) throw new Error(`device ${sub} needs a device id\n${DEVICE_USAGE}`);
    return id;
  };
  switch (sub) {
    case 'add':
    case 'rotate': {
      const dev = needId();
      const secret = t.dataDir
        ? await withStore(t.dataDir, (s) =>
            sub === 'add' ? addDevice(s, dev, now) : rotateDevice(s, dev, now),
          )
        : (
            await http<{ secret: string }>(t, 'POST', sub === 'add' ? '/v1/devices' : '/v1/devices/rotate', {
              id: dev,
            })
          ).secret;
      if (!secret)
        throw new Error(sub === 'rotate' ? `no device ${dev}` : 'the daemon did not return a secret');
      // the secret is the last word, so scripts can take it with `awk '{print $NF}'`
      console.log(
        `device ${dev} ${sub === 'add' ? 'added' : 'rotated'}; MQTT user name ${dev}, password (shown once): ${secret}`,
      );
      return 0;
    }
    case 'remove': {
      const dev = needId();
      const removed = t.dataDir
        ? await withStore(t.dataDir, (s) => removeDevice(s, dev))
        : (await http<{ removed: boolean }>(t, 'POST', '/v1/devices/remove', { id: dev })).removed;
      console.log(removed ? `device ${dev} removed` : `no device ${dev}`);
      return removed ? 0 : 1;
    }
    case 'list': {
      const list = t.dataDir
        ? await withStore(t.dataDir, async (s) => listDevices(s))
        : await http<DeviceInfo[]>(t, 'GET', '/v1/devices');
      if (values.json) console.log(JSON.stringify(list));
      else {
        console.log(['ID'.padEnd(24), 'ONLINE'.padEnd(7), 'LAST SEEN'.padEnd(25), 'REPORTS'].join(' '));
        for (const d of list) {
          const on = d.online === null ? 'never' : d.online ? 'yes' : 'no';
          console.log(
            [d.id.padEnd(24), on.padEnd(7), fmtTime(d.lastSeen).padEnd(25), String(d.reports)].join(' '),
          );
        }
      }
      return 0;
    }
    default:
      console.error(`unknown subcommand ${sub}\n${DEVICE_USAGE}`);
      return 2;
  }
}

async function ingestMain(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      http: { type: 'string', default: '127.0.0.1:9480' },
      'data-dir': { type: 'string' },
      limit: { type: 'string', default: '50' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help || positionals[0] !== 'rejects') {
    console.log(INGEST_USAGE);
    return values.help ? 0 : 2;
  }
  const limit = Math.min(1000, Math.max(1, Number(values.limit) || 50));
  // As served over HTTP: the first bytes hex-encoded.
  type Row = Omit<RejectRow, 'head'> & { head: string | null };

  const rows: Row[] = values['data-dir']
    ? await withStore(values['data-dir'], async (s) =>
        DeadLetters.list(s, limit).map((r) => ({
          ...r,
          head: r.head ? Buffer.from(r.head).toString('hex') : null,
        })),
      )
    : await http<Row[]>({ http: values.http! }, 'GET', `/v1/ingest/rejects?limit=${limit}`);
  if (values.json) console.log(JSON.stringify(rows));
  else {
    for (const r of rows) {
      console.log(
        `${fmtTime(r.ts)} ${r.reason.padEnd(16)} device=${r.device ?? '-'} topic=${r.topic ?? '-'} size=${r.size} ${r.detail ?? ''}`,
      );
      if (r.head) console.log(`    head: ${r.head.slice(0, 96)}`);
    }
    if (rows.length === 0) console.log('no rejected input recorded');
  }
  return 0;
}

async function guarded(fn: () => Promise<number>): Promise<number> {
  try {
    return await fn();
  } catch (err) {
    console.error(`error: ${(err as Error).message}`);
    return 1;
  }
}

export const ingestCliCommands: CliCommand[] = [
  {
    name: 'device',
    summary: 'Manage MQTT devices: add, list, remove, rotate secrets.',
    usage: DEVICE_USAGE,
    run: (a) => guarded(() => deviceMain(a)),
  },
  {
    name: 'ingest',
    summary: 'Inspect MQTT ingest: rejected input (dead letters).',
    usage: INGEST_USAGE,
    run: (a) => guarded(() => ingestMain(a)),
  },
];
