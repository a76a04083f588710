/**
 * Wiring and lifecycle. Start: pid file, store (after a backup when its schema is upgraded),
 * registry, HTTP, parts in order, jobs, then READY=1 and the backup schedule. Stop (idempotent): STOPPING=1, jobs off, HTTP stops taking requests, parts stop in
 * reverse, the store finishes in-flight commits and closes, pid file removed.
 */
import { createHash, randomBytes } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  createReadStream,
  existsSync,
  mkdirSync,
  openSync,
  rmSync,
  statSync,
} from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import cron, { type ScheduledTask } from 'node-cron';
import { Counter, collectDefaultMetrics, Gauge, Registry } from 'prom-client';
import { removeAdminToken, writeAdminToken } from '../admin.js';
import { type Clock, systemClock } from '../clock.js';
import { type Config, parseDuration } from '../config/index.js';
import { HttpServer, sendJson } from '../http/index.js';
import { HostReader } from '../host.js';
import { createLogger, type Logger } from '../log.js';
import type { Part, PartContext } from '../part.js';
import { SloGuard, type SloOptions } from '../slo/index.js';
import { openStore } from '../store/index.js';
import type { Store } from '../store/types.js';
import { DB_FILE, runScheduledBackup, writeEtcdBackup } from './backup.js';
import { Compactor } from './compaction.js';
import {
  daemonMigrations,
  Heartbeat,
  registerObjectiveMetrics,
  registerReadinessMetrics,
  storeReadinessCheck,
} from './health.js';
import { registerHostMetrics } from './host.js';
import { JobRecorder } from './jobs.js';
import { createNotifier, watchdogIntervalMs } from './notify.js';
import type { PartEntry } from './parts.js';
import { acquirePidFile } from './pidfile.js';
import { checkStateDir, prepareDatabase, RECORD_VERSION_SQL } from './upgrade.js';
import { VERSION } from './version.js';

/** Heartbeat period when no watchdog asks for a shorter one; bounds how stale readiness can be. */
const HEARTBEAT_MS = 5000;

export interface DaemonOptions {
  /** Environment for NOTIFY_SOCKET / WATCHDOG_USEC; default process.env. */
  env?: Record<string, string | undefined>;
  logger?: Logger;
  clock?: Clock;
  /** Ignored (the store's writer always runs on the main thread); kept for callers. */
  inlineWriter?: boolean;
  /**
   * The store can no longer tell what is durable (a WAL sync failed; it already logged why).
   * `runDaemon` exits so that systemd restarts the daemon on what the disk holds.
   */
  onStoreFatal?: (e: Error) => void;
}

export interface Daemon {
  readonly store: Store;
  readonly registry: Registry;
  readonly http: HttpServer;
  readonly logger: Logger;
  /** The bound HTTP address. */
  readonly httpAddress: { host: string; port: number };
  readonly stateDir: string;
  /** Stops everything in reverse order; idempotent; resolves when the database is closed. */
  stop(): Promise<void>;
}

/**
 * Where files that need not survive a reboot go: `node.runtimeDir`, else systemd's
 * RUNTIME_DIRECTORY (RuntimeDirectory=, a tmpfs under /run), else a directory in /dev/shm (a
 * tmpfs on every Linux) named after the data directory, so two daemons never share one.
 */
function runtimeDirFor(
  configured: string | undefined,
  stateDir: string,
  env: Record<string, string | undefined>,
): string {
  if (configured) return resolve(configured);
  if (env.RUNTIME_DIRECTORY) return resolve(env.RUNTIME_DIRECTORY.split(':')[0]!);
  const base = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
  const tag = createHash('sha256').update(stateDir).digest('hex').slice(0, 12);
  return join(base, `edgekeeper-${tag}`);
}

export async function startDaemon(
  config: Config,
  entries: PartEntry[],
  opts: DaemonOptions = {},
): Promise<Daemon> {
  // Milliseconds since the process started (performance's time origin): what start costs, by phase.
  const startedAt = performance.now();
  const phases: Record<string, number> = {};
  const timed = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
    const t = performance.now();
    try {
      return await fn();
    } finally {
      phases[name] = Math.round(performance.now() - t);
    }
  };
  const env = opts.env ?? process.env;
  const clock = opts.clock ?? systemClock;
  const logger = opts.logger ?? createLogger(config.log.level);
  const log = logger.child({ part: 'daemon' });
  const stateDir = resolve(config.node.dataDir);
  const dbFile = join(stateDir, DB_FILE);
  checkStateDir(stateDir, dbFile);
  privateStateDir(stateDir, log);
  const runtimeDir = runtimeDirFor(config.node.runtimeDir, stateDir, opts.env ?? process.env);
  mkdirSync(runtimeDir, { recursive: true, mode: 0o700 });
  const releasePid = acquirePidFile(stateDir);
  const notifier = createNotifier(env, log);
  const watchdogMs = watchdogIntervalMs(env);
  if (env === process.env) {
    // As sd_notify(3)'s unset_environment: child processes (bpftrace, helpers) must not talk to
    // systemd in our name or inherit our watchdog.
    delete process.env.NOTIFY_SOCKET;
    delete process.env.WATCHDOG_USEC;
    delete process.env.WATCHDOG_PID;
  }
  const cleanups: (() => Promise<void> | void)[] = [() => releasePid(), () => notifier.close()];
  // Our own fallback runtime directory goes with the daemon (systemd removes RuntimeDirectory=
  // itself; a configured node.runtimeDir is the operator's).
  if (!config.node.runtimeDir && !(opts.env ?? process.env).RUNTIME_DIRECTORY)
    cleanups.push(() => rmSync(runtimeDir, { recursive: true, force: true }));
  const unwind = async () => {
    for (const fn of cleanups.reverse()) {
      try {
        await fn();
      } catch (err) {
        log.error({ err }, 'clean-up step failed during shutdown');
      }
    }
    cleanups.length = 0;
  };

  try {
    await notifier.send('STATUS=opening the store');
    const registry = new Registry();
    collectDefaultMetrics({ register: registry });
    const sc = config.store;
    const backupDir = resolve(stateDir, sc.backupDir ?? 'backups');
    const migrations = [...daemonMigrations, ...entries.flatMap((e) => e.migrations ?? [])];
    const prepared = await timed('upgrade', () =>
      prepareDatabase(dbFile, migrations, backupDir, clock.now()),
    );
    if (prepared.backup) {
      log.info(
        { backup: prepared.backup, steps: prepared.pending },
        'schema upgrade: the database was backed up before migrating',
      );
    }
    privateDatabase(dbFile);
    const store = await timed('store', () =>
      openStore({
        file: dbFile,
        durability: sc.durability,
        quotaBytes: sc.quota,
        maxRequestBytes: sc.maxRequestBytes,
        maxTxnOps: sc.maxTxnOps,
        watchBufferLimit: sc.watchBufferLimit,
        minLeaseTtl: Math.ceil(sc.minLeaseTtl / 1000),
        migrations,
        onFatal: opts.onStoreFatal,
        clock,
        logger, // the store makes its own child logger
        registry,
      }),
    );
    cleanups.push(() => store.close());
    if (prepared.pending.length) log.info({ steps: prepared.pending }, 'schema migrated');
    // One row per version ever run here, written when this version is new to the database (no
    // extra commit on an ordinary restart); allowed over the quota (freesSpace) and never fatal.
    if (prepared.lastVersion !== VERSION)
      await store
        .write({
          sql: [{ sql: RECORD_VERSION_SQL, params: [VERSION, clock.now(), clock.now()] }],
          freesSpace: true,
        })
        .catch((err: unknown) => log.warn({ err }, 'could not record the version in the database'));

    const info = new Gauge({
      name: 'edgekeeper_daemon_info',
      help: 'Always 1; labels carry the version and node name',
      labelNames: ['version', 'node'],
      registers: [registry],
    });
    info.set({ version: VERSION, node: config.node.name }, 1);
    const lastCommit = new Gauge({
      name: 'edgekeeper_daemon_heartbeat_last_commit_timestamp_seconds',
      help: 'When the daemon last saw the store commit a heartbeat write (unix seconds)',
      registers: [registry],
    });
    const pings = new Counter({
      name: 'edgekeeper_daemon_watchdog_pings_total',
      help: 'WATCHDOG=1 notifications sent to systemd since start',
      registers: [registry],
    });

    const adminToken = config.http.auth === 'token' ? writeAdminToken(stateDir) : undefined;
    if (adminToken) cleanups.push(() => removeAdminToken(adminToken.file));
    const hc = config.http;
    const http = new HttpServer({
      logger,
      registry,
      maxBodyBytes: hc.maxBodyBytes,
      maxPendingBodyBytes: hc.maxPendingBodyBytes,
      maxConnections: hc.maxConnections,
      idleTimeoutMs: hc.idleTimeout,
      adminToken,
    });
    const heartbeat = new Heartbeat({
      store,
      clock,
      logger: log,
      intervalMs: watchdogMs !== undefined ? Math.min(watchdogMs, HEARTBEAT_MS) : HEARTBEAT_MS,
      lastCommitGauge: lastCommit,
      onCommitted: () => {
        if (watchdogMs === undefined || !notifier.enabled) return;
        pings.inc();
        void notifier.send('WATCHDOG=1');
      },
    });
    http.addReadinessCheck('store', storeReadinessCheck(store, heartbeat));
    registerReadinessMetrics(registry, () => http.readiness());
    registerObjectiveMetrics(registry, store, sc.commitP99Objective);
    const host = new HostReader({ diskPath: stateDir });
    registerHostMetrics(registry, host);
    // The SLO guard: absent when the config has no `slo` section (a daemon assembled without it).
    const sloOptions = (config as unknown as { slo?: SloOptions }).slo;
    const slo = sloOptions
      ? new SloGuard(sloOptions, { clock, logger: logger.child({ part: 'slo' }), registry })
      : undefined;
    if (slo) {
      const off = store.onCommit?.((c) => slo.observeCommit(c.commitSeconds));
      slo.start();
      cleanups.push(() => {
        off?.();
        slo.stop();
      });
    }

    const ctx: PartContext = {
      store,
      logger,
      registry,
      clock,
      http,
      stateDir,
      runtimeDir,
      nodeName: config.node.name,
      addReadinessCheck: (name, check) => http.addReadinessCheck(name, check),
      readiness: () => http.readiness(),
      host,
      slo,
    };
    const started: Part[] = [];
    cleanups.push(async () => {
      for (const p of [...started].reverse()) {
        try {
          await p.stop();
          log.info({ name: p.name }, 'part stopped');
        } catch (err) {
          log.error({ name: p.name, err }, 'part failed to stop cleanly');
        }
      }
    });
    // Runs before the parts stop: no new HTTP requests, readiness fails, in-flight ones finish.
    cleanups.push(() => http.close());
    addDaemonRoutes(http, store, stateDir, config, started, clock, slo);
    const peers = new Map<string, Part>();
    for (const entry of entries) {
      await notifier.send(`STATUS=starting ${entry.name}`);
      const part = entry.create(ctx, config, peers);
      peers.set(entry.name, part);
      // Listed before start() so a part that fails half-way is still stopped (stop is idempotent).
      started.push(part);
      await timed(part.name, () => part.start());
      log.info({ name: part.name }, 'part started');
    }

    const address = await timed('http', () =>
      http.listen(config.http.listen).catch((err: NodeJS.ErrnoException) => {
        throw new Error(
          `cannot listen on ${config.http.listen} (http.listen): ${err.code ?? err.message}; is another process using it?`,
          { cause: err },
        );
      }),
    );
    log.info(
      {
        url: `http://${fmtHost(address.host)}:${address.port}`,
        routes: ['/healthz', '/readyz', '/metrics', '/v1/status', '/v1/backup'],
      },
      'HTTP listening',
    );

    // Jobs start once everything serves; each is stopped before the store closes.
    const jobs = new JobRecorder(registry, log, clock);
    const retention =
      sc.compactionMode === 'periodic'
        ? (parseDuration(sc.compactionRetention) ?? 0)
        : Number(sc.compactionRetention);
    const compactor = new Compactor({ store, clock, logger: log, mode: sc.compactionMode, retention, jobs });
    compactor.start();
    let backupTask: ScheduledTask | undefined;
    let backupRun: Promise<unknown> | undefined;
    heartbeat.start();
    cleanups.push(async () => {
      await heartbeat.stop();
      await compactor.stop();
      await backupTask?.destroy();
      await backupRun;
    });

    await notifier.send(
      `READY=1\nSTATUS=serving: http ${fmtHost(address.host)}:${address.port}, revision ${store.revision()}`,
    );
    log.info(
      {
        node: config.node.name,
        version: VERSION,
        stateDir,
        durability: sc.durability,
        http: `${fmtHost(address.host)}:${address.port}`,
        parts: started.map((p) => p.name),
        notify: notifier.enabled,
        watchdogMs,
        // before: process start to startDaemon (module loading, config); then each phase.
        startupMs: { total: Math.round(performance.now()), before: Math.round(startedAt), ...phases },
      },
      'edgekeeper ready',
    );
    // After READY=1: creating the cron task costs ~50 ms of CPU, and nothing waits for it.
    if (sc.backupSchedule !== '') {
      backupTask = cron.schedule(
        sc.backupSchedule,
        () => {
          backupRun = jobs.run('backup', async () => {
            const r = await runScheduledBackup(store, backupDir, sc.backupKeep, clock.now());
            return { result: 'ok', detail: { file: r.file, deleted: r.deleted.length } };
          });
          return backupRun;
        },
        { name: 'edgekeeper-backup', noOverlap: true },
      );
      log.info({ schedule: sc.backupSchedule, dir: backupDir, keep: sc.backupKeep }, 'scheduled backups on');
    }

    let stopping: Promise<void> | undefined;
    return {
      store,
      registry,
      http,
      logger,
      httpAddress: address,
      stateDir,
      stop() {
        stopping ??= (async () => {
          log.info('stopping: no new requests, parts stop in reverse, then the store closes');
          await notifier.send('STOPPING=1\nSTATUS=stopping');
          await unwind();
          log.info('stopped; database closed');
        })();
        return stopping;
      },
    };
  } catch (err) {
    await notifier.send(`STATUS=start failed: ${(err as Error).message}`);
    await unwind();
    throw err;
  }
}

function fmtHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/** `/v1/status` and `/v1/backup`, the daemon's own JSON API. */
function addDaemonRoutes(
  http: HttpServer,
  store: Store,
  stateDir: string,
  config: Config,
  parts: Part[],
  clock: Clock,
  slo?: SloGuard,
): void {
  const startedAt = clock.now();
  http.add('GET', '/v1/status', (_req, res) => {
    const partStatus: Record<string, unknown> = {};
    for (const p of parts) partStatus[p.name] = p.status?.() ?? {};
    sendJson(res, 200, {
      node: config.node.name,
      version: VERSION,
      pid: process.pid,
      uptimeSeconds: Math.round((clock.now() - startedAt) / 1000),
      readiness: http.readiness(),
      store: store.stats(),
      slo: slo?.status(),
      parts: partStatus,
    });
  });
  // One backup at a time: each holds a full copy of the database on disk until it is sent.
  // `?format=etcd`: the bbolt file etcd would snapshot, with its SHA-256 (etcdctl reads it).
  let busy: Promise<void> = Promise.resolve();
  http.add(
    'POST',
    '/v1/backup',
    (_req, res, url) => {
      const etcd = url.searchParams.get('format') === 'etcd';
      const run = busy.then(async () => {
        const tmp = join(stateDir, `.http-backup-${randomBytes(6).toString('hex')}.db`);
        try {
          if (etcd) await writeEtcdBackup(store, tmp, { name: config.node.name, clientUrls: [] });
          else await store.backup(tmp);
          const { size } = await stat(tmp);
          res.writeHead(200, {
            'content-type': etcd ? 'application/octet-stream' : 'application/vnd.sqlite3',
            'content-length': size,
            'content-disposition': `attachment; filename="edgekeeper-${config.node.name}${etcd ? '.etcd' : ''}.db"`,
          });
          await pipeline(createReadStream(tmp), res);
        } finally {
          await rm(tmp, { force: true });
        }
      });
      busy = run.catch(() => undefined);
      return run;
    },
    { admin: true },
  );
}

/**
 * The state directory holds device secret hashes, the admin token and every key: 0700, whatever
 * the umask, and tightened when an earlier version (or a hand-made directory) left it open.
 */
function privateStateDir(dir: string, log: Logger): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const mode = statSync(dir).mode & 0o777;
  if ((mode & 0o077) === 0) return;
  try {
    chmodSync(dir, mode & 0o700);
    log.warn({ dir, was: mode.toString(8) }, 'state directory was open to other users; now 0700');
  } catch (err) {
    log.warn({ dir, err }, 'state directory is open to other users and cannot be made 0700');
  }
}

/**
 * SQLite creates a database with 0644 less the umask, and its -wal and -shm files with the
 * database's own mode: an empty file made 0600 first (SQLite takes it as a new database)
 * makes all three 0600. Existing ones are tightened.
 */
function privateDatabase(dbFile: string): void {
  closeSync(openSync(dbFile, 'a', 0o600));
  for (const f of [dbFile, `${dbFile}-wal`, `${dbFile}-shm`]) {
    try {
      if ((statSync(f).mode & 0o077) !== 0) chmodSync(f, 0o600);
    } catch {
      // -wal and -shm exist only while a connection has the database open
    }
  }
}
