/**
 * The probes part's options and status shapes. Option names match the `probes` config section
 * (src/probes/config.ts); durations are milliseconds.
 */
import type { HostAccess } from './environment.js';

export interface ProbesOptions {
  /** Probes to run, from fsync, runqlat, biolat, tcpretrans, oomkill. Default: all. */
  enabled?: readonly string[];
  /** bpftrace prints (and clears) its maps this often. Default 10 s. */
  interval?: number;
  /** runqlat measures `runqlatOn` of every `runqlatPeriod` (in the kernel). Default 10 s of 60 s. */
  runqlatPeriod?: number;
  runqlatOn?: number;
  /** Percent of one CPU each probe may use before it is stopped. Default 2. */
  cpuBudget?: number;
  /** bpftrace binary, looked up on PATH when bare. Default "bpftrace". */
  bpftracePath?: string;
  /** 'shared' (default): one bpftrace process for every probe; 'per-probe': one each. */
  sharing?: 'shared' | 'per-probe';
  /**
   * Samples are kept in memory and stored this often (or once 1,000 are waiting): each store is
   * a commit, and on an SD card an idle node's commits are its wear. Samples still waiting are
   * lost on a crash (they are in /metrics meanwhile). Default 60 s.
   */
  storeInterval?: number;
  /** Samples older than this are deleted (once uploaded when an uplink is configured). Default 7 d. */
  retention?: number;
  /** Hard cap on stored sample rows; the oldest go first, uploaded or not, with a warning. */
  maxSamples?: number;
  /** Mount tracefs when it is missing and CAP_SYS_ADMIN allows. Default true. */
  mountTracefs?: boolean;
  tracefsDir?: string;
  /**
   * Turn on kernel.bpf_stats_enabled so the CPU budget also counts the programs' in-kernel run
   * time (charged to the traced tasks, invisible in bpftrace's /proc/<pid>/stat). Costs two clock
   * reads per BPF program run, system-wide. Needs CAP_SYS_ADMIN. Default false.
   */
  bpfStats?: boolean;
  /** True when the fleet uplink runs: retention keeps rows its cursor has not passed. */
  uplinkEnabled?: boolean;
  /**
   * start() returns at once and the machine check (bpftrace --version, bpftrace -l: 0.3-0.7 s)
   * and bpftrace's start run behind it; probes say "unavailable: starting" meanwhile. The daemon
   * sets it so that READY=1 does not wait for bpftrace. Default false: start() waits.
   */
  background?: boolean;

  // --- injection points for tests ---
  host?: HostAccess;
  readProcStat?: (pid: number) => string | undefined;
  readBpfRunNs?: (pid: number) => number;
  monotonicNs?: () => bigint;
  /** The pid whose fsyncs feed the "own" histogram. Default process.pid. */
  ownPid?: number;
  bpfDir?: string;
  cpuCheckMs?: number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  retentionCheckMs?: number;
  env?: NodeJS.ProcessEnv;
}

export interface LatestPercentiles {
  /** Milliseconds. */
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  /** Events in that interval. */
  count: number;
  /** ms epoch of the interval's end. */
  at: number;
}
