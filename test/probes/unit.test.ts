/**
 * The unit reader behind `edgekeeper doctor --unit`: unit file syntax, drop-ins and a second unit
 * file as systemd loads them, SystemCallFilter= resolved as systemd.exec(5) describes (first
 * assignment sets the kind, later ones add or remove, empty resets, @default joins allow lists),
 * the bounding set, and the check messages. Groups come from this machine's
 * `systemd-analyze syscall-filter` where the real ones matter, and from a small table otherwise.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import {
  allowed,
  boundingSet,
  checkUnit,
  loadUnit,
  parseSyscallGroups,
  parseUnit,
  resolveSyscallFilter,
} from '../../src/probes/unit.js';

const groups = parseSyscallGroups(`@default
    # always
    execve
    exit

@small
    # nested
    read
    @tiny

@tiny
    write
`);
const filter = (...values: string[]) =>
  resolveSyscallFilter(
    parseUnit(`[Service]\n${values.map((v) => `SystemCallFilter=${v}`).join('\n')}\n`, 'u'),
    groups,
  );

describe('unit file syntax', () => {
  test('sections, comments, continuation lines and repeated keys in order', () => {
    const lines = parseUnit('# c\n[Unit]\nA=1\n; c\n[Service]\nB=x \\\n  y\nB=z\nnot a setting\n', 'f');
    assert.deepEqual(
      lines.map((l) => [l.section, l.key, l.value, l.at]),
      [
        ['Unit', 'A', '1', 'f:3'],
        ['Service', 'B', 'x  y', 'f:6'],
        ['Service', 'B', 'z', 'f:8'],
      ],
    );
  });
});

describe('SystemCallFilter resolution', () => {
  test('an allow list takes @default, nested groups, and a later ~ removes with its place', () => {
    const f = filter('@small open', '~write');
    assert.equal(f.mode, 'allow');
    assert.deepEqual([...f.set].sort(), ['execve', 'exit', 'open', 'read']);
    assert.equal(allowed(f, 'write'), false);
    assert.equal(f.removedBy.get('write'), 'u:3 (write)');
    assert.equal(allowed(f, 'close'), false);
    assert.equal(f.removedBy.get('close'), undefined, 'never added: no line to blame');
  });

  test('a deny list first: later plain entries allow again; errno suffixes are ignored for membership', () => {
    const f = filter('~@small:EPERM', 'read');
    assert.equal(f.mode, 'deny');
    assert.equal(allowed(f, 'read'), true);
    assert.equal(allowed(f, 'write'), false);
    assert.equal(allowed(f, 'open'), true);
  });

  test('an empty assignment resets; no assignment means no filter', () => {
    assert.equal(filter('read', '').mode, 'none');
    assert.equal(allowed(filter(), 'anything'), true);
  });

  test('an unknown group is an error, not a silent pass', () => {
    assert.throws(() => filter('@nonsense'), /unknown system call group @nonsense/);
  });

  test("with this machine's groups: the shipped unit's lines keep bpf and perf_event_open, @debug does not", () => {
    const real = parseSyscallGroups(
      spawnSync('systemd-analyze', ['syscall-filter'], { encoding: 'utf8' }).stdout,
    );
    const two = (deny: string) =>
      resolveSyscallFilter(
        parseUnit(
          `[Service]\nSystemCallFilter=@system-service bpf perf_event_open\nSystemCallFilter=~${deny}\n`,
          'u',
        ),
        real,
      );
    const ok = two('@mount @swap @reboot @raw-io @module @obsolete @cpu-emulation');
    assert.ok(allowed(ok, 'bpf') && allowed(ok, 'perf_event_open'));
    const bad = two('@mount @debug');
    assert.equal(allowed(bad, 'perf_event_open'), false);
    assert.equal(bad.removedBy.get('perf_event_open'), 'u:3 (@debug)');
  });
});

describe('bounding set', () => {
  const caps = (...v: string[]) =>
    boundingSet(parseUnit(`[Service]\n${v.map((x) => `CapabilityBoundingSet=${x}`).join('\n')}\n`));
  test('allow lists add up, ~ removes from everything, empty is nothing, absent is unlimited', () => {
    assert.deepEqual([...caps('CAP_BPF', 'CAP_PERFMON')!], ['CAP_BPF', 'CAP_PERFMON']);
    assert.deepEqual([...caps('')!], []);
    assert.equal(caps(), undefined);
    assert.ok(caps('~CAP_SYS_ADMIN')!.has('*'));
  });
});

describe('loading and checking a unit', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'ek-unitload-'));
  after(() => rmSync(tmp, { recursive: true, force: true }));
  const etc = join(tmp, 'etc');
  const lib = join(tmp, 'lib');
  const unit = `[Service]
ExecStart=${process.execPath} run
CapabilityBoundingSet=CAP_BPF CAP_PERFMON
SystemCallFilter=@default bpf perf_event_open
`;

  test('drop-ins in name order, an /etc drop-in hides the same name elsewhere, a second unit file is named', () => {
    mkdirSync(join(lib, 'edgekeeper.service.d'), { recursive: true });
    mkdirSync(join(etc, 'edgekeeper.service.d'), { recursive: true });
    writeFileSync(join(lib, 'edgekeeper.service'), unit);
    writeFileSync(join(lib, 'edgekeeper.service.d', '10-a.conf'), '[Service]\nSystemCallFilter=~bpf\n');
    writeFileSync(join(etc, 'edgekeeper.service.d', '10-a.conf'), '[Service]\nUser=root\n');
    writeFileSync(
      join(etc, 'edgekeeper.service.d', '20-b.conf'),
      '[Service]\nSystemCallFilter=~perf_event_open\n',
    );
    let loaded = loadUnit('edgekeeper.service', undefined, [etc, lib])!;
    assert.equal(loaded.file, join(lib, 'edgekeeper.service'));
    assert.deepEqual(loaded.dropIns, [
      join(etc, 'edgekeeper.service.d', '10-a.conf'),
      join(etc, 'edgekeeper.service.d', '20-b.conf'),
    ]);
    const real = parseSyscallGroups(
      spawnSync('systemd-analyze', ['syscall-filter'], { encoding: 'utf8' }).stdout,
    );
    const checks = checkUnit({ unit: loaded, groups: real, kernelRelease: '6.1.0' });
    const sc = checks.find((c) => c.name === 'SystemCallFilter')!;
    assert.equal(sc.ok, false);
    assert.match(sc.detail, /perf_event_open is filtered out by .*20-b\.conf:2 \(perf_event_open\)/);
    assert.doesNotMatch(sc.detail, /bpf is filtered/, 'the hidden lib drop-in does not count');

    writeFileSync(join(etc, 'edgekeeper.service'), '[Service]\nExecStart=/usr/local/bin/edgekeeper run\n');
    loaded = loadUnit('edgekeeper.service', undefined, [etc, lib])!;
    assert.deepEqual(loaded.shadowed, [join(lib, 'edgekeeper.service')]);
    const c2 = checkUnit({ unit: loaded, groups: real, kernelRelease: '6.1.0' });
    assert.match(c2.find((c) => c.name === 'unit file')!.detail, /hides .*lib\/edgekeeper\.service/);
    assert.match(
      c2.find((c) => c.name === 'ExecStart')!.detail,
      /\/usr\/local\/bin\/edgekeeper does not exist: .*203\/EXEC/,
    );
  });

  test('a masked unit (the package removed, not purged) is named as such', () => {
    const m = join(tmp, 'masked');
    mkdirSync(m, { recursive: true });
    symlinkSync('/dev/null', join(m, 'edgekeeper.service'));
    writeFileSync(join(lib, 'edgekeeper.service'), unit);
    const loaded = loadUnit('edgekeeper.service', undefined, [m, lib])!;
    assert.equal(loaded.masked, true);
    const [c] = checkUnit({ unit: loaded, groups, kernelRelease: '6.1.0' });
    assert.equal(c?.ok, false);
    assert.match(c!.detail, /is masked: the edgekeeper package was removed and not purged/);
    assert.match(c!.fix!, /apt install edgekeeper/);
  });

  test('memlock on kernels before 5.11, address families without AF_UNIX, no RuntimeDirectory=', () => {
    const file = join(tmp, 'x.service');
    writeFileSync(file, `${unit}RestrictAddressFamilies=AF_INET\n`);
    const checks = checkUnit({
      unit: loadUnit('edgekeeper.service', file)!,
      groups,
      kernelRelease: '5.10.103-v8+',
    });
    assert.equal(checks.find((c) => c.name === 'LimitMEMLOCK')?.ok, false);
    assert.equal(checks.find((c) => c.name === 'RestrictAddressFamilies')?.ok, false);
    assert.equal(checks.find((c) => c.name === 'RuntimeDirectory')?.ok, false);
    assert.match(checks.find((c) => c.name === 'RuntimeDirectory')!.fix!, /RuntimeDirectory=edgekeeper/);
    writeFileSync(file, `${unit}PrivateDevices=yes\n`);
    const rd = checkUnit({
      unit: loadUnit('edgekeeper.service', file)!,
      groups,
      kernelRelease: '6.6.0',
    }).find((c) => c.name === 'RuntimeDirectory')!;
    assert.match(rd.detail, /\/dev\/shm\/edgekeeper-<hash>, which PrivateDevices= makes private/);
    writeFileSync(file, `${unit}LimitMEMLOCK=infinity\nRuntimeDirectory=edgekeeper\n`);
    const ok = checkUnit({
      unit: loadUnit('edgekeeper.service', file)!,
      groups,
      kernelRelease: '5.10.103-v8+',
    });
    assert.equal(ok.find((c) => c.name === 'LimitMEMLOCK')?.ok, true);
    assert.equal(ok.find((c) => c.name === 'RuntimeDirectory')?.detail, '/run/edgekeeper (status frames)');
    assert.equal(
      checkUnit({ unit: loadUnit('edgekeeper.service', file)!, groups, kernelRelease: '6.6.0' }).find(
        (c) => c.name === 'LimitMEMLOCK',
      ),
      undefined,
    );
  });
});
