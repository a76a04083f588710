/**
 * Golden images: every fixed snapshot (healthy, many devices offline, probes unavailable, uplink
 * down, everything unknown) at every size, compared with test/frames/golden/*.png with a small
 * pixel tolerance. Regenerate with EDGEKEEPER_UPDATE_GOLDEN=1 and LOOK at the images before
 * committing them.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { SIZES } from '../../src/frames/index.js';
import { snapshots } from './fixtures.js';
import { decodePng, diffPixels, framePng } from './helpers.js';

const dir = fileURLToPath(new URL('./golden/', import.meta.url));
const update = process.env.EDGEKEEPER_UPDATE_GOLDEN === '1';
/** Share of pixels allowed to differ (anti-aliasing across Skia builds); text changes exceed it. */
const MAX_DIFF_SHARE = 0.002;

for (const [name, snap] of Object.entries(snapshots)) {
  for (const size of Object.values(SIZES)) {
    test(`golden ${name} ${size.name}`, async () => {
      const file = `${dir}${name}-${size.name}.png`;
      const png = framePng(snap, size);
      if (update) writeFileSync(file, png);
      assert.ok(
        existsSync(file),
        `missing golden ${file}; run with EDGEKEEPER_UPDATE_GOLDEN=1 and look at it`,
      );
      const want = await decodePng(readFileSync(file));
      const got = await decodePng(png);
      assert.equal(got.width, size.width);
      assert.equal(got.height, size.height);
      const bad = diffPixels(got.data, want.data);
      assert.ok(
        bad <= size.width * size.height * MAX_DIFF_SHARE,
        `${bad} pixels differ from ${file} (allowed ${Math.floor(size.width * size.height * MAX_DIFF_SHARE)})`,
      );
    });
  }
}

test('the comparison notices a changed frame (healthy vs offline differ beyond tolerance)', async () => {
  for (const size of Object.values(SIZES)) {
    const a = await decodePng(framePng(snapshots.healthy!, size));
    const b = await decodePng(framePng(snapshots.offline!, size));
    assert.ok(diffPixels(a.data, b.data) > size.width * size.height * MAX_DIFF_SHARE, size.name);
  }
});
