/**
 * Text still renders on a machine without system fonts. Proves: in a private mount namespace
 * with an empty directory bind-mounted over /usr/share/fonts (and /usr/local/share/fonts), a
 * control drawing with the system family draws nothing, while the frame drawn with the bundled
 * fonts is pixel for pixel the frame of a normal run, and tesseract reads its words back.
 * Needs: root (for unshare -m and mount), util-linux unshare, tesseract. A missing one fails.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { decodePng, diffPixels } from './helpers.js';

const run = promisify(execFile);
const tmp = mkdtempSync(join(tmpdir(), 'ek-nofonts-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const child = fileURLToPath(new URL('./nofonts-child.ts', import.meta.url));
const empty = join(tmp, 'empty');
mkdirSync(empty);

/** Run the child with node + tsx, optionally inside a namespace without system fonts. */
async function node(args: string[], noFonts: boolean): Promise<string> {
  const cmd = [process.execPath, '--import', 'tsx', child, ...args]
    .map((a) => `'${a.replaceAll("'", "'\\''")}'`)
    .join(' ');
  const hide = ['/usr/share/fonts', '/usr/local/share/fonts']
    .map((d) => `if [ -d ${d} ]; then mount --bind '${empty}' ${d}; fi`)
    .join('; ');
  const script = noFonts ? `set -e; ${hide}; exec ${cmd}` : `exec ${cmd}`;
  const r = await run('unshare', ['-m', 'sh', '-c', script], { timeout: 60_000, cwd: process.cwd() });
  return r.stdout;
}

test('no system fonts: the control draws nothing, the frame still shows its text', async () => {
  assert.ok(Number((await node(['control'], false)).trim()) > 50, 'control draws text with system fonts');
  assert.equal(
    Number((await node(['control'], true)).trim()),
    0,
    'system fonts are really hidden in the namespace',
  );

  const normal = join(tmp, 'normal.png');
  const bare = join(tmp, 'bare.png');
  await node(['frame', normal], false);
  await node(['frame', bare], true);
  const a = await decodePng(readFileSync(normal));
  const b = await decodePng(readFileSync(bare));
  assert.equal(diffPixels(a.data, b.data, 0), 0, 'the frame is identical with and without system fonts');

  const { stdout } = await run('tesseract', [bare, '-'], { timeout: 60_000 });
  for (const word of ['line-3-cabinet-a', 'revision', 'database'])
    assert.ok(stdout.includes(word), `tesseract read "${word}" in:\n${stdout}`);
});
