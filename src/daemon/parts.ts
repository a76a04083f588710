/**
 * The one place where parts are wired in. Adding a part is one entry here: its config section,
 * its tables, its `run` flags, its CLI commands and its factory. Parts start in this order and
 * stop in reverse.
 *
 * Parts never import each other. Where one needs another (ingest asks the fleet sync whether
 * reports may be acknowledged; frames show every part's state; the sync uploads the latest
 * frame), the link is a small function made here, resolved through `peers` when it is called,
 * so the start order does not matter.
 */
import type { Config, ConfigSection, FlagSpec } from '../config/index.js';
import { daemonFlags, daemonSections } from '../config/index.js';
import {
  createEtcdPart,
  type EtcdOptions,
  etcdCliCommands,
  etcdConfigSection,
  etcdMigrations,
} from '../etcd/index.js';
import {
  type AlertInput,
  type AttentionDevice,
  createFramesPart,
  type FrameSources,
  type FramesPart,
  framesCliCommands,
  framesConfigSection,
  type ProbeReading,
} from '../frames/index.js';
import {
  createIngestPart,
  type IngestOptions,
  ingestCliCommands,
  ingestConfigSection,
  ingestMigrations,
} from '../ingest/index.js';
import type { CliCommand, Part, PartContext } from '../part.js';
import {
  createProbesPart,
  type LatestPercentiles,
  type ProbesOptions,
  probesCliCommands,
  probesConfigSection,
  probesMigrations,
} from '../probes/index.js';
import { sloConfigSection } from '../slo/index.js';
import type { Migration } from '../store/types.js';
import {
  createSyncPart,
  type NodeHealthInput,
  type SyncOptions,
  type SyncPart,
  type SyncStatus,
  syncCliCommands,
  syncConfigSection,
  syncMigrations,
} from '../sync/index.js';

/** Parts created so far in this daemon, by name. */
export type Peers = ReadonlyMap<string, Part>;

export interface PartEntry {
  name: string;
  /** The part's config section (top-level key in the config file). */
  section?: ConfigSection;
  /** The part's tables, applied by the store at open. */
  migrations?: Migration[];
  /** `edgekeeper run --<flag> VALUE` -> config key. */
  flags?: FlagSpec[];
  /** `edgekeeper <command>` subcommands. */
  commands?: CliCommand[];
  create(ctx: PartContext, config: Config, peers: Peers): Part;
}

const section = <T>(config: Config, name: string): T => (config as unknown as Record<string, T>)[name]!;
const uplinkOn = (config: Config) => !!section<SyncOptions>(config, 'sync').url;

export const parts: PartEntry[] = [
  {
    name: 'etcd',
    section: etcdConfigSection,
    migrations: etcdMigrations,
    flags: [{ flag: 'etcd-listen', key: 'etcd.listen' }],
    commands: etcdCliCommands,
    create: (ctx, config) => createEtcdPart(ctx, section<EtcdOptions>(config, 'etcd')),
  },
  {
    name: 'ingest',
    section: ingestConfigSection,
    migrations: ingestMigrations,
    flags: [
      { flag: 'mqtt-listen', key: 'mqtt.listen' },
      { flag: 'mqtt-url', key: 'mqtt.url' },
    ],
    commands: ingestCliCommands,
    create: (ctx, config, peers) =>
      createIngestPart(ctx, {
        ...section<IngestOptions>(config, ingestConfigSection.name),
        admit: () => (peers.get('sync') as SyncPart | undefined)?.admitReports() ?? true,
        uplinkEnabled: uplinkOn(config),
      }),
  },
  {
    name: 'probes',
    section: probesConfigSection,
    migrations: probesMigrations,
    commands: probesCliCommands,
    create: (ctx, config) =>
      // In the background: READY=1 does not wait for bpftrace (0.3-0.7 s to check and start).
      createProbesPart(ctx, {
        ...section<ProbesOptions>(config, 'probes'),
        uplinkEnabled: uplinkOn(config),
        background: true,
      }),
  },
  {
    name: 'sync',
    section: syncConfigSection,
    migrations: syncMigrations,
    commands: syncCliCommands,
    create: (ctx, config, peers) =>
      createSyncPart(ctx, {
        ...section<SyncOptions>(config, 'sync'),
        framePng: async () => (peers.get('frames') as FramesPart | undefined)?.latestPng(),
        health: () => nodeHealth(ctx, peers),
      }),
  },
  {
    name: 'frames',
    section: framesConfigSection,
    commands: framesCliCommands,
    create: (ctx, config, peers) =>
      createFramesPart(ctx, {
        ...section<Record<string, unknown>>(config, 'frames'),
        sources: frameSources(peers, ctx.readiness),
      } as Parameters<typeof createFramesPart>[1]),
  },
];

/** The prefix of alerts that repeat a failing readiness check (the fleet gets those as `failing`). */
const NOT_READY = 'not ready: ';

/** Map the other parts' `status()` (and readiness) into what a frame shows. */
export function frameSources(peers: Peers, readiness?: PartContext['readiness']): FrameSources {
  const statusOf = (name: string) => peers.get(name)?.status?.();
  return {
    devices: () => {
      const s = statusOf('ingest') as
        | {
            devices: { online: number; offline: number };
            attention: { id: string; reason: AttentionDevice['reason']; since: number }[];
            attentionTotal: number;
            rejecting: number;
            reportsPerMinute: number[];
          }
        | undefined;
      if (!s) return undefined;
      return {
        online: s.devices.online,
        offline: s.devices.offline,
        attention: s.attention.map((a) => ({ name: a.id, reason: a.reason, sinceMs: a.since })),
        attentionTotal: s.attentionTotal,
        rejecting: s.rejecting,
        reportsPerMinute: s.reportsPerMinute,
      };
    },
    probes: () => {
      const s = statusOf('probes') as
        | { probes: Record<string, string>; latest: Record<string, LatestPercentiles | undefined> }
        | undefined;
      if (!s) return undefined;
      const reading = (name: string, key: string): ProbeReading => {
        const state = s.probes[name] ?? 'unavailable: not enabled';
        if (state.startsWith('unavailable')) return { unavailable: state.replace(/^unavailable: /, '') };
        const p = s.latest[key];
        return p ? { p99Ms: p.p99Ms } : {};
      };
      return { fsync: reading('fsync', 'fsync'), runqlat: reading('runqlat', 'runqlat') };
    },
    uplink: () => {
      const s = statusOf('sync') as SyncStatus | undefined;
      if (!s) return undefined;
      return {
        state: s.state,
        backlogRecords: s.backlog.events + s.backlog.reports + s.backlog.samples,
        oldestUnsentAgeMs: s.oldestUnsentAgeSeconds === null ? undefined : s.oldestUnsentAgeSeconds * 1000,
        lastSuccessAt: s.lastSuccess ? Date.parse(s.lastSuccess) : undefined,
        lastError: s.lastError ?? undefined,
      };
    },
    alerts: () => {
      const out: AlertInput[] = [];
      const sync = statusOf('sync') as SyncStatus | undefined;
      if (sync && !sync.admittingReports)
        out.push({
          severity: 'critical',
          text: 'uplink disk budget full: device reports are not acknowledged',
        });
      if (sync && (sync.state === 'retrying' || sync.state === 'offline'))
        out.push({
          severity: 'warning',
          text: `uplink ${sync.state}${sync.lastError ? `: ${sync.lastError}` : ''}`,
        });
      if (sync && sync.droppedRecords > 0)
        out.push({
          severity: 'warning',
          text: `${sync.droppedRecords} records dropped by the uplink disk budget`,
        });
      const probes = statusOf('probes') as { probes: Record<string, string> } | undefined;
      for (const [name, state] of Object.entries(probes?.probes ?? {}))
        if (/budget/.test(state)) out.push({ severity: 'info', text: `probe ${name} stopped: ${state}` });
      // A node that cannot serve is red, whatever else it shows: failing or stalled writes, a
      // listener down. The sync budget and the quota have their own alerts (above, and the
      // frame's own), shutdown is no fault.
      for (const [check, problem] of Object.entries(readiness?.().failing ?? {}))
        if (check !== 'shutdown' && check !== 'sync' && !/over its quota/.test(problem))
          out.push({ severity: 'critical', text: `${NOT_READY}${problem}` });
      return out;
    },
  };
}

/**
 * The node's health for the fleet: readiness, and the alerts the status frame shows (the frame's
 * own causes too: disk, SoC, quota). The uplink's alerts are left out (the uplink records its
 * own state as uplink.* and disk.* events), and so are those repeating a failing check.
 */
export function nodeHealth(ctx: PartContext, peers: Peers): NodeHealthInput {
  const r = ctx.readiness?.() ?? { ready: true, failing: {} };
  const snap = (peers.get('frames') as FramesPart | undefined)?.latestSnapshot();
  const alerts =
    snap && !snap.alertsUnknown ? snap.alerts : snap ? undefined : frameSources(peers).alerts?.();
  return {
    ready: r.ready,
    failing: r.failing,
    alerts: alerts?.filter((a) => !a.text.startsWith('uplink ') && !a.text.startsWith(NOT_READY)),
    diskUsedBytes: snap?.system.diskUsedBytes,
    diskTotalBytes: snap?.system.diskTotalBytes,
  };
}

/** Every config section: the daemon's, then each part's. */
export function allSections(entries: PartEntry[] = parts): ConfigSection[] {
  return [...daemonSections, sloConfigSection, ...entries.flatMap((p) => (p.section ? [p.section] : []))];
}

/** Every `run` flag that maps to a config key. */
export function allFlags(entries: PartEntry[] = parts): FlagSpec[] {
  return [...daemonFlags, ...entries.flatMap((p) => p.flags ?? [])];
}

/** Every part's CLI commands. */
export function partCommands(entries: PartEntry[] = parts): CliCommand[] {
  return entries.flatMap((p) => p.commands ?? []);
}
