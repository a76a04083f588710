/**
 * The one place where parts are wired in. Adding a part is one entry here: its config section,
 * its tables, its `run` flags, its CLI commands and its factory. Parts start in this order and
 * stop in reverse.
 *
 * Example (what the lead adds for the etcd API):
 *   { name: 'etcd', section: etcdSection, migrations: etcdMigrations,
 *     flags: [{ flag: 'etcd-listen', key: 'etcd.listen' }], commands: etcdCommands,
 *     create: (ctx, config) => createEtcd(ctx, config.etcd as EtcdOptions) },
 */
import type { Config, ConfigSection, FlagSpec } from '../config/index.js';
import { daemonFlags, daemonSections } from '../config/index.js';
import type { CliCommand, Part, PartContext } from '../part.js';
import type { Migration } from '../store/types.js';

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
  create(ctx: PartContext, config: Config): Part;
}

export const parts: PartEntry[] = [];

/** Every config section: the daemon's, then each part's. */
export function allSections(entries: PartEntry[] = parts): ConfigSection[] {
  return [...daemonSections, ...entries.flatMap((p) => (p.section ? [p.section] : []))];
}

/** Every `run` flag that maps to a config key. */
export function allFlags(entries: PartEntry[] = parts): FlagSpec[] {
  return [...daemonFlags, ...entries.flatMap((p) => p.flags ?? [])];
}

/** Every part's CLI commands. */
export function partCommands(entries: PartEntry[] = parts): CliCommand[] {
  return entries.flatMap((p) => p.commands ?? []);
}
