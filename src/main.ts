#!/usr/bin/env node
/**
 * The `edgekeeper` command line. Built-in commands: run, backup, restore, help; parts add
 * theirs through `src/daemon/parts.ts`. Exit codes: 0 ok, 1 failure, 2 usage error (unknown
 * command or flag), 78 invalid configuration (EX_CONFIG; the systemd unit does not restart on it).
 */
import { AdminTokenError, adminFetch } from './admin.js';
import { createWriteStream, existsSync } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import { type ConfigSection, type FlagSpec, loadConfig, parseHostPort } from './config/index.js';
import {
  allFlags,
  allSections,
  DB_FILE,
  daemonMigrations,
  parts,
  partCommands,
  restoreDatabase,
  restoreFromEtcdSnapshot,
  runDaemon,
  runningPid,
  VERSION,
  verifyDatabaseFile,
  writeEtcdBackup,
} from './daemon/index.js';
import { verifyEtcdSnapshot } from './etcd/index.js';
import { ConfigError, EdgeError } from './errors.js';
import { silentLogger } from './log.js';
import type { CliCommand } from './part.js';
import { openStore } from './store/index.js';

const EXIT_USAGE = 2;
const EXIT_CONFIG = 78;

/** A usage error: printed with a pointer to the command's help, exit 2. */
class UsageError extends Error {}

const DEFAULT_HTTP = '127.0.0.1:9480';
const DEFAULT_DATA_DIR = './data';

function fieldDoc(sections: ConfigSection[], key: string): string {
  const [s, k] = key.split('.');
  const f = sections.find((x) => x.name === s)?.fields[k ?? ''];
  return f && f.type !== 'renamed' ? f.doc : '';
}

function runUsage(): string {
  const sections = allSections();
  const flags: FlagSpec[] = allFlags();
  const lines = flags.map((f) => {
    const left = `  --${f.flag} VALUE`.padEnd(30);
    return `${left}${f.key}: ${fieldDoc(sections, f.key)}`;
  });
  return [
    'Usage: edgekeeper run [--config FILE] [options]',
    '',
    'Starts the daemon in the foreground (systemd runs this). Settings come from the defaults,',
    'then the JSON config file, then EDGEKEEPER_<SECTION>_<KEY> environment variables, then flags.',
    'SIGTERM or SIGINT stops it cleanly (exit 0). Invalid configuration exits with 78.',
    '',
    'Options:',
    `${'  --config FILE'.padEnd(30)}JSON config file (see docs/configuration.md)`,
    ...lines,
    `${'  -h, --help'.padEnd(30)}show this help`,
  ].join('\n');
}

const builtins: CliCommand[] = [
  {
    name: 'run',
    summary: 'Start the daemon in the foreground (what systemd runs)',
    get usage() {
      return runUsage();
    },
    async run(args) {
      const flags = allFlags();
      const options: Record<string, { type: 'string' }> = { config: { type: 'string' } };
      for (const f of flags) options[f.flag] = { type: 'string' };
      const { values } = parse('run', args, options, 0);
      const { config: file, ...rest } = values as Record<string, string | undefined>;
      const config = loadConfig({ file, flags: rest, flagSpecs: flags, sections: allSections() });
      return runDaemon(config, parts);
    },
  },
  {
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
    async run(args) {
      const { values, positionals } = parse(
        'backup',
        args,
        { http: { type: 'string' }, 'data-dir': { type: 'string' }, format: { type: 'string' } },
        1,
      );
      const file = resolve(positionals[0]!);
      const dataDir = values['data-dir'] as string | undefined;
      const format = (values.format as string | undefined) ?? 'sqlite';
      if (format !== 'sqlite' && format !== 'etcd') {
        throw new UsageError(`backup: --format must be sqlite or etcd, got ${JSON.stringify(format)}`);
      }
      if (dataDir !== undefined && values.http !== undefined) {
        throw new UsageError('give either --http or --data-dir, not both');
      }
      if (dataDir !== undefined) return backupStopped(dataDir, file, format);
      return backupRunning((values.http as string | undefined) ?? DEFAULT_HTTP, file, format);
    },
  },
  {
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
    async run(args) {
      const { values, positionals } = parse(
        'restore',
        args,
        { 'data-dir': { type: 'string' }, 'from-etcd': { type: 'string' } },
        hasFlag(args, 'from-etcd') ? 0 : 1,
      );
      const fromEtcd = values['from-etcd'] as string | undefined;
      const file = resolve(fromEtcd ?? positionals[0]!);
      const dir = resolve((values['data-dir'] as string | undefined) ?? DEFAULT_DATA_DIR);
      if (!existsSync(file)) return fail(`no ${fromEtcd ? 'etcd snapshot' : 'backup file'} at ${file}`);
      const pid = runningPid(dir);
      if (pid !== undefined) {
        return fail(
          `edgekeeper (pid ${pid}) is running on ${dir}; stop it first (systemctl stop edgekeeper), then restore`,
        );
      }
      if (fromEtcd) {
        const r = await restoreFromEtcdSnapshot(file, dir, Date.now());
        process.stdout.write(
          `imported etcd ${r.layout} snapshot ${file} into ${join(dir, DB_FILE)}: revision ${r.revision}, ` +
            `compact revision ${r.compactRevision}, ${r.keys} keys, ${r.rows} history entries, ${r.leases} leases` +
            `${r.previous ? ` (previous database kept as ${r.previous})` : ''}\n`,
        );
        if (r.authEnabled) {
          process.stdout.write(
            "note: that etcd had authentication on; edgekeeper has no etcd users or roles: protect its API with loopback, the socket's permissions or TLS client certificates\n",
          );
        }
        if (!r.hasHash) {
          process.stdout.write(
            'note: the file carries no SHA-256 (a raw database copy); its structure was checked, not its content\n',
          );
        }
        return 0;
      }
      const r = await restoreDatabase(file, dir, Date.now());
      process.stdout.write(
        `restored ${file} into ${join(dir, DB_FILE)}${r.previous ? ` (previous database kept as ${r.previous})` : ''}\n`,
      );
      return 0;
    },
  },
];

function commands(): CliCommand[] {
  const all = [...builtins, ...partCommands()];
  const seen = new Set<string>();
  for (const c of all) {
    if (seen.has(c.name)) throw new Error(`CLI command ${c.name} is declared twice`);
    seen.add(c.name);
  }
  return all;
}

function topHelp(): string {
  const cmds = commands();
  const width = Math.max(8, ...cmds.map((c) => c.name.length)) + 2;
  return [
    `edgekeeper ${VERSION}: one daemon per edge node. etcd v3 on SQLite, MQTT device reports,`,
    'status frames, eBPF probes and store-and-forward fleet sync.',
    '',
    'Usage: edgekeeper <command> [options]',
    '',
    'Commands:',
    ...cmds.map((c) => `  ${c.name.padEnd(width)}${c.summary}`),
    `  ${'help'.padEnd(width)}Show the full usage of a command`,
    '',
    'Options:',
    '  -h, --help     show this help',
    '  -V, --version  print the version',
    '',
    "Run 'edgekeeper <command> --help' for a command's options.",
  ].join('\n');
}

/** parseArgs with strict checking and an exact positional count; `--help` is handled by the caller. */
function parse(
  cmd: string,
  args: string[],
  options: Record<string, { type: 'string' | 'boolean' }>,
  positionalCount: number,
): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError(`${cmd}: ${(err as Error).message.split('\n')[0]}`);
  }
  const n = parsed.positionals.length;
  if (n !== positionalCount) {
    throw new UsageError(
      positionalCount === 0
        ? `${cmd}: unexpected argument ${JSON.stringify(parsed.positionals[0])}`
        : `${cmd}: expected ${positionalCount} argument${positionalCount > 1 ? 's' : ''} (FILE), got ${n}`,
    );
  }
  return parsed as { values: Record<string, string | boolean | undefined>; positionals: string[] };
}

/** Whether `--NAME` appears in `args` (before parsing, to choose the positional count). */
function hasFlag(args: string[], name: string): boolean {
  return args.some((a) => a === `--${name}` || a.startsWith(`--${name}=`));
}

function fail(message: string): number {
  process.stderr.write(`edgekeeper: ${message}\n`);
  return 1;
}

async function backupRunning(http: string, file: string, format: 'sqlite' | 'etcd'): Promise<number> {
  const hp = parseHostPort(http);
  if (!hp) throw new UsageError(`backup: --http must be HOST:PORT, got ${JSON.stringify(http)}`);
  const url = `http://${hp.host.includes(':') ? `[${hp.host}]` : hp.host}:${hp.port}/v1/backup${format === 'etcd' ? '?format=etcd' : ''}`;
  let res: Response;
  try {
    res = await adminFetch(url, { method: 'POST' });
  } catch (err) {
    if (err instanceof AdminTokenError) return fail(err.message);
    const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
    return fail(
      `no edgekeeper answers at ${url} (${cause}); is it running? For a stopped node use --data-dir DIR`,
    );
  }
  if (!res.ok || !res.body) {
    const text = await res.text();
    let msg = text;
    try {
      const j = JSON.parse(text) as { code?: string; message?: string };
      msg = `${j.code}: ${j.message}`;
    } catch {
      // not JSON: show it as it is
    }
    return fail(`the daemon refused the backup (HTTP ${res.status}): ${msg}`);
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
  process.stdout.write(`backup written to ${file} (from the daemon at ${hp.host}:${hp.port})\n`);
  return 0;
}

async function backupStopped(dataDir: string, file: string, format: 'sqlite' | 'etcd'): Promise<number> {
  const dir = resolve(dataDir);
  const pid = runningPid(dir);
  if (pid !== undefined) {
    return fail(
      `edgekeeper (pid ${pid}) is running on ${dir}; back it up through it: edgekeeper backup ${file} --http HOST:PORT`,
    );
  }
  const dbFile = join(dir, DB_FILE);
  if (!existsSync(dbFile)) return fail(`no database at ${dbFile}`);
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
      process.stdout.write(`etcd snapshot written to ${file} (from ${dbFile})\n`);
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
  process.stdout.write(`backup written to ${file} (from ${dbFile})\n`);
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const [first, ...rest] = argv;
  if (first === undefined) {
    process.stderr.write(`${topHelp()}\n`);
    return EXIT_USAGE;
  }
  if (first === '--help' || first === '-h') {
    process.stdout.write(`${topHelp()}\n`);
    return 0;
  }
  if (first === '--version' || first === '-V') {
    process.stdout.write(`${VERSION}\n`);
    return 0;
  }
  const all = commands();
  if (first === 'help') {
    const target = rest[0];
    if (target === undefined) {
      process.stdout.write(`${topHelp()}\n`);
      return 0;
    }
    const cmd = all.find((c) => c.name === target);
    if (!cmd) return usageError(`unknown command ${JSON.stringify(target)}`);
    process.stdout.write(`${cmd.usage}\n`);
    return 0;
  }
  if (first.startsWith('-')) return usageError(`unknown option ${JSON.stringify(first)}`);
  const cmd = all.find((c) => c.name === first);
  if (!cmd) return usageError(`unknown command ${JSON.stringify(first)}`);
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(`${cmd.usage}\n`);
    return 0;
  }
  try {
    return await cmd.run(rest);
  } catch (err) {
    if (err instanceof UsageError) return usageError(err.message, cmd.name);
    if (err instanceof ConfigError) {
      process.stderr.write(`edgekeeper: ${err.message}\n`);
      return EXIT_CONFIG;
    }
    if (err instanceof EdgeError) return fail(`${err.message} [${err.code}]`);
    process.stderr.write(`edgekeeper: ${first} failed: ${(err as Error)?.stack ?? String(err)}\n`);
    return 1;
  }
}

function usageError(message: string, cmd?: string): number {
  process.stderr.write(
    `edgekeeper: ${message}\nRun 'edgekeeper ${cmd ? `${cmd} --help` : '--help'}' for usage.\n`,
  );
  return EXIT_USAGE;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`edgekeeper: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);
