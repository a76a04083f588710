/**
 * Child process for nofonts.test.ts. `frame OUT`: draw the healthy fixture at 800x480 with the
 * bundled fonts. `control OUT`: draw text with the system family "DejaVu Sans" without the
 * bundled fonts and print how many pixels got ink (0 when the system has no fonts).
 */
import { writeFileSync } from 'node:fs';
import { createCanvas } from '@napi-rs/canvas';

const [mode, out] = process.argv.slice(2);
if (mode === 'control') {
  const c = createCanvas(200, 50);
  const ctx = c.getContext('2d');
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, 200, 50);
  ctx.fillStyle = '#000';
  ctx.font = '30px "DejaVu Sans"';
  ctx.fillText('Hello', 10, 35);
  const d = ctx.getImageData(0, 0, 200, 50).data;
  let ink = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i]! < 128) ink++;
  process.stdout.write(`${ink}\n`);
} else {
  const { SIZES } = await import('../../src/frames/index.js');
  const { snapshots } = await import('./fixtures.js');
  const { framePng } = await import('./helpers.js');
  writeFileSync(out!, framePng(snapshots.healthy!, SIZES['800x480']));
}
