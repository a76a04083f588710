/**
 * The systemd unit as the probes meet it: the unit file and its drop-ins parsed, the system call
 * filter resolved the way systemd resolves it, and the settings bpftrace depends on checked
 * (`edgekeeper doctor --unit`). A probe that works from a shell can still be blocked by the
 * unit's sandbox; this names the setting that blocks it.
 *
 * systemd.exec(5): SystemCallFilter= may be given more than once. The first assignment decides
 * the kind: an allow list (the @default set is then allowed too), or with "~" a deny list. Each
 * later assignment of the same kind adds, of the other kind removes; an empty one resets. Groups
 * ("@system-service") are expanded with `systemd-analyze syscall-filter`, so they match the
 * systemd that runs the unit.
 */
import { existsSync, readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { CheckItem } from './environment.js';

/** One `Key=value` line of the unit or a drop-in, in file order, with where it came from. */
export interface UnitLine {
  section: string;
  key: string;
  value: string;
  /** `file:line`. */
  at: string;
}

/** Systemd's search path for system units, most important first. */
export const UNIT_DIRS = [
  '/etc/systemd/system',
  '/run/systemd/system',
  '/usr/lib/systemd/system',
  '/lib/systemd/system',
];

/** Parses unit file text: sections, `#`/`;` comments, lines continued with a trailing backslash. */
export function parseUnit(text: string, file = 'unit'): UnitLine[] {
  const out: UnitLine[] = [];
  let section = '';
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const start = i;
    let line = lines[i]!.trim();
    while (line.endsWith('\\') && i + 1 < lines.length) line = `${line.slice(0, -1)} ${lines[++i]!.trim()}`;
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const sec = /^\[(.+)\]$/.exec(line);
    if (sec) {
      section = sec[1]!;
      continue;
    }
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    out.push({
      section,
      key: line.slice(0, eq).trim(),
      value: line.slice(eq + 1).trim(),
      at: `${file}:${start + 1}`,
    });
  }
  return out;
}

export interface LoadedUnit {
  /** The unit file in effect (the first of UNIT_DIRS that has it). */
  file: string;
  /** Linked to /dev/null (systemctl mask; the package's removal masks it until purge). */
  masked?: boolean;
  /** Unit files of the same name further down the search path, hidden by `file`. */
  shadowed: string[];
  dropIns: string[];
  lines: UnitLine[];
}

/**
 * Loads `name` as systemd would: the first file on the search path, then every `<name>.d/*.conf`
 * drop-in (a name in an earlier directory hides the same name in a later one), in file-name
 * order. With `file` given, that file and nothing else.
 */
export function loadUnit(
  name: string,
  file?: string,
  dirs: readonly string[] = UNIT_DIRS,
): LoadedUnit | undefined {
  if (file) return { file, shadowed: [], dropIns: [], lines: parseUnit(readFileSync(file, 'utf8'), file) };
  const first = dirs.map((d) => join(d, name)).find((f) => existsSync(f));
  if (first && realpathSync(first) === '/dev/null')
    return { file: first, masked: true, shadowed: [], dropIns: [], lines: [] };
  const found = dirs.map((d) => join(d, name)).filter((f) => existsSync(f) && statSync(f).size > 0);
  if (found.length === 0) return undefined;
  // /lib is /usr/lib on merged-/usr systems: the same file twice is not a shadow.
  const real = (f: string) => readFileSync(f, 'utf8');
  const shadowed = found.slice(1).filter((f) => real(f) !== real(found[0]!));
  const dropIns = new Map<string, string>();
  for (const d of [...dirs].reverse()) {
    const dir = join(d, `${name}.d`);
    if (!existsSync(dir)) continue;
    for (const f of readdirSync(dir).filter((x) => x.endsWith('.conf'))) dropIns.set(f, join(dir, f));
  }
  const ordered = [...dropIns.keys()].sort().map((k) => dropIns.get(k)!);
  const lines = [found[0]!, ...ordered].flatMap((f) => parseUnit(readFileSync(f, 'utf8'), f));
  return { file: found[0]!, shadowed, dropIns: ordered, lines };
}

/** The last value of a single-valued `[Service]` (or other section's) setting. */
export function setting(lines: readonly UnitLine[], key: string, section = 'Service'): string | undefined {
  let v: string | undefined;
  for (const l of lines) if (l.section === section && l.key === key) v = l.value;
  return v;
}

/** Every assignment of a list setting, in order (an empty one resets what came before). */
export function assignments(lines: readonly UnitLine[], key: string, section = 'Service'): UnitLine[] {
  return lines.filter((l) => l.section === section && l.key === key);
}

/** `systemd-analyze syscall-filter` output: group name -> its members (syscalls and @groups). */
export function parseSyscallGroups(text: string): Map<string, string[]> {
  const groups = new Map<string, string[]>();
  let current: string[] | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('@') && !raw.startsWith(' ')) {
      current = [];
      groups.set(line, current);
    } else if (line && !line.startsWith('#') && current) {
      current.push(line);
    }
  }
  return groups;
}

/** A group's syscalls with nested groups expanded; throws on a group systemd does not know. */
export function expandGroup(
  name: string,
  groups: ReadonlyMap<string, string[]>,
  seen = new Set<string>(),
): string[] {
  const members = groups.get(name);
  if (!members) throw new Error(`unknown system call group ${name}`);
  if (seen.has(name)) return [];
  seen.add(name);
  return members.flatMap((m) => (m.startsWith('@') ? expandGroup(m, groups, seen) : [m]));
}

export interface SyscallFilter {
  /** allow: only `set` may be called; deny: everything but `set`; none: no filter. */
  mode: 'allow' | 'deny' | 'none';
  set: Set<string>;
  /** Why a syscall is out (deny-listed, or removed from the allow list): the assignment's place. */
  removedBy: Map<string, string>;
}

/** Resolves the SystemCallFilter= assignments as systemd.exec(5) describes (see the top). */
export function resolveSyscallFilter(
  lines: readonly UnitLine[],
  groups: ReadonlyMap<string, string[]>,
): SyscallFilter {
  let f: SyscallFilter = { mode: 'none', set: new Set(), removedBy: new Map() };
  for (const a of assignments(lines, 'SystemCallFilter')) {
    if (a.value === '') {
      f = { mode: 'none', set: new Set(), removedBy: new Map() };
      continue;
    }
    const invert = a.value.startsWith('~');
    if (f.mode === 'none') {
      f.mode = invert ? 'deny' : 'allow';
      if (!invert) for (const s of expandGroup('@default', groups)) f.set.add(s);
    }
    const add = (f.mode === 'allow') !== invert;
    for (const word of a.value.replace(/^~/, '').split(/\s+/).filter(Boolean)) {
      const name = word.replace(/:.*$/, ''); // "name:errno"
      for (const s of name.startsWith('@') ? expandGroup(name, groups) : [name]) {
        if (add) f.set.add(s);
        else f.set.delete(s);
        // A "~" assignment shuts a call out in either kind of list; a plain one lets it in.
        if (invert) f.removedBy.set(s, `${a.at} (${name})`);
        else f.removedBy.delete(s);
      }
    }
  }
  return f;
}

export function allowed(f: SyscallFilter, syscall: string): boolean {
  return f.mode === 'none' || (f.mode === 'allow' ? f.set.has(syscall) : !f.set.has(syscall));
}

/** What bpftrace needs from the kernel beyond an ordinary service. */
export const PROBE_SYSCALLS = ['bpf', 'perf_event_open'] as const;

/** Linux capability names as systemd writes them. */
const PROBE_CAPS = ['CAP_BPF', 'CAP_PERFMON'];

/** The bounding set after every CapabilityBoundingSet= (undefined: not limited). */
export function boundingSet(lines: readonly UnitLine[]): Set<string> | undefined {
  let set: Set<string> | undefined;
  for (const a of assignments(lines, 'CapabilityBoundingSet')) {
    if (a.value === '') {
      set = new Set();
      continue;
    }
    const invert = a.value.startsWith('~');
    const caps = a.value.replace(/^~/, '').split(/\s+/).filter(Boolean);
    if (invert) {
      set ??= new Set(['*']);
      for (const c of caps) set.delete(c);
      set.add(`~${caps.join(' ')}`);
    } else {
      if (!set || set.has('*')) set = new Set();
      for (const c of caps) set.add(c);
    }
  }
  return set;
}

function hasCap(set: Set<string> | undefined, cap: string): boolean {
  if (!set) return true;
  if (set.has('*')) return ![...set].some((x) => x.startsWith('~') && x.slice(1).split(' ').includes(cap));
  return set.has(cap);
}

export interface UnitCheckOptions {
  unit: LoadedUnit;
  groups: ReadonlyMap<string, string[]>;
  /** `uname -r`, for the memlock limit kernels before 5.11 charge BPF maps to. */
  kernelRelease: string;
}

/** Checks the unit's settings against what the probes need; one item per setting. */
export function checkUnit(o: UnitCheckOptions): CheckItem[] {
  const { lines } = o.unit;
  const out: CheckItem[] = [];
  if (o.unit.masked) {
    return [
      {
        name: 'unit',
        ok: false,
        detail: `${o.unit.file} is masked: the edgekeeper package was removed and not purged, or an admin masked it`,
        fix: 'apt install edgekeeper (its data and configuration were kept), or systemctl unmask edgekeeper',
      },
    ];
  }
  const where = `${o.unit.file}${o.unit.dropIns.length ? ` + ${o.unit.dropIns.join(', ')}` : ''}`;
  out.push({ name: 'unit', ok: true, detail: where });
  for (const s of o.unit.shadowed) {
    out.push({
      name: 'unit file',
      ok: false,
      detail: `${o.unit.file} hides ${s} (two edgekeeper.service files; systemd uses only the first)`,
      fix: `remove the one you did not mean (a hand-installed copy: rm ${o.unit.file} && systemctl daemon-reload); site changes belong in a drop-in (systemctl edit edgekeeper)`,
    });
  }

  const exec = setting(lines, 'ExecStart');
  const bin = exec?.replace(/^[-@:+!]+/, '').split(/\s+/)[0];
  if (bin && !existsSync(bin)) {
    out.push({
      name: 'ExecStart',
      ok: false,
      detail: `${bin} does not exist: the service would fail with 203/EXEC`,
      fix: 'install the edgekeeper package (it puts the program at /usr/bin/edgekeeper), or point ExecStart= at it in a drop-in',
    });
  } else if (bin) out.push({ name: 'ExecStart', ok: true, detail: bin });

  let filter: SyscallFilter;
  try {
    filter = resolveSyscallFilter(lines, o.groups);
  } catch (err) {
    out.push({ name: 'SystemCallFilter', ok: false, detail: (err as Error).message });
    return out;
  }
  const blocked = PROBE_SYSCALLS.filter((s) => !allowed(filter, s));
  out.push(
    blocked.length
      ? {
          name: 'SystemCallFilter',
          ok: false,
          detail: `${blocked.map((s) => `${s} is filtered out by ${filter.removedBy.get(s) ?? 'the allow list (never added)'}`).join('; ')}: bpftrace cannot attach ("Failed to open perf buffer" or EPERM)`,
          fix: `allow ${blocked.join(' ')} after every line that removes them (a later "~" line must not name a group holding them, such as @debug)`,
        }
      : {
          name: 'SystemCallFilter',
          ok: true,
          detail: `${PROBE_SYSCALLS.join(' and ')} allowed (${filter.mode} list)`,
        },
  );

  const caps = boundingSet(lines);
  const missing = PROBE_CAPS.filter((c) => !hasCap(caps, c));
  const sysAdmin = hasCap(caps, 'CAP_SYS_ADMIN');
  out.push(
    missing.length && !sysAdmin
      ? {
          name: 'CapabilityBoundingSet',
          ok: false,
          detail: `lacks ${missing.join(' ')}`,
          fix: `CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_SYS_RESOURCE`,
        }
      : { name: 'CapabilityBoundingSet', ok: true, detail: caps ? [...caps].join(' ') : 'not limited' },
  );

  const user = setting(lines, 'User');
  const dynamic = /^(yes|true|1|on)$/i.test(setting(lines, 'DynamicUser') ?? '');
  out.push(
    dynamic || (user && user !== 'root' && user !== '0')
      ? {
          name: 'User',
          ok: false,
          detail: `runs as ${dynamic ? 'a dynamic user' : user}; bpftrace 0.17 runs only as uid 0`,
          fix: 'no User=/DynamicUser= (root with only the capabilities above), or accept that the probes are unavailable',
        }
      : { name: 'User', ok: true, detail: 'root, limited to the bounding set' },
  );

  const [major = 0, minor = 0] = o.kernelRelease.split(/[.-]/).map(Number);
  const memlock = setting(lines, 'LimitMEMLOCK');
  if (major < 5 || (major === 5 && minor < 11)) {
    out.push(
      memlock === 'infinity'
        ? { name: 'LimitMEMLOCK', ok: true, detail: 'infinity (this kernel charges BPF maps to it)' }
        : {
            name: 'LimitMEMLOCK',
            ok: false,
            detail: `${memlock ?? 'the default'}; kernel ${o.kernelRelease} charges BPF maps to the locked-memory limit`,
            fix: 'LimitMEMLOCK=infinity',
          },
    );
  }

  // Status frames are rewritten every few seconds: without RuntimeDirectory= they fall back to
  // /dev/shm, which PrivateDevices= makes the service's own, out of a panel driver's reach.
  const runtime = setting(lines, 'RuntimeDirectory');
  const privateDevices = /^(yes|true|1|on)$/i.test(setting(lines, 'PrivateDevices') ?? '');
  out.push(
    runtime
      ? { name: 'RuntimeDirectory', ok: true, detail: `/run/${runtime.split(/\s+/)[0]} (status frames)` }
      : {
          name: 'RuntimeDirectory',
          ok: false,
          detail: `not set: status frames go to /dev/shm/edgekeeper-<hash>${privateDevices ? ', which PrivateDevices= makes private to the service' : ''}`,
          fix: "RuntimeDirectory=edgekeeper and RuntimeDirectoryMode=0700 (the package's unit has them)",
        },
  );

  const families = setting(lines, 'RestrictAddressFamilies');
  if (families && !families.startsWith('~') && !families.split(/\s+/).includes('AF_UNIX')) {
    out.push({
      name: 'RestrictAddressFamilies',
      ok: false,
      detail: `${families} leaves out AF_UNIX (sd_notify, the etcd unix socket)`,
      fix: 'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6',
    });
  }
  return out;
}
