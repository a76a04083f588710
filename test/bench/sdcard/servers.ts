/**
 * The two servers of the SD-card bench, each a process of its own, optionally inside a card's
 * throttling group: real etcd 3.4 with its defaults, and the real edgekeeper daemon
 * (`edgekeeper run` on compiled JavaScript under plain node with the systemd unit's environment,
 * every part at its defaults) from this checkout or from EDGEKEEPER_BENCH_DAEMON.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { ETCD_BIN, freePort } from '../../etcd/helpers.js';
import type { Card } from './card.js';

const thisRoot = fileURLToPath(new URL('../../../', import.meta.url));

export type ServerName = 'etcd' | 'edgekeeper';

export interface Server {
  name: ServerName;
  /** The etcd API, HOST:PORT. */
  endpoint: string;
  pid: number;
  /** The Prometheus text of the server's /metrics. */
  metrics(): Promise<string>;
  /** SIGTERM, then SIGKILL after 30 s. */
  stop(): Promise<void>;
  /** SIGKILL at once (emergency teardown); synchronous. */
  kill(): void;
}

export interface Daemon extends Server {
  httpBase: string;
  mqttPort: number;
}

/** The daemon compiled to plain JavaScript, from the checkout at `root`. */
export interface DaemonBuild {
  root: string;
  js(tsFile: string): string;
  /** The systemd unit's Environment= over ours. */
  env(): NodeJS.ProcessEnv;
  cleanup(): void;
}

/**
 * Build the daemon of EDGEKEEPER_BENCH_DAEMON (another checkout's root) or of this checkout,
 * with that checkout's own test/bench/build.ts, so its unit file and its sources go together.
 */
export async function buildDaemon(): Promise<DaemonBuild> {
  const root = resolve(process.env.EDGEKEEPER_BENCH_DAEMON ?? thisRoot);
  const mod = (await import(pathToFileURL(join(root, 'test', 'bench', 'build.ts')).href)) as {
    buildJs(extra?: string[]): { js(f: string): string; cleanup(): void };
    unitEnvironment(): NodeJS.ProcessEnv;
  };
  const b = mod.buildJs();
  return { root, js: (f) => b.js(f), env: () => mod.unitEnvironment(), cleanup: () => b.cleanup() };
}

function stopper(proc: ChildProcess): { stop(): Promise<void>; kill(): void } {
  const exited = new Promise<void>((r) => {
    if (proc.exitCode !== null || proc.signalCode !== null) r();
    else proc.once('exit', () => r());
  });
  return {
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(t);
    },
    kill() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    },
  };
}

function tail(proc: ChildProcess): () => string {
  let out = '';
  const keep = (d: Buffer) => {
    out = (out + d.toString()).slice(-4000);
  };
  proc.stdout?.on('data', keep);
  proc.stderr?.on('data', keep);
  return () => out;
}

async function until(what: string, proc: ChildProcess, log: () => string, ok: () => Promise<boolean>) {
  for (const end = Date.now() + 60_000; ; ) {
    if (proc.exitCode !== null || proc.signalCode !== null)
      throw new Error(`${what} exited with ${proc.exitCode ?? proc.signalCode}: ${log()}`);
    if (await ok().catch(() => false)) return;
    if (Date.now() > end) throw new Error(`${what} did not become ready in 60 s: ${log()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function launch(argv: string[], card: Card | undefined, env: NodeJS.ProcessEnv, cwd?: string): ChildProcess {
  const opts = { stdio: ['ignore', 'pipe', 'pipe'] as ['ignore', 'pipe', 'pipe'], env, cwd };
  return card ? card.spawn(argv, opts) : spawn(argv[0]!, argv.slice(1), opts);
}

/** etcd 3.4 with its defaults, its data in `dataDir`. */
/** Told of each server process the moment it is spawned (for teardown on a signal). */
export type Track = (name: string, proc: ChildProcess) => void;

export async function startEtcd(dataDir: string, card?: Card, track?: Track): Promise<Server> {
  const [port, peer] = [await freePort(), await freePort()];
  const url = (p: number) => `http://127.0.0.1:${p}`;
  const argv = [
    ETCD_BIN,
    ...['--name', 'sd', '--data-dir', dataDir],
    ...['--listen-client-urls', url(port), '--advertise-client-urls', url(port)],
    ...['--listen-peer-urls', url(peer), '--initial-advertise-peer-urls', url(peer)],
    ...['--initial-cluster', `sd=${url(peer)}`, '--log-level', 'error'],
  ];
  const proc = launch(argv, card, process.env);
  track?.('etcd', proc);
  const log = tail(proc);
  const s = stopper(proc);
  try {
    await until('etcd', proc, log, async () => (await fetch(`${url(port)}/health`)).ok);
  } catch (err) {
    s.kill();
    throw err;
  }
  return {
    name: 'etcd',
    endpoint: `127.0.0.1:${port}`,
    pid: proc.pid!,
    metrics: () => fetch(`${url(port)}/metrics`).then((r) => r.text()),
    ...s,
  };
}

export interface DaemonOptions {
  /** The state directory (on the card, or on the machine's disk). */
  dataDir: string;
  /** Where the config file goes: off the card, as /etc/edgekeeper is off /var/lib. */
  configDir: string;
  /** The card whose throttling group the daemon runs in, if any. */
  card?: Card;
  /** Config sections over the defaults (sync, for the wear phase). */
  extra?: Record<string, unknown>;
  track?: Track;
}

/**
 * `edgekeeper run` with every part at its defaults (embedded broker, frames, probes; sync only
 * if `extra` configures it); only the listeners move to free ports.
 */
export async function startEdgekeeper(build: DaemonBuild, o: DaemonOptions): Promise<Daemon> {
  const [httpPort, etcdPort, mqttPort] = [await freePort(), await freePort(), await freePort()];
  mkdirSync(o.dataDir, { recursive: true });
  const cfg = join(o.configDir, 'edgekeeper.json');
  writeFileSync(
    cfg,
    JSON.stringify({
      node: { name: 'sdbench', dataDir: o.dataDir },
      http: { listen: `127.0.0.1:${httpPort}` },
      etcd: { listen: `127.0.0.1:${etcdPort}` },
      mqtt: { listen: `127.0.0.1:${mqttPort}` },
      ...o.extra,
    }),
  );
  // as the unit runs it: plain node on the compiled daemon, the unit's environment, cwd = state
  const proc = launch(
    [process.execPath, build.js('src/main.ts'), 'run', '--config', cfg],
    o.card,
    build.env(),
    o.dataDir,
  );
  o.track?.('edgekeeper', proc);
  const log = tail(proc);
  const s = stopper(proc);
  const httpBase = `http://127.0.0.1:${httpPort}`;
  // Ready when it says so in its log (where it sends systemd READY=1), not by /readyz: on the
  // card, /readyz can fail for good on its commit-latency objective.
  let ready = false;
  createInterface({ input: proc.stdout! }).on('line', (l) => {
    if (l.includes('"msg":"edgekeeper ready"')) ready = true;
  });
  try {
    await until('edgekeeper run', proc, log, async () => ready);
  } catch (err) {
    s.kill();
    throw err;
  }
  return {
    name: 'edgekeeper',
    endpoint: `127.0.0.1:${etcdPort}`,
    pid: proc.pid!,
    httpBase,
    mqttPort,
    metrics: () => fetch(`${httpBase}/metrics`).then((r) => r.text()),
    ...s,
  };
}

/** `pid` and every process below it (the daemon's bpftrace, for one). */
export function processTree(pid: number): number[] {
  const out = [pid];
  try {
    for (const t of readdirSync(`/proc/${pid}/task`)) {
      const kids = readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8')
        .trim()
        .split(/\s+/)
        .filter(Boolean);
      for (const k of kids) out.push(...processTree(Number(k)));
    }
  } catch {
    // gone
  }
  return out;
}
