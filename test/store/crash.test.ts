/**
 * Crash test: a child process performs acknowledged writes and is killed with SIGKILL at random
 * moments, over many rounds. After each restart every acknowledged write is present with its
 * revision, revisions continue without reuse, and the file passes its integrity check (the store
 * runs PRAGMA quick_check on open and refuses a damaged file).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import test from 'node:test';
import { openStore } from '../../src/store/index.js';

const child = new URL('./crash-child.ts', import.meta.url).pathname;

async function round(file: string, n: number, killAfterMs: number): Promise<Map<string, number>> {
  const p = spawn(process.execPath, ['--import', 'tsx', child, file, String(n)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const acked = new Map<string, number>();
  const lines = createInterface({ input: p.stdout! });
  const exited = new Promise<void>((res) => p.once('exit', () => res()));
  await new Promise<void>((resolve, reject) => {
    lines.on('line', (l) => {
      const [kind, key, rev] = l.split(' ');
      if (kind === 'ready') setTimeout(() => p.kill('SIGKILL'), killAfterMs);
      if (kind === 'ack') acked.set(key!, Number(rev));
    });
    p.once('exit', (code, sig) =>
      sig === 'SIGKILL' ? resolve() : reject(new Error(`child exited ${code}`)),
    );
  });
  await exited;
  return acked;
}

test('acknowledged writes survive SIGKILL at random moments; revisions never reused', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ek-crash-'));
  const file = join(dir, 'c.db');
  let maxAcked = 1;
  let total = 0;
  try {
    for (let n = 0; n < 8; n++) {
      const acked = await round(file, n, 150 + Math.floor(Math.random() * 600));
      total += acked.size;
      const s = await openStore({ file, inlineWriter: true });
      try {
        for (const [key, rev] of acked) {
          const r = s.range({ key: Buffer.from(key) });
          assert.equal(r.kvs.length, 1, `round ${n}: acknowledged ${key} (revision ${rev}) is missing`);
          assert.equal(r.kvs[0]!.modRevision, rev, `round ${n}: ${key} has the wrong revision`);
          assert.equal(r.kvs[0]!.value.toString(), key);
          maxAcked = Math.max(maxAcked, rev);
        }
        assert.ok(s.revision() >= maxAcked, 'the store revision went backwards');
        const next = await s.put({ key: Buffer.from(`after/${n}`), value: Buffer.from('x') });
        assert.ok(next.header.revision > maxAcked, 'a revision was reused after the crash');
        maxAcked = next.header.revision;
      } finally {
        await s.close();
      }
    }
    assert.ok(total > 100, `too few acknowledged writes (${total}) for the test to mean anything`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
