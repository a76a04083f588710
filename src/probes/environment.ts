/**
 * What the machine allows, checked before anything starts and by `edgekeeper doctor`: root
 * (bpftrace 0.17 refuses any other uid) with CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN), the
 * bpftrace binary and its version, tracefs mounted (mounted here when CAP_SYS_ADMIN allows), and
 * every tracepoint a probe needs as listed by `bpftrace -l`. BTF is reported but never needed.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { PROBE_NAMES, PROBES, type ProbeName } from './catalog.js';

/** Capability bit numbers (linux/capability.h). */
export const CAP_SYS_ADMIN = 21n;
export const CAP_PERFMON = 38n;
export const CAP_BPF = 39n;

/** bpftrace below 0.12 cannot read `__data_loc` strings (oom:mark_victim's comm) as we do. */
export const MIN_BPFTRACE = [0, 12, 0] as const;

export interface CheckItem {
  name: string;
  ok: boolean;
  detail: string;
  /** The exact command or setting that fixes it, when not ok. */
  fix?: string;
}

export interface EnvironmentReport {
  checks: CheckItem[];
  /** Absolute path of the bpftrace binary, when found. */
  bpftrace?: string;
  version?: string;
  /** Path of setpriv (util-linux), used for --pdeathsig; undefined when missing. */
  setpriv?: string;
  /** Per probe: undefined when it can run, otherwise the reason it cannot. */
  unavailable: Record<ProbeName, string | undefined>;
}

/** The parts of the host the checks read; injectable so tests can play "not root" or "no tracefs". */
export interface HostAccess {
  /** Text of /proc/self/status. */
  procStatus(): string;
  /** Run a program to completion; never rejects. */
  run(
    file: string,
    args: string[],
    timeoutMs: number,
  ): Promise<{ code: number | null; stdout: string; stderr: string }>;
  /** Whether tracefs is mounted at `dir` (its `events/` directory is populated). */
  tracefsMounted(dir: string): boolean;
  /** PATH to search for binaries. */
  path(): string;
  btfPresent(): boolean;
}

export const realHost: HostAccess = {
  procStatus: () => readFileSync('/proc/self/status', 'utf8'),
  run(file, args, timeoutMs) {
    return new Promise((resolve) => {
      execFile(file, args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
        const code = err
          ? typeof (err as { code?: unknown }).code === 'number'
            ? (err as { code: number }).code
            : null
          : 0;
        resolve({
          code,
          stdout: String(stdout),
          stderr: String(stderr || (err && !stderr ? err.message : '')),
        });
      });
    });
  },
  tracefsMounted(dir) {
    try {
      return readdirSync(join(dir, 'events')).length > 0;
    } catch {
      return false;
    }
  },
  path: () => process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
  btfPresent: () => existsSync('/sys/kernel/btf/vmlinux'),
};

export function parseCapEff(status: string): bigint | undefined {
  const m = /^CapEff:\s*([0-9a-fA-F]+)\s*$/m.exec(status);
  return m ? BigInt(`0x${m[1]}`) : undefined;
}

export function parseEuid(status: string): number | undefined {
  // "Uid:	real	effective	saved	fs"
  const m = /^Uid:\s*(\d+)\s+(\d+)/m.exec(status);
  return m ? Number(m[2]) : undefined;
}

export function hasCap(caps: bigint, bit: bigint): boolean {
  return ((caps >> bit) & 1n) === 1n;
}

/** Resolves a bare name through PATH; an absolute or relative path is taken as is. */
export function findBinary(name: string, path: string): string | undefined {
  if (name.includes('/')) return existsSync(name) ? name : undefined;
  for (const dir of path.split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, name);
    if (existsSync(p)) return p;
  }
  return undefined;
}

export function parseVersion(text: string): [number, number, number] | undefined {
  const m = /v?(\d+)\.(\d+)\.(\d+)/.exec(text);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined;
}

function versionAtLeast(v: readonly number[], min: readonly number[]): boolean {
  for (let i = 0; i < 3; i++) {
    if ((v[i] ?? 0) !== (min[i] ?? 0)) return (v[i] ?? 0) > (min[i] ?? 0);
  }
  return true;
}

export interface CheckOptions {
  bpftracePath: string;
  tracefsDir: string;
  /** Try `mount -t tracefs` when it is missing and CAP_SYS_ADMIN is held. */
  mountTracefs: boolean;
  probes: readonly ProbeName[];
  host?: HostAccess;
}

/** Runs every check; never throws. The first failing prerequisite is every probe's reason. */
export async function checkEnvironment(opts: CheckOptions): Promise<EnvironmentReport> {
  const host = opts.host ?? realHost;
  const checks: CheckItem[] = [];
  const unavailable = Object.fromEntries(PROBE_NAMES.map((p) => [p, undefined])) as Record<
    ProbeName,
    string | undefined
  >;
  let blocker: string | undefined;
  const block = (reason: string) => {
    blocker ??= reason;
  };

  // 1. Privileges.
  const status = host.procStatus();
  const euid = parseEuid(status);
  const caps = parseCapEff(status) ?? 0n;
  const capsOk = hasCap(caps, CAP_SYS_ADMIN) || (hasCap(caps, CAP_BPF) && hasCap(caps, CAP_PERFMON));
  if (euid !== 0) {
    checks.push({
      name: 'root',
      ok: false,
      detail: `running as uid ${euid ?? '?'}; bpftrace 0.17 runs only as root (uid 0)`,
      fix: 'run edgekeeper as root with CapabilityBoundingSet=CAP_BPF CAP_PERFMON (see the systemd unit)',
    });
    block('not root: bpftrace needs uid 0 with CAP_BPF and CAP_PERFMON');
  } else if (!capsOk) {
    checks.push({
      name: 'capabilities',
      ok: false,
      detail: `uid 0 but CapEff ${caps.toString(16)} lacks CAP_BPF+CAP_PERFMON (and CAP_SYS_ADMIN)`,
      fix: 'add CAP_BPF CAP_PERFMON to CapabilityBoundingSet= in the systemd unit',
    });
    block('missing capabilities: CAP_BPF and CAP_PERFMON');
  } else {
    checks.push({
      name: 'root',
      ok: true,
      detail: `uid 0 with ${hasCap(caps, CAP_SYS_ADMIN) ? 'CAP_SYS_ADMIN' : 'CAP_BPF+CAP_PERFMON'}`,
    });
  }

  // 2. bpftrace binary and version.
  const bin = findBinary(opts.bpftracePath, host.path());
  let version: string | undefined;
  if (!bin) {
    checks.push({
      name: 'bpftrace',
      ok: false,
      detail: `${opts.bpftracePath} not found on PATH`,
      fix: 'apt-get install bpftrace (or set probes.bpftracePath)',
    });
    block(`bpftrace not found (${opts.bpftracePath})`);
  } else {
    const r = await host.run(bin, ['--version'], 5000);
    const v = parseVersion(r.stdout + r.stderr);
    version = v ? v.join('.') : undefined;
    if (!v) {
      checks.push({
        name: 'bpftrace',
        ok: false,
        detail: `${bin} --version said ${JSON.stringify((r.stdout + r.stderr).trim().slice(0, 80))}`,
        fix: 'apt-get install --reinstall bpftrace',
      });
      block(`bpftrace at ${bin} does not run`);
    } else if (!versionAtLeast(v, MIN_BPFTRACE)) {
      checks.push({
        name: 'bpftrace',
        ok: false,
        detail: `${bin} is v${version}, need >= v${MIN_BPFTRACE.join('.')}`,
        fix: 'apt-get install bpftrace (from a newer release)',
      });
      block(`bpftrace v${version} too old (need >= ${MIN_BPFTRACE.join('.')})`);
    } else {
      checks.push({ name: 'bpftrace', ok: true, detail: `${bin} v${version}` });
    }
  }

  // 3. setpriv, so no bpftrace outlives a SIGKILLed daemon.
  const setpriv = findBinary('setpriv', host.path());
  checks.push(
    setpriv
      ? { name: 'setpriv', ok: true, detail: `${setpriv} (bpftrace gets --pdeathsig KILL)` }
      : {
          name: 'setpriv',
          ok: false,
          detail: 'setpriv not found: a bpftrace could outlive a killed daemon',
          fix: 'apt-get install util-linux',
        },
  );

  // 4. tracefs.
  let mounted = host.tracefsMounted(opts.tracefsDir);
  if (!mounted && opts.mountTracefs && euid === 0 && hasCap(caps, CAP_SYS_ADMIN)) {
    const r = await host.run('mount', ['-t', 'tracefs', 'nodev', opts.tracefsDir], 5000);
    mounted = host.tracefsMounted(opts.tracefsDir);
    if (!mounted) {
      checks.push({
        name: 'tracefs',
        ok: false,
        detail: `not mounted at ${opts.tracefsDir}; mount failed: ${(r.stderr || `exit ${r.code}`).trim().slice(0, 120)}`,
        fix: `mount -t tracefs nodev ${opts.tracefsDir} (kernel needs CONFIG_FTRACE)`,
      });
    } else {
      checks.push({ name: 'tracefs', ok: true, detail: `mounted it at ${opts.tracefsDir}` });
    }
  } else if (!mounted) {
    checks.push({
      name: 'tracefs',
      ok: false,
      detail: `not mounted at ${opts.tracefsDir} and not allowed to mount it (needs CAP_SYS_ADMIN)`,
      fix: `mount -t tracefs nodev ${opts.tracefsDir}  (or enable sys-kernel-tracing.mount)`,
    });
  } else {
    checks.push({ name: 'tracefs', ok: true, detail: `mounted at ${opts.tracefsDir}` });
  }
  if (!mounted) block(`tracefs not mounted at ${opts.tracefsDir}`);

  // 5. BTF: information only; every program reads tracepoint fields from tracefs formats.
  checks.push({
    name: 'btf',
    ok: true,
    detail: host.btfPresent()
      ? '/sys/kernel/btf/vmlinux present (not needed)'
      : 'no /sys/kernel/btf/vmlinux (not needed)',
  });

  // 6. Tracepoints, in one `bpftrace -l` call (~0.2 s).
  let listed: Set<string> | undefined;
  if (bin && mounted && euid === 0) {
    const r = await host.run(bin, ['-l', 'tracepoint:*'], 15_000);
    if (r.code === 0)
      listed = new Set(
        r.stdout
          .split('\n')
          .map((s) => s.trim())
          .filter(Boolean),
      );
    else {
      checks.push({
        name: 'tracepoints',
        ok: false,
        detail: `bpftrace -l failed: ${r.stderr.trim().slice(0, 120)}`,
        fix: 'run edgekeeper doctor as root',
      });
      block('bpftrace -l failed');
    }
  }
  for (const p of PROBE_NAMES) {
    if (!opts.probes.includes(p)) {
      unavailable[p] = 'disabled in config (probes.enabled)';
      continue;
    }
    if (blocker) {
      unavailable[p] = blocker;
      continue;
    }
    const missing = PROBES[p].tracepoints.filter((t) => !listed?.has(t));
    if (missing.length) {
      unavailable[p] = `tracepoint missing: ${missing.join(', ')}`;
      checks.push({
        name: `${p} tracepoints`,
        ok: false,
        detail: `missing ${missing.join(', ')}`,
        fix:
          p === 'oomkill'
            ? 'needs a kernel with oom tracepoints (CONFIG_TRACEPOINTS)'
            : 'needs a kernel with CONFIG_FTRACE_SYSCALLS / tracepoints enabled',
      });
    } else {
      checks.push({ name: `${p} tracepoints`, ok: true, detail: PROBES[p].tracepoints.join(' ') });
    }
  }
  return { checks, bpftrace: bin, version, setpriv, unavailable };
}
