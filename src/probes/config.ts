import type { ConfigSection } from '../config/types.js';
import { PROBE_NAMES } from './catalog.js';

/** The `probes` section of the config file. */
export const probesConfigSection: ConfigSection = {
  name: 'probes',
  doc: 'Trimmed eBPF probes (bpftrace, tracepoints only): fsync, runqlat, biolat, tcpretrans, oomkill.',
  fields: {
    enabled: {
      type: 'string[]',
      default: PROBE_NAMES,
      doc: `Probes to run; any of ${PROBE_NAMES.join(', ')}. An empty list turns probes off.`,
    },
    interval: {
      type: 'duration',
      default: 10_000,
      min: 1000,
      max: 3_600_000,
      doc: 'How often the in-kernel histograms are read, exported and stored.',
    },
    storeInterval: {
      type: 'duration',
      default: 60_000,
      min: 1000,
      max: 3_600_000,
      doc: 'Samples wait in memory and are stored this often (or once 1,000 wait): fewer commits, less SD-card wear. Waiting samples are lost on a crash; /metrics has them meanwhile.',
    },
    runqlatPeriod: {
      type: 'duration',
      default: 60_000,
      min: 1000,
      max: 3_600_000,
      doc: 'runqlat duty-cycle period: it measures for `runqlatOn` of every period.',
    },
    runqlatOn: {
      type: 'duration',
      default: 10_000,
      min: 1000,
      max: 3_600_000,
      doc: 'runqlat on-time per period (equal to the period: always on).',
    },
    cpuBudget: {
      type: 'number',
      default: 2,
      min: 0.1,
      max: 100,
      doc: 'Percent of one CPU each probe may use (bpftrace process CPU, shared processes get the sum); a probe over it is stopped.',
    },
    bpftracePath: {
      type: 'string',
      default: 'bpftrace',
      doc: 'bpftrace binary (a bare name is looked up on PATH).',
    },
    sharing: {
      type: 'string',
      default: 'shared',
      enum: ['shared', 'per-probe'],
      doc: 'shared: one bpftrace process for all probes (~90 MB); per-probe: one process each (~90 MB each).',
    },
    retention: {
      type: 'duration',
      default: 7 * 24 * 3_600_000,
      min: 60_000,
      doc: 'Stored probe samples older than this are deleted (only once uploaded, when the uplink is on).',
    },
    maxSamples: {
      type: 'integer',
      default: 500_000,
      min: 1000,
      doc: 'Hard cap on stored probe samples; beyond it the oldest are deleted even if not uploaded (logged and counted).',
    },
    bpfStats: {
      type: 'boolean',
      default: false,
      doc: 'Turn on kernel.bpf_stats_enabled so the CPU budget counts in-kernel BPF time too (two clock reads per program run; needs CAP_SYS_ADMIN).',
    },
    mountTracefs: {
      type: 'boolean',
      default: true,
      doc: 'Mount tracefs when missing (needs CAP_SYS_ADMIN).',
    },
    tracefsDir: {
      type: 'string',
      default: '/sys/kernel/tracing',
      doc: 'Where tracefs is (or gets) mounted.',
    },
  },
};
