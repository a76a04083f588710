/**
 * Faults and degradation with real processes. Proves: when the daemon (a child process running
 * the probes part) is killed with SIGKILL, no bpftrace is left running (setpriv --pdeathsig);
 * `edgekeeper doctor` run as an unprivileged user says the probes need root and how to get it;
 * in a private mount namespace without tracefs and without CAP_SYS_ADMIN it says tracefs is
 * missing and gives the mount command; with CAP_SYS_ADMIN it mounts tracefs itself.
 * Needs: root, bpftrace, setpriv and unshare (util-linux).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { startDaemonChild, waitFor } from '../probes/helpers/harness.js';

const ROOT = join(import.meta.dirname, '..', '..');
const DOCTOR = ['--import', 'tsx', join(ROOT, 'test/probes/helpers/doctor-cli.ts')];

function requirePeers(): void {
  assert.equal(process.getuid?.(), 0, 'probes-faults needs root');
  for (const bin of ['bpftrace', 'setpriv', 'unshare']) {
    assert.equal(
      spawnSync('sh', ['-c', `command -v ${bin}`]).status,
      0,
      `${bin} is missing (apt-get install bpftrace util-linux)`,
    );
  }
}

/** Live (not zombie) processes whose command line is bpftrace with `arg` among its arguments. */
function bpftracesWithArg(arg: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const argv = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      const state = /^State:\s+(\S)/m.exec(readFileSync(`/proc/${d}/status`, 'utf8'))?.[1];
      if (argv.some((a) => a.endsWith('bpftrace')) && argv.includes(arg) && state !== 'Z')
        out.push(Number(d));
    } catch {
      // exited while we looked
    }
  }
  return out;
}

function doctor(wrap: string[], extra: string[] = []): { code: number | null; out: string } {
  const r = spawnSync(wrap[0]!, [...wrap.slice(1), process.execPath, ...DOCTOR, ...extra], {
    encoding: 'utf8',
    cwd: ROOT,
    timeout: 60_000,
  });
  return { code: r.status, out: r.stdout + r.stderr };
}

describe('daemon killed with SIGKILL', { timeout: 60_000 }, () => {
  let child: ChildProcess | undefined;
  after(() => {
    child?.kill('SIGKILL');
  });
  it('leaves no bpftrace running', async () => {
    requirePeers();
    const d = await startDaemonChild({
      interval: 1000,
      sharing: 'per-probe',
      enabled: ['fsync', 'tcpretrans'],
    });
    child = d.child;
    const pid = String(d.child.pid);
    const running = await waitFor(
      'two bpftrace processes of the child',
      async () => {
        const s = (await (await fetch(`http://127.0.0.1:${d.port}/v1/probes`)).json()) as {
          probes: Record<string, string>;
          processes: { pid?: number }[];
        };
        return s.probes.fsync === 'running' && s.probes.tcpretrans === 'running'
          ? s.processes.map((p) => p.pid!)
          : undefined;
      },
      20_000,
    );
    assert.equal(running.length, 2);
    // The /proc scan sees them (bpftrace gets the daemon's pid as $1), so it can see leftovers.
    assert.deepEqual(bpftracesWithArg(pid).sort(), [...running].sort());
    d.child.kill('SIGKILL');
    await new Promise((r) => d.child.once('exit', r));
    await waitFor(
      'every bpftrace of the killed daemon to be gone',
      () => bpftracesWithArg(pid).length === 0,
      5000,
    );
    const gone = (p: number) => {
      try {
        return /^State:\s+[ZX]/m.test(readFileSync(`/proc/${p}/status`, 'utf8'));
      } catch {
        return true;
      }
    };
    await waitFor('the bpftrace pids to be gone (or zombies)', () => running.every(gone), 5000);
  });
});

describe('edgekeeper doctor', { timeout: 90_000 }, () => {
  it('as an unprivileged user: says root is needed and how', () => {
    requirePeers();
    const r = doctor(['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']);
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /FAIL root: running as uid 65534; bpftrace 0\.17 runs only as root/);
    assert.match(r.out, /fix: run edgekeeper as root with CapabilityBoundingSet=CAP_BPF CAP_PERFMON/);
    assert.match(r.out, /fsync\s+unavailable: not root: bpftrace needs uid 0 with CAP_BPF and CAP_PERFMON/);
  });

  it('without tracefs and without CAP_SYS_ADMIN: says tracefs is missing and gives the mount command', () => {
    requirePeers();
    const r = doctor([
      'unshare',
      '-m',
      'sh',
      '-c',
      'umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug 2>/dev/null; exec setpriv --bounding-set -all,+bpf,+perfmon "$@"',
      'x',
    ]);
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /ok {3}root: uid 0 with CAP_BPF\+CAP_PERFMON/);
    assert.match(r.out, /FAIL tracefs: not mounted at \/sys\/kernel\/tracing and not allowed to mount it/);
    assert.match(r.out, /fix: mount -t tracefs nodev \/sys\/kernel\/tracing/);
    assert.match(r.out, /runqlat\s+unavailable: tracefs not mounted at \/sys\/kernel\/tracing/);
  });

  it('without tracefs but with CAP_SYS_ADMIN: mounts it and every probe can run', () => {
    requirePeers();
    const r = doctor(['unshare', '-m', 'sh', '-c', 'umount /sys/kernel/tracing 2>/dev/null; exec "$@"', 'x']);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /ok {3}tracefs: mounted it at \/sys\/kernel\/tracing/);
    for (const p of ['fsync', 'runqlat', 'biolat', 'tcpretrans', 'oomkill'])
      assert.match(r.out, new RegExp(`${p}\\s+can run`));
  });
});
