/**
 * The batch wire format (version 1), shared by the uplink and the receiver.
 *
 * A batch is one CBOR map, compressed as a whole (gzip or brotli, named by Content-Encoding):
 *
 *   { v: 1, n: node, st: database stream id (hex), q: seq, t: sentAt ms, a: applied desired version | null,
 *     b: [backlog events, backlog reports, backlog samples],
 *     h?: HealthSummary (wire keys below),                // the node's health right now
 *     e?: [[id, ts, kind, subject, data], ...],           // events, row-wise: they are few
 *     r?: ReportColumns, s?: SampleColumns }                // columnar: they are many
 *
 * Columnar reports make a typical report (8 numeric metrics) cost a few bytes before
 * compression: ids and receive times are delta-encoded, device names and metric names go
 * through dictionaries, each metric becomes one column of delta-encoded integers scaled by the
 * smallest power of ten that represents every value exactly (else raw float64), and the set of
 * metric names a row carries ("shape") is one small index. Anything that does not fit the
 * columns (non-numeric metrics, state, tags, other keys, an undecodable body) travels as a
 * per-row extra, so nothing a device sent is lost.
 *
 * Integer columns are zigzag varint byte strings; when a value does not fit (|v| > 2^51 or not
 * an integer) the column is sent as a plain CBOR array instead.
 */
import { Decoder, Encoder } from 'cbor-x';
import { SyncBadBatchError } from '../errors.js';
import { MAX_ZIGZAG, VarintReader, VarintWriter } from './varint.js';

export const WIRE_VERSION = 1;

export interface EventRecord {
  id: number;
  ts: number;
  kind: string;
  subject: string | null;
  data: string | null;
}

export interface ReportRecord {
  id: number;
  device: string;
  received_at: number;
  ts: number | null;
  seq: number | null;
  /** CBOR map {metrics, state?, tags?} as ingest stored it. */
  body: Uint8Array;
}

export interface SampleRecord {
  id: number;
  ts: number;
  probe: string;
  metric: string;
  /** CBOR as probes stored it. */
  data: Uint8Array;
}

export interface Backlog {
  events: number;
  reports: number;
  samples: number;
}

export type AlertSeverity = 'critical' | 'warning' | 'info';

/**
 * The node's health when the batch was built: what the receiver shows as the node's current
 * state even if it missed the events that led there. On the wire (`h`) with short keys:
 * r ready, f failing checks, al [[severity, text]], u uplink state, ue uplink error, d disk full,
 * db/q database bytes and quota, bb/bg sync backlog bytes and budget, du/dt file system used and
 * total, o oldest unsent age (s), nx seconds until the next contact at the latest. Keys a
 * receiver does not know are ignored, so a newer node can add some.
 */
export interface HealthSummary {
  ready: boolean;
  /** Failing readiness checks by name, each with what is wrong. */
  failing: Record<string, string>;
  /** Current alerts, most severe first. */
  alerts: { severity: AlertSeverity; text: string }[];
  uplink: { state: string; lastError?: string };
  disk: {
    full: boolean;
    dbBytes?: number;
    quotaBytes?: number;
    backlogBytes?: number;
    budgetBytes?: number;
    usedBytes?: number;
    totalBytes?: number;
  };
  oldestUnsentSeconds?: number;
  /** The node promises its next batch within this many seconds (heartbeat, upload windows). */
  nextContactSeconds: number;
}

/** Limits of a health summary: it rides in every batch and is shown to people. */
export const HEALTH_MAX_TEXT = 500;
export const HEALTH_MAX_ITEMS = 32;

export interface Batch {
  node: string;
  /**
   * Identity of the node's database (random, made with it). Batch sequence numbers and record
   * ids count within one stream: a node whose database was re-created starts a new stream
   * instead of colliding with what its old database sent.
   */
  stream: string;
  seq: number;
  sentAt: number;
  /** The desired-state version the node has applied, or null before the first one. */
  applied: string | null;
  backlog: Backlog;
  health?: HealthSummary;
  events: EventRecord[];
  reports: ReportRecord[];
  samples: SampleRecord[];
}

/** A report as the receiver stores it. */
export interface DecodedReport {
  id: number;
  device: string;
  receivedAt: number;
  ts: number | null;
  seq: number | null;
  metrics: Record<string, unknown>;
  /** True when `metrics` holds non-numbers too (they may be bigints, bytes, maps). */
  mixed?: boolean;
  state?: unknown;
  tags?: unknown;
  /** Other top-level keys of the body; `{raw}` (the bytes) when the body was not a CBOR map. */
  other?: Record<string, unknown>;
}

export interface DecodedSample {
  id: number;
  ts: number;
  probe: string;
  metric: string;
  data: unknown;
}

export interface DecodedBatch {
  node: string;
  /**
   * Identity of the node's database (random, made with it). Batch sequence numbers and record
   * ids count within one stream: a node whose database was re-created starts a new stream
   * instead of colliding with what its old database sent.
   */
  stream: string;
  seq: number;
  sentAt: number;
  applied: string | null;
  backlog: Backlog;
  /** Absent from nodes that predate health upload. */
  health?: HealthSummary;
  events: EventRecord[];
  reports: ReportColumns;
  samples: DecodedSample[];
}

// Plain maps in, plain objects out; no cbor-x record extension (the receiver may not be us).
const encoder = new Encoder({ useRecords: false, mapsAsObjects: true });
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true });

/** Decode a CBOR value from a database column (report body, sample data). */
export function decodeCbor(bytes: Uint8Array): unknown {
  return decoder.decode(bytes);
}

export function encodeCbor(value: unknown): Buffer {
  return encoder.encode(value);
}

// --- integer columns ---------------------------------------------------------------------------

function fits(v: number): boolean {
  return Number.isInteger(v) && Math.abs(v) <= MAX_ZIGZAG / 2;
}

/** Delta-encode a sequence of integers (first delta from 0). */
function packDeltas(values: number[]): Buffer | number[] {
  const w = new VarintWriter(values.length * 2 + 8);
  let prev = 0;
  for (const v of values) {
    if (!fits(v)) return values;
    w.int(v - prev);
    prev = v;
  }
  return w.finish();
}

function unpackDeltas(col: unknown, n: number, what: string): number[] {
  if (Array.isArray(col)) return intArray(col, n, what);
  const r = reader(col, what);
  const out = new Array<number>(n);
  let prev = 0;
  for (let i = 0; i < n; i++) {
    prev += r.int();
    if (!int64(prev)) throw bad(`column ${what} sums past a 64-bit integer`);
    out[i] = prev;
  }
  if (!r.done) throw bad(`column ${what} is longer than its ${n} rows`);
  return out;
}

/** Unsigned small integers (dictionary indexes). */
function packIndexes(values: number[]): Buffer {
  const w = new VarintWriter(values.length + 8);
  for (const v of values) w.uint(v);
  return w.finish();
}

function unpackIndexes(col: unknown, n: number, limit: number, what: string): number[] {
  const r = reader(col, what);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    const v = r.uint();
    if (v >= limit) throw bad(`column ${what} refers to entry ${v} of a dictionary of ${limit}`);
    out[i] = v;
  }
  if (!r.done) throw bad(`column ${what} is longer than its ${n} rows`);
  return out;
}

/** Nullable integers relative to a base per row (0 = null, else zigzag(v - base) + 1). */
function packRelative(values: (number | null)[], base: (i: number) => number): Buffer | (number | null)[] {
  const w = new VarintWriter(values.length * 2 + 8);
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (v === null) {
      w.uint(0);
      continue;
    }
    const d = v - base(i);
    if (!fits(v) || !fits(d)) return values;
    w.uint(zig1(d));
  }
  return w.finish();
}

function zig1(d: number): number {
  return (d >= 0 ? d * 2 : -d * 2 - 1) + 1;
}

function unpackRelative(
  col: unknown,
  n: number,
  base: (i: number) => number,
  what: string,
): (number | null)[] {
  if (Array.isArray(col)) {
    if (col.length !== n) throw bad(`column ${what} has ${col.length} rows, expected ${n}`);
    return col.map((v) => {
      if (v === null) return null;
      if (!int64(v)) throw bad(`column ${what} holds a non-integer`);
      return v;
    });
  }
  const r = reader(col, what);
  const out = new Array<number | null>(n);
  for (let i = 0; i < n; i++) {
    const u = r.uint();
    if (u === 0) out[i] = null;
    else {
      const z = u - 1;
      const v = (z % 2 === 0 ? z / 2 : -(z + 1) / 2) + base(i);
      if (!int64(v)) throw bad(`column ${what} holds a value past a 64-bit integer`);
      out[i] = v;
    }
  }
  if (!r.done) throw bad(`column ${what} is longer than its ${n} rows`);
  return out;
}

// --- metric value columns ----------------------------------------------------------------------

const POW10 = [1, 10, 100, 1000, 10_000, 100_000, 1_000_000];

/** Smallest decimal scale that represents `v` exactly, or -1. */
function scaleOf(v: number): number {
  if (Object.is(v, -0) || !Number.isFinite(v)) return -1;
  for (let s = 0; s < POW10.length; s++) {
    const p = POW10[s]!;
    const x = Math.round(v * p);
    // Decoding divides by the same power, so this check proves the round trip is exact.
    if (x / p === v) return Math.abs(x) <= MAX_ZIGZAG / 4 ? s : -1;
  }
  return -1;
}

/** [scale, zigzag deltas of v*10^scale] or [-1, float64 LE bytes]. */
function packValues(values: number[]): [number, Buffer] {
  let scale = 0;
  for (const v of values) {
    const s = scaleOf(v);
    if (s < 0) {
      scale = -1;
      break;
    }
    if (s > scale) scale = s;
  }
  if (scale < 0) {
    const b = Buffer.allocUnsafe(values.length * 8);
    for (let i = 0; i < values.length; i++) b.writeDoubleLE(values[i]!, i * 8);
    return [-1, b];
  }
  const p = POW10[scale]!;
  const w = new VarintWriter(values.length * 2 + 8);
  let prev = 0;
  for (const v of values) {
    const x = Math.round(v * p);
    w.int(x - prev);
    prev = x;
  }
  return [scale, w.finish()];
}

function unpackValues(col: unknown, n: number, what: string): number[] {
  if (!Array.isArray(col) || col.length !== 2) throw bad(`metric column ${what} is not [scale, bytes]`);
  const [scale, bytes] = col as [unknown, unknown];
  if (!(bytes instanceof Uint8Array)) throw bad(`metric column ${what} has no byte string`);
  const out = new Array<number>(n);
  if (scale === -1) {
    if (bytes.length !== n * 8) throw bad(`metric column ${what} has ${bytes.length} bytes for ${n} doubles`);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0; i < n; i++) out[i] = view.getFloat64(i * 8, true);
    return out;
  }
  if (typeof scale !== 'number' || !Number.isInteger(scale) || scale < 0 || scale >= POW10.length)
    throw bad(`metric column ${what} has scale ${String(scale)}`);
  const p = POW10[scale]!;
  const r = new VarintReader(bytes);
  let prev = 0;
  try {
    for (let i = 0; i < n; i++) {
      prev += r.int();
      out[i] = prev / p;
    }
  } catch (err) {
    throw bad(`metric column ${what}: ${(err as Error).message}`);
  }
  if (!r.done) throw bad(`metric column ${what} is longer than its ${n} values`);
  return out;
}

// --- tables --------------------------------------------------------------------------------------

/**
 * Builds the report columns one row at a time, so a batch being read from SQLite never holds
 * its rows (or their decoded bodies) at once: only compact number columns survive.
 */
export class ReportsEncoder {
  n = 0;
  private readonly ids: number[] = [];
  private readonly received: number[] = [];
  private readonly ts: (number | null)[] = [];
  private readonly seq: (number | null)[] = [];
  private readonly seqBase: number[] = [];
  private readonly devices = new Map<string, number>();
  private readonly devIdx: number[] = [];
  private readonly lastSeq: (number | null)[] = [];
  private readonly metricNames = new Map<string, number>();
  private readonly shapes = new Map<string, number>();
  private readonly shapeList: number[][] = [];
  private readonly shapeIdx: number[] = [];
  private readonly columns: number[][] = [];
  private readonly extras: [number, Record<string, unknown>][] = [];
  private readonly indexes: number[] = [];

  add(r: ReportRecord): void {
    const i = this.n++;
    this.ids.push(r.id);
    this.received.push(r.received_at);
    this.ts.push(r.ts);
    this.seq.push(r.seq);
    let d = this.devices.get(r.device);
    if (d === undefined) {
      d = this.devices.size;
      this.devices.set(r.device, d);
      this.lastSeq.push(null);
    }
    this.devIdx.push(d);
    // Device sequence numbers usually advance by one: send the step from the device's last one.
    this.seqBase.push(this.lastSeq[d] ?? 0);
    if (r.seq !== null) this.lastSeq[d] = r.seq;

    let body: unknown;
    try {
      body = decoder.decode(r.body);
    } catch {
      body = undefined;
    }
    const indexes = this.indexes;
    indexes.length = 0;
    if (body === null || typeof body !== 'object' || Array.isArray(body) || body instanceof Uint8Array) {
      this.extras.push([i, { raw: Buffer.from(r.body) }]);
    } else {
      let extra: Record<string, unknown> | undefined;
      for (const k in body as Record<string, unknown>) {
        const v = (body as Record<string, unknown>)[k];
        if (
          k === 'metrics' &&
          v !== null &&
          typeof v === 'object' &&
          !Array.isArray(v) &&
          !(v instanceof Uint8Array)
        ) {
          let other: Record<string, unknown> | undefined;
          for (const name in v as Record<string, unknown>) {
            const value = (v as Record<string, unknown>)[name];
            if (typeof value === 'number') {
              let m = this.metricNames.get(name);
              if (m === undefined) {
                m = this.metricNames.size;
                this.metricNames.set(name, m);
                this.columns.push([]);
              }
              if (indexes.includes(m)) continue;
              indexes.push(m);
              this.columns[m]!.push(value);
            } else {
              other ??= {};
              other[name] = value;
            }
          }
          if (other) {
            extra ??= {};
            extra.m = other;
          }
        } else {
          extra ??= {};
          extra[k === 'metrics' ? 'mx' : k === 'state' ? 's' : k === 'tags' ? 'g' : `o:${k}`] = v;
        }
      }
      if (extra) this.extras.push([i, extra]);
    }
    const key = indexes.join(',');
    let sh = this.shapes.get(key);
    if (sh === undefined) {
      sh = this.shapeList.length;
      this.shapes.set(key, sh);
      this.shapeList.push(indexes.slice());
    }
    this.shapeIdx.push(sh);
  }

  finish(): Record<string, unknown> {
    const received = this.received;
    const seqBase = this.seqBase;
    return {
      n: this.n,
      i: packDeltas(this.ids),
      ra: packDeltas(received),
      ts: packRelative(this.ts, (i) => received[i]!),
      sq: packRelative(this.seq, (i) => seqBase[i]!),
      dv: [...this.devices.keys()],
      di: packIndexes(this.devIdx),
      mn: [...this.metricNames.keys()],
      sh: this.shapeList,
      si: packIndexes(this.shapeIdx),
      mv: this.columns.map(packValues),
      x: this.extras,
    };
  }
}

/** A batch being filled row by row (events and samples are few and kept as rows). */
export class BatchEncoder {
  readonly events: EventRecord[] = [];
  readonly samples: SampleRecord[] = [];
  readonly reports = new ReportsEncoder();
  get records(): number {
    return this.events.length + this.reports.n + this.samples.length;
  }
  /** The CBOR bytes, before compression. */
  finish(h: Omit<Batch, 'events' | 'reports' | 'samples'>): Buffer {
    const m: Record<string, unknown> = {
      v: WIRE_VERSION,
      n: h.node,
      st: h.stream,
      q: h.seq,
      t: h.sentAt,
      a: h.applied,
      bl: [h.backlog.events, h.backlog.reports, h.backlog.samples],
    };
    if (h.health) m.h = encodeHealth(h.health);
    if (this.events.length) m.e = this.events.map((e) => [e.id, e.ts, e.kind, e.subject, e.data]);
    if (this.reports.n) m.r = this.reports.finish();
    if (this.samples.length) m.s = encodeSamples(this.samples);
    return encoder.encode(m);
  }
}

/** Extra parts of one report that did not fit the columns. */
export interface ReportExtra {
  /** Non-numeric metrics (merged with the row's numeric ones). */
  metrics?: Record<string, unknown>;
  state?: unknown;
  tags?: unknown;
  other?: Record<string, unknown>;
}

/** Reports as decoded columns: the receiver writes them out without a per-row object. */
export interface ReportColumns {
  n: number;
  ids: number[];
  receivedAt: number[];
  ts: (number | null)[];
  seq: (number | null)[];
  devices: string[];
  deviceIndex: number[];
  names: string[];
  shapes: number[][];
  shapeIndex: number[];
  /** values[m][k]: the k-th value of metric m, in row order over the rows whose shape holds m. */
  values: number[][];
  extras: Map<number, ReportExtra>;
}

function decodeReportColumns(col: unknown): ReportColumns {
  const c = obj(col, 'r');
  const n = count(c.n, 'r.n');
  const ids = unpackDeltas(c.i, n, 'r.i');
  const ra = unpackDeltas(c.ra, n, 'r.ra');
  const ts = unpackRelative(c.ts, n, (i) => ra[i]!, 'r.ts');
  const dv = stringArray(c.dv, 'r.dv');
  const di = unpackIndexes(c.di, n, dv.length, 'r.di');
  const lastSeq = new Array<number>(dv.length).fill(0);
  // The seq base is the device's previous non-null seq, so decode row by row.
  const seqCol = c.sq;
  let seqs: (number | null)[];
  if (Array.isArray(seqCol)) seqs = unpackRelative(seqCol, n, () => 0, 'r.sq');
  else {
    const r = reader(seqCol, 'r.sq');
    seqs = new Array<number | null>(n);
    for (let i = 0; i < n; i++) {
      const u = r.uint();
      if (u === 0) seqs[i] = null;
      else {
        const z = u - 1;
        const v = (z % 2 === 0 ? z / 2 : -(z + 1) / 2) + lastSeq[di[i]!]!;
        lastSeq[di[i]!] = v;
        seqs[i] = v;
      }
    }
    if (!r.done) throw bad('column r.sq is longer than its rows');
  }
  const mn = stringArray(c.mn, 'r.mn');
  if (!Array.isArray(c.sh)) throw bad('r.sh is not an array');
  const shapes = (c.sh as unknown[]).map((s, k) => {
    if (!Array.isArray(s)) throw bad(`r.sh[${k}] is not an array`);
    const seen = new Set<number>();
    return s.map((m) => {
      if (typeof m !== 'number' || !Number.isInteger(m) || m < 0 || m >= mn.length || seen.has(m))
        throw bad(`r.sh[${k}] names metric ${String(m)} of ${mn.length}`);
      seen.add(m);
      return m;
    });
  });
  const si = unpackIndexes(c.si, n, shapes.length, 'r.si');
  // Count each metric's rows to know its column length.
  const counts = new Array<number>(mn.length).fill(0);
  for (let i = 0; i < n; i++) for (const m of shapes[si[i]!]!) counts[m]!++;
  if (!Array.isArray(c.mv) || c.mv.length !== mn.length) throw bad('r.mv does not match r.mn');
  const values = (c.mv as unknown[]).map((v, m) => unpackValues(v, counts[m]!, mn[m]!));
  if (!Array.isArray(c.x)) throw bad('r.x is not an array');
  const extras = new Map<number, ReportExtra>();
  for (const e of c.x as unknown[]) {
    if (!Array.isArray(e) || e.length !== 2) throw bad('r.x entry is not [row, extra]');
    const [row, extra] = e as [unknown, unknown];
    if (typeof row !== 'number' || !Number.isInteger(row) || row < 0 || row >= n || extras.has(row))
      throw bad('r.x row out of range or repeated');
    const x = obj(extra, 'r.x extra');
    const rep: ReportExtra = {};
    for (const [k, v] of Object.entries(x)) {
      if (k === 'm') rep.metrics = obj(v, 'r.x.m');
      else if (k === 's') rep.state = v;
      else if (k === 'g') rep.tags = v;
      else if (k === 'raw') rep.other = { ...rep.other, raw: v };
      else if (k === 'mx') rep.other = { ...rep.other, metrics: v };
      else if (k.startsWith('o:')) rep.other = { ...rep.other, [k.slice(2)]: v };
      else throw bad(`r.x has unknown key ${k}`);
    }
    extras.set(row, rep);
  }
  return {
    n,
    ids,
    receivedAt: ra,
    ts,
    seq: seqs,
    devices: dv,
    deviceIndex: di,
    names: mn,
    shapes,
    shapeIndex: si,
    values,
    extras,
  };
}

/** Reports one object per row (for tests and simple consumers). */
export function reportRows(c: ReportColumns): DecodedReport[] {
  const pos = new Array<number>(c.names.length).fill(0);
  const out = new Array<DecodedReport>(c.n);
  for (let i = 0; i < c.n; i++) {
    const metrics: Record<string, unknown> = {};
    for (const m of c.shapes[c.shapeIndex[i]!]!) metrics[c.names[m]!] = c.values[m]![pos[m]!++];
    const rep: DecodedReport = {
      id: c.ids[i]!,
      device: c.devices[c.deviceIndex[i]!]!,
      receivedAt: c.receivedAt[i]!,
      ts: c.ts[i]!,
      seq: c.seq[i]!,
      metrics,
    };
    const x = c.extras.get(i);
    if (x) {
      if (x.metrics) {
        Object.assign(metrics, x.metrics);
        rep.mixed = true;
      }
      if (x.state !== undefined) rep.state = x.state;
      if (x.tags !== undefined) rep.tags = x.tags;
      if (x.other !== undefined) rep.other = x.other;
    }
    out[i] = rep;
  }
  return out;
}

function encodeSamples(rows: SampleRecord[]): Record<string, unknown> {
  const probes = new Map<string, number>();
  const metrics = new Map<string, number>();
  const pi: number[] = [];
  const mi: number[] = [];
  for (const r of rows) {
    let p = probes.get(r.probe);
    if (p === undefined) {
      p = probes.size;
      probes.set(r.probe, p);
    }
    let m = metrics.get(r.metric);
    if (m === undefined) {
      m = metrics.size;
      metrics.set(r.metric, m);
    }
    pi.push(p);
    mi.push(m);
  }
  return {
    n: rows.length,
    i: packDeltas(rows.map((r) => r.id)),
    t: packDeltas(rows.map((r) => r.ts)),
    p: [...probes.keys()],
    pi: packIndexes(pi),
    m: [...metrics.keys()],
    mi: packIndexes(mi),
    d: rows.map((r) => Buffer.from(r.data)),
  };
}

function decodeSamples(col: unknown): DecodedSample[] {
  const c = obj(col, 's');
  const n = count(c.n, 's.n');
  const ids = unpackDeltas(c.i, n, 's.i');
  const ts = unpackDeltas(c.t, n, 's.t');
  const p = stringArray(c.p, 's.p');
  const pi = unpackIndexes(c.pi, n, p.length, 's.pi');
  const m = stringArray(c.m, 's.m');
  const mi = unpackIndexes(c.mi, n, m.length, 's.mi');
  if (!Array.isArray(c.d) || c.d.length !== n) throw bad('s.d does not have one entry per row');
  const out = new Array<DecodedSample>(n);
  for (let i = 0; i < n; i++) {
    const raw = (c.d as unknown[])[i];
    if (!(raw instanceof Uint8Array)) throw bad('s.d entry is not a byte string');
    let data: unknown;
    try {
      data = decoder.decode(raw);
    } catch {
      data = { raw: Buffer.from(raw) };
    }
    out[i] = { id: ids[i]!, ts: ts[i]!, probe: p[pi[i]!]!, metric: m[mi[i]!]!, data };
  }
  return out;
}

function decodeEvents(col: unknown): EventRecord[] {
  if (!Array.isArray(col)) throw bad('e is not an array');
  return col.map((row, k) => {
    if (!Array.isArray(row) || row.length !== 5) throw bad(`e[${k}] is not [id, ts, kind, subject, data]`);
    const [id, ts, kind, subject, data] = row as unknown[];
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 1) throw bad(`e[${k}] has a bad id`);
    if (!int64(ts)) throw bad(`e[${k}] has a bad ts`);
    if (typeof kind !== 'string') throw bad(`e[${k}] has a bad kind`);
    if (subject !== null && typeof subject !== 'string') throw bad(`e[${k}] has a bad subject`);
    if (data !== null && typeof data !== 'string') throw bad(`e[${k}] has bad data`);
    return { id, ts, kind, subject, data };
  });
}

function EMPTY_REPORTS(): ReportColumns {
  return {
    n: 0,
    ids: [],
    receivedAt: [],
    ts: [],
    seq: [],
    devices: [],
    deviceIndex: [],
    names: [],
    shapes: [],
    shapeIndex: [],
    values: [],
    extras: new Map(),
  };
}

// --- batch ---------------------------------------------------------------------------------------

/** CBOR bytes of a batch, before compression. */
export function encodeBatch(b: Batch): Buffer {
  const e = new BatchEncoder();
  e.events.push(...b.events);
  for (const r of b.reports) e.reports.add(r);
  e.samples.push(...b.samples);
  return e.finish(b);
}

/** Parse and check a batch; every defect is a SyncBadBatchError naming what is wrong. */
export function decodeBatch(bytes: Uint8Array): DecodedBatch {
  let raw: unknown;
  try {
    raw = decoder.decode(bytes);
  } catch (err) {
    throw bad(`body is not CBOR: ${(err as Error).message}`);
  }
  const m = obj(raw, 'batch');
  if (m.v !== WIRE_VERSION)
    throw bad(`wire version ${String(m.v)} is not supported (expected ${WIRE_VERSION})`);
  if (typeof m.n !== 'string' || m.n === '') throw bad('n (node) is not a string');
  if (typeof m.st !== 'string' || !/^[0-9a-f]{1,32}$/.test(m.st))
    throw bad('st (stream) is not a hex string');
  if (typeof m.q !== 'number' || !Number.isSafeInteger(m.q) || m.q < 1)
    throw bad('q (sequence) is not a positive integer');
  if (!int64(m.t)) throw bad('t (sent at) is not an integer (ms)');
  if (m.a !== null && m.a !== undefined && typeof m.a !== 'string')
    throw bad('a (applied version) is not a string');
  const bl = Array.isArray(m.bl) && m.bl.length === 3 ? (m.bl as unknown[]) : undefined;
  if (!bl || bl.some((x) => !int64(x) || (x as number) < 0)) throw bad('bl (backlog) is not three counts');
  try {
    const events = m.e === undefined ? [] : decodeEvents(m.e);
    const reports = m.r === undefined ? EMPTY_REPORTS() : decodeReportColumns(m.r);
    const samples = m.s === undefined ? [] : decodeSamples(m.s);
    const health = m.h === undefined ? undefined : decodeHealth(m.h);
    for (const [name, ids] of [
      ['events', events.map((e) => e.id)],
      ['reports', reports.ids],
      ['samples', samples.map((e) => e.id)],
    ] as const) {
      for (let i = 0; i < ids.length; i++)
        if (!Number.isSafeInteger(ids[i]) || ids[i]! < 1 || (i > 0 && ids[i]! <= ids[i - 1]!))
          throw bad(`${name} ids are not increasing positive integers`);
    }
    return {
      node: m.n,
      stream: m.st,
      seq: m.q,
      sentAt: m.t,
      applied: (m.a as string | null | undefined) ?? null,
      backlog: { events: bl[0] as number, reports: bl[1] as number, samples: bl[2] as number },
      ...(health ? { health } : {}),
      events,
      reports,
      samples,
    };
  } catch (err) {
    if (err instanceof SyncBadBatchError) throw err;
    throw bad((err as Error).message);
  }
}

// --- health summary ------------------------------------------------------------------------------

const DISK_KEYS = [
  ['db', 'dbBytes'],
  ['q', 'quotaBytes'],
  ['bb', 'backlogBytes'],
  ['bg', 'budgetBytes'],
  ['du', 'usedBytes'],
  ['dt', 'totalBytes'],
] as const;
const SEVERITIES = new Set(['critical', 'warning', 'info']);

function encodeHealth(h: HealthSummary): Record<string, unknown> {
  const m: Record<string, unknown> = {
    r: h.ready,
    u: h.uplink.state,
    d: h.disk.full,
    nx: h.nextContactSeconds,
  };
  if (Object.keys(h.failing).length) m.f = h.failing;
  if (h.alerts.length) m.al = h.alerts.map((a) => [a.severity, a.text]);
  if (h.uplink.lastError) m.ue = h.uplink.lastError;
  for (const [k, name] of DISK_KEYS) if (h.disk[name] !== undefined) m[k] = h.disk[name];
  if (h.oldestUnsentSeconds !== undefined) m.o = h.oldestUnsentSeconds;
  return m;
}

function decodeHealth(v: unknown): HealthSummary {
  const m = obj(v, 'h (health)');
  const text = (x: unknown, what: string): string => {
    if (typeof x !== 'string' || x.length > HEALTH_MAX_TEXT)
      throw bad(`${what} is not a text of at most ${HEALTH_MAX_TEXT}`);
    return x;
  };
  const amount = (x: unknown, what: string): number => {
    if (typeof x !== 'number' || !Number.isFinite(x) || x < 0)
      throw bad(`${what} is not a non-negative number`);
    return x;
  };
  if (typeof m.r !== 'boolean') throw bad('h.r (ready) is not a boolean');
  if (typeof m.d !== 'boolean') throw bad('h.d (disk full) is not a boolean');
  let failing: Record<string, string> = {};
  if (m.f !== undefined) {
    const entries = Object.entries(obj(m.f, 'h.f (failing checks)'));
    if (entries.length > HEALTH_MAX_ITEMS) throw bad(`h.f names more than ${HEALTH_MAX_ITEMS} checks`);
    // fromEntries defines own properties: a check named __proto__ stays a plain entry.
    failing = Object.fromEntries(entries.map(([k, x]) => [text(k, 'h.f check name'), text(x, 'h.f text')]));
  }
  const alerts: HealthSummary['alerts'] = [];
  if (m.al !== undefined) {
    if (!Array.isArray(m.al) || m.al.length > HEALTH_MAX_ITEMS)
      throw bad(`h.al (alerts) is not a list of at most ${HEALTH_MAX_ITEMS}`);
    for (const a of m.al as unknown[]) {
      if (!Array.isArray(a) || a.length !== 2 || !SEVERITIES.has(a[0] as string))
        throw bad('h.al entry is not [critical|warning|info, text]');
      alerts.push({ severity: a[0] as AlertSeverity, text: text(a[1], 'h.al text') });
    }
  }
  const disk: HealthSummary['disk'] = { full: m.d };
  for (const [k, name] of DISK_KEYS) if (m[k] !== undefined) disk[name] = amount(m[k], `h.${k}`);
  return {
    ready: m.r,
    failing,
    alerts,
    uplink: {
      state: text(m.u, 'h.u (uplink state)'),
      ...(m.ue !== undefined ? { lastError: text(m.ue, 'h.ue (uplink error)') } : {}),
    },
    disk,
    ...(m.o !== undefined ? { oldestUnsentSeconds: amount(m.o, 'h.o (oldest unsent)') } : {}),
    nextContactSeconds: amount(m.nx, 'h.nx (next contact)'),
  };
}

// --- checks ------------------------------------------------------------------------------------

function bad(message: string): SyncBadBatchError {
  return new SyncBadBatchError(message);
}

function obj(v: unknown, what: string): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v) || v instanceof Uint8Array)
    throw bad(`${what} is not a map`);
  return v as Record<string, unknown>;
}

/**
 * Times, ids, sequence numbers and counts end up in bigint columns: an integer whose decimal
 * form is inside the signed 64-bit range (the largest double below 2^63 is 2^63 - 1024).
 */
function int64(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && Math.abs(v) <= 2 ** 63 - 1024;
}

function count(v: unknown, what: string): number {
  // A batch holds at most a few hundred thousand rows; a larger count is hostile.
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 10_000_000)
    throw bad(`${what} is not a row count`);
  return v;
}

function stringArray(v: unknown, what: string): string[] {
  if (!Array.isArray(v) || v.some((s) => typeof s !== 'string'))
    throw bad(`${what} is not a list of strings`);
  return v as string[];
}

function intArray(v: unknown[], n: number, what: string): number[] {
  if (v.length !== n) throw bad(`column ${what} has ${v.length} rows, expected ${n}`);
  for (const x of v) if (!int64(x)) throw bad(`column ${what} holds a non-integer`);
  return v as number[];
}

function reader(col: unknown, what: string): VarintReader {
  if (!(col instanceof Uint8Array)) throw bad(`column ${what} is not a byte string`);
  return new VarintReader(col);
}
