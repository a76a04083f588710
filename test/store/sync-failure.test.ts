/**
 * A WAL sync that fails, for real: the writer runs in a child under strace, which makes the
 * kernel's fdatasync return EIO from the Nth call on. The write whose sync failed is answered
 * with EDGE_ERR_STORAGE, every later write is refused at once, the store reports it as fatal
 * exactly once, and after a restart on the same file every acknowledged write is there.
 * Needs strace (test/setup.sh installs it).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import test from 'node:test';
import { openStore } from '../../src/store/index.js';

const child = new URL('./sync-failure-child.ts', import.meta.url).pathname;
const haveStrace = spawnSync('strace', ['-V']).status === 0;

test('a failed WAL sync fails its batch, stops all writes and loses nothing acknowledged', async (t) => {
  if (!haveStrace) {
    if (process.env.CI) assert.fail('strace is missing (test/setup.sh installs it)');
    t.skip('strace is missing');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'ek-syncfail-'));
  const file = join(dir, 's.db');
  try {
    // fdatasync is only the writer's WAL sync (SQLite itself uses fsync): the 30th on fails.
    const p = spawn(
      'strace',
      [
        '-f',
        '-qq',
        '--seccomp-bpf',
        '-o',
        '/dev/null',
        '-e',
        'trace=fdatasync',
        '-e',
        'inject=fdatasync:error=EIO:when=30+',
        process.execPath,
        '--import',
        'tsx',
        child,
        file,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const acked = new Map<string, number>();
    const failed: string[] = [];
    let fatal = 0;
    const exit = new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
    for await (const line of createInterface({ input: p.stdout! })) {
      const [kind, a, b] = line.split(' ');
      if (kind === 'ack') acked.set(a!, Number(b));
      else if (kind === 'err') failed.push(`${a} ${b}`);
      else if (kind === 'fatal') fatal++;
    }
    assert.equal(await exit, 0);
    assert.ok(acked.size >= 20, `only ${acked.size} writes were acknowledged before the failure`);
    assert.equal(fatal, 1, 'the store must report the failed sync once');
    assert.ok(failed.length > 0, 'no write saw the failure');
    assert.ok(
      failed.every((f) => f.endsWith('EDGE_ERR_STORAGE')),
      `writes after the failed sync must fail with EDGE_ERR_STORAGE: ${failed.join(', ')}`,
    );

    const s = await openStore({ file });
    try {
      for (const [key, rev] of acked) {
        const r = s.range({ key: Buffer.from(key) });
        assert.equal(r.kvs[0]?.modRevision, rev, `acknowledged ${key} (revision ${rev}) is missing`);
      }
      // The store works again after the restart.
      await s.put({ key: Buffer.from('after'), value: Buffer.from('x') });
    } finally {
      await s.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
