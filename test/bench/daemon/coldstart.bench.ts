/**
 * Cold start: `edgekeeper run` on compiled JavaScript under plain node with the unit's
 * environment and the packaged default config, as systemd starts it, on a fresh state directory.
 * Measured from spawn to READY=1 on a real notify socket and to the first `/healthz` 200, with the
 * process' CPU time and the daemon's own per-phase breakdown (the `startupMs` field of its
 * "edgekeeper ready" line: `before` is process start to the daemon's start, i.e. module loading
 * and config; then the store and each part). Two configurations: the packaged defaults, and the
 * same with every optional part off (probes, frames; the uplink is off in both), which should
 * cost nothing at start. EDGEKEEPER_BENCH_RUNS sets the runs per configuration (default 5).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../../etcd/helpers.js';
import { buildJs, unitEnvironment } from '../build.js';
import { cpuMs } from '../proc.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const RUNS = Number(process.env.EDGEKEEPER_BENCH_RUNS ?? 5);
// The ready target of the packaging issue on this machine (idle).
const TARGET_MS = 1500;

interface DgramSocket {
  on(event: 'message', fn: (buf: Buffer) => void): void;
  bind(path: string): void;
  close(): void;
}
const unix = createRequire(import.meta.url)('unix-dgram') as { createSocket(t: 'unix_dgram'): DgramSocket };

interface Run {
  readyMs: number;
  healthzMs: number;
  cpuMs: number;
  startup: Record<string, number>;
}

async function once(mainJs: string, config: Record<string, unknown>): Promise<Run> {
  const dir = mkdtempSync(join(tmpdir(), 'ek-coldstart-'));
  const sock = unix.createSocket('unix_dgram');
  try {
    const [http, etcd, mqtt] = [await freePort(), await freePort(), await freePort()];
    const file = join(dir, 'edgekeeper.json');
    writeFileSync(file, JSON.stringify(config));
    let readyAt = 0;
    sock.on('message', (b) => {
      if (!readyAt && b.toString().split('\n').includes('READY=1')) readyAt = performance.now();
    });
    sock.bind(join(dir, 'notify.sock'));
    const t0 = performance.now();
    const child = spawn(
      process.execPath,
      [
        mainJs,
        'run',
        '--config',
        file,
        '--data-dir',
        join(dir, 'data'),
        '--http-listen',
        `127.0.0.1:${http}`,
        '--etcd-listen',
        `127.0.0.1:${etcd}`,
        '--mqtt-listen',
        `127.0.0.1:${mqtt}`,
      ],
      {
        env: { ...unitEnvironment(), NOTIFY_SOCKET: join(dir, 'notify.sock') },
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    let healthzMs = 0;
    const deadline = t0 + 60_000;
    while (!healthzMs) {
      if (performance.now() > deadline || child.exitCode !== null)
        throw new Error(`daemon did not serve:\n${out}`);
      try {
        if ((await fetch(`http://127.0.0.1:${http}/healthz`)).status === 200)
          healthzMs = performance.now() - t0;
      } catch {
        await new Promise((r) => setTimeout(r, 5));
      }
    }
    while (!readyAt && performance.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    const cpu = cpuMs(child.pid!);
    const line = out
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { msg: string; startupMs?: Record<string, number> })
      .find((l) => l.msg === 'edgekeeper ready');
    const exit = new Promise((r) => child.on('exit', r));
    child.kill('SIGTERM');
    await exit;
    return { readyMs: readyAt - t0, healthzMs, cpuMs: cpu, startup: line?.startupMs ?? {} };
  } finally {
    sock.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export default async function run(): Promise<void> {
  const build = buildJs();
  try {
    const packaged = JSON.parse(
      readFileSync(join(root, 'systemd', 'edgekeeper.json.example'), 'utf8'),
    ) as Record<string, unknown>;
    const configs: [string, Record<string, unknown>][] = [
      ['defaults', packaged],
      ['optional_parts_off', { ...packaged, probes: { enabled: [] }, frames: { enabled: false } }],
    ];
    for (const [name, config] of configs) {
      const runs: Run[] = [];
      for (let i = 0; i < RUNS; i++) runs.push(await once(build.js('src/main.ts'), config));
      const phases: Record<string, number> = {};
      for (const k of Object.keys(runs[0]!.startup)) phases[k] = median(runs.map((r) => r.startup[k] ?? 0));
      console.log(
        JSON.stringify({
          bench: `daemon.coldstart_ready_${name}`,
          unit: 'ms',
          p50: Math.round(median(runs.map((r) => r.readyMs))),
          p99: Math.round(Math.max(...runs.map((r) => r.readyMs))),
          n: runs.length,
          // The fastest run: the closest a shared machine gets to an idle one.
          min: Math.round(Math.min(...runs.map((r) => r.readyMs))),
          healthz_ms: Math.round(median(runs.map((r) => r.healthzMs))),
          cpu_ms: Math.round(median(runs.map((r) => r.cpuMs))),
          phases_ms: phases,
          loadavg_1m: loadavg()[0],
          cpus: cpus().length,
          target: TARGET_MS,
        }),
      );
    }
  } finally {
    build.cleanup();
  }
}
