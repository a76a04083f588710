/**
 * The unit, proven: the daemon started under systemd/edgekeeper.service's own sandbox (read from
 * the unit file; see sandbox/sandbox.ts for what is applied and how) attaches bpftrace, commits,
 * answers etcd, MQTT and HTTP, and writes its status frames to RuntimeDirectory=. A control run
 * shows the harness bites: the unit's filter with `~@debug` added back (the shipped unit's old
 * mistake) stops bpftrace with "Failed to open perf buffer", while the shipped filter lets it
 * attach. `edgekeeper doctor --unit-file` names
 * the same mistakes. Needs root, bpftrace with tracefs, unshare/nsenter/setpriv (util-linux),
 * gcc and libseccomp-dev, systemd-analyze, etcdctl, mosquitto_pub.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { parseUnit } from '../../src/probes/unit.js';
import { buildSeccompExec, planSandbox, type Sandboxed, startSandboxed } from './sandbox/sandbox.js';

const repo = join(import.meta.dirname, '..', '..');
const unitFile = join(repo, 'systemd', 'edgekeeper.service');
const unitText = readFileSync(unitFile, 'utf8');
/** Bounds every wait so a broken daemon fails the test instead of hanging it; not a timing assertion. */
const WAIT_MS = 90_000;

interface DgramSocket {
  on(event: 'message', fn: (buf: Buffer) => void): void;
  bind(path: string): void;
  close(): void;
}
const unix = createRequire(import.meta.url)('unix-dgram') as { createSocket(t: 'unix_dgram'): DgramSocket };

/** The unit with the deny line the issue found: `@debug` holds perf_event_open. */
const withDebugDenied = unitText.replace(/^(SystemCallFilter=~.*)$/m, '$1 @debug');
const BPFTRACE_ONE_LINER = [
  'bpftrace',
  '-e',
  'tracepoint:syscalls:sys_enter_fsync { @c = count(); } interval:ms:300 { exit(); }',
];

const until = async <T>(what: string, fn: () => T | undefined, sandboxed?: Sandboxed): Promise<T> => {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    const gone = sandboxed?.exitCode() !== undefined;
    if (gone || Date.now() > deadline) {
      throw new Error(`${gone ? 'exited' : 'timed out'} waiting for ${what}:\n${sandboxed?.output() ?? ''}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
};

describe('edgekeeper.service, applied', () => {
  let dir: string;
  let seccompExec: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'ek-unit-sandbox-'));
    seccompExec = buildSeccompExec(dir);
    assert.ok(existsSync('/sys/kernel/tracing/events'), 'tracefs must be mounted (test/setup.sh mounts it)');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('the harness knows every setting of the unit and refuses one it does not', () => {
    planSandbox(parseUnit(unitText, unitFile));
    assert.throws(
      () => planSandbox(parseUnit(`${unitText}\n[Service]\nMemoryDenyWriteExecute=yes\n`, 'x')),
      /does not know MemoryDenyWriteExecute=/,
    );
  });

  test('control: bpftrace attaches under the shipped filter, and not with ~@debug added back', async () => {
    const good = startSandboxed(
      planSandbox(parseUnit(unitText, unitFile)),
      join(dir, 'good'),
      seccompExec,
      BPFTRACE_ONE_LINER,
    );
    assert.equal(await good.exited, 0, good.output());
    assert.match(good.output(), /Attaching 2 probes/);
    const bad = startSandboxed(
      planSandbox(parseUnit(withDebugDenied, 'debug')),
      join(dir, 'bad'),
      seccompExec,
      BPFTRACE_ONE_LINER,
    );
    assert.notEqual(await bad.exited, 0, bad.output());
    assert.match(bad.output(), /perf_event_open: Operation not permitted|Failed to open perf buffer/);
  });

  test('the daemon under the unit: READY=1, bpftrace attached, etcd, MQTT and HTTP answer, the store commits', async () => {
    const plan = planSandbox(parseUnit(unitText, unitFile));
    const d = join(dir, 'daemon');
    const run = join(d, 'run');
    spawnSync('mkdir', ['-p', run]);
    writeFileSync(join(d, 'edgekeeper.json'), readFileSync(join(repo, 'systemd', 'edgekeeper.json.example')));
    const sock = unix.createSocket('unix_dgram');
    const notes: string[] = [];
    sock.on('message', (b) => notes.push(b.toString()));
    sock.bind(join(run, 'notify.sock'));
    const daemon = startSandboxed(plan, d, seccompExec);
    try {
      await until(
        'READY=1',
        () => (notes.some((n) => n.split('\n').includes('READY=1')) ? true : undefined),
        daemon,
      );

      // The sandbox is in effect on the daemon itself.
      const status = readFileSync(`/proc/${daemon.pid}/status`, 'utf8');
      assert.match(status, /^Seccomp:\s+2$/m);
      assert.match(status, /^NoNewPrivs:\s+1$/m);
      const capEff = BigInt(`0x${/^CapEff:\s+([0-9a-f]+)/m.exec(status)![1]}`);
      assert.equal((capEff >> 39n) & 1n, 1n, 'CAP_BPF');
      assert.equal((capEff >> 38n) & 1n, 1n, 'CAP_PERFMON');
      assert.equal((capEff >> 1n) & 1n, 0n, 'no CAP_DAC_OVERRIDE');
      assert.equal((capEff >> 21n) & 1n, 0n, 'no CAP_SYS_ADMIN');

      const http = (path: string) =>
        daemon.inNet([
          process.execPath,
          '-e',
          `fetch('http://127.0.0.1:9480${path}').then(async (r) => { process.stdout.write(await r.text()); process.exit(r.ok ? 0 : 1); }, () => process.exit(2))`,
        ]);
      // bpftrace attached: every probe running (runqlat may be between its duty-cycle windows).
      const probes = await until(
        'every probe attached',
        () => {
          const r = http('/v1/probes');
          if (r.status !== 0) return undefined;
          const states = (JSON.parse(r.stdout) as { probes: Record<string, string> }).probes;
          return Object.values(states).every((s) => s === 'running' || s === 'idle (duty cycle)')
            ? states
            : undefined;
        },
        daemon,
      );
      assert.equal(probes.fsync, 'running', JSON.stringify(probes));

      const etcd = (...args: string[]) =>
        daemon.inNet(['env', 'ETCDCTL_API=3', 'etcdctl', '--endpoints=127.0.0.1:2379', ...args]);
      assert.equal(etcd('put', '/sandbox/k', 'v1').status, 0);
      assert.equal(etcd('get', '--print-value-only', '/sandbox/k').stdout.trim(), 'v1');

      // The admin token is in the state directory, which is /var/lib/edgekeeper only inside.
      const add = daemon.inNet([
        'env',
        `EDGEKEEPER_HTTP_TOKEN_FILE=${join(d, 'state', 'http.token')}`,
        process.execPath,
        join(repo, 'dist', 'main.js'),
        'device',
        'add',
        'sandbox-1',
      ]);
      assert.equal(add.status, 0, add.stderr);
      const secret = add.stdout.trim().split(/\s+/).at(-1)!;
      const pub = daemon.inNet([
        'mosquitto_pub',
        ...['-h', '127.0.0.1', '-p', '1883', '-q', '1', '-i', 'sandbox-1', '-u', 'sandbox-1', '-P', secret],
        ...['-t', 'edgekeeper/v1/devices/sandbox-1/report', '-m', '{"metrics":{"t":1}}'],
      ]);
      assert.equal(pub.status, 0, `${pub.stdout}${pub.stderr}`);
      assert.equal(http('/healthz').status, 0);
      // Status frames go to RuntimeDirectory= (a tmpfs under /run), found in $RUNTIME_DIRECTORY.
      assert.equal(plan.runtimeDirectory, '/run/edgekeeper', 'RuntimeDirectory=edgekeeper');
      assert.equal(plan.runtimeMode, '0700');
      await until(
        'a frame file in the runtime directory',
        () => (readdirSync(join(d, 'runtime')).some((f) => /^frame-.+\.png$/.test(f)) ? true : undefined),
        daemon,
      );

      const before = daemon.exited.then((code) => code);
      daemon.kill('SIGTERM');
      assert.equal(await before, 0, daemon.output());
      // Committed to the file in the state directory, under the unit's umask.
      const db = new Database(join(d, 'state', 'edgekeeper.db'), { readonly: true });
      try {
        const row = db
          .prepare("SELECT count(*) AS n FROM kv_log WHERE key = CAST('/sandbox/k' AS BLOB) AND deleted = 0")
          .get() as { n: number };
        assert.equal(row.n, 1);
        const reports = db.prepare('SELECT count(*) AS n FROM reports').get() as { n: number };
        assert.ok(reports.n >= 1, 'the MQTT report is stored');
      } finally {
        db.close();
      }
      const mode = spawnSync('stat', ['-c', '%a', join(d, 'state', 'edgekeeper.db')], {
        encoding: 'utf8',
      }).stdout.trim();
      assert.equal(mode, '600', 'UMask=0077');
      assert.deepEqual(
        plan.capsMissingHere.filter((c) => c !== 'CAP_SYS_RESOURCE'),
        [],
      );
    } finally {
      daemon.kill('SIGKILL');
      sock.close();
    }
  });

  test('doctor --unit-file: passes the shipped unit, names the filter line and the missing capability', () => {
    const doctor = (file: string) =>
      spawnSync(process.execPath, [join(repo, 'dist', 'main.js'), 'doctor', '--unit-file', file, '--json'], {
        encoding: 'utf8',
      });
    const unitChecks = (r: ReturnType<typeof doctor>) =>
      (JSON.parse(r.stdout) as { unit: { name: string; ok: boolean; detail: string }[] }).unit;
    const shipped = unitChecks(doctor(unitFile));
    for (const name of ['SystemCallFilter', 'CapabilityBoundingSet', 'User', 'RuntimeDirectory'])
      assert.ok(shipped.find((c) => c.name === name)?.ok, JSON.stringify(shipped));
    const debug = join(dir, 'debug.service');
    writeFileSync(debug, withDebugDenied);
    const r = doctor(debug);
    assert.equal(r.status, 1);
    const sc = unitChecks(r).find((c) => c.name === 'SystemCallFilter')!;
    assert.equal(sc.ok, false);
    assert.match(sc.detail, /perf_event_open is filtered out by .*debug\.service:\d+ \(@debug\)/);
    const nocap = join(dir, 'nocap.service');
    writeFileSync(
      nocap,
      unitText.replace(/^CapabilityBoundingSet=.*$/m, 'CapabilityBoundingSet=CAP_SYS_RESOURCE'),
    );
    const cap = unitChecks(doctor(nocap)).find((c) => c.name === 'CapabilityBoundingSet')!;
    assert.equal(cap.ok, false);
    assert.match(cap.detail, /lacks CAP_BPF CAP_PERFMON/);
    const user = join(dir, 'user.service');
    writeFileSync(user, unitText.replace('[Service]', '[Service]\nUser=nobody'));
    assert.equal(unitChecks(doctor(user)).find((c) => c.name === 'User')!.ok, false);
  });
});
