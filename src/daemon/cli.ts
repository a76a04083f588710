/**
 * The daemon's own commands: `run` (what systemd starts), `status` (a running daemon's view of
 * itself), `backup` and `restore`. Parts add theirs through `src/daemon/parts.ts`; `src/main.ts`
 * puts them all in one table.
 */
import { createWriteStream, existsSync } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  DEFAULT_HTTP,
  daemonJson,
  defineCommand,
  fetchOrUnreachable,
  httpBase,
  io,
  oneLine,
  output,
} from '../cli.js';
import { type ConfigSection, loadConfig } from '../config/index.js';
import { verifyEtcdSnapshot } from '../etcd/index.js';
import { EdgeError, UsageError } from '../errors.js';
import { silentLogger } from '../log.js';
import type { CliCommand, CliOption } from '../part.js';
import { openStore } from '../store/index.js';
import {
  DB_FILE,
  restoreDatabase,
  restoreFromEtcdSnapshot,
  verifyDatabaseFile,
  writeEtcdBackup,
} from './backup.js';
import { daemonMigrations } from './health.js';
import { runDaemon } from './index.js';
import { allFlags, allSections, parts } from './parts.js';
import { runningPid } from './pidfile.js';

const DEFAULT_DATA_DIR = './data';
const HTTP: CliOption = { type: 'string', value: 'HOST:PORT', default: DEFAULT_HTTP };

function fieldDoc(sections: ConfigSection[], key: string): string {
  const [s, k] = key.split('.');
  const f = sections.find((x) => x.name === s)?.fields[k ?? ''];
  return f && f.type !== 'renamed' ? f.doc : '';
}

function runUsage(): string {
  const sections = allSections();
  const lines = allFlags().map(
    (f) => `${`  --${f.flag} VALUE`.padEnd(30)}${f.key}: ${fieldDoc(sections, f.key)}`,
  );
  return [
    'Usage: edgekeeper run [--config FILE] [options]',
    '',
    'Starts the daemon in the foreground (systemd runs this). Settings come from the defaults,',
    'then the JSON config file, then EDGEKEEPER_<SECTION>_<KEY> environment variables, then flags.',
    'SIGTERM or SIGINT stops it cleanly (exit 0). Invalid configuration exits with 78.',
    '',
    'Options:',
    `${'  --config FILE'.padEnd(30)}JSON config file (see docs/configuration.md)`,
    `${'  --check'.padEnd(30)}only check the configuration: exit 0 when valid, 78 with every problem`,
    ...lines,
    `${'  -h, --help'.padEnd(30)}show this help`,
  ].join('\n');
}

const runOptions = (): Record<string, CliOption> => {
  const o: Record<string, CliOption> = {
    config: { type: 'string', value: 'FILE' },
    check: { type: 'boolean' },
  };
  for (const f of allFlags()) o[f.flag] = { type: 'string', value: f.flag === 'data-dir' ? 'DIR' : 'VALUE' };
  return o;
};

const runCommand = defineCommand({
  name: 'run',
  summary: 'Start the daemon in the foreground (what systemd runs)',
  usage: runUsage,
  options: runOptions(),
  async main({ values }) {
    const {
      config: file,
      check,
      debug: _d,
      help: _h,
      ...rest
    } = values as Record<string, string | undefined> & { check?: boolean };
    const config = loadConfig({ file, flags: rest, flagSpecs: allFlags(), sections: allSections() });
    if (check) {
      io.out(`configuration ok${file ? `: ${resolve(file)}` : ' (defaults)'}\n`);
      return 0;
    }
    return runDaemon(config, parts);
  },
});

// --- status ------------------------------------------------------------------------------------

interface DaemonStatus {
  node: string;
  version: string;
  pid: number;
  uptimeSeconds: number;
  readiness: { ready: boolean; failing: Record<string, string>; checks: string[] };
  store: {
    revision: number;
    dbSize: number;
    quota: number;
    keys: number;
    noSpace: boolean;
    commitLatencyMs?: { p50: number; p99: number };
  };
  parts: Record<string, Record<string, unknown> | undefined>;
}

const bytes = (n: number) => {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${u[i]}`;
};

const duration = (s: number) => {
  const d = Math.floor(s / 86_400);
  const h = Math.floor((s % 86_400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  return d > 0 ? `${d}d ${h}h` : h > 0 ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
};

/** The daemon's status as a few lines a person reads at a glance. */
function statusLines(s: DaemonStatus): string[] {
  const lines: [string, string][] = [];
  lines.push(['node', `${s.node} (edgekeeper ${s.version}, pid ${s.pid}, up ${duration(s.uptimeSeconds)})`]);
  const failing = Object.entries(s.readiness.failing);
  lines.push([
    'ready',
    failing.length === 0 ? 'yes' : `NO: ${failing.map(([k, v]) => `${k}: ${v}`).join('; ')}`,
  ]);
  const st = s.store;
  const lat = st.commitLatencyMs
    ? `commit p50 ${st.commitLatencyMs.p50.toFixed(1)} ms, p99 ${st.commitLatencyMs.p99.toFixed(1)} ms (last minute)`
    : 'commit latency: too few commits in the last minute';
  lines.push([
    'store',
    `revision ${st.revision}, ${st.keys} keys, ${bytes(st.dbSize)} of ${bytes(st.quota)}${st.noSpace ? ' (OVER QUOTA: writes refused)' : ''}, ${lat}`,
  ]);
  const ingest = s.parts.ingest as
    | { devices?: { online: number; offline: number; never?: number } }
    | undefined;
  if (ingest?.devices) {
    const d = ingest.devices;
    lines.push([
      'devices',
      `${d.online} online, ${d.offline} offline${d.never ? `, ${d.never} never connected` : ''}`,
    ]);
  }
  const sync = s.parts.sync as
    | { state: string; backlog: Record<string, number>; lastSuccess: string | null; lastError: string | null }
    | undefined;
  if (sync?.backlog) {
    const waiting = Object.values(sync.backlog).reduce((a, b) => a + b, 0);
    lines.push([
      'uplink',
      `${sync.state}, ${waiting} records waiting, last upload ${sync.lastSuccess ?? 'never'}${sync.lastError ? `, last error: ${sync.lastError}` : ''}`,
    ]);
  }
  const probes = s.parts.probes as { probes?: Record<string, string> } | undefined;
  if (probes?.probes)
    lines.push([
      'probes',
      Object.entries(probes.probes)
        .map(([k, v]) => `${k} ${v}`)
        .join(', '),
    ]);
  return lines.map(([k, v]) => `${k.padEnd(9)}${oneLine(v)}`);
}

const statusCommand = defineCommand({
  name: 'status',
  summary: "A running daemon's status: readiness, store, devices, uplink, probes",
  usage: `Usage: edgekeeper status [--http HOST:PORT] [-w simple|table|json]

Asks the running daemon (GET /v1/status on --http, default ${DEFAULT_HTTP}) for its node name,
version, uptime, readiness (and what fails), store, devices, uplink and probes. -w json prints the
whole answer. Exit 0 when the daemon answered (ready or not), 1 when nothing answers.
The etcd API's own view (etcd's endpoint status) is \`edgekeeper endpoint status\`.`,
  options: { http: HTTP },
  formats: ['simple', 'table', 'json'],
  async main({ values, format }) {
    const { body } = await daemonJson<DaemonStatus>(values.http as string, 'GET', '/v1/status');
    output(format, { json: body, simple: () => statusLines(body) });
    return 0;
  },
});

// --- backup and restore ------------------------------------------------------------------------

const backupCommand = defineCommand({
  name: 'backup',
  summary: 'Copy the database to FILE, from a running daemon (--http) or a stopped node (--data-dir)',
  usage: [
    'Usage: edgekeeper backup FILE [--format sqlite|etcd] [--http HOST:PORT | --data-dir DIR]',
    '',
    'Writes a consistent copy of the database to FILE and checks its integrity.',
    '  --format sqlite    (default) the SQLite database, for `edgekeeper restore FILE`',
    '  --format etcd      the snapshot etcd writes (bbolt + SHA-256): `etcdctl snapshot status|restore`',
    "                     read it, so a real etcd member can start from this node's key space",
    `  --http HOST:PORT   ask the running daemon there (default ${DEFAULT_HTTP}); it streams an online backup`,
    "  --data-dir DIR     copy a stopped node's database from DIR (refused while a daemon runs on DIR)",
  ].join('\n'),
  options: {
    http: { type: 'string', value: 'HOST:PORT' },
    'data-dir': { type: 'string', value: 'DIR' },
    format: { type: 'string', value: 'FORMAT', choices: ['sqlite', 'etcd'], default: 'sqlite' },
  },
  args: [1, 1],
  async main({ values, args }) {
    const file = resolve(args[0]!);
    const format = values.format as 'sqlite' | 'etcd';
    const dataDir = values['data-dir'] as string | undefined;
    if (dataDir !== undefined && values.http !== undefined)
      throw new UsageError('give either --http or --data-dir, not both');
    if (dataDir !== undefined) return backupStopped(dataDir, file, format);
    return backupRunning((values.http as string | undefined) ?? DEFAULT_HTTP, file, format);
  },
});

async function backupRunning(http: string, file: string, format: 'sqlite' | 'etcd'): Promise<number> {
  const url = `${httpBase(http)}/v1/backup${format === 'etcd' ? '?format=etcd' : ''}`;
  const res = await fetchOrUnreachable(
    url,
    { method: 'POST', signal: null },
    'is it running? For a stopped node use --data-dir DIR',
  );
  if (!res.ok || !res.body) {
    const text = await res.text();
    let code = 'EDGE_ERR_INTERNAL';
    let msg = text.slice(0, 200);
    try {
      const j = JSON.parse(text) as { code?: string; message?: string };
      code = j.code ?? code;
      msg = j.message ?? msg;
    } catch {
      // not JSON: show it as it is
    }
    throw new EdgeError(code, `the daemon refused the backup (HTTP ${res.status}): ${msg}`, res.status);
  }
  const tmp = `${file}.part`;
  try {
    await pipeline(
      Readable.fromWeb(res.body as import('node:stream/web').ReadableStream),
      createWriteStream(tmp),
    );
    if (format === 'etcd') await verifyEtcdSnapshot(tmp);
    else verifyDatabaseFile(tmp);
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  io.out(`backup written to ${file} (from the daemon at ${new URL(url).host})\n`);
  return 0;
}

/** A stopped node's database, refused while a daemon runs on it. */
function stoppedNode(dataDir: string, whenRunning: (pid: number) => string): string {
  const dir = resolve(dataDir);
  const pid = runningPid(dir);
  if (pid !== undefined) throw new EdgeError('EDGE_ERR_ALREADY_RUNNING', whenRunning(pid), 409);
  return dir;
}

async function backupStopped(dataDir: string, file: string, format: 'sqlite' | 'etcd'): Promise<number> {
  const dir = stoppedNode(
    dataDir,
    (pid) =>
      `edgekeeper (pid ${pid}) is running on ${resolve(dataDir)}; back it up through it: edgekeeper backup ${file} --http HOST:PORT`,
  );
  const dbFile = join(dir, DB_FILE);
  if (!existsSync(dbFile)) throw new EdgeError('EDGE_ERR_IO', `no database at ${dbFile}`);
  const tmp = `${file}.part`;
  const store = await openStore({
    file: dbFile,
    inlineWriter: true,
    logger: silentLogger(),
    migrations: [...daemonMigrations, ...parts.flatMap((p) => p.migrations ?? [])],
  });
  try {
    if (format === 'etcd') {
      await writeEtcdBackup(store, file, undefined, { verify: true });
      io.out(`etcd snapshot written to ${file} (from ${dbFile})\n`);
      return 0;
    }
    await store.backup(tmp);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  } finally {
    await store.close();
  }
  try {
    verifyDatabaseFile(tmp);
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  io.out(`backup written to ${file} (from ${dbFile})\n`);
  return 0;
}

const restoreCommand = defineCommand({
  name: 'restore',
  summary: "Replace a stopped node's database with a verified backup or an etcd snapshot",
  usage: [
    'Usage: edgekeeper restore FILE [--data-dir DIR]',
    '       edgekeeper restore --from-etcd SNAPSHOT [--data-dir DIR]',
    '',
    `Checks FILE's integrity, then replaces DIR/${DB_FILE} with it (default DIR: ${DEFAULT_DATA_DIR}).`,
    `The current database is kept as ${DB_FILE}.pre-restore-<time>. Refused while a daemon runs on DIR.`,
    "  --from-etcd SNAPSHOT  import an etcd 3.4/3.5 snapshot (`etcdctl snapshot save`, or a member's",
    '                        member/snap/db): its keys with their history since its compact revision,',
    '                        and its leases. The node keeps its identity; device reports, probe',
    '                        samples and upload cursors start empty (the old ones stay in the kept file).',
    "  --data-dir DIR        the node's state directory",
  ].join('\n'),
  options: {
    'data-dir': { type: 'string', value: 'DIR', default: DEFAULT_DATA_DIR },
    'from-etcd': { type: 'string', value: 'SNAPSHOT' },
  },
  args: [0, 1],
  async main({ values, args }) {
    const fromEtcd = values['from-etcd'] as string | undefined;
    if ((fromEtcd === undefined) === (args.length === 0))
      throw new UsageError(
        fromEtcd
          ? 'give either FILE or --from-etcd SNAPSHOT, not both'
          : 'needs FILE (or --from-etcd SNAPSHOT)',
      );
    const file = resolve(fromEtcd ?? args[0]!);
    const dir = resolve(values['data-dir'] as string);
    if (!existsSync(file))
      throw new EdgeError('EDGE_ERR_IO', `no ${fromEtcd ? 'etcd snapshot' : 'backup file'} at ${file}`);
    stoppedNode(
      dir,
      (pid) =>
        `edgekeeper (pid ${pid}) is running on ${dir}; stop it first (systemctl stop edgekeeper), then restore`,
    );
    if (fromEtcd) {
      const r = await restoreFromEtcdSnapshot(file, dir, Date.now());
      io.out(
        `imported etcd ${r.layout} snapshot ${file} into ${join(dir, DB_FILE)}: revision ${r.revision}, ` +
          `compact revision ${r.compactRevision}, ${r.keys} keys, ${r.rows} history entries, ${r.leases} leases` +
          `${r.previous ? ` (previous database kept as ${r.previous})` : ''}\n`,
      );
      if (r.authEnabled) {
        io.out(
          'note: that etcd had authentication on; its users and roles were not imported: recreate them with etcdctl (user add, role add, auth enable)\n',
        );
      }
      if (!r.hasHash) {
        io.out(
          'note: the file carries no SHA-256 (a raw database copy); its structure was checked, not its content\n',
        );
      }
      return 0;
    }
    const r = await restoreDatabase(file, dir, Date.now());
    io.out(
      `restored ${file} into ${join(dir, DB_FILE)}${r.previous ? ` (previous database kept as ${r.previous})` : ''}\n`,
    );
    return 0;
  },
});

export const daemonCliCommands: CliCommand[] = [runCommand, statusCommand, backupCommand, restoreCommand];
