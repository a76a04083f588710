/**
 * Shared by the etcd tests and benches: an edgekeeper etcd server on a fresh store in a temp dir,
 * a real etcd 3.4 on free loopback ports, and small process helpers that always clean up.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  type EtcdServer,
  type EtcdServerOptions,
  etcdMigrations,
  startEtcdServer,
} from '../../src/etcd/index.js';
import { EtcdClient } from '../../src/etcd/cli.js';
import { openStore } from '../../src/store/index.js';
import type { Store, StoreOptions } from '../../src/store/types.js';

export const ETCD_BIN = '/usr/bin/etcd';
export const ETCDCTL_BIN = '/usr/bin/etcdctl';

/** A missing peer is a loud failure, never a skip. */
export function requirePeer(bin: string, pkg: string): void {
  if (!existsSync(bin))
    throw new Error(`${bin} is missing: install the Debian package ${pkg} (test/setup.sh does)`);
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export interface Edge {
  dir: string;
  store: Store;
  server: EtcdServer;
  endpoint: string;
  close(): Promise<void>;
}

export async function startEdge(
  opts: { store?: Partial<StoreOptions>; server?: EtcdServerOptions } = {},
): Promise<Edge> {
  const dir = mkdtempSync(join(tmpdir(), 'ek-etcd-'));
  const store = await openStore({
    file: join(dir, 'edgekeeper.db'),
    durability: 'relaxed',
    migrations: etcdMigrations,
    ...opts.store,
  });
  let server: EtcdServer;
  try {
    server = await startEtcdServer(store, { listen: '127.0.0.1:0', stateDir: dir, ...opts.server });
  } catch (err) {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const edge: Edge = {
    dir,
    store,
    server,
    endpoint: `127.0.0.1:${server.port}`,
    async close() {
      // The current server: a test may have restarted it.
      await edge.server.close();
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return edge;
}

export interface RealEtcd {
  dir: string;
  endpoint: string;
  port: number;
  proc: ChildProcess;
  close(): Promise<void>;
}

/**
 * Real etcd 3.4 on loopback with a temp data dir (../shared/peers.md), ready when it answers.
 * `opts.snapshot`: the data dir is first made by `etcdctl snapshot restore` of that file.
 */
export async function startRealEtcd(
  prefix: string[] = [],
  extraArgs: string[] = [],
  opts: { snapshot?: string } = {},
): Promise<RealEtcd> {
  requirePeer(ETCD_BIN, 'etcd-server');
  const dir = mkdtempSync(join(tmpdir(), 'ek-realetcd-'));
  const port = await freePort();
  const peer = await freePort();
  if (opts.snapshot) {
    requirePeer(ETCDCTL_BIN, 'etcd-client');
    const r = spawnSync(
      ETCDCTL_BIN,
      [
        'snapshot',
        'restore',
        opts.snapshot,
        '--data-dir',
        join(dir, 'etcd'),
        '--name',
        't',
        '--initial-cluster',
        `t=http://127.0.0.1:${peer}`,
        '--initial-advertise-peer-urls',
        `http://127.0.0.1:${peer}`,
      ],
      { env: { ...process.env, ETCDCTL_API: '3' }, encoding: 'utf8', timeout: 30_000 },
    );
    if (r.status !== 0) {
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`etcdctl snapshot restore failed (${r.status}): ${r.stderr}`);
    }
  }
  const args = [
    '--name',
    't',
    '--data-dir',
    join(dir, 'etcd'),
    '--listen-client-urls',
    `http://127.0.0.1:${port}`,
    '--advertise-client-urls',
    `http://127.0.0.1:${port}`,
    '--listen-peer-urls',
    `http://127.0.0.1:${peer}`,
    '--initial-advertise-peer-urls',
    `http://127.0.0.1:${peer}`,
    '--initial-cluster',
    `t=http://127.0.0.1:${peer}`,
    '--log-level',
    'error',
    ...extraArgs,
  ];
  const cmd = prefix.length ? prefix[0]! : ETCD_BIN;
  const cmdArgs = prefix.length ? [...prefix.slice(1), ETCD_BIN, ...args] : args;
  const proc = spawn(cmd, cmdArgs, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr?.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const endpoint = `127.0.0.1:${port}`;
  const close = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          proc.kill('SIGKILL');
          resolve();
        }, 5000);
        proc.once('exit', () => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const c = new EtcdClient(endpoint);
  try {
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`etcd exited with ${proc.exitCode}: ${stderr}`);
      try {
        await c.call('etcdserverpb.KV', 'Range', { key: Buffer.from('x') }, 1000);
        break;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`etcd did not come up: ${String(err)} ${stderr}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } catch (err) {
    c.close();
    await close();
    throw err;
  }
  c.close();
  return { dir, endpoint, port, proc, close };
}

/**
 * Run etcdctl (API v3) against `endpoint`. Asynchronous on purpose: the server under test lives
 * in this process, and a synchronous spawn would block the event loop that has to answer.
 */
export function etcdctl(
  endpoint: string,
  args: string[],
  input?: string,
): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const proc = spawn(
      ETCDCTL_BIN,
      [`--endpoints=${endpoint}`, '--dial-timeout=3s', '--command-timeout=10s', ...args],
      {
        env: { ...process.env, ETCDCTL_API: '3' },
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    proc.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const t = setTimeout(() => proc.kill('SIGKILL'), 20_000);
    proc.on('close', (code) => {
      clearTimeout(t);
      resolve({ status: code ?? -1, stdout, stderr });
    });
    proc.stdin.end(input ?? '');
  });
}

/** Start etcdctl in the background (watch, lock, elect); killed by `stop()`. */
export function etcdctlBg(
  endpoint: string,
  args: string[],
): { proc: ChildProcess; out(): string; err(): string; stop(): Promise<number | null> } {
  const proc = spawn(ETCDCTL_BIN, [`--endpoints=${endpoint}`, '--dial-timeout=3s', ...args], {
    env: { ...process.env, ETCDCTL_API: '3' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  proc.stdout?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  proc.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
  });
  return {
    proc,
    out: () => out,
    err: () => err,
    stop: () =>
      new Promise((resolve) => {
        if (proc.exitCode !== null || proc.signalCode !== null) {
          resolve(proc.exitCode);
          return;
        }
        const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
        proc.once('exit', (code) => {
          clearTimeout(t);
          resolve(code);
        });
        proc.kill('SIGINT');
      }),
  };
}

/** Poll `check` until it returns truthy (tests wait on behaviour, never on fixed sleeps alone). */
export async function waitFor<T>(check: () => T | Promise<T>, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export interface CurlResult {
  status: number;
  contentType: string;
  body: string;
}

export interface CurlRequest {
  url: string;
  method?: string;
  body?: string | Buffer;
  /** Seconds after which curl stops reading (streams); default 20. */
  maxTime?: number;
  /** Extra request headers ("Name: value"). */
  headers?: string[];
}

const CURL_MARK = '\n<<<curl-done %{http_code} %{content_type}>>>\n';

/**
 * HTTP requests with one curl process, one after the other over a kept-alive connection (curl's
 * `--next`), as a shell script of curl calls would send them. Asynchronous, like etcdctl above:
 * the server under test may live in this process. A stream is read until `maxTime`; what
 * arrived by then is its body.
 */
export async function curlBatch(reqs: CurlRequest[]): Promise<CurlResult[]> {
  const dir = mkdtempSync(join(tmpdir(), 'ek-curl-'));
  try {
    const args: string[] = [];
    reqs.forEach((r, i) => {
      if (i > 0) args.push('--next');
      args.push('-s', '-N', '-o', '-', '-w', CURL_MARK, '--max-time', String(r.maxTime ?? 20));
      for (const h of r.headers ?? []) args.push('-H', h);
      if (r.method === 'HEAD') args.push('--head');
      else if (r.method) args.push('-X', r.method);
      if (r.body !== undefined) {
        const f = join(dir, `b${i}`);
        writeFileSync(f, r.body);
        args.push('--data-binary', `@${f}`, '-H', 'Content-Type: application/json');
      }
      args.push(r.url);
    });
    const text = await new Promise<string>((resolve, reject) => {
      const proc = spawn('curl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
      const out: Buffer[] = [];
      proc.stdout.on('data', (d: Buffer) => out.push(d));
      proc.on('error', reject);
      proc.on('close', () => resolve(Buffer.concat(out).toString('utf8')));
    });
    const results: CurlResult[] = [];
    const re = /\n<<<curl-done (\d+) ?([^>]*)>>>\n/g;
    let from = 0;
    for (let m = re.exec(text); m; m = re.exec(text)) {
      results.push({ status: Number(m[1]), contentType: m[2] ?? '', body: text.slice(from, m.index) });
      from = m.index + m[0].length;
    }
    if (results.length !== reqs.length)
      throw new Error(`curl answered ${results.length} of ${reqs.length} requests`);
    return results;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** One request (see curlBatch). */
export async function curl(
  url: string,
  opts: { method?: string; body?: string | Buffer; maxTime?: number } = {},
): Promise<CurlResult> {
  const [r] = await curlBatch([{ url, ...opts }]);
  return r!;
}

/** Run a command to completion without blocking the event loop (the server may be in this process). */
export function run(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const proc = spawn(cmd, args, { env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    proc.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const t = setTimeout(() => proc.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    proc.on('close', (code) => {
      clearTimeout(t);
      resolve({ status: code ?? -1, stdout, stderr });
    });
  });
}
