import type { MeasureText } from './types.js';

/** Longest text we ever measure; a hostile 1 MB device name costs no more than this. */
const MAX_GRAPHEMES = 200;
const ELLIPSIS = '…';

const segmenter = new Intl.Segmenter(undefined, { granularity: 'grapheme' });

/**
 * Make a name safe to draw: control characters become spaces, bidi overrides and isolates are
 * dropped (they could reorder the rest of the line), runs of white space collapse, and the text
 * is cut to MAX_GRAPHEMES grapheme clusters so measuring stays cheap.
 */
export function sanitize(text: string): string {
  const clean = text
    // biome-ignore lint/suspicious/noControlCharactersInRegex: removing them is the point
    .replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, ' ')
    .replace(/[\u202a-\u202e\u2066-\u2069]/g, '')
    .replace(/\s+/g, ' ')
    .trim();
  if (clean.length <= MAX_GRAPHEMES) return clean;
  return graphemes(clean).slice(0, MAX_GRAPHEMES).join('');
}

export function graphemes(text: string): string[] {
  const out: string[] = [];
  for (const s of segmenter.segment(text)) {
    out.push(s.segment);
    if (out.length > MAX_GRAPHEMES) break;
  }
  return out;
}

/**
 * The longest prefix of `text` (whole grapheme clusters, so no emoji, flag or combining mark is
 * split) that fits `maxWidth` in `font`, with an ellipsis when shortened; "" when not even the
 * ellipsis fits. Binary search: about log2(n) measurements.
 */
export function fitText(
  text: string,
  font: string,
  maxWidth: number,
  measure: MeasureText,
): { text: string; width: number } {
  const w = measure(text, font);
  if (w <= maxWidth) return { text, width: w };
  const parts = graphemes(text);
  let lo = 0;
  let hi = parts.length - 1;
  let best = '';
  let bestW = 0;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    // Trailing spaces before the ellipsis look like a gap; trim them.
    const candidate = parts.slice(0, mid).join('').trimEnd() + ELLIPSIS;
    const cw = measure(candidate, font);
    if (cw <= maxWidth) {
      best = candidate;
      bestW = cw;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  return { text: best, width: bestW };
}
