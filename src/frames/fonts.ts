import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type * as Canvas from '@napi-rs/canvas';

let canvasModule: typeof Canvas | undefined;

/**
 * @napi-rs/canvas, loaded on the first frame rather than at import: loading it (Skia) costs
 * ~100 ms of CPU, which a daemon with frames off never pays and one with frames on pays after
 * it is ready.
 */
export function canvas(): typeof Canvas {
  canvasModule ??= createRequire(import.meta.url)('@napi-rs/canvas') as typeof Canvas;
  return canvasModule;
}

/**
 * The frame is drawn only with fonts shipped in `assets/fonts/` (DejaVu, Bitstream Vera
 * licence), registered under our own family names. Without this, a machine with no system fonts
 * draws no text at all and canvas reports no error; with it, the output is the same with or
 * without system fonts.
 */
export const SANS = 'EK Sans';
export const SANS_BOLD = 'EK Sans Bold';
export const MONO = 'EK Mono';

let registered = false;

/** `assets/fonts/` from `src/frames/` (tsx) and from `dist/frames/` (built) alike. */
export function fontDir(): string {
  return fileURLToPath(new URL('../../assets/fonts/', import.meta.url));
}

/** Register the bundled fonts once per process; throws if a file is missing or unreadable. */
export function registerFonts(): void {
  if (registered) return;
  const dir = fontDir();
  const files: [string, string][] = [
    ['DejaVuSans.ttf', SANS],
    ['DejaVuSans-Bold.ttf', SANS_BOLD],
    ['DejaVuSansMono.ttf', MONO],
  ];
  for (const [file, family] of files) {
    const path = dir + file;
    if (!existsSync(path) || !canvas().GlobalFonts.registerFromPath(path, family)) {
      throw new Error(
        `cannot load the bundled font ${path}; reinstall edgekeeper (the package ships assets/fonts)`,
      );
    }
  }
  registered = true;
}

/** A CSS font string in one of the bundled families; sizes are whole pixels. */
export function font(px: number, family: 'sans' | 'bold' | 'mono' = 'sans'): string {
  const name = family === 'bold' ? SANS_BOLD : family === 'mono' ? MONO : SANS;
  return `${Math.round(px)}px "${name}"`;
}
