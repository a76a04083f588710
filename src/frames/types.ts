/**
 * The frames part's contract: the inputs a snapshot is built from, the snapshot itself, the
 * layout elements and the options. Everything here is plain data (no canvas, no Buffers) so
 * snapshots and layouts can be built, hashed and tested without drawing.
 *
 * Unknown is never zero: every value that can be missing is optional (`number | undefined`) and
 * the layout prints "unknown" (or "?" where there is no room) for it.
 */
import type { HostReading } from '../host.js';

// --- inputs (what the daemon maps other parts' status() into) ---------------------------------

/** From `ctx.store.stats()`; the part reads it itself unless `FrameSources.store` is given. */
export interface StoreInput {
  revision?: number;
  /** Commit latency over the last commits, ms. */
  commitLatencyMs?: { p50: number; p99: number };
  /** Database file size, bytes. */
  dbSize?: number;
  /** True while the database is over its quota (drawn as a critical alert). */
  noSpace?: boolean;
}

export type AttentionReason = 'offline' | 'rejected' | 'silent';

/** A device worth naming on the frame. */
export interface AttentionDevice {
  /** Device name or id, any Unicode; shortened with an ellipsis to fit. */
  name: string;
  reason: AttentionReason;
  /** When it entered that state (ms epoch), to print "12m"; optional. */
  sinceMs?: number;
}

/** From ingest's device registry. */
export interface DevicesInput {
  online?: number;
  offline?: number;
  /** Most important first; the frame names as many as fit and says "+N more". */
  attention?: AttentionDevice[];
  /** Devices needing attention in all, when `attention` is only the first of them. */
  attentionTotal?: number;
  /** Devices whose reports were refused recently (drawn as a warning). */
  rejecting?: number;
  /**
   * Reports received per minute for the last 10 minutes, oldest first (index 9 is the current
   * minute). `undefined` entries are minutes with no data (before start), not zero.
   */
  reportsPerMinute?: (number | undefined)[];
}

/** One probe's highlight: a value, or why there is none. */
export interface ProbeReading {
  p99Ms?: number;
  /** e.g. "no root", "bpftrace not found", "no BTF". */
  unavailable?: string;
}

/** From the probes part. */
export interface ProbesInput {
  /** fsync/fdatasync latency p99. */
  fsync?: ProbeReading;
  /** Run-queue latency p99 (runqlat). */
  runqlat?: ProbeReading;
}

/** The uplink's state in one word; anything else is shown as given. */
export type UplinkState = 'ok' | 'sending' | 'retrying' | 'down' | 'disabled';

/** From the fleet sync. */
export interface UplinkInput {
  state?: UplinkState | string;
  /** Records not yet acknowledged by the fleet service, all tables together. */
  backlogRecords?: number;
  /** Age of the oldest unsent record, ms. */
  oldestUnsentAgeMs?: number;
  /** Time of the last upload the receiver acknowledged, ms epoch. */
  lastSuccessAt?: number;
  /** Why the last attempt failed, in words ("connect ECONNREFUSED fleet:443"). */
  lastError?: string;
}

/** Read by the part from /proc, /sys and statfs (src/host.ts). */
export type SystemInput = HostReading;

/**
 * One severity model for every size: the header's word is the worst alert's (critical ALERT,
 * warning WARN, otherwise OK), and every cause of a WARN or ALERT is an alert line, so the
 * header and the alert line never disagree.
 */
export type AlertSeverity = 'critical' | 'warning' | 'info';

export interface AlertInput {
  severity: AlertSeverity;
  /** The cause in words ("disk 96% full: retention cannot keep up"). */
  text: string;
}

/**
 * Functions the daemon hands the part; each returns undefined when the part behind it is absent
 * or has nothing to say. They are called once per frame tick and must be cheap and synchronous.
 */
export interface FrameSources {
  store?: () => StoreInput | undefined;
  devices?: () => DevicesInput | undefined;
  probes?: () => ProbesInput | undefined;
  uplink?: () => UplinkInput | undefined;
  /** Overrides the part's own /proc reader (tests). */
  system?: () => SystemInput | undefined;
  alerts?: () => AlertInput[] | undefined;
}

// --- snapshot ---------------------------------------------------------------------------------

/** Everything one frame shows, as plain data. Built by `buildSnapshot`. */
export interface FrameSnapshot {
  node: string;
  /** Wall-clock time, ms epoch (the frame shows minutes only). */
  time: number;
  /** IANA zone for the clock, or undefined for the process's zone. */
  timeZone?: string;
  /** Daemon uptime, seconds. */
  uptimeS?: number;
  /** undefined: the devices part is absent or said nothing. */
  devices?: {
    online?: number;
    offline?: number;
    /** At most `MAX_ATTENTION` entries, most important first. */
    attention: { name: string; reason: AttentionReason; ageMs?: number }[];
    /** How many devices need attention in total (may exceed `attention.length`). */
    attentionTotal: number;
    /** Exactly 10 entries, oldest first; undefined = no data for that minute. */
    ratePerMin: (number | undefined)[];
  };
  store?: { revision?: number; commitP50Ms?: number; commitP99Ms?: number; dbSize?: number };
  probes?: { fsync: ProbeReading | undefined; runqlat: ProbeReading | undefined };
  uplink?: {
    state?: string;
    backlogRecords?: number;
    oldestUnsentAgeMs?: number;
    lastSuccessAgeMs?: number;
    lastError?: string;
  };
  system: SystemInput;
  /** Most severe first, at most `MAX_ALERTS`; `alertsTotal` counts all. */
  alerts: AlertInput[];
  alertsTotal: number;
  /** No alerts source answered: "no active alerts" would be a claim we cannot make. */
  alertsUnknown?: boolean;
}

// --- sizes and layout -------------------------------------------------------------------------

export type SizeName = '800x480' | '480x320' | '320x240' | '250x122' | '296x128';

export interface FrameSize {
  name: SizeName;
  width: number;
  height: number;
  /** 1-bit e-ink sizes are laid out in black and white and converted to one bit. */
  mono: boolean;
}

/** Colour roles; the renderer maps them to RGB (mono sizes use only bg and fg). */
export type Tone = 'bg' | 'panel' | 'fg' | 'dim' | 'ok' | 'warn' | 'bad' | 'info' | 'accent' | 'invfg';

export interface TextElement {
  kind: 'text';
  /** The text as drawn (already shortened to fit its slot). */
  text: string;
  /** The text before fitting, for tests and tooltips. */
  full: string;
  /** Slot: the box the text must stay inside. x/y is the top-left corner. */
  x: number;
  y: number;
  w: number;
  h: number;
  /** Measured width of `text` in `font`, ≤ w. */
  width: number;
  align: 'left' | 'right' | 'center';
  /** CSS font string using the bundled families only. */
  font: string;
  tone: Tone;
}

export interface RectElement {
  kind: 'rect';
  x: number;
  y: number;
  w: number;
  h: number;
  tone: Tone;
}

/** A sparkline: bars (or a line) of `values` scaled to `max`. */
export interface SparkElement {
  kind: 'spark';
  x: number;
  y: number;
  w: number;
  h: number;
  values: (number | undefined)[];
  max: number;
  tone: Tone;
}

export type Element = TextElement | RectElement | SparkElement;

export interface Layout {
  size: FrameSize;
  elements: Element[];
}

/** Text measurement used by the layout (canvas measureText in production). */
export type MeasureText = (text: string, font: string) => number;

// --- options ----------------------------------------------------------------------------------

export type Rotation = 0 | 90 | 180 | 270;
export type EinkMode = 'threshold' | 'dither';

/** The `frames` config section's values (see config.ts), plus injections for tests. */
export interface FramesOptions {
  enabled?: boolean;
  /** Frame interval, ms. */
  interval?: number;
  /** Sizes drawn on each tick (PNG file, HTTP cache). */
  sizes?: SizeName[];
  /** Write `<stateDir>/frame-<size>.png` on each new frame. */
  pngFile?: boolean;
  /** IANA time zone for the clock on the frame; default: the process's. */
  timeZone?: string;
  /** e.g. "/dev/fb0"; unset: no framebuffer output. */
  framebuffer?: string;
  framebufferRotation?: Rotation;
  framebufferBgr?: boolean;
  /** Unset: no e-ink output. */
  einkSize?: '250x122' | '296x128';
  einkMode?: EinkMode;
  /** 0..255; darker than this is black. */
  einkThreshold?: number;
  /** Minimum time between e-ink refreshes, ms. */
  einkMinRefresh?: number;
  /** Packed 1-bit bitmap (rows MSB first, padded to a byte; 1 = black unless einkInvert). */
  einkBitmapPath?: string;
  /** PBM (P4) copy of the same bits. */
  einkPbmPath?: string;
  einkInvert?: boolean;
  /** Root of /proc and /sys for the system reader and framebuffer geometry (tests). */
  procRoot?: string;
  sysRoot?: string;
}
