/**
 * The probes part's public face: a fixed set of trimmed bpftrace programs (bpf/*.bt) whose
 * in-kernel histograms become Prometheus metrics and `probe_samples` rows for the fleet sync.
 */
export { createProbesPart, probesMigrations, ProbesPart } from './part.js';
export { probesConfigSection } from './config.js';
export { probesCliCommands, probesCommand, doctorCommand } from './cli.js';
export { PROBE_NAMES, type ProbeName } from './catalog.js';
export type { ProbesOptions, LatestPercentiles } from './types.js';
export type { ProbeStatus } from './supervisor.js';
