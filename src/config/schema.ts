/**
 * The validation engine: one schema built from every part's `ConfigSection`, three layers of
 * raw values (file, environment, flags) merged over the defaults, every problem collected with
 * its key path and thrown as ONE ConfigError. Nothing here knows a particular section.
 */
import { ConfigError } from '../errors.js';
import type { ConfigSection, FieldSpec } from './types.js';

/** Where a raw value came from; named in problems so the user knows which layer to fix. */
export type Origin =
  | { kind: 'file'; file?: string }
  | { kind: 'env'; name: string }
  | { kind: 'flag'; name: string };

/** A validated configuration: section -> key -> value, deep-frozen. */
export type ConfigValues = Readonly<Record<string, Readonly<Record<string, unknown>>>>;

const UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const UNITS_BYTES: Record<string, number> = {
  b: 1,
  k: 1024,
  kb: 1000,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1000 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1000 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1000 ** 4,
  tib: 1024 ** 4,
};

/** "1h30m", "500ms", "10s" -> milliseconds; undefined when it does not parse. */
export function parseDuration(text: string): number | undefined {
  const s = text.trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Number(s);
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let matched = 0;
  for (let m = re.exec(s); m; m = re.exec(s)) {
    total += Number(m[1]) * UNITS_MS[m[2]!]!;
    matched = re.lastIndex;
  }
  return matched === s.length && matched > 0 ? Math.round(total) : undefined;
}

/** "2GiB", "1.5MiB", "64k", "1000" -> bytes; undefined when it does not parse. */
export function parseBytes(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/.exec(text.trim());
  if (!m) return undefined;
  const unit = UNITS_BYTES[(m[2] || 'b').toLowerCase()];
  if (unit === undefined) return undefined;
  return Math.round(Number(m[1]) * unit);
}

/** Splits "HOST:PORT" ("[::1]:2379" for IPv6); undefined when malformed. */
export function parseHostPort(text: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(text);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port > 65535) return undefined;
  return { host: (m[1] ?? m[2])!, port };
}

/** `camelCase` -> `CAMEL_CASE`, for environment variable names. */
export function envName(section: string, key: string): string {
  const snake = (s: string) => s.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();
  return `EDGEKEEPER_${snake(section)}_${snake(key)}`;
}

function show(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'bigint') return `${value}n`;
  try {
    const s = JSON.stringify(value);
    return s === undefined ? String(value) : s.length > 80 ? `${s.slice(0, 77)}...` : s;
  } catch {
    return String(value);
  }
}

function where(origin: Origin): string {
  if (origin.kind === 'env') return ` (from ${origin.name})`;
  if (origin.kind === 'flag') return ` (from --${origin.name})`;
  return '';
}

function expected(path: string, origin: Origin, what: string, got: unknown): string {
  return `Expected \`${path}\`${where(origin)} to be ${what}, got ${show(got)}`;
}

function range(min: number | undefined, max: number | undefined, fmt: (n: number) => string): string {
  if (min !== undefined && max !== undefined) return ` between ${fmt(min)} and ${fmt(max)}`;
  if (min !== undefined) return ` >= ${fmt(min)}`;
  if (max !== undefined) return ` <= ${fmt(max)}`;
  return '';
}

const fmtMs = (n: number) => `${n}ms`;
const fmtBytes = (n: number) => `${n} bytes`;
const fmtNum = (n: number) => String(n);

/**
 * Converts one raw value to the field's type. Strings from env and flags are parsed the same way
 * as the file's values, so "2GiB" works everywhere; numbers in the file are taken as they are.
 */
function coerce(
  spec: Exclude<FieldSpec, { type: 'renamed' }>,
  raw: unknown,
  path: string,
  origin: Origin,
  problems: string[],
): unknown {
  const textual = origin.kind !== 'file';
  switch (spec.type) {
    case 'string': {
      if (typeof raw !== 'string') {
        problems.push(expected(path, origin, 'a string', raw));
        return undefined;
      }
      if (spec.enum && !spec.enum.includes(raw)) {
        problems.push(expected(path, origin, `one of ${spec.enum.map((e) => `"${e}"`).join(', ')}`, raw));
        return undefined;
      }
      return raw;
    }
    case 'integer':
    case 'number': {
      let n: unknown = raw;
      if (textual && typeof raw === 'string' && raw.trim() !== '') n = Number(raw);
      const kind = spec.type === 'integer' ? 'an integer' : 'a number';
      if (
        typeof n !== 'number' ||
        !Number.isFinite(n) ||
        (spec.type === 'integer' && !Number.isInteger(n)) ||
        (spec.min !== undefined && n < spec.min) ||
        (spec.max !== undefined && n > spec.max)
      ) {
        problems.push(expected(path, origin, kind + range(spec.min, spec.max, fmtNum), raw));
        return undefined;
      }
      return n;
    }
    case 'boolean': {
      if (typeof raw === 'boolean') return raw;
      if (textual && typeof raw === 'string') {
        const t = raw.trim().toLowerCase();
        if (t === 'true' || t === '1' || t === 'yes') return true;
        if (t === 'false' || t === '0' || t === 'no') return false;
      }
      problems.push(expected(path, origin, 'true or false', raw));
      return undefined;
    }
    case 'string[]': {
      if (textual && typeof raw === 'string') {
        return raw
          .split(',')
          .map((s) => s.trim())
          .filter((s) => s !== '');
      }
      if (!Array.isArray(raw) || raw.some((x) => typeof x !== 'string')) {
        problems.push(expected(path, origin, 'an array of strings', raw));
        return undefined;
      }
      return [...raw];
    }
    case 'duration':
    case 'bytes': {
      const isDuration = spec.type === 'duration';
      let n: number | undefined;
      if (typeof raw === 'number') n = raw;
      else if (typeof raw === 'string') n = isDuration ? parseDuration(raw) : parseBytes(raw);
      const what = isDuration
        ? `a duration ("500ms", "10s", "5m", "1h", "7d" or milliseconds)${range(spec.min, spec.max, fmtMs)}`
        : `a size ("64KiB", "1.5MiB", "2GiB" or bytes)${range(spec.min, spec.max, fmtBytes)}`;
      if (
        n === undefined ||
        !Number.isFinite(n) ||
        n < 0 ||
        !Number.isInteger(n) ||
        (spec.min !== undefined && n < spec.min) ||
        (spec.max !== undefined && n > spec.max)
      ) {
        problems.push(expected(path, origin, what, raw));
        return undefined;
      }
      return n;
    }
    case 'hostport': {
      if (typeof raw !== 'string' || !parseHostPort(raw)) {
        problems.push(expected(path, origin, 'HOST:PORT (e.g. "127.0.0.1:9480", "[::1]:9480")', raw));
        return undefined;
      }
      return raw;
    }
  }
}

function levenshtein(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return row[b.length]!;
}

function suggest(name: string, known: string[]): string {
  let best: string | undefined;
  let bestD = Number.POSITIVE_INFINITY;
  for (const k of known) {
    const d = levenshtein(name.toLowerCase(), k.toLowerCase());
    if (d < bestD) {
      bestD = d;
      best = k;
    }
  }
  // Only suggest close names (a typo), otherwise list what exists.
  return best !== undefined && bestD <= Math.max(2, Math.floor(name.length / 3))
    ? `; did you mean \`${best}\`?`
    : `; known keys: ${known.join(', ')}`;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

/** One layer of raw input: values keyed by section then key, and where they came from. */
export interface Layer {
  values: Record<string, Record<string, { raw: unknown; origin: Origin }>>;
}

/**
 * The file layer: a JSON object of sections. Shape errors (unknown sections, unknown or renamed
 * keys, a section that is not an object) become problems.
 */
export function fileLayer(
  data: unknown,
  sections: ConfigSection[],
  problems: string[],
  file?: string,
): Layer {
  const layer: Layer = { values: {} };
  if (data === undefined) return layer;
  const origin: Origin = { kind: 'file', file };
  if (!isPlainObject(data)) {
    problems.push(
      `Expected the configuration file${file ? ` ${file}` : ''} to hold a JSON object, got ${show(data)}`,
    );
    return layer;
  }
  const byName = new Map(sections.map((s) => [s.name, s]));
  for (const [name, body] of Object.entries(data)) {
    if (name === '$schema' || name === '//') continue; // editor hint and comment keys are allowed
    const section = byName.get(name);
    if (!section) {
      problems.push(`Unknown section \`${name}\`${suggest(name, [...byName.keys()])}`);
      continue;
    }
    if (!isPlainObject(body)) {
      problems.push(expected(name, origin, 'an object', body));
      continue;
    }
    const out: Record<string, { raw: unknown; origin: Origin }> = {};
    for (const [key, raw] of Object.entries(body)) {
      if (key === '//') continue;
      const spec = section.fields[key];
      if (!spec) {
        problems.push(`Unknown key \`${name}.${key}\`${suggest(key, liveKeys(section))}`);
        continue;
      }
      if (spec.type === 'renamed') {
        problems.push(`\`${name}.${key}\` was renamed to \`${name}.${spec.to}\`; use the new name`);
        continue;
      }
      out[key] = { raw, origin };
    }
    layer.values[name] = out;
  }
  return layer;
}

function liveKeys(section: ConfigSection): string[] {
  return Object.entries(section.fields)
    .filter(([, f]) => f.type !== 'renamed')
    .map(([k]) => k);
}

/**
 * The environment layer: `EDGEKEEPER_<SECTION>_<KEY>` for every field. A variable whose
 * section prefix is one of ours but whose key is not is refused (a typo would otherwise be
 * silently ignored); variables of unknown prefixes belong to someone else and are left alone.
 */
export function envLayer(
  env: Record<string, string | undefined>,
  sections: ConfigSection[],
  problems: string[],
): Layer {
  const layer: Layer = { values: {} };
  const known = new Map<string, { section: string; key: string; spec: FieldSpec }>();
  for (const s of sections) {
    for (const [key, spec] of Object.entries(s.fields))
      known.set(envName(s.name, key), { section: s.name, key, spec });
  }
  const prefixes = sections.map((s) => envName(s.name, '').slice(0, -1));
  for (const [name, raw] of Object.entries(env)) {
    if (raw === undefined || !name.startsWith('EDGEKEEPER_')) continue;
    const hit = known.get(name);
    if (!hit) {
      const prefix = prefixes.find((p) => name.startsWith(`${p}_`));
      if (prefix) {
        const liveNames = [...known.entries()]
          .filter(([n, v]) => n.startsWith(`${prefix}_`) && v.spec.type !== 'renamed')
          .map(([n]) => n);
        problems.push(`Unknown environment variable ${name}${suggest(name, liveNames)}`);
      }
      continue;
    }
    if (hit.spec.type === 'renamed') {
      problems.push(`${name} was renamed to ${envName(hit.section, hit.spec.to)}; use the new name`);
      continue;
    }
    layer.values[hit.section] ??= {};
    layer.values[hit.section]![hit.key] = { raw, origin: { kind: 'env', name } };
  }
  return layer;
}

/** The flag layer: `{ "http.listen": { raw, flag } }` -> values. Unknown paths are programming errors. */
export function flagLayer(
  flags: Record<string, { raw: unknown; flag: string }>,
  sections: ConfigSection[],
): Layer {
  const layer: Layer = { values: {} };
  for (const [path, { raw, flag }] of Object.entries(flags)) {
    const dot = path.indexOf('.');
    const section = path.slice(0, dot);
    const key = path.slice(dot + 1);
    const spec = sections.find((s) => s.name === section)?.fields[key];
    if (!spec || spec.type === 'renamed')
      throw new Error(`flag --${flag} maps to unknown config key ${path}`);
    layer.values[section] ??= {};
    layer.values[section]![key] = { raw, origin: { kind: 'flag', name: flag } };
  }
  return layer;
}

/**
 * Merges the layers (later ones win) over the defaults and validates every field. Throws one
 * ConfigError with every problem, including the shape problems collected while building layers.
 */
export function resolve(sections: ConfigSection[], layers: Layer[], problems: string[]): ConfigValues {
  const names = new Set<string>();
  for (const s of sections) {
    if (names.has(s.name)) throw new Error(`config section ${s.name} is declared twice`);
    names.add(s.name);
  }
  const result: Record<string, Record<string, unknown>> = {};
  for (const section of sections) {
    const values: Record<string, unknown> = {};
    let sectionOk = true;
    for (const [key, spec] of Object.entries(section.fields)) {
      if (spec.type === 'renamed') continue;
      const path = `${section.name}.${key}`;
      let picked: { raw: unknown; origin: Origin } | undefined;
      for (const layer of layers) picked = layer.values[section.name]?.[key] ?? picked;
      if (picked === undefined || picked.raw === null) {
        // null in the file means "use the default", which keeps templates easy to write.
        const def = 'default' in spec ? spec.default : undefined;
        if (def === undefined && !('optional' in spec && spec.optional)) {
          problems.push(`Missing required key \`${path}\``);
          sectionOk = false;
        }
        values[key] = Array.isArray(def) ? [...def] : def;
        continue;
      }
      const before = problems.length;
      const v = coerce(spec, picked.raw, path, picked.origin, problems);
      if (problems.length > before) sectionOk = false;
      values[key] = v;
    }
    // Cross-field checks only make sense on fields that validated.
    if (sectionOk && section.check) problems.push(...section.check(values));
    result[section.name] = values;
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return deepFreeze(result);
}
