/**
 * The SLO guard (guard.ts says how it decides): latency objectives for interactive traffic with
 * multi-window burn rates as `edgekeeper_slo_*` metrics, and the advice bulk work follows.
 * The daemon makes one guard, feeds it the store's commits, and hands it to every part as
 * `PartContext.slo` (a `LoadGuard`): the etcd part reports its requests; ingest, probes, frames
 * and the uplink ask whether to hold back. No part imports this folder.
 */
export { sloConfigSection } from './config.js';
export {
  BurnWindows,
  type ObjectiveName,
  PAIRS,
  SloGuard,
  type SloGuardDeps,
  type SloOptions,
  TICK_MS,
  WINDOWS,
  type WindowName,
} from './guard.js';
