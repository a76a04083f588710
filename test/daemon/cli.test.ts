/**
 * The daemon's commands and the data commands against a real running daemon (all its parts,
 * in this process): `status` shows the daemon (readiness, store, devices) in each output format;
 * `endpoint status`, `kv`, `lease`, `device` and `frame` print data in simple, table and json;
 * a bad output path is one line with EDGE_ERR_IO; backup and restore of a stopped node.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadConfig } from '../../src/config/index.js';
import { allFlags, allSections, type Daemon, parts, startDaemon } from '../../src/daemon/index.js';
import { silentLogger } from '../../src/log.js';
import { main } from '../../src/main.js';
import { capture } from '../capture.js';

const run = (...args: string[]) => capture(() => main(args));

describe('commands against a running daemon', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'ek-daemon-cli-'));
  let daemon: Daemon;
  let http: string;
  let etcd: string;

  before(async () => {
    const config = loadConfig({
      env: {},
      fileData: { probes: { enabled: [] } },
      sections: allSections(),
      flagSpecs: allFlags(),
      flags: {
        'data-dir': join(tmp, 'node'),
        'http-listen': '127.0.0.1:0',
        'etcd-listen': '127.0.0.1:0',
        'mqtt-listen': '127.0.0.1:0',
        'node-name': 'cli-node<b>',
        'log-level': 'silent',
      },
    });
    daemon = await startDaemon(config, parts, { env: {}, logger: silentLogger() });
    http = `${daemon.httpAddress.host}:${daemon.httpAddress.port}`;
    const st = (await (await fetch(`http://${http}/v1/status`)).json()) as {
      parts: { etcd: { clientUrls: string[] } };
    };
    etcd = st.parts.etcd.clientUrls[0]!.replace(/^http:\/\//, '');
  });
  after(async () => {
    await daemon?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  test('status shows the daemon: readiness, store, devices; in simple, table and json', async () => {
    const simple = await run('status', '--http', http);
    assert.equal(simple.code, 0, simple.err);
    assert.match(simple.out, /^node {5}cli-node<b> \(edgekeeper \d+\.\d+\.\d+, pid \d+, up /m);
    assert.match(simple.out, /^ready {4}yes$/m);
    assert.match(simple.out, /^store {4}revision \d+, \d+ keys, [\d.]+ \S+ of 2\.0 GiB/m);
    assert.match(simple.out, /^devices {2}0 online, 0 offline$/m);
    const json = JSON.parse((await run('status', '--http', http, '-w', 'json')).out);
    assert.equal(json.node, 'cli-node<b>');
    assert.equal(json.readiness.ready, true);
    assert.ok(json.readiness.checks.includes('store'));
    const table = (await run('status', '--http', http, '-w', 'table')).out;
    assert.match(table, /^KEY +VALUE$/m);
    assert.match(table, /^readiness\.ready +true$/m);
    assert.match(table, /^store\.revision +\d+$/m);
  });

  test('kv, lease and endpoint status print simple, table and json', async () => {
    assert.equal((await run('kv', 'put', '/cli/a', 'hello', '--endpoints', etcd)).out, 'OK\n');
    const put = JSON.parse((await run('kv', 'put', '/cli/b', 'x', '--endpoints', etcd, '-w', 'json')).out);
    assert.ok(put.header.revision > 1);
    assert.equal(
      (await run('kv', 'get', '/cli/', '--prefix', '--endpoints', etcd)).out,
      '/cli/a\nhello\n/cli/b\nx\n',
    );
    const t = (await run('kv', 'get', '/cli/a', '--endpoints', etcd, '-w', 'table')).out;
    assert.match(
      t,
      /^KEY +VALUE +MOD_REVISION +CREATE_REVISION +VERSION +LEASE\n\/cli\/a +hello +\d+ +\d+ +1 +-\n$/,
    );
    const j = JSON.parse((await run('kv', 'get', '/cli/a', '--endpoints', etcd, '--json')).out);
    assert.equal(Buffer.from(j.kvs[0].value, 'base64').toString(), 'hello');
    const grant = await run('lease', 'grant', '30', '--endpoints', etcd, '-w', 'json');
    const { id } = JSON.parse(grant.out) as { id: string };
    assert.match(
      (await run('lease', 'list', '--endpoints', etcd, '-w', 'table')).out,
      new RegExp(`^ID\\n${id}\\n$`),
    );
    const e = JSON.parse((await run('endpoint', 'status', '--endpoints', etcd, '-w', 'json')).out);
    assert.equal(e.version, '3.5.13');
    assert.match((await run('endpoint', 'status', '--endpoints', etcd)).out, /^alarms: none$/m);
    // The daemon refuses: one line with the code the etcd message stands for.
    const gone = await run('lease', 'revoke', '1234', '--endpoints', etcd);
    assert.equal(gone.code, 1);
    assert.equal(
      gone.err,
      'edgekeeper lease: etcdserver: requested lease not found [EDGE_ERR_LEASE_NOT_FOUND]\n',
    );
  });

  test('device and ingest commands: table by default, simple, json; a missing device is EDGE_ERR_KEY_NOT_FOUND', async () => {
    const add = await run('device', 'add', 'pump-1', '--http', http);
    assert.equal(add.code, 0, add.err);
    assert.match(add.out, /^device pump-1 added; .* \S{16,}\n$/);
    const tbl = (await run('device', 'list', '--http', http)).out;
    assert.match(tbl, /^ID +STATE +LAST_SEEN +REPORTS\npump-1 +never +- +0\n$/);
    assert.equal((await run('device', 'list', '--http', http, '-w', 'simple')).out, 'pump-1 never - 0\n');
    assert.equal(JSON.parse((await run('device', 'list', '--http', http, '-w', 'json')).out)[0].id, 'pump-1');
    const missing = await run('device', 'rotate', 'nobody', '--http', http);
    assert.equal(missing.code, 1);
    assert.equal(missing.err, 'edgekeeper device: no device nobody [EDGE_ERR_KEY_NOT_FOUND]\n');
    const bad = await run('device', 'add', 'bad/id', '--http', http);
    assert.equal(bad.code, 1);
    assert.match(
      bad.err,
      /^edgekeeper device: the daemon refused: device id "bad\/id" is invalid.*\[EDGE_ERR_INVALID_ARGUMENT\]\n$/,
    );
    assert.equal((await run('ingest', 'rejects', '--http', http)).out, 'no rejected input recorded\n');
    assert.equal((await run('ingest', 'rejects', '--http', http, '-w', 'json')).out, '[]\n');
  });

  test('frame: a PNG to a file or stdout; a bad path is one line with EDGE_ERR_IO', async () => {
    const file = join(tmp, 'f.png');
    const ok = await run('frame', '--http', http, '--size', '320x240', '--out', file);
    assert.equal(ok.code, 0, ok.err);
    assert.equal(readFileSync(file).subarray(1, 4).toString(), 'PNG');
    const bad = await run('frame', '--http', http, '--out', join(tmp, 'no', 'such', 'dir', 'f.png'));
    assert.equal(bad.code, 1);
    assert.match(
      bad.err,
      /^edgekeeper frame: ENOENT: no such file or directory, open '.*f\.png\.tmp-\d+' \[EDGE_ERR_IO\]\n$/,
    );
    const stdout = await run('frame', '--http', http, '--out', '-');
    assert.equal(stdout.out.slice(1, 4), 'PNG');
  });

  test('backup through the daemon; a bad path is EDGE_ERR_IO', async () => {
    const file = join(tmp, 'b.db');
    const r = await run('backup', file, '--http', http);
    assert.equal(r.code, 0, r.err);
    assert.ok(existsSync(file));
    const nowhere = await run('backup', join(tmp, 'no', 'dir', 'b.db'), '--http', http);
    assert.equal(nowhere.code, 1);
    assert.match(nowhere.err, /\[EDGE_ERR_IO\]\n$/);
  });
});

describe('a stopped node', () => {
  test('restore refuses a missing or damaged backup and leaves the node alone', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'ek-restore-'));
    try {
      let r = await run('restore', join(tmp, 'missing.db'), '--data-dir', join(tmp, 'node'));
      assert.equal(r.code, 1);
      assert.match(r.err, /no backup file.*\[EDGE_ERR_IO\]/);
      const junk = join(tmp, 'junk.db');
      const { writeFileSync } = await import('node:fs');
      writeFileSync(junk, 'this is not a database'.repeat(300));
      r = await run('restore', junk, '--data-dir', join(tmp, 'node'));
      assert.equal(r.code, 1);
      assert.match(r.err, /failed its integrity check.*\[EDGE_ERR_CORRUPT\]\n$/);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
