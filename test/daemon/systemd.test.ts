/**
 * systemd/edgekeeper.service passes `systemd-analyze verify` and keeps its
 * `systemd-analyze security --offline=yes` exposure below 3.0. Needs systemd-analyze (the
 * `systemd` package). verify checks that ExecStart's binary exists, so it runs on a copy whose
 * ExecStart points at this node binary and this checkout.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';

const repo = join(import.meta.dirname, '..', '..');
const unitText = readFileSync(join(repo, 'systemd', 'edgekeeper.service'), 'utf8');

function analyze(...args: string[]) {
  const r = spawnSync('systemd-analyze', args, { encoding: 'utf8', timeout: 60_000 });
  if (r.error) throw new Error(`systemd-analyze is needed (apt-get install systemd): ${r.error.message}`);
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

describe('systemd unit', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ek-unit-'));
  const unit = join(dir, 'edgekeeper.service');
  writeFileSync(
    unit,
    unitText.replace(/^ExecStart=\S+/m, `ExecStart=${process.execPath} ${join(repo, 'dist', 'main.js')}`),
  );
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('the copy differs from the shipped unit only in ExecStart', () => {
    const a = unitText.split('\n');
    const b = readFileSync(unit, 'utf8').split('\n');
    assert.equal(a.length, b.length);
    const diff = a.filter((l, i) => l !== b[i]);
    assert.deepEqual(diff, [a.find((l) => l.startsWith('ExecStart='))]);
  });

  test('passes systemd-analyze verify', () => {
    const r = analyze('verify', unit);
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out.trim(), '', r.out);
  });

  test('the shipped unit fails verify only for the missing installed binary', () => {
    const r = analyze('verify', join(repo, 'systemd', 'edgekeeper.service'));
    const lines = r.out
      .trim()
      .split('\n')
      .filter((l) => l !== '');
    for (const l of lines) assert.match(l, /Command \/usr\/bin\/edgekeeper is not executable|^$/);
  });

  test('security exposure is below 3.0, with the capabilities bpftrace needs and nothing more', () => {
    const r = analyze('security', '--offline=yes', unit);
    const m = /Overall exposure level for edgekeeper\.service: (\d+\.\d+)/.exec(r.out);
    assert.ok(m, r.out);
    assert.ok(Number(m[1]) < 3.0, `exposure ${m[1]}`);
    assert.match(unitText, /^Type=notify$/m);
    assert.match(unitText, /^WatchdogSec=30s$/m);
    assert.match(unitText, /^CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_SYS_RESOURCE$/m);
    // bpftrace 0.17 refuses any uid but 0: the unit runs as root with only these capabilities.
    assert.doesNotMatch(unitText, /^(User|DynamicUser)=/m);
    assert.match(unitText, /^LimitMEMLOCK=infinity$/m);
    assert.match(unitText, /^StateDirectory=edgekeeper$/m);
    assert.match(unitText, /--data-dir \/var\/lib\/edgekeeper/);
  });
});
