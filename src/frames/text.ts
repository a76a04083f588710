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
/**
 * Fitted texts per measure function: most texts on a frame (labels, units, names) repeat from
 * frame to frame, so the next layout is mostly lookups. Bounded: cleared when full.
 */
const FIT_CACHE_MAX = 2048;
const fitCaches = new WeakMap<MeasureText, Map<string, { text: string; width: number }>>();

/** fitText with a per-measure cache (same answers; for the layout's hot path). */
export function fitTextCached(
  text: string,
  font: string,
  maxWidth: number,
  measure: MeasureText,
): { text: string; width: number } {
  let cache = fitCaches.get(measure);
  if (!cache) {
    cache = new Map();
    fitCaches.set(measure, cache);
  }
  const key = `${font}\u0000${maxWidth}\u0000${text}`;
  let hit = cache.get(key);
  if (!hit) {
    if (cache.size >= FIT_CACHE_MAX) cache.clear();
    hit = fitText(text, font, maxWidth, measure);
    cache.set(key, hit);
  }
  return hit;
}

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
