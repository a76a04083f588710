/**
 * Power cut, as far as a test can make one: the store writes on an ext4 file system on a loop
 * device; at a random moment the writer is frozen (SIGSTOP) and the loop device's backing image
 * is copied. The copy holds what the file system had sent to the "disk" then, not what sat in
 * the page cache: exactly what a power cut leaves. The copy is mounted (ext4 replays its
 * journal), the store opens it, and every write acknowledged before the freeze must be there.
 * A kill -9 (crash.test.ts) keeps the page cache; this does not, so it checks the writer's own
 * fdatasync discipline (see src/store/writer.ts).
 *
 * Needs root, losetup and mkfs.ext4 (util-linux, e2fsprogs); in CI their absence is a failure.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import test from 'node:test';
import { openStore } from '../../src/store/index.js';

const child = new URL('./crash-child.ts', import.meta.url).pathname;

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr || r.error}`);
  return r.stdout.trim();
}

function canRun(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (loop devices, mount)';
  for (const c of ['losetup', 'mkfs.ext4', 'mount'])
    if (spawnSync('sh', ['-c', `command -v ${c}`]).status !== 0) return `needs ${c}`;
  return undefined;
}

/** An ext4 file system on a loop device, mounted at `dir`. */
function mountImage(image: string, dir: string): () => void {
  const loop = sh('losetup', ['-f', '--show', image]);
  try {
    mkdirSync(dir, { recursive: true });
    sh('mount', [loop, dir]);
  } catch (e) {
    sh('losetup', ['-d', loop]);
    throw e;
  }
  return () => {
    spawnSync('umount', [dir]);
    spawnSync('losetup', ['-d', loop]);
  };
}

/** Run the writer until a random moment, freeze it, copy the image, then kill it. */
async function round(file: string, n: number, image: string, copy: string): Promise<Map<string, number>> {
  const p = spawn(process.execPath, ['--import', 'tsx', child, file, String(n)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const acked = new Map<string, number>();
  const exited = new Promise<void>((res) => p.once('exit', () => res()));
  const lines = createInterface({ input: p.stdout! });
  let frozen = false;
  lines.on('line', (l) => {
    const [kind, key, rev] = l.split(' ');
    if (kind === 'ready')
      setTimeout(
        () => {
          // Stop taking acknowledgements first: what is printed after the freeze does not count.
          frozen = true;
          p.kill('SIGSTOP');
          copyFileSync(image, copy);
          p.kill('SIGKILL');
        },
        300 + Math.floor(Math.random() * 700),
      );
    if (kind === 'ack' && !frozen) acked.set(key!, Number(rev));
  });
  await exited;
  return acked;
}

test('acknowledged writes survive a power cut (the disk as the file system had written it)', async (t) => {
  const why = canRun();
  if (why) {
    if (process.env.CI) assert.fail(`power-cut test ${why}`);
    t.skip(why);
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'ek-powercut-'));
  const image = join(dir, 'disk.img');
  const copy = join(dir, 'cut.img');
  writeFileSync(image, '');
  sh('truncate', ['-s', '256M', image]);
  sh('mkfs.ext4', ['-q', '-E', 'lazy_itable_init=0,lazy_journal_init=0', image]);
  const unmount = mountImage(image, join(dir, 'disk'));
  const all = new Map<string, number>();
  try {
    for (let n = 0; n < 4; n++) {
      const acked = await round(join(dir, 'disk', 'p.db'), n, image, copy);
      assert.ok(acked.size > 0, `round ${n}: nothing was acknowledged`);
      for (const [k, v] of acked) all.set(k, v);
      const unmountCopy = mountImage(copy, join(dir, 'cut'));
      try {
        const s = await openStore({ file: join(dir, 'cut', 'p.db') });
        try {
          let missing = 0;
          for (const [key, rev] of all) {
            const r = s.range({ key: Buffer.from(key) });
            if (r.kvs[0]?.modRevision !== rev) missing++;
          }
          assert.equal(missing, 0, `round ${n}: ${missing} of ${all.size} acknowledged writes lost`);
        } finally {
          await s.close();
        }
      } finally {
        unmountCopy();
      }
    }
  } finally {
    unmount();
    rmSync(dir, { recursive: true, force: true });
  }
});
