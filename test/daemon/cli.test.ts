/** The command line: help, version, usage errors (exit 2), invalid configuration (exit 78). */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';

const repo = join(import.meta.dirname, '..', '..');
const main = join(repo, 'src', 'main.ts');
const version = (JSON.parse(readFileSync(join(repo, 'package.json'), 'utf8')) as { version: string }).version;

function run(...args: string[]) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', main, ...args], {
    cwd: repo,
    encoding: 'utf8',
    env: { ...process.env, NOTIFY_SOCKET: '' },
    timeout: 60_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('edgekeeper CLI', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'ek-cli-'));
  after(() => rmSync(tmp, { recursive: true, force: true }));

  test('--help lists every command with its summary; --version prints the version', () => {
    const h = run('--help');
    assert.equal(h.code, 0);
    for (const cmd of ['run', 'backup', 'restore', 'help'])
      assert.match(h.stdout, new RegExp(`^  ${cmd} +\\S`, 'm'));
    const v = run('--version');
    assert.equal(v.code, 0);
    assert.equal(v.stdout.trim(), version);
  });

  test('<cmd> --help prints the full usage, including every run flag', () => {
    const r = run('run', '--help');
    assert.equal(r.code, 0);
    for (const f of ['--config FILE', '--data-dir', '--http-listen', '--node-name', '--log-level']) {
      assert.ok(r.stdout.includes(f), `${f} in run --help`);
    }
    assert.match(run('backup', '--help').stdout, /Usage: edgekeeper backup FILE/);
    assert.match(run('help', 'restore').stdout, /Usage: edgekeeper restore FILE/);
  });

  test('unknown command, unknown flag, missing argument: a clear message and exit 2', () => {
    let r = run('frobnicate');
    assert.equal(r.code, 2);
    assert.match(r.stderr, /unknown command "frobnicate"/);
    r = run('run', '--no-such-flag');
    assert.equal(r.code, 2);
    assert.match(r.stderr, /run: Unknown option '--no-such-flag'/);
    assert.match(r.stderr, /edgekeeper run --help/);
    r = run('backup');
    assert.equal(r.code, 2);
    assert.match(r.stderr, /backup: expected 1 argument/);
    r = run('--bogus');
    assert.equal(r.code, 2);
    r = run();
    assert.equal(r.code, 2);
    assert.match(r.stderr, /Usage: edgekeeper <command>/);
  });

  test('invalid configuration: every problem printed, exit 78, nothing started', () => {
    const file = join(tmp, 'bad.json');
    writeFileSync(file, JSON.stringify({ http: { listen: 'everywhere' }, store: { quota: -1 } }));
    const r = run('run', '--config', file, '--data-dir', join(tmp, 'data'), '--log-level', 'chatty');
    assert.equal(r.code, 78);
    assert.match(r.stderr, /Expected `http\.listen` to be HOST:PORT/);
    assert.match(r.stderr, /Expected `store\.quota` to be a size/);
    assert.match(r.stderr, /Expected `log\.level` \(from --log-level\)/);
  });

  test('restore refuses a missing or damaged backup and leaves the node alone', () => {
    let r = run('restore', join(tmp, 'missing.db'), '--data-dir', join(tmp, 'node'));
    assert.equal(r.code, 1);
    assert.match(r.stderr, /no backup file/);
    const junk = join(tmp, 'junk.db');
    writeFileSync(junk, 'this is not a database'.repeat(300));
    r = run('restore', junk, '--data-dir', join(tmp, 'node'));
    assert.equal(r.code, 1);
    assert.match(r.stderr, /failed its integrity check.*EDGE_ERR_CORRUPT/);
  });

  test('backup from a daemon that is not running says how to reach a stopped node', () => {
    const r = run('backup', join(tmp, 'b.db'), '--http', '127.0.0.1:1');
    assert.equal(r.code, 1);
    assert.match(r.stderr, /no edgekeeper answers at http:\/\/127\.0\.0\.1:1\/v1\/backup .*--data-dir/);
  });
});
