/**
 * Logs under systemd: when stdout is the journal (JOURNAL_STREAM names its device:inode), each
 * pino line goes out as "<priority>message {fields}", and journald files it at that priority.
 * Proven against a real systemd-journald, run in a private mount namespace with its own /run
 * and /var/log, with the daemon's stdout connected to it through systemd-cat (which, unlike
 * systemd, does not set JOURNAL_STREAM; the wrapper sets it from its own stdout, as systemd
 * would): `journalctl -p warning` returns the daemon's warnings and not its info lines, and a
 * start refused for its configuration is one entry at priority err.
 * Needs root, unshare (util-linux), systemd-journald, systemd-cat, journalctl (systemd).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, fstatSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { isJournalStream, journalLine } from '../../src/log.js';

const repo = join(import.meta.dirname, '..', '..');

describe('journalLine', () => {
  test('each pino level gets its syslog priority, the message first, every other field kept', () => {
    const levels: [number, number][] = [
      [10, 7],
      [20, 7],
      [30, 6],
      [40, 4],
      [50, 3],
      [60, 2],
    ];
    for (const [level, priority] of levels) {
      const fields = {
        level,
        time: '2026-01-01T00:00:00.000Z',
        pid: 7,
        part: 'ingest',
        n: 3,
        nested: { a: [1] },
      };
      const out = journalLine(`${JSON.stringify({ ...fields, msg: 'device d1 rejected' })}\n`);
      assert.ok(out.startsWith(`<${priority}>device d1 rejected {`), out);
      assert.ok(out.endsWith('}\n'));
      assert.deepEqual(JSON.parse(out.slice(out.indexOf('{'))), fields);
    }
  });

  test('a message with newlines stays one journal entry; the fields keep theirs escaped', () => {
    const line = JSON.stringify({
      level: 50,
      msg: 'invalid configuration:\n  - a\n  - b',
      err: { stack: 'x\ny' },
    });
    const out = journalLine(`${line}\n`);
    assert.equal(out.split('\n').length, 2, out); // one line and the final newline
    assert.ok(out.startsWith('<3>invalid configuration: - a - b {'), out);
    assert.deepEqual(JSON.parse(out.slice(out.indexOf('{'))).err, { stack: 'x\ny' });
  });

  test('a line that is not JSON is passed on at info, on one line', () => {
    assert.equal(journalLine('not json\nat all\n'), '<6>not json at all\n');
    assert.equal(journalLine('{"level":40'), '<6>{"level":40');
  });

  test('a message that is not a string leaves an empty message, never a crash', () => {
    assert.equal(journalLine('{"level":40,"msg":42}\n'), '<4> {"level":40}\n');
  });
});

describe('isJournalStream', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ek-journal-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('true only when JOURNAL_STREAM names the descriptor itself', () => {
    const file = join(dir, 'out');
    writeFileSync(file, '');
    const fd = openSync(file, 'r');
    try {
      const st = fstatSync(fd);
      assert.equal(isJournalStream({ JOURNAL_STREAM: `${st.dev}:${st.ino}` }, fd), true);
      assert.equal(isJournalStream({ JOURNAL_STREAM: `${st.dev}:${st.ino + 1}` }, fd), false);
      assert.equal(isJournalStream({}, fd), false);
      for (const bad of ['', 'x', `${st.dev}`, `${st.dev}:${st.ino}:1`, `-1:${st.ino}`, ' 1:2'])
        assert.equal(isJournalStream({ JOURNAL_STREAM: bad }, fd), false, bad);
      assert.equal(isJournalStream({ JOURNAL_STREAM: `${st.dev}:${st.ino}` }, 9999), false);
    } finally {
      closeSync(fd);
    }
  });
});

describe('the daemon under a real journald', () => {
  test('journalctl -p warning shows the warnings with their message, not the info lines', () => {
    for (const bin of ['/lib/systemd/systemd-journald', 'systemd-cat', 'journalctl', 'unshare']) {
      const r = spawnSync('sh', ['-c', `command -v ${bin} || test -x ${bin}`]);
      assert.equal(r.status, 0, `${bin} is needed (apt-get install systemd util-linux)`);
    }
    const dir = mkdtempSync(join(tmpdir(), 'ek-journald-'));
    try {
      // A missing bpftrace gives a warning at start; "edgekeeper ready" is an info line.
      const script = `set -e
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/log
mkdir -p /run/systemd/journal /run/log/journal
/lib/systemd/systemd-journald >/dev/null 2>&1 &
j=$!
for i in $(seq 100); do [ -S /run/systemd/journal/stdout ] && break; sleep 0.1; done
EDGEKEEPER_PROBES_BPFTRACE_PATH=/nonexistent/bpftrace systemd-cat -t edgekeeper sh -c \\
  'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/$$/fd/1) exec "${process.execPath}" --import tsx "${join(repo, 'src', 'main.ts')}" run \\
   --data-dir "${dir}/data" --http-listen 127.0.0.1:0 --etcd-listen 127.0.0.1:0 --mqtt-listen 127.0.0.1:0' &
d=$!
for i in $(seq 600); do
  journalctl -D /run/log/journal -t edgekeeper --no-pager -o cat 2>/dev/null | grep -q '^edgekeeper ready' && break
  sleep 0.1
done
kill -TERM $(pgrep -P $d) $d 2>/dev/null || true
wait $d || true
echo '{"http": {"listen": "nowhere"}}' > "${dir}/bad.json"
systemd-cat -t edgekeeper-bad sh -c \
  'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/$$/fd/1) exec "${process.execPath}" --import tsx "${join(repo, 'src', 'main.ts')}" run --config "${dir}/bad.json"' || true
sleep 0.5
journalctl -D /run/log/journal -t edgekeeper --no-pager -o json -p warning > "${dir}/warning.json"
journalctl -D /run/log/journal -t edgekeeper-bad --no-pager -o json > "${dir}/bad-config.json"
journalctl -D /run/log/journal -t edgekeeper --no-pager -o json > "${dir}/all.json"
kill $j; wait $j || true
`;
      // A pid namespace too: whatever the script leaves running dies with it.
      const r = spawnSync(
        'unshare',
        [
          '--mount',
          '--pid',
          '--fork',
          '--kill-child',
          '--mount-proc',
          '--propagation',
          'private',
          'bash',
          '-c',
          script,
        ],
        {
          cwd: repo,
          encoding: 'utf8',
          timeout: 120_000,
        },
      );
      assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
      const read = (f: string) =>
        spawnSync('cat', [join(dir, f)], { encoding: 'utf8' })
          .stdout.split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l) as { MESSAGE: string; PRIORITY: string });
      const all = read('all.json');
      const ready = all.find((e) => e.MESSAGE.startsWith('edgekeeper ready '));
      assert.ok(ready, `no "edgekeeper ready" entry: ${all.map((e) => e.MESSAGE).join('\n')}`);
      assert.equal(ready.PRIORITY, '6');
      // The fields follow the message as JSON, prefix stripped by journald.
      const fields = JSON.parse(ready.MESSAGE.slice('edgekeeper ready '.length)) as {
        level: number;
        version: string;
      };
      assert.equal(fields.level, 30);
      const warnings = read('warning.json');
      assert.ok(warnings.length > 0, 'no warning entries');
      for (const w of warnings) assert.ok(Number(w.PRIORITY) <= 4, JSON.stringify(w));
      assert.ok(
        warnings.some((w) => w.PRIORITY === '4' && w.MESSAGE.startsWith('probes: bpftrace: ')),
        warnings.map((w) => w.MESSAGE).join('\n'),
      );
      assert.ok(!warnings.some((w) => w.MESSAGE.startsWith('edgekeeper ready')));
      assert.ok(!all.some((e) => e.MESSAGE.startsWith('<')), 'a priority prefix reached the journal');
      // A start refused for its configuration: one entry at priority err, every problem in it.
      const bad = read('bad-config.json');
      assert.equal(bad.length, 1, JSON.stringify(bad));
      assert.equal(bad[0]!.PRIORITY, '3');
      assert.match(
        bad[0]!.MESSAGE,
        /^edgekeeper: invalid configuration: - Expected `http\.listen` to be HOST:PORT/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
