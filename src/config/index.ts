/**
 * Configuration: one JSON file, then `EDGEKEEPER_<SECTION>_<KEY>` environment variables, then
 * command-line flags, each layer overriding the one before, over the schema's defaults.
 * Validated once, at start; every problem is reported with its key path in ONE ConfigError; the
 * result is deep-frozen.
 */
import { readFileSync } from 'node:fs';
import { ConfigError } from '../errors.js';
import { type DaemonConfig, daemonSections } from './daemon.js';
import { type ConfigValues, envLayer, envName, fileLayer, flagLayer, type Layer, resolve } from './schema.js';
import type { ConfigSection, FieldSpec } from './types.js';

export type { ConfigSection, FieldSpec } from './types.js';
export type { DaemonConfig } from './daemon.js';
export { daemonSections, httpSection, logSection, nodeSection, storeSection } from './daemon.js';
export { envName, parseBytes, parseDuration, parseHostPort } from './schema.js';

/** A validated, frozen configuration: the daemon's typed sections plus every part's section. */
export type Config = Readonly<DaemonConfig> & ConfigValues;

/** A `--flag VALUE` of `edgekeeper run` that sets one config key. */
export interface FlagSpec {
  /** Flag name without dashes, e.g. "http-listen". */
  flag: string;
  /** Config key path it sets, e.g. "http.listen". */
  key: string;
}

/** The daemon's own flags; parts add theirs in `src/daemon/parts.ts`. */
export const daemonFlags: FlagSpec[] = [
  { flag: 'data-dir', key: 'node.dataDir' },
  { flag: 'http-listen', key: 'http.listen' },
  { flag: 'node-name', key: 'node.name' },
  { flag: 'log-level', key: 'log.level' },
];

export interface LoadOptions {
  /** Path of the JSON config file; absent: defaults, env and flags only. */
  file?: string;
  /** Already-parsed file contents (tests); used instead of reading `file`. */
  fileData?: unknown;
  /** Environment; default `process.env`. Pass `{}` to ignore it. */
  env?: Record<string, string | undefined>;
  /** Flag values by flag name ("http-listen": "127.0.0.1:0"), as parsed from the command line. */
  flags?: Record<string, string | undefined>;
  /** Flag name -> config key; default `daemonFlags`. */
  flagSpecs?: FlagSpec[];
  /** Every section of the schema; default the daemon's own. */
  sections?: ConfigSection[];
}

/** Reads, merges and validates the configuration. Throws ConfigError listing every problem. */
export function loadConfig(opts: LoadOptions = {}): Config {
  const sections = opts.sections ?? daemonSections;
  const problems: string[] = [];
  let data = opts.fileData;
  if (data === undefined && opts.file !== undefined) data = readConfigFile(opts.file, problems);
  const layers: Layer[] = [
    fileLayer(data, sections, problems, opts.file),
    envLayer(opts.env ?? process.env, sections, problems),
  ];
  const specs = opts.flagSpecs ?? daemonFlags;
  const flagValues: Record<string, { raw: unknown; flag: string }> = {};
  for (const [flag, raw] of Object.entries(opts.flags ?? {})) {
    if (raw === undefined) continue;
    const spec = specs.find((s) => s.flag === flag);
    if (!spec) throw new Error(`--${flag} is not a config flag`);
    flagValues[spec.key] = { raw, flag };
  }
  layers.push(flagLayer(flagValues, sections));
  return resolve(sections, layers, problems) as Config;
}

function readConfigFile(file: string, problems: string[]): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    problems.push(`Cannot read the configuration file ${file}: ${(err as Error).message}`);
    return undefined;
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    problems.push(`The configuration file ${file} is not valid JSON: ${(err as Error).message}`);
    return undefined;
  }
}

/** Throws a ConfigError with one problem; for checks made after loading (e.g. a listener that cannot bind). */
export function configProblem(message: string): never {
  throw new ConfigError([message]);
}

function showDefault(spec: Exclude<FieldSpec, { type: 'renamed' }>): string {
  if (!('default' in spec) || spec.default === undefined) return '';
  const d = spec.default;
  if (spec.type === 'duration') return showDuration(d as number);
  if (spec.type === 'bytes') return showBytes(d as number);
  return JSON.stringify(d);
}

function showDuration(ms: number): string {
  const units: [string, number][] = [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ];
  for (const [u, n] of units) if (ms >= n && ms % n === 0) return `${ms / n}${u}`;
  return `${ms}ms`;
}

function showBytes(b: number): string {
  for (const [u, n] of [
    ['GiB', 1024 ** 3],
    ['MiB', 1024 ** 2],
    ['KiB', 1024],
  ] as const)
    if (b >= n && ((b / n) * 10) % 1 === 0) return `${b / n}${u}`;
  return `${b}`;
}

/**
 * A markdown reference of the sections (key, type, default, env variable, meaning), for the
 * documentation (docs/) and `edgekeeper run --help`. Renamed keys are listed with their new name.
 */
export function configReference(sections: ConfigSection[]): string {
  const out: string[] = [];
  for (const s of sections) {
    out.push(
      `### \`${s.name}\``,
      '',
      s.doc,
      '',
      '| key | type | default | env | meaning |',
      '| --- | --- | --- | --- | --- |',
    );
    for (const [key, spec] of Object.entries(s.fields)) {
      if (spec.type === 'renamed') continue;
      const def = showDefault(spec);
      const type = spec.type === 'string' && spec.enum ? spec.enum.join(' \\| ') : spec.type;
      out.push(
        `| \`${s.name}.${key}\` | ${type} | ${def ? `\`${def}\`` : ''} | \`${envName(s.name, key)}\` | ${spec.doc} |`,
      );
    }
    const renamed = Object.entries(s.fields).filter(([, f]) => f.type === 'renamed');
    if (renamed.length > 0) {
      out.push(
        '',
        `Renamed: ${renamed.map(([k, f]) => `\`${s.name}.${k}\` → \`${s.name}.${(f as { to: string }).to}\``).join(', ')}.`,
      );
    }
    out.push('');
  }
  return out.join('\n');
}
