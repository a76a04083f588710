/**
 * The bpftrace supervisor: runs the available probes in as few bpftrace processes as possible
 * (one, by default: each process costs ~90 MB RSS here, see test/bench/probes/), reads their
 * JSON lines, restarts a process that dies with exponential backoff, and stops a probe whose
 * process goes over its CPU budget.
 *
 * No bpftrace outlives the daemon: each one is started through `setpriv --pdeathsig KILL`, so the
 * kernel sends it SIGKILL when the daemon's thread that forked it dies, SIGKILL of the daemon
 * included. (Node forks children from its main thread, which lives as long as the process.)
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import type { Clock, Timer } from '../clock.js';
import type { Logger } from '../log.js';
import { composeProgram, PROBES, probeOfMap, type ProbeName, READY_LINE } from './catalog.js';
import { LineSplitter, type ParsedLine, parseLine } from './parser.js';

/** Linux reports /proc/<pid>/stat times in USER_HZ ticks, 100 on every architecture we run on. */
const USER_HZ = 100;
/** A process that stayed up this long has its restart backoff reset. */
const STABLE_MS = 60_000;
/** A shared process that fails this often before attaching is split into one process per probe. */
const SPLIT_AFTER_FAILURES = 2;
/** bpftrace prints this on every start; it is harmless on kernels >= 5.11 (memcg accounting). */
const NOISE = /RLIMIT_MEMLOCK/;

export type ProbeStatus = 'running' | 'idle (duty cycle)' | `unavailable: ${string}`;

export interface SupervisorOptions {
  bpftrace: string;
  /** setpriv path; without it bpftrace is spawned directly (and could outlive a killed daemon). */
  setpriv?: string;
  probes: readonly ProbeName[];
  intervalMs: number;
  ownPid: number;
  runqlatPeriodMs: number;
  runqlatOnMs: number;
  /** Percent of one CPU each probe may use; a shared process gets the sum of its probes'. */
  cpuBudgetPercent: number;
  /** How often the CPU budget is checked (and over what window). */
  cpuCheckMs: number;
  sharing: 'shared' | 'per-probe';
  backoffInitialMs: number;
  backoffMaxMs: number;
  bpfDir?: string;
  clock: Clock;
  logger: Logger;
  /** CLOCK_MONOTONIC in ns, the clock bpftrace's `nsecs` reads (runqlat's duty cycle). */
  monotonicNs?: () => bigint;
  /** Text of /proc/<pid>/stat, undefined when the process is gone. */
  readProcStat?: (pid: number) => string | undefined;
  /**
   * Nanoseconds the process' BPF programs have run in the kernel (sum of run_time_ns in
   * /proc/<pid>/fdinfo; 0 unless kernel.bpf_stats_enabled=1). That time is charged to the traced
   * tasks, not to bpftrace, so /proc/<pid>/stat alone misses it.
   */
  readBpfRunNs?: (pid: number) => number;
  /** Extra environment for bpftrace. */
  env?: NodeJS.ProcessEnv;
  onLine(line: ParsedLine, probe: ProbeName | undefined): void;
  onRestart?(probes: readonly ProbeName[], reason: string): void;
  /** A new process attached: its maps start from zero. */
  onAttached?(probes: readonly ProbeName[]): void;
}

export function readBpfRunNs(pid: number): number {
  let ns = 0;
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return 0;
  }
  for (const fd of fds) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`) !== 'anon_inode:bpf-prog') continue;
      const m = /^run_time_ns:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'));
      if (m) ns += Number(m[1]);
    } catch {
      // closed meanwhile
    }
  }
  return ns;
}

function defaultReadProcStat(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
}

/** utime + stime in ticks from a /proc/<pid>/stat line (fields 14 and 15). */
export function cpuTicks(stat: string): number | undefined {
  // The command (field 2) is in parentheses and may hold spaces; fields restart after the last ')'.
  const close = stat.lastIndexOf(')');
  if (close < 0) return undefined;
  const rest = stat.slice(close + 2).split(' ');
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) return undefined;
  return utime + stime;
}

type ProcState =
  | { kind: 'starting' }
  | { kind: 'running' }
  | { kind: 'restarting'; reason: string; at: number }
  | { kind: 'stopped' };

class BpfProcess {
  child: ChildProcess | undefined;
  state: ProcState = { kind: 'starting' };
  private stopping = false;
  private restartTimer: Timer | undefined;
  private cpuTimer: Timer | undefined;
  private failures = 0;
  private failuresBeforeAttach = 0;
  private startedAt = 0;
  private stderrTail: string[] = [];
  private cpuBase: { ticks: number; bpfNs: number; at: number } | undefined;
  private exited: Promise<void> = Promise.resolve();

  constructor(
    readonly members: ProbeName[],
    private readonly sup: ProbeSupervisor,
  ) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  start(): void {
    const o = this.sup.opts;
    const program = composeProgram(this.members, o.intervalMs, o.bpfDir);
    const args = [
      '-f',
      'json',
      '-e',
      program,
      String(o.ownPid),
      String(BigInt(o.runqlatPeriodMs) * 1_000_000n),
      String(BigInt(o.runqlatOnMs) * 1_000_000n),
    ];
    const [file, argv] = o.setpriv
      ? [o.setpriv, ['--pdeathsig', 'KILL', '--', o.bpftrace, ...args]]
      : [o.bpftrace, args];
    this.state = { kind: 'starting' };
    this.stderrTail = [];
    this.cpuBase = undefined;
    this.startedAt = o.clock.monotonic();
    const child = spawn(file, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: o.env ?? process.env });
    this.child = child;
    this.sup.log.info({ probes: this.members, pid: child.pid }, 'bpftrace started');
    const split = new LineSplitter(
      (line) => this.onStdout(line),
      (bytes) => this.sup.opts.onLine({ kind: 'bad', reason: `line over ${bytes} bytes dropped` }, undefined),
    );
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (c: string) => split.push(c));
    child.stdout!.on('end', () => split.end());
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (c: string) => {
      for (const l of c.split('\n')) {
        const t = l.trim();
        if (!t || NOISE.test(t)) continue;
        this.stderrTail.push(t.slice(0, 300));
        if (this.stderrTail.length > 4) this.stderrTail.shift();
      }
    });
    this.exited = new Promise((resolve) => {
      child.on('error', (err) => {
        this.stderrTail.push(err.message);
      });
      child.on('close', (code, signal) => {
        resolve();
        this.onExit(code, signal);
      });
    });
  }

  private onStdout(line: string): void {
    const parsed = parseLine(line);
    if (parsed.kind === 'attached') return;
    if (parsed.kind === 'printf' && parsed.text === `${READY_LINE}\n`) {
      this.state = { kind: 'running' };
      this.failuresBeforeAttach = 0;
      this.sup.log.info({ probes: this.members }, 'bpftrace attached');
      this.sup.opts.onAttached?.(this.members);
      this.scheduleCpuCheck();
      return;
    }
    if (parsed.kind === 'empty') return;
    let probe: ProbeName | undefined;
    if (parsed.kind === 'printf') probe = parsed.text.startsWith('oomkill ') ? 'oomkill' : undefined;
    else if (parsed.kind !== 'bad') probe = probeOfMap(parsed.name);
    if (probe && !this.members.includes(probe)) probe = undefined;
    this.sup.opts.onLine(parsed, probe);
  }

  private onExit(code: number | null, signal: NodeJS.Signals | null): void {
    this.cpuTimer?.cancel();
    this.child = undefined;
    if (this.stopping) {
      this.state = { kind: 'stopped' };
      return;
    }
    const o = this.sup.opts;
    const wasAttached = this.state.kind === 'running';
    const ranMs = o.clock.monotonic() - this.startedAt;
    if (ranMs >= STABLE_MS) this.failures = 0;
    if (!wasAttached) this.failuresBeforeAttach++;
    const why = this.stderrTail.at(-1) ?? 'no error output';
    const how = signal ? `killed by ${signal}` : `exit code ${code}`;
    if (!wasAttached && this.failuresBeforeAttach >= SPLIT_AFTER_FAILURES && this.members.length > 1) {
      // One probe's program may not load on this kernel; alone, the others still can.
      this.sup.log.warn(
        { probes: this.members, why },
        'shared bpftrace failed to start twice; one process per probe',
      );
      this.state = { kind: 'stopped' };
      this.sup.split(this);
      return;
    }
    const delay = Math.min(o.backoffMaxMs, o.backoffInitialMs * 2 ** this.failures);
    this.failures++;
    const reason = `bpftrace ${how}: ${why}; restarting in ${Math.round(delay / 1000)} s`;
    this.state = { kind: 'restarting', reason, at: o.clock.monotonic() + delay };
    this.sup.log.warn(
      { probes: this.members, code, signal, stderr: this.stderrTail },
      `bpftrace for ${this.members.join(',')} stopped (${how}: ${why}); restarting in ${delay} ms`,
    );
    o.onRestart?.(this.members, reason);
    this.restartTimer = o.clock.setTimeout(() => {
      this.restartTimer = undefined;
      if (!this.stopping) this.start();
    }, delay);
  }

  private scheduleCpuCheck(): void {
    const o = this.sup.opts;
    this.cpuTimer?.cancel();
    this.cpuTimer = o.clock.setTimeout(() => this.checkCpu(), o.cpuCheckMs);
  }

  /**
   * Over the last window, as percent of one CPU: the process' own CPU (user + system) plus its
   * BPF programs' run time in the kernel, when the kernel accounts it (kernel.bpf_stats_enabled).
   */
  private checkCpu(): void {
    const pid = this.pid;
    if (pid === undefined || this.stopping) return;
    const o = this.sup.opts;
    const stat = (o.readProcStat ?? defaultReadProcStat)(pid);
    const ticks = stat ? cpuTicks(stat) : undefined;
    const bpfNs = (o.readBpfRunNs ?? readBpfRunNs)(pid);
    const now = o.clock.monotonic();
    if (ticks !== undefined) {
      // The first reading is the baseline: start-up (parsing, loading programs, ~0.6 s of CPU)
      // is not part of the steady cost the budget is about.
      if (this.cpuBase && now > this.cpuBase.at) {
        const cpuSec = (ticks - this.cpuBase.ticks) / USER_HZ + (bpfNs - this.cpuBase.bpfNs) / 1e9;
        const pct = (cpuSec / ((now - this.cpuBase.at) / 1000)) * 100;
        this.sup.cpuPercent.set(this, pct);
        const budget = o.cpuBudgetPercent * this.members.length;
        if (pct > budget) {
          this.overBudget(pct, budget);
          return;
        }
      }
      this.cpuBase = { ticks, bpfNs, at: now };
    }
    this.scheduleCpuCheck();
  }

  private overBudget(pct: number, budget: number): void {
    // Without per-program kernel stats the costliest probe by design (most events/s) goes first.
    const victim = [...this.members].sort((a, b) => PROBES[b].costRank - PROBES[a].costRank)[0]!;
    const reason = `over CPU budget (${pct.toFixed(1)}% of a CPU > ${budget}%)`;
    this.sup.log.warn({ probe: victim, pct, budget }, `probe ${victim} stopped: ${reason}`);
    this.sup.disable(victim, reason);
    const rest = this.members.filter((m) => m !== victim);
    void this.stop().then(() => this.sup.replace(this, rest));
  }

  /** SIGINT (bpftrace prints its final maps), SIGKILL after `graceMs`. */
  async stop(graceMs = 2000): Promise<void> {
    this.stopping = true;
    this.restartTimer?.cancel();
    this.cpuTimer?.cancel();
    const child = this.child;
    if (!child) {
      this.state = { kind: 'stopped' };
      return;
    }
    child.kill('SIGINT');
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(t);
  }
}

export class ProbeSupervisor {
  private procs: BpfProcess[] = [];
  private disabled = new Map<ProbeName, string>();
  readonly cpuPercent = new WeakMap<BpfProcess, number>();
  readonly log: Logger;
  private stopped = false;

  constructor(readonly opts: SupervisorOptions) {
    this.log = opts.logger;
  }

  start(): void {
    if (!this.opts.probes.length) return;
    const groups =
      this.opts.sharing === 'shared' ? [[...this.opts.probes]] : this.opts.probes.map((p) => [p]);
    for (const g of groups) this.launch(g);
  }

  private launch(members: ProbeName[]): void {
    if (this.stopped || members.length === 0) return;
    const p = new BpfProcess(members, this);
    this.procs.push(p);
    p.start();
  }

  /** @internal a process was stopped over budget: run the rest of its probes in a new one. */
  replace(old: BpfProcess, rest: ProbeName[]): void {
    this.procs = this.procs.filter((p) => p !== old);
    this.launch(rest);
  }

  /** @internal a shared process cannot start: one process per probe. */
  split(old: BpfProcess): void {
    this.procs = this.procs.filter((p) => p !== old);
    for (const m of old.members) this.launch([m]);
  }

  /** @internal */
  disable(probe: ProbeName, reason: string): void {
    this.disabled.set(probe, reason);
  }

  pids(): number[] {
    return this.procs.map((p) => p.pid).filter((x): x is number => x !== undefined);
  }

  /** The state of each supervised probe (probes never handed to the supervisor are absent). */
  states(): Partial<Record<ProbeName, ProbeStatus>> {
    const out: Partial<Record<ProbeName, ProbeStatus>> = {};
    for (const [p, why] of this.disabled) out[p] = `unavailable: ${why}`;
    for (const proc of this.procs) {
      for (const m of proc.members) {
        const s = proc.state;
        if (s.kind === 'running')
          out[m] = m === 'runqlat' && !this.runqlatOn() ? 'idle (duty cycle)' : 'running';
        else if (s.kind === 'starting') out[m] = 'unavailable: starting';
        else if (s.kind === 'restarting') out[m] = `unavailable: ${s.reason}`;
        else out[m] = 'unavailable: stopped';
      }
    }
    return out;
  }

  /** Whether runqlat's in-kernel window is open now (same test as bpf/runqlat.bt). */
  runqlatOn(): boolean {
    const period = BigInt(this.opts.runqlatPeriodMs) * 1_000_000n;
    const on = BigInt(this.opts.runqlatOnMs) * 1_000_000n;
    const now = (this.opts.monotonicNs ?? process.hrtime.bigint)();
    return now % period < on;
  }

  /** CPU percent of each process at its last check, by probe list. */
  cpu(): { probes: ProbeName[]; pid?: number; cpuPercent?: number }[] {
    return this.procs.map((p) => ({ probes: p.members, pid: p.pid, cpuPercent: this.cpuPercent.get(p) }));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.procs.map((p) => p.stop()));
  }
}
