/**
 * Runs a command the way systemd would run edgekeeper.service, as far as a machine without
 * systemd as PID 1 allows: every setting is read from the unit file, and one this harness does
 * not know is an error, so a new setting gets looked at here before it ships.
 *
 * Applied: the system call filter (SystemCallFilter= resolved by src/probes/unit.ts with this
 * machine's `systemd-analyze syscall-filter`, SystemCallErrorNumber=, SystemCallArchitectures=native,
 * RestrictAddressFamilies=, RestrictNamespaces=, and the calls ProtectClock=, ProtectKernelModules=,
 * ProtectKernelLogs=, ProtectHostname= and PrivateDevices= refuse) through seccomp-exec.c;
 * CapabilityBoundingSet= and NoNewPrivileges= through setpriv; ProtectSystem=strict,
 * ProtectHome=, PrivateTmp=, PrivateDevices=, ProtectKernelTunables=, ProtectControlGroups=,
 * ProtectKernelLogs=, ProtectProc=, StateDirectory= and RuntimeDirectory= (modes included, with
 * $RUNTIME_DIRECTORY) and ConfigurationDirectory= as mounts in a private mount namespace;
 * IPAddressDeny=any with IPAddressAllow=localhost as a network namespace holding only loopback;
 * ProtectHostname= as a UTS namespace; UMask=,
 * WorkingDirectory=, Environment=, LimitNOFILE= and LimitMEMLOCK= (capped at this machine's hard
 * limits, which cannot be raised without CAP_SYS_RESOURCE), NOTIFY_SOCKET and WATCHDOG_USEC.
 * Not applied (no effect a test here could see, or cgroup-based): RestrictRealtime=,
 * RestrictSUIDSGID=, LockPersonality=, RemoveIPC=, KeyringMode=, DevicePolicy=, PrivateMounts= (the
 * mount namespace is private anyway), and the service manager's own settings (Restart=, Kill*,
 * Timeout*, StartLimit*).
 *
 * /usr/bin/edgekeeper is this checkout's dist/main.js (an overlay on /usr/bin holds a two-line
 * wrapper); /etc/edgekeeper/edgekeeper.json comes from an overlay on /etc; the state directory
 * is a test directory bound to /var/lib/edgekeeper, the runtime directory one bound to
 * /run/edgekeeper. The capability bounding set is the unit's within this process' own (a
 * container may lack some, such as CAP_SYS_RESOURCE).
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  assignments,
  boundingSet,
  expandGroup,
  parseSyscallGroups,
  resolveSyscallFilter,
  setting,
  type UnitLine,
} from '../../../src/probes/unit.js';

const repo = join(import.meta.dirname, '..', '..', '..');

/** [Service] settings this harness applies or knowingly leaves out (see the top). */
const KNOWN = new Set([
  'Type',
  'NotifyAccess',
  'WatchdogSec',
  'ExecStart',
  'Restart',
  'RestartSec',
  'RestartPreventExitStatus',
  'KillMode',
  'TimeoutStopSec',
  'TimeoutStartSec',
  'LimitNOFILE',
  'LimitMEMLOCK',
  'Environment',
  'StateDirectory',
  'StateDirectoryMode',
  'RuntimeDirectory',
  'RuntimeDirectoryMode',
  'ConfigurationDirectory',
  'WorkingDirectory',
  'UMask',
  'CapabilityBoundingSet',
  'NoNewPrivileges',
  'RestrictAddressFamilies',
  'IPAddressDeny',
  'IPAddressAllow',
  'ProtectSystem',
  'PrivateMounts',
  'ProtectHome',
  'PrivateTmp',
  'PrivateDevices',
  'DevicePolicy',
  'ProtectKernelTunables',
  'ProtectKernelModules',
  'ProtectKernelLogs',
  'ProtectControlGroups',
  'ProtectClock',
  'ProtectHostname',
  'ProtectProc',
  'RestrictNamespaces',
  'RestrictRealtime',
  'RestrictSUIDSGID',
  'LockPersonality',
  'RemoveIPC',
  'KeyringMode',
  'SystemCallArchitectures',
  'SystemCallFilter',
  'SystemCallErrorNumber',
]);

/** Address families by name (linux/socket.h). */
const FAMILIES: Record<string, number> = {
  AF_UNIX: 1,
  AF_INET: 2,
  AF_INET6: 10,
  AF_NETLINK: 16,
  AF_PACKET: 17,
};
/** errno names systemd accepts in SystemCallErrorNumber= that a unit of ours might use. */
const ERRNO: Record<string, number> = { EPERM: 1, EACCES: 13, ENOSYS: 38 };

const yes = (v: string | undefined) => v !== undefined && /^(yes|true|1|on)$/i.test(v);

export interface SandboxPlan {
  /** The seccomp-exec spec. */
  spec: string;
  /** setpriv --bounding-set value, e.g. "-all,+bpf,+perfmon". */
  bounding: string;
  /** Capabilities the unit keeps that this process does not have, so the sandbox cannot either. */
  capsMissingHere: string[];
  env: Record<string, string>;
  exec: string[];
  stateDirectory: string;
  stateMode: string;
  /** /run/<RuntimeDirectory=>, if the unit has one. */
  runtimeDirectory: string | undefined;
  runtimeMode: string;
  configurationDirectory: string | undefined;
  workingDirectory: string;
  umask: string;
  limits: { nofile?: string; memlock?: string };
  watchdogUsec?: number;
}

function capNumber(name: string): number {
  const n = [
    'CHOWN',
    'DAC_OVERRIDE',
    'DAC_READ_SEARCH',
    'FOWNER',
    'FSETID',
    'KILL',
    'SETGID',
    'SETUID',
    'SETPCAP',
    'LINUX_IMMUTABLE',
    'NET_BIND_SERVICE',
    'NET_BROADCAST',
    'NET_ADMIN',
    'NET_RAW',
    'IPC_LOCK',
    'IPC_OWNER',
    'SYS_MODULE',
    'SYS_RAWIO',
    'SYS_CHROOT',
    'SYS_PTRACE',
    'SYS_PACCT',
    'SYS_ADMIN',
    'SYS_BOOT',
    'SYS_NICE',
    'SYS_RESOURCE',
    'SYS_TIME',
    'SYS_TTY_CONFIG',
    'MKNOD',
    'LEASE',
    'AUDIT_WRITE',
    'AUDIT_CONTROL',
    'SETFCAP',
    'MAC_OVERRIDE',
    'MAC_ADMIN',
    'SYSLOG',
    'WAKE_ALARM',
    'BLOCK_SUSPEND',
    'AUDIT_READ',
    'PERFMON',
    'BPF',
    'CHECKPOINT_RESTORE',
  ].indexOf(name.replace(/^CAP_/, ''));
  if (n < 0) throw new Error(`unknown capability ${name}`);
  return n;
}

function duration(v: string): number {
  const m = /^(\d+)(ms|s|min)?$/.exec(v);
  if (!m) throw new Error(`duration ${v} is not understood here`);
  return Number(m[1]) * (m[2] === 'ms' ? 1e3 : m[2] === 'min' ? 60e6 : 1e6);
}

/** Reads the unit into what the sandbox applies; throws on a setting it does not know. */
export function planSandbox(lines: readonly UnitLine[]): SandboxPlan {
  for (const l of lines) {
    if (l.section === 'Service' && !KNOWN.has(l.key)) {
      throw new Error(
        `${l.at}: the unit sandbox test does not know ${l.key}=; teach test/daemon/sandbox/sandbox.ts`,
      );
    }
  }
  const fail = (what: string) => {
    throw new Error(`the unit sandbox test supports ${what}`);
  };
  if (setting(lines, 'User') || yes(setting(lines, 'DynamicUser'))) fail('root services only');
  if (setting(lines, 'ProtectSystem') !== 'strict') fail('ProtectSystem=strict only');
  if (setting(lines, 'SystemCallArchitectures') !== 'native') fail('SystemCallArchitectures=native only');
  const deny = assignments(lines, 'IPAddressDeny').map((a) => a.value);
  const allow = assignments(lines, 'IPAddressAllow').map((a) => a.value);
  if (deny.join() !== 'any' || allow.join() !== 'localhost')
    fail('IPAddressDeny=any with IPAddressAllow=localhost only');

  const groups = parseSyscallGroups(
    spawnSync('systemd-analyze', ['syscall-filter', '--no-pager'], { encoding: 'utf8' }).stdout,
  );
  const filter = resolveSyscallFilter(lines, groups);
  const errnoName = setting(lines, 'SystemCallErrorNumber') ?? 'EPERM';
  const errno = ERRNO[errnoName] ?? fail(`SystemCallErrorNumber= of ${Object.keys(ERRNO).join(', ')}`);
  const spec: string[] = [];
  if (filter.mode !== 'none') {
    spec.push(`mode ${filter.mode}`, `errno ${errno}`, ...[...filter.set].sort().map((s) => `call ${s}`));
  }
  const denies = new Set<string>();
  if (yes(setting(lines, 'ProtectClock'))) for (const s of expandGroup('@clock', groups)) denies.add(s);
  if (yes(setting(lines, 'ProtectKernelModules')))
    for (const s of expandGroup('@module', groups)) denies.add(s);
  if (yes(setting(lines, 'PrivateDevices'))) for (const s of expandGroup('@raw-io', groups)) denies.add(s);
  if (yes(setting(lines, 'ProtectKernelLogs'))) denies.add('syslog');
  if (yes(setting(lines, 'ProtectHostname'))) for (const s of ['sethostname', 'setdomainname']) denies.add(s);
  spec.push(...[...denies].sort().map((s) => `deny ${s}`));
  const families = setting(lines, 'RestrictAddressFamilies');
  if (families) {
    if (families.startsWith('~')) fail('RestrictAddressFamilies= allow lists only');
    for (const f of families.split(/\s+/))
      spec.push(`family ${FAMILIES[f] ?? fail(`families ${Object.keys(FAMILIES)}`)}`);
  }
  if (yes(setting(lines, 'RestrictNamespaces'))) spec.push('namespaces');

  const have = BigInt(`0x${/^CapBnd:\s*([0-9a-f]+)/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]}`);
  const caps = boundingSet(lines);
  if (!caps || caps.has('*')) fail('CapabilityBoundingSet= as an allow list only');
  const keep = [...caps!].filter((c) => ((have >> BigInt(capNumber(c))) & 1n) === 1n);
  const env: Record<string, string> = {};
  for (const a of assignments(lines, 'Environment')) {
    const eq = a.value.indexOf('=');
    env[a.value.slice(0, eq)] = a.value.slice(eq + 1);
  }
  const exec = setting(lines, 'ExecStart')!.split(/\s+/);
  const runtime = setting(lines, 'RuntimeDirectory');
  if (runtime?.includes(' ')) fail('one RuntimeDirectory= only');
  return {
    spec: `${spec.join('\n')}\n`,
    bounding: ['-all', ...keep.map((c) => `+${c.replace(/^CAP_/, '').toLowerCase()}`)].join(','),
    capsMissingHere: [...caps!].filter((c) => !keep.includes(c)),
    env,
    exec,
    stateDirectory: `/var/lib/${setting(lines, 'StateDirectory') ?? fail('StateDirectory=')}`,
    stateMode: setting(lines, 'StateDirectoryMode') ?? '0755',
    runtimeDirectory: runtime ? `/run/${runtime}` : undefined,
    runtimeMode: setting(lines, 'RuntimeDirectoryMode') ?? '0755',
    configurationDirectory: setting(lines, 'ConfigurationDirectory'),
    workingDirectory: setting(lines, 'WorkingDirectory') ?? '/',
    umask: setting(lines, 'UMask') ?? '0022',
    limits: { nofile: setting(lines, 'LimitNOFILE'), memlock: setting(lines, 'LimitMEMLOCK') },
    watchdogUsec: setting(lines, 'WatchdogSec') ? duration(setting(lines, 'WatchdogSec')!) : undefined,
  };
}

/** Compiles seccomp-exec.c into `dir` (gcc and libseccomp-dev). */
export function buildSeccompExec(dir: string): string {
  const out = join(dir, 'seccomp-exec');
  const r = spawnSync('gcc', ['-O2', '-o', out, join(import.meta.dirname, 'seccomp-exec.c'), '-lseccomp'], {
    encoding: 'utf8',
  });
  if (r.status !== 0) {
    throw new Error(
      `cannot build seccomp-exec (apt-get install gcc libseccomp-dev): ${r.error?.message ?? r.stderr}`,
    );
  }
  return out;
}

export interface Sandboxed {
  /** The sandboxed process (its pid is the daemon's once the script has exec'd). */
  pid: number;
  output(): string;
  exited: Promise<number | null>;
  /** undefined while it runs. */
  exitCode(): number | null | undefined;
  /** Runs `cmd` in the sandbox's network namespace (loopback only), from outside its other rules. */
  inNet(cmd: string[], timeoutMs?: number): { status: number | null; stdout: string; stderr: string };
  kill(signal?: NodeJS.Signals): void;
}

/**
 * Starts `command` (default: the unit's ExecStart) in the sandbox. `dir` holds the state
 * directory (`dir/state`), the runtime directory (`dir/runtime`), the config
 * (`dir/edgekeeper.json`) and the notify socket's directory (`dir/run`, seen inside as
 * /run/ek-harness); `seccompExec` is the compiled helper.
 */
export function startSandboxed(
  plan: SandboxPlan,
  dir: string,
  seccompExec: string,
  command: string[] = plan.exec,
): Sandboxed {
  const harness = join(dir, 'run');
  mkdirSync(harness, { recursive: true });
  mkdirSync(join(dir, 'state'), { recursive: true, mode: Number.parseInt(plan.stateMode, 8) });
  if (plan.runtimeDirectory) {
    mkdirSync(join(dir, 'runtime'), { recursive: true });
    chmodSync(join(dir, 'runtime'), Number.parseInt(plan.runtimeMode, 8));
  }
  mkdirSync(join(dir, 'ovl'), { recursive: true });
  copyFileSync(seccompExec, join(harness, 'seccomp-exec'));
  chmodSync(join(harness, 'seccomp-exec'), 0o755);
  writeFileSync(join(harness, 'filter.spec'), plan.spec);
  writeFileSync(
    join(harness, 'edgekeeper'),
    `#!/bin/sh\nexec ${process.execPath} /var/lib/edgekeeper-src/dist/main.js "$@"\n`,
    { mode: 0o755 },
  );
  const hard = (flag: string) =>
    spawnSync('sh', ['-c', `ulimit -H${flag}`], { encoding: 'utf8' }).stdout.trim();
  const limit = (want: string | undefined, flag: string) => {
    if (!want) return '';
    const max = hard(flag);
    const w = want === 'infinity' ? 'unlimited' : want;
    const v = max === 'unlimited' || (w !== 'unlimited' && Number(w) <= Number(max)) ? w : max;
    return `ulimit -${flag} ${v}`;
  };
  const env = {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    NOTIFY_SOCKET: '/run/ek-harness/notify.sock',
    ...(plan.watchdogUsec ? { WATCHDOG_USEC: String(plan.watchdogUsec) } : {}),
    ...(plan.runtimeDirectory ? { RUNTIME_DIRECTORY: plan.runtimeDirectory } : {}),
    ...plan.env,
  };
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const confDir = plan.configurationDirectory ? `/etc/${plan.configurationDirectory}` : undefined;
  const script = `set -euo pipefail
D=${q(dir)}
mount --make-rprivate /
ip link set lo up
# Overlays for what the package would have installed: /usr/bin/edgekeeper, the config.
mount -t tmpfs tmpfs "$D/ovl"
mkdir -p "$D/ovl/etc" "$D/ovl/etc.w" "$D/ovl/bin" "$D/ovl/bin.w"
${confDir ? `mkdir -p "$D/ovl${confDir}"; if [ -f "$D/edgekeeper.json" ]; then cp "$D/edgekeeper.json" "$D/ovl${confDir}/"; fi` : ''}
cp "$D/run/edgekeeper" "$D/ovl/bin/edgekeeper"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$D/ovl/etc,workdir=$D/ovl/etc.w" /etc
mount -t overlay overlay -o "lowerdir=/usr/bin,upperdir=$D/ovl/bin,workdir=$D/ovl/bin.w" /usr/bin
# StateDirectory=, the checkout behind the wrapper, the notify socket's directory.
mount -t tmpfs -o mode=0755 tmpfs /var/lib
mkdir -p ${q(plan.stateDirectory)} /var/lib/edgekeeper-src
mount --bind "$D/state" ${q(plan.stateDirectory)}
mount --bind ${q(repo)} /var/lib/edgekeeper-src
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/ek-harness /run/ek-dev
mount --bind "$D/run" /run/ek-harness
${plan.runtimeDirectory ? `# RuntimeDirectory=\nmkdir -p ${q(plan.runtimeDirectory)}\nmount --bind "$D/runtime" ${q(plan.runtimeDirectory)}` : ''}
# PrivateDevices=: a /dev with the pseudo devices only.
for n in null zero full random urandom tty; do touch /run/ek-dev/$n; mount --bind /dev/$n /run/ek-dev/$n; done
mount -t tmpfs -o mode=0755 tmpfs /dev
for n in null zero full random urandom tty; do touch /dev/$n; mount --move /run/ek-dev/$n /dev/$n; done
mkdir /dev/shm /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
ln -s pts/ptmx /dev/ptmx; ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin; ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
# PrivateTmp=, ProtectHome=
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
for h in /home /root; do [ -d $h ] && mount -t tmpfs -o mode=0000,ro tmpfs $h; done
# ProtectProc=invisible, ProtectKernelTunables=, ProtectKernelLogs=, ProtectControlGroups=
mount -t proc -o hidepid=invisible proc /proc
mount --bind /proc/sys /proc/sys
for p in /proc/sysrq-trigger /proc/kcore; do [ -e $p ] && mount --bind $p $p; done
[ -e /proc/kmsg ] && mount --bind /dev/null /proc/kmsg
# ProtectSystem=strict: everything read-only but the API file systems, the private /tmp, the
# state and runtime directories; /proc/sys and /sys (with tracefs and the cgroup tree) read-only too.
awk '{print $5}' /proc/self/mountinfo | sort -u | while read -r mp; do
  case "$mp" in
    /dev|/dev/*|/proc|/tmp|/var/tmp|${plan.stateDirectory}${plan.runtimeDirectory ? `|${plan.runtimeDirectory}` : ''}) continue ;;
  esac
  mount -o remount,bind,ro "$mp" 2>/dev/null || true
done
${limit(plan.limits.nofile, 'n')}
${limit(plan.limits.memlock, 'l')}
umask ${plan.umask}
cd ${q(plan.workingDirectory)}
exec env -i ${Object.entries(env)
    .map(([k, v]) => q(`${k}=${v}`))
    .join(' ')} \\
  setpriv --bounding-set=${plan.bounding} --inh-caps=-all --ambient-caps=-all --no-new-privs \\
  /run/ek-harness/seccomp-exec /run/ek-harness/filter.spec -- ${command.map(q).join(' ')}
`;
  const child = spawn(
    'unshare',
    ['--mount', '--net', '--uts', '--propagation', 'private', 'bash', '-c', script],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  let code: number | null | undefined;
  const exited = new Promise<number | null>((resolve) =>
    child.on('exit', (c) => {
      code = c;
      resolve(c);
    }),
  );
  const pid = child.pid!;
  return {
    // unshare --mount/--net without --fork execs bash in place, and bash execs the command.
    pid,
    output: () => out,
    exited,
    exitCode: () => code,
    inNet(cmd, timeoutMs = 60_000) {
      const r = spawnSync('nsenter', [`--net=/proc/${pid}/ns/net`, '--', ...cmd], {
        encoding: 'utf8',
        timeout: timeoutMs,
      });
      return {
        status: r.status,
        stdout: r.stdout ?? '',
        stderr: `${r.stderr ?? ''}${r.error?.message ?? ''}`,
      };
    },
    kill(signal = 'SIGTERM') {
      try {
        process.kill(pid, signal);
      } catch {
        // already gone
      }
    },
  };
}
