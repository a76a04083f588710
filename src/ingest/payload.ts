/**
 * Report payloads. A report is a CBOR or JSON map:
 *   { ts?: int ms (device clock), seq?: uint (de-duplication), metrics: {name: number},
 *     state?: small object, tags?: {name: string} }
 * The format is told apart by the MQTT 5 content type when the device sends one, else by the
 * first byte: `{` (after whitespace) is JSON, a CBOR map (major type 5) or the self-describe tag
 * is CBOR. Everything is checked; the stored body is a canonical CBOR map {metrics, state?, tags?}.
 */
import { Decoder, Encoder } from 'cbor-x';

export interface Report {
  ts: number | null;
  seq: number | null;
  metrics: Record<string, number>;
  state?: Record<string, unknown>;
  tags?: Record<string, string>;
}

export type RejectReason =
  | 'too_large'
  | 'malformed'
  | 'schema'
  | 'too_many_metrics'
  | 'rate'
  | 'acl'
  | 'auth'
  | 'bad_device_id'
  | 'bad_topic'
  | 'connections'
  | 'unknown_device'
  // the embedded broker's connection bounds (guard.ts, gate.ts, login.ts)
  | 'timeout'
  | 'protocol'
  | 'too_many_filters'
  | 'too_many_refusals'
  | 'memory'
  | 'throttled';

export type Decoded =
  | { ok: true; report: Report; body: Buffer }
  | { ok: false; reason: RejectReason; detail: string };

export interface PayloadLimits {
  maxPayload: number;
  maxMetrics: number;
}

const METRIC_NAME_RE = /^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$/;
const TAG_NAME_RE = METRIC_NAME_RE;
// a device's state is a handful of flags and strings, not a second report channel
const MAX_STATE_BYTES = 4096;
const MAX_TAGS = 32;
const MAX_TAG_VALUE = 256;
const ALLOWED = new Set(['ts', 'seq', 'metrics', 'state', 'tags']);

// mapsAsObjects + no records: plain JSON-like values only, so both formats validate the same way
const decoder = new Decoder({ mapsAsObjects: true, useRecords: false });
const encoder = new Encoder({ useRecords: false, mapsAsObjects: true });

export function detectFormat(payload: Buffer, contentType?: string): 'json' | 'cbor' | undefined {
  if (contentType) {
    const ct = contentType.split(';')[0]!.trim().toLowerCase();
    if (ct === 'application/json') return 'json';
    if (ct === 'application/cbor') return 'cbor';
  }
  for (let i = 0; i < payload.length; i++) {
    const b = payload[i]!;
    // JSON whitespace before the object
    if (b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d) continue;
    if (b === 0x7b) return 'json';
    // 0xa0..0xbf: CBOR major type 5 (map); 0xd9d9f7: self-describe tag 55799 (RFC 8949 3.4.6)
    if (b >= 0xa0 && b <= 0xbf) return i === 0 ? 'cbor' : undefined;
    if (i === 0 && b === 0xd9 && payload[1] === 0xd9 && payload[2] === 0xf7) return 'cbor';
    return undefined;
  }
  return undefined;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return (
    typeof v === 'object' &&
    v !== null &&
    !Array.isArray(v) &&
    !Buffer.isBuffer(v) &&
    !(v instanceof Uint8Array)
  );
}

export function decodeReport(payload: Buffer, limits: PayloadLimits, contentType?: string): Decoded {
  if (payload.length > limits.maxPayload) {
    return {
      ok: false,
      reason: 'too_large',
      detail: `payload of ${payload.length} bytes exceeds ${limits.maxPayload}`,
    };
  }
  const format = detectFormat(payload, contentType);
  if (!format)
    return { ok: false, reason: 'malformed', detail: 'payload is neither a JSON object nor a CBOR map' };
  let value: unknown;
  try {
    value = format === 'json' ? JSON.parse(payload.toString('utf8')) : decoder.decode(payload);
  } catch (err) {
    return { ok: false, reason: 'malformed', detail: `${format}: ${(err as Error).message}`.slice(0, 200) };
  }
  return validate(value, limits);
}

export function validate(value: unknown, limits: PayloadLimits): Decoded {
  const bad = (detail: string): Decoded => ({ ok: false, reason: 'schema', detail });
  if (!isPlainObject(value)) return bad('report must be a map');
  for (const k of Object.keys(value))
    if (!ALLOWED.has(k)) return bad(`unknown field ${JSON.stringify(k.slice(0, 40))}`);
  const { ts, seq, metrics, state, tags } = value;
  if (ts !== undefined && ts !== null && !(Number.isSafeInteger(ts) && (ts as number) >= 0)) {
    return bad('ts must be a non-negative integer (ms since the epoch)');
  }
  if (seq !== undefined && seq !== null && !(Number.isSafeInteger(seq) && (seq as number) >= 0)) {
    return bad('seq must be a non-negative integer');
  }
  if (!isPlainObject(metrics)) return bad('metrics must be a map of name to number');
  const names = Object.keys(metrics);
  if (names.length > limits.maxMetrics) {
    return {
      ok: false,
      reason: 'too_many_metrics',
      detail: `${names.length} metrics exceed ${limits.maxMetrics}`,
    };
  }
  for (const n of names) {
    if (!METRIC_NAME_RE.test(n)) return bad(`bad metric name ${JSON.stringify(n.slice(0, 40))}`);
    const v = metrics[n];
    if (typeof v !== 'number' || !Number.isFinite(v)) return bad(`metric ${n} must be a finite number`);
  }
  const report: Report = {
    ts: (ts as number | undefined) ?? null,
    seq: (seq as number | undefined) ?? null,
    metrics: metrics as Record<string, number>,
  };
  if (state !== undefined && state !== null) {
    if (!isPlainObject(state)) return bad('state must be a map');
    let size: number;
    try {
      size = JSON.stringify(state).length;
    } catch {
      return bad('state must be JSON-like');
    }
    if (size > MAX_STATE_BYTES) return bad(`state of ${size} bytes exceeds ${MAX_STATE_BYTES}`);
    report.state = state;
  }
  if (tags !== undefined && tags !== null) {
    if (!isPlainObject(tags)) return bad('tags must be a map of name to string');
    const tagNames = Object.keys(tags);
    if (tagNames.length > MAX_TAGS) return bad(`more than ${MAX_TAGS} tags`);
    for (const n of tagNames) {
      const v = tags[n];
      if (!TAG_NAME_RE.test(n)) return bad(`bad tag name ${JSON.stringify(n.slice(0, 40))}`);
      if (typeof v !== 'string' || v.length > MAX_TAG_VALUE)
        return bad(`tag ${n} must be a string of at most ${MAX_TAG_VALUE} characters`);
    }
    report.tags = tags as Record<string, string>;
  }
  const stored: Record<string, unknown> = { metrics: report.metrics };
  if (report.state) stored.state = report.state;
  if (report.tags) stored.tags = report.tags;
  return { ok: true, report, body: Buffer.from(encoder.encode(stored)) };
}

/** Decode a stored body (for tests and tools). */
export function decodeBody(body: Buffer): {
  metrics: Record<string, number>;
  state?: Record<string, unknown>;
  tags?: Record<string, string>;
} {
  return decoder.decode(body);
}

/** Status payloads: `online` / `offline` as text, or JSON `{"online": bool}`. */
export function parseStatus(payload: Buffer): boolean | undefined {
  if (payload.length > 256) return undefined;
  const s = payload.toString('utf8').trim();
  if (s === 'online' || s === '1' || s === 'true') return true;
  if (s === 'offline' || s === '0' || s === 'false') return false;
  try {
    const v = JSON.parse(s) as unknown;
    if (isPlainObject(v)) {
      if (typeof v.online === 'boolean') return v.online;
      if (v.status === 'online') return true;
      if (v.status === 'offline') return false;
    }
  } catch {
    // fall through: unknown status
  }
  return undefined;
}
