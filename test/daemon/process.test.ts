/**
 * The daemon as systemd runs it: a child process `edgekeeper run` with NOTIFY_SOCKET bound by
 * this test to a real unix datagram socket. Proves READY=1 once serving, WATCHDOG=1 while the
 * store commits, STOPPING=1 and exit 0 on SIGTERM with the database closed cleanly, one daemon
 * per state directory, `edgekeeper backup` from the running daemon, `restore` refused while it
 * runs and accepted on the stopped node (the data is back after a restart), and an abstract
 * NOTIFY_SOCKET through systemd-notify. Needs: systemd-notify, perl (Debian's perl-base).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { daemonMigrations, verifyDatabaseFile } from '../../src/daemon/index.js';
import { silentLogger } from '../../src/log.js';
import { openStore } from '../../src/store/index.js';

const repo = join(import.meta.dirname, '..', '..');
const main = join(repo, 'src', 'main.ts');
/** Bounds a wait so a broken daemon fails the test instead of hanging it; not a timing assertion. */
const WAIT_MS = 60_000;

interface DgramSocket {
  on(event: 'message', fn: (buf: Buffer) => void): void;
  on(event: 'error', fn: (err: Error) => void): void;
  bind(path: string): void;
  close(): void;
}
const unix = createRequire(import.meta.url)('unix-dgram') as { createSocket(t: 'unix_dgram'): DgramSocket };

/** Collects notifications; `next(pred)` resolves with the first (past or future) that matches. */
class Inbox {
  readonly messages: string[] = [];
  private waiters: { pred: (m: string) => boolean; resolve: (m: string) => void }[] = [];
  push(m: string): void {
    this.messages.push(m);
    for (const w of [...this.waiters]) {
      if (w.pred(m)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(m);
      }
    }
  }
  next(pred: (m: string) => boolean, what: string, from = 0): Promise<string> {
    const hit = this.messages.slice(from).find(pred);
    if (hit) return Promise.resolve(hit);
    return new Promise((resolve, reject) => {
      const t = setTimeout(
        () => reject(new Error(`no ${what} notification; got ${JSON.stringify(this.messages)}`)),
        WAIT_MS,
      );
      this.waiters.push({
        pred,
        resolve: (m) => {
          clearTimeout(t);
          resolve(m);
        },
      });
    });
  }
}

const children = new Set<ChildProcess>();

function cli(args: string[], env: Record<string, string> = {}): ChildProcess & { out: () => string } {
  const child = spawn(process.execPath, ['--import', 'tsx', main, ...args], {
    cwd: repo,
    env: { ...process.env, NOTIFY_SOCKET: '', WATCHDOG_USEC: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  child.on('exit', () => children.delete(child));
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  return Object.assign(child, { out: () => out });
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('child did not exit')), WAIT_MS);
    child.on('exit', (code) => {
      clearTimeout(t);
      resolve(code);
    });
  });
}

function httpFromStatus(m: string): string {
  const hit = /STATUS=serving: http ([\d.]+:\d+)/.exec(m);
  assert.ok(hit, `READY carries the HTTP address: ${m}`);
  return hit[1]!;
}

async function status(http: string): Promise<{ store: { revision: number; keys: number } }> {
  const r = await fetch(`http://${http}/v1/status`);
  assert.equal(r.status, 200);
  return (await r.json()) as { store: { revision: number; keys: number } };
}

describe('edgekeeper run under a notify socket', () => {
  let tmp: string;
  let dataDir: string;
  let sock: DgramSocket;
  const inbox = new Inbox();
  let seededRevision = 0;

  before(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'ek-daemon-'));
    dataDir = join(tmp, 'data');
    // Seed a node with data before the daemon first starts.
    const { mkdirSync } = await import('node:fs');
    mkdirSync(dataDir);
    const store = await openStore({
      file: join(dataDir, 'edgekeeper.db'),
      inlineWriter: true,
      logger: silentLogger(),
      migrations: daemonMigrations,
    });
    for (const k of ['a', 'b', 'c']) await store.put({ key: Buffer.from(k), value: Buffer.from(`${k}-1`) });
    seededRevision = store.revision();
    await store.close();
    sock = unix.createSocket('unix_dgram');
    sock.on('message', (buf) => inbox.push(buf.toString()));
    sock.on('error', (err) => inbox.push(`socket error: ${err.message}`));
    sock.bind(join(tmp, 'notify.sock'));
  });

  after(() => {
    for (const c of children) c.kill('SIGKILL');
    sock.close();
    rmSync(tmp, { recursive: true, force: true });
  });

  test('READY, WATCHDOG, one daemon per directory, backup while running, STOPPING and exit 0 on SIGTERM, restore', async () => {
    const env = { NOTIFY_SOCKET: join(tmp, 'notify.sock'), WATCHDOG_USEC: '400000' };
    // Every second (node-cron's 6-field form), keeping 2: the cron job, its rotation and its metrics.
    const daemon = cli(
      ['run', '--data-dir', dataDir, '--http-listen', '127.0.0.1:0', '--log-level', 'info'],
      {
        ...env,
        EDGEKEEPER_STORE_BACKUP_SCHEDULE: '* * * * * *',
        EDGEKEEPER_STORE_BACKUP_KEEP: '2',
      },
    );
    const ready = await inbox.next((m) => m.split('\n').includes('READY=1'), 'READY=1');
    const http = httpFromStatus(ready);
    const readyAt = inbox.messages.indexOf(ready);
    await inbox.next((m) => m === 'WATCHDOG=1', 'WATCHDOG=1', readyAt);
    assert.ok(inbox.messages.slice(0, readyAt).some((m) => m.startsWith('STATUS=opening the store')));

    assert.equal((await fetch(`http://${http}/readyz`)).status, 200);
    // Start-up lines say what listens where, as JSON.
    const lines = daemon
      .out()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { msg: string; url?: string; stateDir?: string });
    assert.equal(lines.find((l) => l.msg === 'HTTP listening')?.url, `http://${http}`);
    assert.equal(lines.find((l) => l.msg === 'edgekeeper ready')?.stateDir, dataDir);
    const st = await status(http);
    assert.equal(st.store.keys, 3);
    assert.equal(st.store.revision, seededRevision);

    // A second daemon on the same state directory is refused.
    const second = cli(['run', '--data-dir', dataDir, '--http-listen', '127.0.0.1:0']);
    assert.equal(await exited(second), 1);
    assert.match(second.out(), /is running on .*data/);

    // Backup from the running daemon.
    const backupFile = join(tmp, 'backup.db');
    const b = cli(['backup', backupFile, '--http', http]);
    assert.equal(await exited(b), 0, b.out());
    verifyDatabaseFile(backupFile);

    // Restore refuses a running node.
    const refused = cli(['restore', backupFile, '--data-dir', dataDir]);
    assert.equal(await exited(refused), 1);
    assert.match(refused.out(), /is running on/);

    // Scheduled backups ran (counted in /metrics) and were rotated.
    const deadline = Date.now() + WAIT_MS;
    for (let n = 0; n < 3; ) {
      const text = await (await fetch(`http://${http}/metrics`)).text();
      n = Number(/edgekeeper_daemon_jobs_total\{job="backup",result="ok"\} (\d+)/.exec(text)?.[1] ?? 0);
      assert.ok(
        Date.now() < deadline,
        `scheduled backups did not run: ${text
          .split('\n')
          .filter((l) => l.includes('jobs_total'))
          .join('; ')}`,
      );
      if (n < 3) await new Promise((r) => setTimeout(r, 200));
    }

    // SIGTERM: STOPPING=1, exit 0, database closed.
    const stopFrom = inbox.messages.length;
    daemon.kill('SIGTERM');
    await inbox.next((m) => m.split('\n').includes('STOPPING=1'), 'STOPPING=1', stopFrom);
    assert.equal(await exited(daemon), 0, daemon.out());
    assert.match(daemon.out(), /stopped; database closed/);
    assert.ok(!existsSync(join(dataDir, 'edgekeeper.pid')), 'pid file removed');
    verifyDatabaseFile(join(dataDir, 'edgekeeper.db'));
    const kept = readdirSync(join(dataDir, 'backups')).filter((f) =>
      /^edgekeeper-\d{8}T\d{9}Z-\d+\.db$/.test(f),
    );
    assert.equal(kept.length, 2, kept.join(','));
    for (const f of kept) verifyDatabaseFile(join(dataDir, 'backups', f));
    // The seeded database had the daemon's tables only: the other parts' schema steps were
    // applied at start, after the pre-upgrade backup, which rotation leaves alone.
    const preUpgrade = readdirSync(join(dataDir, 'backups')).filter((f) =>
      /^edgekeeper-pre-upgrade-/.test(f),
    );
    assert.equal(preUpgrade.length, 1, preUpgrade.join(','));
    assert.deepEqual(
      readdirSync(join(dataDir, 'backups')).sort(),
      [...kept, ...preUpgrade].sort(),
      'no temporary files left behind',
    );

    // Change the stopped node, then restore the backup over it.
    let store = await openStore({
      file: join(dataDir, 'edgekeeper.db'),
      inlineWriter: true,
      logger: silentLogger(),
      migrations: daemonMigrations,
    });
    await store.put({ key: Buffer.from('a'), value: Buffer.from('a-2') });
    await store.put({ key: Buffer.from('later'), value: Buffer.from('x') });
    await store.close();
    const r = cli(['restore', backupFile, '--data-dir', dataDir]);
    assert.equal(await exited(r), 0, r.out());
    assert.match(r.out(), /previous database kept as edgekeeper\.db\.pre-restore-/);

    // Restart: the restored data is what the daemon serves.
    const again = cli(['run', '--data-dir', dataDir, '--http-listen', '127.0.0.1:0'], env);
    const from = inbox.messages.length;
    const ready2 = await inbox.next((m) => m.split('\n').includes('READY=1'), 'READY=1 after restore', from);
    const st2 = await status(httpFromStatus(ready2));
    assert.equal(st2.store.keys, 3);
    assert.equal(st2.store.revision, seededRevision);
    again.kill('SIGTERM');
    assert.equal(await exited(again), 0, again.out());
    store = await openStore({
      file: join(dataDir, 'edgekeeper.db'),
      inlineWriter: true,
      logger: silentLogger(),
      migrations: daemonMigrations,
    });
    try {
      assert.equal(store.range({ key: Buffer.from('a') }).kvs[0]?.value.toString(), 'a-1');
      assert.equal(store.range({ key: Buffer.from('later') }).kvs.length, 0);
    } finally {
      await store.close();
    }
  });

  test('backup --data-dir copies a stopped node; a missing database is an error', async () => {
    const out = join(tmp, 'offline.db');
    const b = cli(['backup', out, '--data-dir', dataDir]);
    assert.equal(await exited(b), 0, b.out());
    verifyDatabaseFile(out);
    const none = cli(['backup', join(tmp, 'x.db'), '--data-dir', join(tmp, 'empty')]);
    assert.equal(await exited(none), 1);
    assert.match(none.out(), /no database at/);
  });

  test('an abstract NOTIFY_SOCKET is reached through systemd-notify', async () => {
    const name = `ek-test-${process.pid}-${Date.now()}`;
    // Perl's Socket can bind an abstract address; unix-dgram cannot (see src/daemon/notify.ts).
    const receiver = spawn(
      'perl',
      [
        '-e',
        'use Socket; socket(my $s, AF_UNIX, SOCK_DGRAM, 0) or die "socket: $!"; bind($s, pack_sockaddr_un("\\0" . $ARGV[0])) or die "bind: $!"; $| = 1; print "bound\\n"; while (1) { my $b; recv($s, $b, 4096, 0); $b =~ s/\\n/|/g; print "$b\\n"; }',
        name,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    children.add(receiver);
    const lines = new Inbox();
    let buf = '';
    receiver.stdout!.on('data', (d) => {
      buf += d;
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        lines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    });
    await lines.next((l) => l === 'bound', 'bound');
    const dir = join(tmp, 'abstract');
    const daemon = cli(['run', '--data-dir', dir, '--http-listen', '127.0.0.1:0'], {
      NOTIFY_SOCKET: `@${name}`,
    });
    const ready = await lines.next(
      (l) => l.split('|').includes('READY=1'),
      'READY=1 over the abstract socket',
    );
    assert.match(ready, new RegExp(`MAINPID=${daemon.pid}`));
    daemon.kill('SIGTERM');
    await lines.next((l) => l.split('|').includes('STOPPING=1'), 'STOPPING=1 over the abstract socket');
    assert.equal(await exited(daemon), 0, daemon.out());
    receiver.kill('SIGKILL');
  });
});
