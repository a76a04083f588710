/** Shared by the probes benches: start a probe set in bpftrace and wait until it is attached. */
import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { cpuMs } from '../proc.js';
import { composeProgram, type ProbeName, READY_LINE } from '../../../src/probes/catalog.js';

export interface Running {
  child: ChildProcess;
  /** ms from spawn until every probe is attached (the composed program's BEGIN line). */
  startMs: number;
  /** ms from spawn to bpftrace's "attached_probes" line (printed before it attaches). */
  announcedMs: number;
  /** CPU time (user + system) bpftrace used until ready, ms: steadier than wall time under load. */
  cpuMs: number;
  stop(): Promise<void>;
}

export async function startProbes(
  probes: ProbeName[],
  periodMs = 60_000,
  onMs = 10_000,
  intervalMs = 10_000,
): Promise<Running> {
  const program = composeProgram(probes, intervalMs);
  const t0 = performance.now();
  const child = spawn(
    'setpriv',
    [
      '--pdeathsig',
      'KILL',
      '--',
      'bpftrace',
      '-f',
      'json',
      '-e',
      program,
      String(process.pid),
      String(periodMs * 1e6),
      String(onMs * 1e6),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let err = '';
  child.stderr!.on('data', (c: Buffer) => {
    err += c.toString();
  });
  let announcedMs = Number.NaN;
  const startMs = await new Promise<number>((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (c: Buffer) => {
      buf += c.toString();
      if (Number.isNaN(announcedMs) && buf.includes('"attached_probes"'))
        announcedMs = performance.now() - t0;
      if (buf.includes(READY_LINE)) resolve(performance.now() - t0);
    });
    child.on('exit', (code) => reject(new Error(`bpftrace exited ${code}: ${err}`)));
  });
  child.stdout!.resume();
  return {
    child,
    startMs,
    announcedMs,
    cpuMs: cpuMs(child.pid!),
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGKILL');
      }),
  };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
}

/** Runs a python3 workload for `seconds`; returns the numbers it printed (ops/s first). */
export function runRate(script: string, seconds: number, cwd: string): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const c = spawn('python3', ['-c', script, String(seconds)], {
      cwd,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    c.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    c.on('exit', (code) =>
      code === 0
        ? resolve(out.trim().split(/\s+/).map(Number))
        : reject(new Error(`workload exited ${code}`)),
    );
  });
}

const STATS = '/proc/sys/kernel/bpf_stats_enabled';

/**
 * Turns on the kernel's per-program BPF run-time accounting (kernel.bpf_stats_enabled) and
 * returns a function that restores the previous setting. It costs two clock reads per program
 * run while on, so it is on only during the benches.
 */
export function enableBpfStats(): () => void {
  const prev = readFileSync(STATS, 'utf8').trim();
  writeFileSync(STATS, '1');
  return () => writeFileSync(STATS, prev);
}

/** Sum of run_time_ns and run_cnt over the BPF programs a process holds open. */
export function bpfRunTime(pid: number): { ns: number; runs: number } {
  let ns = 0;
  let runs = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`) !== 'anon_inode:bpf-prog') continue;
      const info = readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
      ns += Number(/^run_time_ns:\s+(\d+)/m.exec(info)?.[1] ?? 0);
      runs += Number(/^run_cnt:\s+(\d+)/m.exec(info)?.[1] ?? 0);
    } catch {
      // fd closed meanwhile
    }
  }
  return { ns, runs };
}
