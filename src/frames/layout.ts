import { font } from './fonts.js';
import {
  fmtAge,
  fmtAgeCoarse,
  fmtBytes,
  fmtClock,
  fmtCount,
  fmtInt,
  fmtMs,
  fmtPercent,
  fmtTemp,
  isNum,
  UNKNOWN,
} from './format.js';
import { DISK_CRIT_RATIO, DISK_WARN_RATIO, TEMP_CRIT_C, TEMP_WARN_C } from './snapshot.js';
import { fitTextCached as fitText } from './text.js';
import type {
  Element,
  FrameSize,
  FrameSnapshot,
  Layout,
  MeasureText,
  SizeName,
  TextElement,
  Tone,
} from './types.js';

/** The sizes edgekeeper lays out, each with its own arrangement. */
export const SIZES: Readonly<Record<SizeName, FrameSize>> = Object.freeze({
  '800x480': { name: '800x480', width: 800, height: 480, mono: false }, // Raspberry Pi 7" display
  '480x320': { name: '480x320', width: 480, height: 320, mono: false }, // 3.5" SPI TFT
  '320x240': { name: '320x240', width: 320, height: 240, mono: false }, // 2.8" SPI TFT
  '250x122': { name: '250x122', width: 250, height: 122, mono: true }, // 2.13" e-paper
  '296x128': { name: '296x128', width: 296, height: 128, mono: true }, // 2.9" e-paper
});

export function parseSize(s: string | undefined | null): FrameSize | undefined {
  if (typeof s !== 'string') return undefined;
  return Object.hasOwn(SIZES, s) ? SIZES[s as SizeName] : undefined;
}

/** Slot height for a font size: the em box plus room for descenders and accents. */
const lineH = (px: number) => Math.ceil(px * 1.25);

class Builder {
  readonly elements: Element[] = [];
  constructor(
    readonly measure: MeasureText,
    /** 1-bit panels: thin anti-aliased strokes break up when thresholded, so every label is bold. */
    readonly mono = false,
  ) {}

  rect(x: number, y: number, w: number, h: number, tone: Tone): void {
    this.elements.push({ kind: 'rect', x, y, w, h, tone });
  }

  /** Fit `full` into the slot and add it; returns the drawn width. */
  text(
    full: string,
    x: number,
    y: number,
    w: number,
    h: number,
    f: string,
    tone: Tone,
    align: TextElement['align'] = 'left',
    /** Shrink the slot to the text (left-aligned), so something can follow on the same line. */
    tight = false,
  ): number {
    const fitted = fitText(full, f, Math.max(0, w), this.measure);
    if (fitted.text === '') return 0;
    this.elements.push({
      kind: 'text',
      text: fitted.text,
      full,
      x,
      y,
      w: tight ? Math.min(w, Math.ceil(fitted.width)) : w,
      h,
      width: fitted.width,
      align,
      font: f,
      tone,
    });
    return fitted.width;
  }

  /** A label left and a value right on one line, the value keeping up to `valueShare` of the width. */
  row(
    label: string,
    value: string,
    x: number,
    y: number,
    w: number,
    h: number,
    px: number,
    valueTone: Tone,
    labelTone: Tone = 'dim',
    valueShare = 0.68,
  ): void {
    const gap = Math.max(4, Math.round(px * 0.5));
    const vf = font(px, 'bold');
    const vw = Math.ceil(fitText(value, vf, Math.floor(w * valueShare), this.measure).width);
    this.text(value, x + w - vw, y, vw, h, vf, valueTone, 'right');
    this.text(label, x, y, w - vw - gap, h, font(px, this.mono ? 'bold' : 'sans'), labelTone);
  }

  spark(x: number, y: number, w: number, h: number, values: (number | undefined)[], tone: Tone): void {
    let max = 0;
    for (const v of values) if (isNum(v) && v > max) max = v;
    this.elements.push({ kind: 'spark', x, y, w, h, values, max, tone });
  }
}

type Status = { word: string; tone: Tone };

/**
 * One word for the whole node, from the alerts alone (devices offline, a full disk, ... are
 * alerts too): ALERT with a critical one, WARN with a warning, else OK; `?` when nothing is known.
 * So the header never says WARN above "no active alerts".
 */
export function overallStatus(s: FrameSnapshot): Status {
  if (s.alerts.some((a) => a.severity === 'critical')) return { word: 'ALERT', tone: 'bad' };
  if (s.alerts.some((a) => a.severity === 'warning')) return { word: 'WARN', tone: 'warn' };
  if (!s.devices && !s.store) return { word: '?', tone: 'dim' };
  return { word: 'OK', tone: 'ok' };
}

const SEVERITY_WORD = { critical: 'CRIT', warning: 'WARN', info: 'INFO' } as const;
const SEVERITY_TONE = { critical: 'bad', warning: 'warn', info: 'info' } as const;

interface ColourSpec {
  pad: number;
  header: number;
  headerPx: number;
  smallPx: number;
  titlePx: number;
  /** Largest row font; rows shrink to fit the column. */
  rowPx: number;
  bigPx: number;
  attPx: number;
  alertPx: number;
  alertLines: number;
  sparkH: number;
  compact: boolean;
}

const COLOUR_SPECS: Partial<Record<SizeName, ColourSpec>> = {
  '800x480': {
    pad: 16,
    header: 56,
    headerPx: 26,
    smallPx: 14,
    titlePx: 13,
    rowPx: 16,
    bigPx: 44,
    attPx: 16,
    alertPx: 16,
    alertLines: 2,
    sparkH: 64,
    compact: false,
  },
  '480x320': {
    pad: 8,
    header: 34,
    headerPx: 17,
    smallPx: 11,
    titlePx: 10,
    rowPx: 13,
    bigPx: 26,
    attPx: 12,
    alertPx: 12,
    alertLines: 2,
    sparkH: 34,
    compact: true,
  },
  '320x240': {
    pad: 5,
    header: 24,
    headerPx: 13,
    smallPx: 9,
    titlePx: 8,
    rowPx: 10,
    bigPx: 18,
    attPx: 10,
    alertPx: 10,
    alertLines: 1,
    sparkH: 22,
    compact: true,
  },
};

interface Row {
  title?: string;
  titleValue?: string;
  titleTone?: Tone;
  label?: string;
  value?: string;
  tone?: Tone;
}

const known = (v: string): Tone => (v === UNKNOWN ? 'dim' : 'fg');

function probeValue(p: { p99Ms?: number; unavailable?: string } | undefined): { value: string; tone: Tone } {
  if (!p) return { value: UNKNOWN, tone: 'dim' };
  if (isNum(p.p99Ms)) return { value: fmtMs(p.p99Ms), tone: 'fg' };
  return { value: `unavailable${p.unavailable ? `: ${p.unavailable}` : ''}`, tone: 'dim' };
}

function uplinkTone(state: string | undefined): Tone {
  if (state === 'ok' || state === 'sending') return 'ok';
  // Amber as the "uplink down" alert: data waits on the node, nothing is lost yet.
  if (state === 'retrying' || state === 'down') return 'warn';
  return 'dim';
}

function pct(used: number | undefined, total: number | undefined): number | undefined {
  return isNum(used) && isNum(total) && total > 0 ? (used / total) * 100 : undefined;
}

/** The same thresholds as the disk and SoC alerts, so a row's colour matches its alert. */
function diskTone(p: number | undefined): Tone | undefined {
  if (!isNum(p)) return undefined;
  return p >= DISK_CRIT_RATIO * 100 ? 'bad' : p >= DISK_WARN_RATIO * 100 ? 'warn' : undefined;
}

function tempTone(t: number | undefined): Tone | undefined {
  if (!isNum(t)) return undefined;
  return t >= TEMP_CRIT_C ? 'bad' : t >= TEMP_WARN_C ? 'warn' : undefined;
}

/** The right-hand column: store, probes, uplink, system. Compact merges rows for small screens. */
function statusRows(s: FrameSnapshot, compact: boolean): Row[] {
  const rows: Row[] = [];
  const st = s.store;
  rows.push({ title: 'STORE' });
  if (!st) rows.push({ label: 'store', value: UNKNOWN, tone: 'dim' });
  else {
    const rev = fmtInt(st.revision);
    rows.push({ label: 'revision', value: rev, tone: known(rev) });
    const lat =
      isNum(st.commitP50Ms) || isNum(st.commitP99Ms)
        ? `${fmtMs(st.commitP50Ms)} / ${fmtMs(st.commitP99Ms)}`
        : UNKNOWN;
    if (compact) {
      const p99 = fmtMs(st.commitP99Ms);
      rows.push({ label: 'commit p99', value: p99, tone: known(p99) });
    } else rows.push({ label: 'commit p50 / p99', value: lat, tone: known(lat) });
    const db = fmtBytes(st.dbSize);
    rows.push({ label: 'database', value: db, tone: known(db) });
  }

  rows.push({ title: 'PROBES' });
  if (!s.probes) rows.push({ label: 'probes', value: UNKNOWN, tone: 'dim' });
  else {
    const f = probeValue(s.probes.fsync);
    rows.push({ label: 'fsync p99', value: f.value, tone: f.tone });
    const r = probeValue(s.probes.runqlat);
    rows.push({ label: compact ? 'run queue' : 'run queue p99', value: r.value, tone: r.tone });
  }

  const u = s.uplink;
  const state = u?.state ?? UNKNOWN;
  rows.push({ title: 'UPLINK', titleValue: state, titleTone: u ? uplinkTone(u.state) : 'dim' });
  if (!u) rows.push({ label: 'uplink', value: UNKNOWN, tone: 'dim' });
  else {
    const backlog = isNum(u.backlogRecords) ? `${fmtInt(u.backlogRecords)} records` : UNKNOWN;
    rows.push({ label: 'backlog', value: backlog, tone: known(backlog) });
    if (!compact) {
      const oldest = isNum(u.oldestUnsentAgeMs) ? fmtAgeCoarse(u.oldestUnsentAgeMs) : UNKNOWN;
      rows.push({ label: 'oldest unsent', value: oldest, tone: known(oldest) });
    }
    const last = isNum(u.lastSuccessAgeMs)
      ? `${fmtClock(s.time - u.lastSuccessAgeMs, s.timeZone)} (${fmtAgeCoarse(u.lastSuccessAgeMs)} ago)`
      : u.state === 'disabled'
        ? 'off'
        : 'never / unknown';
    rows.push({ label: 'last upload', value: last, tone: isNum(u.lastSuccessAgeMs) ? 'fg' : 'dim' });
  }

  const y = s.system;
  const cpu = fmtPercent(y.cpuPercent);
  const temp = fmtTemp(y.socTempC);
  const memP = pct(y.memUsedBytes, y.memTotalBytes);
  const diskP = pct(y.diskUsedBytes, y.diskTotalBytes);
  rows.push({ title: 'SYSTEM' });
  if (compact) {
    rows.push({
      label: 'CPU · SoC',
      value: `${cpu} · ${temp}`,
      tone: tempTone(y.socTempC) ?? (cpu === UNKNOWN && temp === UNKNOWN ? 'dim' : 'fg'),
    });
    rows.push({
      label: 'mem · disk',
      value: `${fmtPercent(memP)} · ${fmtPercent(diskP)}`,
      tone: diskTone(diskP) ?? (memP === undefined && diskP === undefined ? 'dim' : 'fg'),
    });
  } else {
    rows.push({ label: 'CPU', value: cpu, tone: known(cpu) });
    const mem = isNum(memP) ? `${fmtPercent(memP)} of ${fmtBytes(y.memTotalBytes)}` : UNKNOWN;
    rows.push({ label: 'memory', value: mem, tone: known(mem) });
    const disk = isNum(diskP) ? `${fmtPercent(diskP)} of ${fmtBytes(y.diskTotalBytes)}` : UNKNOWN;
    rows.push({ label: 'disk', value: disk, tone: diskTone(diskP) ?? known(disk) });
    rows.push({ label: 'SoC temperature', value: temp, tone: tempTone(y.socTempC) ?? known(temp) });
  }
  return rows;
}

function header(
  b: Builder,
  s: FrameSnapshot,
  x0: number,
  width: number,
  h: number,
  px: number,
  smallPx: number,
  pad: number,
  mono: boolean,
): void {
  b.rect(0, 0, width, h, mono ? 'fg' : 'panel');
  const textTone: Tone = mono ? 'invfg' : 'fg';
  const st = overallStatus(s);
  const th = lineH(px);
  const ty = Math.floor((h - th) / 2);
  let x = x0;
  // Status badge: the word in a block, readable across a room. On a 1-bit panel the header is
  // black, so the block is white with black text.
  const bf = font(Math.round(px * (mono ? 0.85 : 0.7)), 'bold');
  const bw = Math.ceil(fitText(st.word, bf, 200, b.measure).width) + Math.round(px * (mono ? 0.5 : 0.8));
  const bh = mono ? h - 4 : Math.round(h * 0.62);
  const by = Math.floor((h - bh) / 2);
  b.rect(x, by, bw, bh, mono ? 'bg' : st.tone);
  b.text(st.word, x, by, bw, bh, bf, mono ? 'fg' : 'invfg', 'center');
  x += bw + Math.round(px * 0.5);
  const clock = fmtClock(s.time, s.timeZone);
  const tf = font(px, 'bold');
  const tw = Math.ceil(fitText(clock, tf, width / 3, b.measure).width);
  const right = width - pad;
  b.text(clock, right - tw, ty, tw, th, tf, textTone, 'right');
  let nameRight = right - tw - Math.round(px * 0.5);
  if (isNum(s.uptimeS) || !mono) {
    const up = `up ${isNum(s.uptimeS) ? fmtAge(s.uptimeS * 1000).replace(/ \d+s$/, '') : UNKNOWN}`;
    const uf = font(smallPx);
    const uh = lineH(smallPx);
    const uw = Math.ceil(fitText(up, uf, width / 4, b.measure).width);
    if (uw > 0 && nameRight - uw > x + width / 4) {
      b.text(up, nameRight - uw, Math.floor((h - uh) / 2) + 1, uw, uh, uf, mono ? 'invfg' : 'dim', 'right');
      nameRight -= uw + Math.round(px * 0.6);
    }
  }
  b.text(s.node, x, ty, nameRight - x, th, font(px, 'bold'), textTone);
}

function colourLayout(b: Builder, s: FrameSnapshot, size: FrameSize, spec: ColourSpec): void {
  const { width: W, height: H } = size;
  const p = spec.pad;
  b.rect(0, 0, W, H, 'bg');
  header(b, s, p, W, spec.header, spec.headerPx, spec.smallPx, p, false);

  const alertH = lineH(spec.alertPx) + Math.round(spec.alertPx * 0.3);
  const alertsTop = H - p - alertH * spec.alertLines;
  const top = spec.header + Math.round(p * 0.75);
  const bottom = alertsTop - Math.round(p * 0.5);
  const colW = Math.floor((W - 3 * p) / 2);
  const lx = p;
  const rx = 2 * p + colW;

  // --- left: devices ---
  const titleH = lineH(spec.titlePx);
  let y = top;
  const d = s.devices;
  b.text('DEVICES', lx, y, colW, titleH, font(spec.titlePx, 'bold'), 'accent');
  y += titleH;
  const bigH = lineH(spec.bigPx);
  const half = Math.floor((colW - p) / 2);
  const count = (v: number | undefined) => (isNum(v) ? fmtInt(v) : '?');
  const online = d?.online;
  const offline = d?.offline;
  // The colours of the device alerts: some offline is amber, none online is red (and "0 online"
  // is then never green).
  const allDown = online === 0 && isNum(offline) && offline > 0;
  const downTone: Tone = allDown ? 'bad' : 'warn';
  const onlineTone: Tone = !isNum(online) ? 'dim' : online > 0 ? 'ok' : allDown ? 'bad' : 'fg';
  b.text(count(online), lx, y, half, bigH, font(spec.bigPx, 'bold'), onlineTone);
  b.text(
    count(offline),
    lx + half + p,
    y,
    half,
    bigH,
    font(spec.bigPx, 'bold'),
    isNum(offline) ? (offline > 0 ? downTone : 'fg') : 'dim',
  );
  y += bigH;
  const smallH = lineH(spec.smallPx);
  b.text(isNum(online) ? 'online' : 'online: unknown', lx, y, half, smallH, font(spec.smallPx), 'dim');
  b.text(
    isNum(offline) ? 'offline' : 'offline: unknown',
    lx + half + p,
    y,
    half,
    smallH,
    font(spec.smallPx),
    'dim',
  );
  y += smallH + Math.round(p * 0.5);

  // Sparkline at the bottom of the column; the attention list fills what is between.
  const sparkLabelH = lineH(spec.smallPx);
  const sparkTop = bottom - spec.sparkH - sparkLabelH;
  const attH = lineH(spec.attPx);
  const attLines = Math.max(0, Math.floor((sparkTop - Math.round(p * 0.5) - y) / attH));
  if (!d) {
    if (attLines > 0) b.text('device registry: unknown', lx, y, colW, attH, font(spec.attPx), 'dim');
  } else if (d.attentionTotal === 0) {
    if (attLines > 0) b.text('all devices reporting', lx, y, colW, attH, font(spec.attPx), 'ok');
  } else {
    const more = d.attentionTotal - Math.min(d.attention.length, attLines);
    const shown = more > 0 ? Math.max(0, attLines - 1) : attLines;
    for (let i = 0; i < Math.min(shown, d.attention.length); i++) {
      const a = d.attention[i]!;
      const why = isNum(a.ageMs) ? `${a.reason} ${fmtAgeCoarse(a.ageMs)}` : a.reason;
      const dot = Math.max(4, Math.round(spec.attPx * 0.45));
      const tone: Tone = a.reason === 'rejected' ? 'warn' : downTone;
      b.rect(lx, y + Math.floor((attH - dot) / 2), dot, dot, tone);
      b.row(
        a.name,
        why,
        lx + dot + Math.round(p * 0.5),
        y,
        colW - dot - Math.round(p * 0.5),
        attH,
        spec.attPx,
        tone,
        'fg',
        0.45,
      );
      y += attH;
    }
    const rest = d.attentionTotal - Math.min(shown, d.attention.length);
    if (rest > 0 && attLines > 0)
      b.text(`+${fmtInt(rest)} more need attention`, lx, y, colW, attH, font(spec.attPx), 'dim');
  }
  const last = d?.ratePerMin[d.ratePerMin.length - 1];
  b.row(
    'reports/min, 10 min',
    d ? (isNum(last) ? fmtCount(last) : UNKNOWN) : UNKNOWN,
    lx,
    sparkTop,
    colW,
    sparkLabelH,
    spec.smallPx,
    d && isNum(last) ? 'fg' : 'dim',
  );
  b.rect(lx, sparkTop + sparkLabelH, colW, spec.sparkH, 'panel');
  if (d) b.spark(lx, sparkTop + sparkLabelH, colW, spec.sparkH, d.ratePerMin, 'info');

  // --- right: status rows, shrunk to fit the column ---
  const rows = statusRows(s, spec.compact);
  const avail = bottom - top;
  const rowH = Math.min(lineH(spec.rowPx) + 2, Math.floor(avail / rows.length));
  const rowPx = Math.min(spec.rowPx, Math.floor(rowH / 1.25));
  y = top;
  for (const r of rows) {
    if (r.title) {
      const tf = font(Math.min(spec.titlePx, rowPx), 'bold');
      const tw = Math.ceil(b.text(r.title, rx, y, colW, rowH, tf, 'accent', 'left', true));
      if (r.titleValue) {
        const vf = font(Math.min(spec.titlePx, rowPx) + 1, 'bold');
        const vw = Math.ceil(fitText(r.titleValue, vf, colW - tw - 8, b.measure).width);
        b.text(r.titleValue, rx + colW - vw, y, vw, rowH, vf, r.titleTone ?? 'dim', 'right');
      }
    } else {
      b.row(r.label ?? '', r.value ?? UNKNOWN, rx, y, colW, rowH, rowPx, r.tone ?? 'fg');
    }
    y += rowH;
  }

  // --- bottom: alerts ---
  b.rect(0, alertsTop - Math.round(p * 0.25), W, H - alertsTop + Math.round(p * 0.25), 'panel');
  const af = font(spec.alertPx);
  const abf = font(Math.round(spec.alertPx * 0.8), 'bold');
  const lineTextH = lineH(spec.alertPx);
  if (s.alerts.length === 0) {
    if (s.alertsUnknown) b.text('alerts: unknown', p, alertsTop, W - 2 * p, lineTextH, af, 'dim');
    else b.text('no active alerts', p, alertsTop, W - 2 * p, lineTextH, af, 'ok');
    return;
  }
  const badgeW =
    Math.ceil(Math.max(...Object.values(SEVERITY_WORD).map((w) => b.measure(w, abf)))) +
    Math.round(spec.alertPx * 0.6);
  for (let i = 0; i < Math.min(spec.alertLines, s.alerts.length); i++) {
    const a = s.alerts[i]!;
    const ay = alertsTop + i * alertH;
    b.rect(p, ay + 1, badgeW, lineTextH - 2, SEVERITY_TONE[a.severity]);
    b.text(SEVERITY_WORD[a.severity], p, ay + 1, badgeW, lineTextH - 2, abf, 'invfg', 'center');
    let tw = W - 3 * p - badgeW;
    const isLast = i === spec.alertLines - 1 || i === s.alerts.length - 1;
    const more = s.alertsTotal - (i + 1);
    if (isLast && more > 0) {
      const m = `+${more} more`;
      const mw = Math.ceil(fitText(m, af, tw / 3, b.measure).width);
      b.text(m, W - p - mw, ay, mw, lineTextH, af, 'dim', 'right');
      tw -= mw + p;
    }
    b.text(
      a.text,
      2 * p + badgeW,
      ay,
      tw,
      lineTextH,
      af,
      SEVERITY_TONE[a.severity] === 'info' ? 'fg' : SEVERITY_TONE[a.severity],
    );
  }
}

/** e-ink: black on white, big enough to read on a 2" panel, one fact per line. */
function monoLayout(b: Builder, s: FrameSnapshot, size: FrameSize): void {
  const { width: W, height: H } = size;
  const p = 3;
  const headerH = size.height >= 128 ? 20 : 18;
  const px = size.width >= 296 ? 13 : 12;
  b.rect(0, 0, W, H, 'bg');
  header(b, s, p, W, headerH, px, px - 2, p, true);
  const lines = 6;
  const rowH = Math.floor((H - headerH - 2) / lines);
  let y = headerH + 2;
  const w = W - 2 * p;
  const d = s.devices;
  const rows: [string, string][] = [];
  rows.push([
    'devices',
    d
      ? `${isNum(d.online) ? fmtInt(d.online) : '?'} on · ${isNum(d.offline) ? fmtInt(d.offline) : '?'} off`
      : UNKNOWN,
  ]);
  if (d && d.attention.length > 0) {
    const a = d.attention[0]!;
    const more = d.attentionTotal - 1;
    const age = isNum(a.ageMs) ? ` ${fmtAgeCoarse(a.ageMs)}` : '';
    rows.push([a.name, `${a.reason}${age}${more > 0 ? ` +${more}` : ''}`]);
  } else {
    const last = d?.ratePerMin[d.ratePerMin.length - 1];
    rows.push(['reports/min', d ? (isNum(last) ? fmtCount(last) : UNKNOWN) : UNKNOWN]);
  }
  const st = s.store;
  rows.push(['commit p99', st ? `${fmtMs(st.commitP99Ms)} · ${fmtBytes(st.dbSize)}` : UNKNOWN]);
  const u = s.uplink;
  rows.push([
    'uplink',
    u
      ? `${u.state ?? UNKNOWN} · ${isNum(u.backlogRecords) ? fmtCount(u.backlogRecords) : '?'} queued`
      : UNKNOWN,
  ]);
  const y2 = s.system;
  const diskPct = pct(y2.diskUsedBytes, y2.diskTotalBytes);
  if (!isNum(y2.cpuPercent) && !isNum(y2.socTempC) && !isNum(diskPct)) rows.push(['system', UNKNOWN]);
  else
    rows.push([`CPU ${fmtPercent(y2.cpuPercent)}`, `${fmtTemp(y2.socTempC)} · disk ${fmtPercent(diskPct)}`]);
  for (const [label, value] of rows) {
    b.row(label, value, p, y, w, rowH, px, 'fg', 'fg', 0.62);
    y += rowH;
  }
  // Last line: the worst alert, inverted so it stands out without colour.
  const a = s.alerts[0];
  if (a) {
    b.rect(0, y, W, H - y, 'fg');
    const word = `${SEVERITY_WORD[a.severity]}${s.alertsTotal > 1 ? ` +${s.alertsTotal - 1}` : ''}`;
    const wf = font(px, 'bold');
    const ww = Math.ceil(b.text(word, p, y, w, rowH, wf, 'invfg', 'left', true));
    b.text(a.text, p + ww + px, y, w - ww - px, rowH, wf, 'invfg');
  } else {
    b.text(s.alertsUnknown ? 'alerts: unknown' : 'no active alerts', p, y, w, rowH, font(px, 'bold'), 'fg');
  }
}

/** Pure: snapshot + size -> positioned, fitted elements. `measure` is canvas measureText. */
export function layout(s: FrameSnapshot, size: FrameSize, measure: MeasureText): Layout {
  const b = new Builder(measure, size.mono);
  const spec = COLOUR_SPECS[size.name];
  if (size.mono || !spec) monoLayout(b, s, size);
  else colourLayout(b, s, size, spec);
  return { size, elements: b.elements };
}
