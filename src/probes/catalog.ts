/**
 * The fixed probe set and how its bpftrace programs are put together. Each `bpf/<probe>.bt` runs
 * on its own (`bpftrace -f json bpf/fsync.bt <pid> <period ns> <on ns>`); the supervisor joins
 * the enabled ones into one program so they share one bpftrace process (~90 MB each here).
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const PROBE_NAMES = ['fsync', 'runqlat', 'biolat', 'tcpretrans', 'oomkill'] as const;
export type ProbeName = (typeof PROBE_NAMES)[number];

export interface ProbeSpec {
  name: ProbeName;
  /** Tracepoints the program attaches to; every one must be listed by `bpftrace -l`. */
  tracepoints: string[];
  /** Maps the program prints each interval (without "@"). */
  maps: string[];
  /**
   * Relative cost rank (higher = more events per second): when a shared bpftrace process goes
   * over its CPU budget and the kernel cannot say which program costs what, the highest rank is
   * stopped first.
   */
  costRank: number;
  summary: string;
}

export const PROBES: Record<ProbeName, ProbeSpec> = {
  fsync: {
    name: 'fsync',
    tracepoints: [
      'tracepoint:syscalls:sys_enter_fsync',
      'tracepoint:syscalls:sys_exit_fsync',
      'tracepoint:syscalls:sys_enter_fdatasync',
      'tracepoint:syscalls:sys_exit_fdatasync',
    ],
    maps: ['fsync_us', 'fsync_own_us'],
    costRank: 2,
    summary: 'fsync/fdatasync latency, system-wide and for the daemon',
  },
  runqlat: {
    name: 'runqlat',
    tracepoints: [
      'tracepoint:sched:sched_wakeup',
      'tracepoint:sched:sched_wakeup_new',
      'tracepoint:sched:sched_switch',
    ],
    maps: ['runq_us'],
    costRank: 5,
    summary: 'run-queue latency (duty cycle)',
  },
  biolat: {
    name: 'biolat',
    tracepoints: ['tracepoint:block:block_rq_issue', 'tracepoint:block:block_rq_complete'],
    maps: ['bio_us'],
    costRank: 3,
    summary: 'block I/O latency per device',
  },
  tcpretrans: {
    name: 'tcpretrans',
    tracepoints: ['tracepoint:tcp:tcp_retransmit_skb', 'tracepoint:tcp:tcp_retransmit_synack'],
    maps: ['tcpretrans', 'tcpretrans_synack'],
    costRank: 1,
    summary: 'TCP retransmits',
  },
  oomkill: {
    name: 'oomkill',
    tracepoints: ['tracepoint:oom:mark_victim'],
    maps: ['oomkill'],
    costRank: 0,
    summary: 'OOM kills with the victim',
  },
};

/** Which probe owns a printed map (undefined: not ours, e.g. a leftover in an exit dump). */
export function probeOfMap(map: string): ProbeName | undefined {
  for (const p of PROBE_NAMES) if (PROBES[p].maps.includes(map)) return p;
  return undefined;
}

/** `bpf/` of the package: two levels up from src/probes/ (and from dist/probes/). */
export function defaultBpfDir(): string {
  return join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bpf');
}

/** The printf the composed program's BEGIN prints once every probe is attached. */
export const READY_LINE = 'edgekeeper: probes attached';

/** Preprocessor lines (the typedef stand-ins of bpf/*.bt) go first in a program, once each. */
const CPP_LINE = /^#(?:define|include)\b.*$/gm;
const END_BLOCK = /^END\s*\{([\s\S]*?)^\}[ \t]*$/gm;
const INTERVAL = /^interval:(?:s|ms):\d+[ \t]*$/gm;

/**
 * Joins the probes' programs into one: `#define` lines go to the top (once each), each file's
 * `interval:s:N` becomes `interval:ms:<ms>`, the END blocks (bpftrace allows only one) are merged
 * into a single END at the bottom, and a BEGIN says when every probe is attached.
 */
export function composeProgram(
  probes: readonly ProbeName[],
  intervalMs: number,
  bpfDir = defaultBpfDir(),
): string {
  if (!Number.isInteger(intervalMs) || intervalMs < 100) throw new RangeError('interval must be >= 100 ms');
  const bodies: string[] = [];
  const ends: string[] = [];
  const cpp = new Set<string>();
  for (const p of probes) {
    let text = readFileSync(join(bpfDir, `${p}.bt`), 'utf8');
    text = text.replace(CPP_LINE, (line) => {
      cpp.add(line.trim());
      return '';
    });
    text = text.replace(END_BLOCK, (_m, body: string) => {
      ends.push(body);
      return '';
    });
    text = text.replace(INTERVAL, `interval:ms:${intervalMs}`);
    bodies.push(`// ---- ${p}.bt ----\n${text.trim()}\n`);
  }
  // bpftrace prints "attached_probes" before it attaches (its text form says "Attaching N
  // probes..."); BEGIN runs once every probe is attached, so this line means "counting now".
  bodies.push(`BEGIN\n{\n  printf("${READY_LINE}\\n");\n}\n`);
  if (ends.length) bodies.push(`END\n{${ends.join('')}}\n`);
  return [...cpp, '', ...bodies].join('\n');
}
