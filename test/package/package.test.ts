/**
 * The Debian package, as a user gets it: `npm run package` builds it for this machine's
 * architecture (systemd/debian/build.sh); its metadata and files are what Debian and the unit
 * expect; real apt with Debian bookworm's package lists (Node 18) refuses it on the dependency;
 * and systemd/debian/smoke.sh installs it into a clean Debian trixie root (mmdebstrap, cached
 * between runs on one machine) and runs the daemon there as its unit would, through upgrade,
 * rollback refusal, remove and purge (see that script for every check).
 * Needs root, npm (the registry), dpkg-deb, mmdebstrap and a Debian mirror, etcdctl,
 * mosquitto_pub; the apt check reads this machine's bookworm lists (apt-get update).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

const repo = join(import.meta.dirname, '..', '..');
const arch = spawnSync('dpkg', ['--print-architecture'], { encoding: 'utf8' }).stdout.trim();

function run(cmd: string, args: string[], timeoutMs = 15 * 60_000) {
  const r = spawnSync(cmd, args, {
    cwd: repo,
    encoding: 'utf8',
    timeout: timeoutMs,
    maxBuffer: 64 * 1024 * 1024,
  });
  return { status: r.status, stdout: r.stdout ?? '', stderr: `${r.stderr ?? ''}${r.error?.message ?? ''}` };
}

describe(`the Debian package (${arch})`, () => {
  let out: string;
  let deb: string;
  // Longer than npm test's default per test: npm ci against the registry, and on a machine
  // without the cached root, mmdebstrap against the Debian mirror.
  before(
    () => {
      out = mkdtempSync(join(tmpdir(), 'ek-package-'));
      const r = run('bash', [join(repo, 'systemd', 'debian', 'build.sh'), '--out', out]);
      assert.equal(r.status, 0, r.stderr);
      deb = r.stdout.trim().split('\n').at(-1)!;
      assert.ok(existsSync(deb), `${r.stdout}${r.stderr}`);
    },
    { timeout: 15 * 60_000 },
  );
  after(() => rmSync(out, { recursive: true, force: true }));

  test('build.sh refuses an architecture it cannot build, with the list it can', () => {
    const r = run('bash', [join(repo, 'systemd', 'debian', 'build.sh'), '--arch', 'sparc64']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /architecture sparc64 is not supported \(amd64, arm64, armhf\)/);
  });

  test('metadata: the exact Node.js major, the conffile, the maintainer scripts', (t) => {
    const field = (f: string) => run('dpkg-deb', ['-f', deb, f]).stdout.trim();
    const major = process.versions.node.split('.')[0];
    assert.equal(field('Package'), 'edgekeeper');
    assert.equal(field('Architecture'), arch);
    assert.match(
      field('Depends'),
      new RegExp(`nodejs \\(>= ${major}\\), nodejs \\(<< ${Number(major) + 1}\\)`),
    );
    const control = mkdtempSync(join(tmpdir(), 'ek-control-'));
    try {
      assert.equal(run('dpkg-deb', ['-e', deb, control]).status, 0);
      assert.deepEqual(readdirSync(control).sort(), [
        'conffiles',
        'control',
        'md5sums',
        'postinst',
        'postrm',
        'prerm',
      ]);
      assert.equal(run('cat', [join(control, 'conffiles')]).stdout, '/etc/edgekeeper/edgekeeper.json\n');
      for (const s of ['postinst', 'postrm', 'prerm']) {
        assert.equal(statSync(join(control, s)).mode & 0o777, 0o755);
        assert.equal(run('sh', ['-n', join(control, s)]).status, 0, `${s} is valid sh`);
      }
    } finally {
      rmSync(control, { recursive: true, force: true });
    }
    t.diagnostic(
      `${deb}: ${(statSync(deb).size / 1024 / 1024).toFixed(1)} MiB, installed ${field('Installed-Size')} KiB`,
    );
  });

  test('files: the program where the unit runs it, native addons for this architecture only, no build debris', () => {
    const list = run('dpkg-deb', ['-c', deb]).stdout;
    const files = list
      .split('\n')
      .filter(Boolean)
      .map((l) =>
        l
          .split(/\s+/)
          .slice(5)
          .join(' ')
          .replace(/^\.\//, '/')
          .replace(/ -> .*$/, ''),
      );
    for (const f of [
      '/usr/bin/edgekeeper',
      '/usr/lib/systemd/system/edgekeeper.service',
      '/etc/edgekeeper/edgekeeper.json',
      '/usr/lib/edgekeeper/dist/main.js',
      '/usr/lib/edgekeeper/LICENSE',
      '/usr/share/doc/edgekeeper/copyright',
      '/usr/lib/edgekeeper/bpf/fsync.bt',
      '/usr/lib/edgekeeper/assets/fonts/DejaVuSans.ttf',
      '/usr/lib/edgekeeper/src/etcd/proto/rpc.proto',
      '/usr/lib/edgekeeper/node_modules/better-sqlite3/build/Release/better_sqlite3.node',
      '/usr/lib/edgekeeper/node_modules/unix-dgram/build/Release/unix_dgram.node',
    ]) {
      assert.ok(files.includes(f), `${f} missing`);
    }
    assert.ok(
      !files.some((f) => f.startsWith('/var/lib/edgekeeper')),
      'StateDirectory= makes the state directory',
    );
    assert.ok(!files.some((f) => /\.map$|\/node_modules\/\.bin\/|better-sqlite3\/(deps|src)\//.test(f)));
    assert.ok(
      !files.some((f) => f.includes('/node_modules/typescript/') || f.includes('/node_modules/@biomejs/')),
    );
    assert.match(list, /-rw-r----- root\/root .* \.\/etc\/edgekeeper\/edgekeeper\.json/);
    const x = mkdtempSync(join(tmpdir(), 'ek-files-'));
    try {
      assert.equal(run('dpkg-deb', ['-x', deb, x]).status, 0);
      const want = arch === 'amd64' ? 'X86-64' : arch === 'arm64' ? 'AArch64' : 'ARM';
      const nodes = run('find', [x, '-name', '*.node']).stdout.trim().split('\n');
      assert.ok(nodes.length >= 4, nodes.join('\n'));
      for (const n of nodes)
        assert.match(run('readelf', ['-h', n]).stdout, new RegExp(`Machine:.*${want}`), n);
      const copyright = run('cat', [join(x, 'usr/share/doc/edgekeeper/copyright')]).stdout;
      assert.match(copyright, /^License: Apache-2\.0$/m);
      assert.match(
        copyright,
        /node_modules\/better-sqlite3\/\*\nComment: better-sqlite3 [\d.]+, bundled.*\nLicense: MIT/,
      );
      assert.match(
        run('cat', [join(x, 'usr/bin/edgekeeper')]).stdout,
        /exec \/usr\/bin\/node \/usr\/lib\/edgekeeper\/dist\/main\.js/,
      );
    } finally {
      rmSync(x, { recursive: true, force: true });
    }
  });

  test('apt refuses it on a machine whose Node.js is older (Debian bookworm: nodejs 18)', () => {
    const lists = '/var/lib/apt/lists';
    const mine = readdirSync(lists).filter((f) =>
      new RegExp(`_debian_dists_bookworm_(InRelease|Release(\\.gpg)?|main_binary-${arch}_Packages.*)$`).test(
        f,
      ),
    );
    assert.ok(
      mine.some((f) => f.includes('_Packages')),
      'no Debian bookworm package lists on this machine (apt-get update)',
    );
    const host = mine[0]!.replace(/_debian_dists_.*$/, '').replace(/_/g, '/');
    const t = mkdtempSync(join(tmpdir(), 'ek-apt-'));
    try {
      for (const d of ['lists/partial', 'cache/archives/partial', 'parts', 'prefs'])
        mkdirSync(join(t, d), { recursive: true });
      writeFileSync(join(t, 'status'), '');
      for (const f of mine) copyFileSync(join(lists, f), join(t, 'lists', f));
      writeFileSync(join(t, 'sources.list'), `deb http://${host}/debian bookworm main\n`);
      const r = run('apt-get', [
        '-s',
        ...['-o', `Dir::State::Lists=${t}/lists`, '-o', `Dir::State::status=${t}/status`],
        ...['-o', `Dir::Etc::SourceList=${t}/sources.list`, '-o', `Dir::Etc::SourceParts=${t}/parts`],
        ...[
          '-o',
          `Dir::Etc::PreferencesParts=${t}/prefs`,
          '-o',
          `Dir::Cache=${t}/cache`,
          '-o',
          'Debug::NoLocking=1',
        ],
        'install',
        deb,
      ]);
      assert.notEqual(r.status, 0, r.stdout);
      assert.match(
        `${r.stdout}${r.stderr}`,
        /edgekeeper : Depends: nodejs \(>= 20\) but 18\.[\d.]+\S* is to be installed/,
      );
    } finally {
      rmSync(t, { recursive: true, force: true });
    }
  });

  test('installs into a clean Debian trixie root and passes the smoke test there', {
    timeout: 20 * 60_000,
  }, (t) => {
    const r = run('bash', [join(repo, 'systemd', 'debian', 'smoke.sh'), '--deb', deb], 20 * 60_000);
    for (const line of r.stdout.split('\n').filter((l) => l.startsWith('#') || l.startsWith('FAIL')))
      t.diagnostic(line);
    const failed = r.stdout.split('\n').filter((l) => l.startsWith('FAIL'));
    assert.deepEqual(failed, [], `${r.stdout}\n${r.stderr}`);
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
    // Every part of the smoke test ran.
    for (const check of [
      'ok - apt-get install',
      'ok - etcdctl get',
      'ok - MQTT report acknowledged (QoS 1)',
      'ok - a status frame (GET /frame.png)',
      'ok - the frame file is in RuntimeDirectory=',
      'ok - it says why (http.listen)',
      'ok - the old daemon still serves',
      'ok - refused with exit 65 (not restarted by the unit)',
      'ok - a half-removed install: one line and exit 127',
      'ok - purge keeps nothing: /var/lib/edgekeeper',
      "ok - names the unit that hides the package's",
      'ok - names the foreign owner of the data',
      'ok - the daemon refuses it with one clear line',
    ]) {
      assert.ok(r.stdout.includes(check), `missing "${check}":\n${r.stdout}`);
    }
  });
});
