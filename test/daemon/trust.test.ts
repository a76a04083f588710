/**
 * Local trust: `edgekeeper run` started by hand with a umask of 022 keeps its state to its own
 * user (directory 0700, database, WAL, shared memory, pid file and admin token 0600, an open
 * directory tightened), and the admin routes (device registration, backup, dead letters) need
 * the token: without it 401, with a wrong one 403, and nothing changes. The CLI finds the token
 * when its user may read it (here root) and fails with the file's name when not (user nobody).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { freePort } from '../ingest/mosquitto.js';

const repo = join(import.meta.dirname, '..', '..');
const main = join(repo, 'src', 'main.ts');
const NOBODY = 65534;

function exited(p: ChildProcess): Promise<number | null> {
  return p.exitCode !== null ? Promise.resolve(p.exitCode) : new Promise((r) => p.once('exit', r));
}

function cli(args: string[], as?: number): Promise<{ code: number | null; out: string }> {
  const p = spawn(process.execPath, ['--import', 'tsx', main, ...args], {
    cwd: repo,
    env: { ...process.env, NOTIFY_SOCKET: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(as === undefined ? {} : { uid: as, gid: as }),
  });
  let out = '';
  p.stdout!.on('data', (d) => (out += d));
  p.stderr!.on('data', (d) => (out += d));
  return exited(p).then((code) => ({ code, out }));
}

const mode = (f: string) => (statSync(f).mode & 0o777).toString(8);

describe('local trust', () => {
  let tmp: string;
  let data: string;
  let http: string;
  let daemon: ChildProcess;

  before(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'ek-trust-'));
    // the CLI runs as nobody below: it must reach the repository, not the state
    chmodSync(tmp, 0o755);
    data = join(tmp, 'data');
    // a state directory left open by hand: the daemon tightens it
    mkdirSync(data, { mode: 0o755 });
    chmodSync(data, 0o755);
    const [h, e, m] = [await freePort(), await freePort(), await freePort()];
    http = `127.0.0.1:${h}`;
    writeFileSync(
      join(tmp, 'config.json'),
      JSON.stringify({
        node: { name: 'trust', dataDir: data },
        http: { listen: http },
        etcd: { listen: `127.0.0.1:${e}` },
        mqtt: { listen: `127.0.0.1:${m}` },
        probes: { enabled: [] },
      }),
    );
    daemon = spawn(
      'sh',
      [
        '-c',
        `umask 022; exec "${process.execPath}" --import tsx "${main}" run --config "${join(tmp, 'config.json')}"`,
      ],
      { cwd: repo, stdio: 'ignore', env: { ...process.env, NOTIFY_SOCKET: '' } },
    );
    for (let ready = false; !ready; ) {
      assert.equal(daemon.exitCode, null, 'the daemon is running');
      ready = await fetch(`http://${http}/readyz`).then(
        (r) => r.ok,
        () => false,
      );
      if (!ready) await new Promise((r) => setTimeout(r, 200));
    }
  });

  after(async () => {
    daemon.kill('SIGTERM');
    await exited(daemon);
    rmSync(tmp, { recursive: true, force: true });
  });

  it('keeps the state directory and every file in it to its own user, whatever the umask', () => {
    assert.equal(mode(data), '700');
    for (const f of [
      'edgekeeper.db',
      'edgekeeper.db-wal',
      'edgekeeper.db-shm',
      'http.token',
      'edgekeeper.pid',
    ])
      assert.equal(mode(join(data, f)), '600', f);
  });

  it('answers the admin routes 401 without the token and 403 with a wrong one, and changes nothing', async () => {
    const call = (method: string, path: string, headers: Record<string, string> = {}, body?: unknown) =>
      fetch(`http://${http}${path}`, {
        method,
        headers: { 'content-type': 'application/json', ...headers },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    const attempts: [string, string, unknown?][] = [
      ['POST', '/v1/devices', { id: 'intruder' }],
      ['POST', '/v1/devices/rotate', { id: 'intruder' }],
      ['DELETE', '/v1/devices?id=intruder'],
      ['POST', '/v1/backup'],
      ['GET', '/v1/ingest/rejects'],
    ];
    for (const [method, path, body] of attempts) {
      const r = await call(method, path, {}, body);
      assert.equal(r.status, 401, `${method} ${path}`);
      assert.match(r.headers.get('www-authenticate') ?? '', /^Bearer/);
      const j = (await r.json()) as { code: string; tokenFile: string };
      assert.equal(j.code, 'EDGE_ERR_UNAUTHENTICATED');
      assert.equal(j.tokenFile, join(data, 'http.token'));
      const w = await call(method, path, { authorization: 'Bearer not-the-token' }, body);
      assert.equal(w.status, 403, `${method} ${path} with a wrong token`);
      assert.equal(((await w.json()) as { code: string }).code, 'EDGE_ERR_PERMISSION_DENIED');
    }
    // public routes stay public; nothing was registered
    const list = await call('GET', '/v1/devices');
    assert.equal(list.status, 200);
    assert.deepEqual(await list.json(), []);
    const token = readFileSync(join(data, 'http.token'), 'utf8').trim();
    const ok = await call('POST', '/v1/devices', { authorization: `Bearer ${token}` }, { id: 'owner-1' });
    assert.equal(ok.status, 201);
  });

  it('lets the CLI of a user who may read the token in, and tells anyone else which file it needs', async () => {
    const root = await cli(['device', 'add', 'pump-1', '--http', http]);
    assert.equal(root.code, 0, root.out);
    assert.match(root.out, /password \(shown once\): \S+/);
    const backup = await cli(['backup', join(tmp, 'copy.db'), '--http', http]);
    assert.equal(backup.code, 0, backup.out);

    const other = await cli(['device', 'add', 'pump-2', '--http', http], NOBODY);
    assert.equal(other.code, 1, other.out);
    assert.ok(other.out.includes(join(data, 'http.token')), other.out);
    assert.match(other.out, /EACCES/);
    const otherBackup = await cli(['backup', join(tmp, 'nobody.db'), '--http', http], NOBODY);
    assert.equal(otherBackup.code, 1, otherBackup.out);
    const ids = ((await (await fetch(`http://${http}/v1/devices`)).json()) as { id: string }[]).map(
      (d) => d.id,
    );
    assert.deepEqual(ids.sort(), ['owner-1', 'pump-1']);
  });
});
