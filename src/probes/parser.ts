/**
 * Parser for bpftrace's `-f json` output (v0.17): one JSON object per line, `{"type", "data"}`.
 * Line shapes recorded on a real machine are in test/probes/fixtures/:
 *   attached_probes  {"probes": n}
 *   map              {"@name": number} or {"@name": {"key": number, ...}} (keys joined by ",")
 *   hist             {"@name": [bucket...]} or {"@name": {"key": [bucket...]}}; a bucket is
 *                    {"min", "max", "count"}; an lhist's last (open-ended) bucket has no "max";
 *                    empty buckets inside the range are printed with count 0, leading and
 *                    trailing empty ones are omitted
 *   stats            {"@name": {"count", "average", "total"}} (stats()) or {"@name": number} (avg())
 *   printf           "text\n"
 * At exit bpftrace prints two empty lines and dumps every non-empty map again in the same shapes.
 * Anything else (stderr text mixed in by a wrapper, a truncated line, hostile input) becomes a
 * `bad` result with the reason; the caller counts it and carries on.
 */

/** One histogram bucket: values in [min, max]; `max` undefined for lhist's open-ended last one. */
export interface RawBucket {
  min: number;
  max: number | undefined;
  count: number;
}

export type ParsedLine =
  | { kind: 'attached'; probes: number }
  | { kind: 'empty' }
  | { kind: 'map'; name: string; value: number; key?: undefined }
  | { kind: 'map'; name: string; values: Map<string, number> }
  | { kind: 'hist'; name: string; buckets: RawBucket[] }
  | { kind: 'hist'; name: string; keyed: Map<string, RawBucket[]> }
  | { kind: 'stats'; name: string; count: number; average: number; total: number }
  | { kind: 'stats'; name: string; average: number; count?: undefined }
  | { kind: 'printf'; text: string }
  | { kind: 'bad'; reason: string };

/** bpftrace lines are short; anything longer is not bpftrace talking (or a map far too wide). */
export const MAX_LINE_BYTES = 1024 * 1024;

function bad(reason: string): ParsedLine {
  return { kind: 'bad', reason };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

function parseBuckets(v: unknown): RawBucket[] | string {
  if (!Array.isArray(v)) return 'histogram buckets are not an array';
  const out: RawBucket[] = [];
  for (let i = 0; i < v.length; i++) {
    const b: unknown = v[i];
    if (!isRecord(b)) return `bucket ${i} is not an object`;
    const { min, max, count } = b;
    if (!isCount(min) || !isCount(count) || count < 0) return `bucket ${i} lacks a numeric min or count`;
    if (max !== undefined && (!isCount(max) || max < min)) return `bucket ${i} has a bad max`;
    // Only the last bucket may be open-ended (lhist's ">= max" bucket).
    if (max === undefined && i !== v.length - 1) return `bucket ${i} is open-ended but not last`;
    out.push({ min, max: max as number | undefined, count });
  }
  return out;
}

/** The one "@name" entry of a data object; bpftrace prints one map per line. */
function single(data: unknown): [string, unknown] | string {
  if (!isRecord(data)) return 'data is not an object';
  const keys = Object.keys(data);
  if (keys.length !== 1) return `expected one map per line, got ${keys.length}`;
  const name = keys[0]!;
  if (!name.startsWith('@')) return `map name ${JSON.stringify(name.slice(0, 40))} does not start with @`;
  return [name.slice(1), data[name]];
}

export function parseLine(line: string): ParsedLine {
  if (line.length > MAX_LINE_BYTES) return bad(`line of ${line.length} bytes exceeds ${MAX_LINE_BYTES}`);
  const text = line.trim();
  if (text === '') return { kind: 'empty' };
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch {
    return bad(`not JSON: ${JSON.stringify(text.slice(0, 80))}`);
  }
  if (!isRecord(obj) || typeof obj.type !== 'string') return bad('not a bpftrace {"type","data"} object');
  const data = obj.data;
  switch (obj.type) {
    case 'attached_probes': {
      if (!isRecord(data) || !isCount(data.probes)) return bad('attached_probes without a count');
      return { kind: 'attached', probes: data.probes };
    }
    case 'printf': {
      if (typeof data !== 'string') return bad('printf data is not a string');
      return { kind: 'printf', text: data };
    }
    case 'map': {
      const s = single(data);
      if (typeof s === 'string') return bad(s);
      const [name, v] = s;
      if (isCount(v)) return { kind: 'map', name, value: v };
      if (!isRecord(v)) return bad(`map @${name} is neither a number nor an object`);
      const values = new Map<string, number>();
      for (const [k, n] of Object.entries(v)) {
        if (!isCount(n)) return bad(`map @${name}[${k.slice(0, 40)}] is not a number`);
        values.set(k, n);
      }
      return { kind: 'map', name, values };
    }
    case 'hist': {
      const s = single(data);
      if (typeof s === 'string') return bad(s);
      const [name, v] = s;
      if (Array.isArray(v)) {
        const buckets = parseBuckets(v);
        if (typeof buckets === 'string') return bad(`hist @${name}: ${buckets}`);
        return { kind: 'hist', name, buckets };
      }
      if (!isRecord(v)) return bad(`hist @${name} is neither an array nor an object`);
      const keyed = new Map<string, RawBucket[]>();
      for (const [k, arr] of Object.entries(v)) {
        const buckets = parseBuckets(arr);
        if (typeof buckets === 'string') return bad(`hist @${name}[${k.slice(0, 40)}]: ${buckets}`);
        keyed.set(k, buckets);
      }
      return { kind: 'hist', name, keyed };
    }
    case 'stats': {
      const s = single(data);
      if (typeof s === 'string') return bad(s);
      const [name, v] = s;
      if (isCount(v)) return { kind: 'stats', name, average: v };
      if (!isRecord(v) || !isCount(v.count) || !isCount(v.average) || !isCount(v.total)) {
        return bad(`stats @${name} lacks count/average/total`);
      }
      return { kind: 'stats', name, count: v.count, average: v.average, total: v.total };
    }
    default:
      return bad(`unknown line type ${JSON.stringify(String(obj.type).slice(0, 40))}`);
  }
}

/**
 * Splits a byte stream into lines with a bound: a line longer than MAX_LINE_BYTES is dropped
 * (reported once through `onOverflow`) instead of growing the buffer without end.
 */
export class LineSplitter {
  private buf = '';
  private skipping = false;
  constructor(
    private readonly onLine: (line: string) => void,
    private readonly onOverflow: (bytes: number) => void,
  ) {}

  push(chunk: string): void {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf('\n', start);
      if (nl < 0) break;
      const piece = chunk.slice(start, nl);
      start = nl + 1;
      if (this.skipping) {
        this.skipping = false;
        this.buf = '';
        continue;
      }
      const line = this.buf + piece;
      this.buf = '';
      this.onLine(line);
    }
    if (this.skipping) return;
    this.buf += chunk.slice(start);
    if (this.buf.length > MAX_LINE_BYTES) {
      this.onOverflow(this.buf.length);
      this.buf = '';
      this.skipping = true;
    }
  }

  /** The stream ended: a last line without newline still counts. */
  end(): void {
    if (!this.skipping && this.buf !== '') this.onLine(this.buf);
    this.buf = '';
    this.skipping = false;
  }
}
