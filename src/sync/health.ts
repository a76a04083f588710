/**
 * The node's health, observed for the fleet: readiness, alerts, the uplink and the disk, looked at
 * every `sync.healthInterval`. A change becomes one row in the `events` table (uploaded like any
 * event); a steady state writes nothing, since the node lives on an SD card. A change counts only
 * once two observations in a row agree, so a condition that flickers for one look writes nothing.
 *
 * What was last recorded is kept in `sync_state` (name `health`), written in the same
 * transaction as the event rows, so a restart neither repeats nor loses a change.
 */
import type { Clock } from '../clock.js';
import { type Logger, RepeatLimiter } from '../log.js';
import type { Store } from '../store/types.js';
import { type AlertSeverity, HEALTH_MAX_ITEMS, HEALTH_MAX_TEXT } from './codec.js';

/** One look at the node. `alerts` undefined: nobody knows the alerts yet (not "none"). */
export interface Observation {
  ready: boolean;
  failing: Record<string, string>;
  alerts?: { severity: AlertSeverity; text: string }[];
  uplinkDown: boolean;
  uplink: { state: string; lastError?: string };
  /** Why the disk counts as full, or undefined. */
  diskFull?: 'quota' | 'budget' | 'filesystem';
  disk: Record<string, number | undefined>;
}

interface RecordedAlert {
  severity: AlertSeverity;
  subject: string;
  text: string;
}

interface Recorded {
  /** "ready" or "not_ready:<failing check names>"; undefined before the first record. */
  ready?: string;
  alerts: Record<string, RecordedAlert>;
  uplink: 'up' | 'down';
  uplinkSince?: number;
  disk: 'ok' | 'full';
}

interface Look {
  at: number;
  ready: string;
  alerts?: Map<string, RecordedAlert>;
  uplink: 'up' | 'down';
  disk: 'ok' | 'full';
  obs: Observation;
}

const STATE_ROW = 'health';

/** Texts as they travel: one line, bounded. */
export function clip(text: string, max = HEALTH_MAX_TEXT): string {
  const one = text.replace(/\s+/g, ' ').trim();
  return one.length > max ? `${one.slice(0, max - 1)}…` : one;
}

/**
 * What makes two alert texts the same alert: the severity and the words before the first colon,
 * numbers left out ("disk 91% full" and "disk 93% full" are one alert that changed its number).
 */
export function alertKey(severity: string, text: string): { key: string; subject: string } {
  const subject = clip(text.split(':')[0] ?? text, 120);
  return { key: `${severity}|${subject.replace(/\d+([.,]\d+)?/g, '#').toLowerCase()}`, subject };
}

function readyValue(o: Observation): string {
  return o.ready ? 'ready' : `not_ready:${Object.keys(o.failing).sort().join(',')}`;
}

export class HealthTracker {
  private recorded: Recorded = { alerts: {}, uplink: 'up', disk: 'ok' };
  private prev: Look | undefined;
  private latest: Observation | undefined;
  private writing: Promise<number> | undefined;
  /** Each recorded alert's latest text: kept in memory only (a changed number writes nothing). */
  private lastText = new Map<string, string>();
  /** Rows written since start (tests and status). */
  written = 0;
  /** Every look fails to record on a full disk: one line a minute, with a count. */
  private readonly repeats: RepeatLimiter;

  constructor(
    private readonly store: Pick<Store, 'write' | 'query'>,
    private readonly clock: Clock,
    private readonly log: Logger,
    private readonly observe: () => Observation,
  ) {
    this.repeats = new RepeatLimiter(log);
    const row = store.query<{ value: string }>('SELECT value FROM sync_state WHERE name = ?').get(STATE_ROW);
    if (row) {
      try {
        this.recorded = { ...this.recorded, ...(JSON.parse(row.value) as Recorded) };
      } catch {
        // Unreadable: start afresh; the next stable look records the state again.
      }
    }
  }

  /** The newest observation (what the summary in each batch says), taking one if none yet. */
  current(): Observation {
    if (!this.latest) this.latest = this.safeObserve();
    return this.latest;
  }

  /** Look once; record what changed and held for two looks. Resolves with the rows written. */
  async tick(): Promise<number> {
    if (this.writing) return this.writing;
    const obs = this.safeObserve();
    this.latest = obs;
    const now = this.clock.now();
    const look: Look = {
      at: now,
      ready: readyValue(obs),
      uplink: obs.uplinkDown ? 'down' : 'up',
      disk: obs.diskFull ? 'full' : 'ok',
      obs,
    };
    if (obs.alerts) {
      look.alerts = new Map();
      for (const a of obs.alerts.slice(0, HEALTH_MAX_ITEMS)) {
        const { key, subject } = alertKey(a.severity, a.text);
        if (!look.alerts.has(key))
          look.alerts.set(key, { severity: a.severity, subject, text: clip(a.text) });
      }
    }
    const prev = this.prev;
    this.prev = look;
    if (!prev) return 0;
    const next: Recorded = { ...this.recorded, alerts: { ...this.recorded.alerts } };
    const rows: [number, string, string | null, string][] = [];
    // The change happened by the first of the two looks that saw it.
    const at = prev.at;
    if (look.ready !== next.ready && look.ready === prev.ready) {
      rows.push(
        obs.ready
          ? [at, 'node.ready', null, '{}']
          : [at, 'node.not_ready', null, JSON.stringify({ failing: clipAll(obs.failing) })],
      );
      next.ready = look.ready;
    }
    if (look.alerts && prev.alerts) {
      for (const [key, a] of look.alerts) this.lastText.set(key, a.text);
      for (const [key, a] of look.alerts) {
        if (next.alerts[key] || !prev.alerts.has(key)) continue;
        rows.push([at, 'alert.raised', a.subject, JSON.stringify({ severity: a.severity, text: a.text })]);
        next.alerts[key] = a;
      }
      for (const [key, a] of Object.entries(next.alerts)) {
        if (look.alerts.has(key) || prev.alerts.has(key)) continue;
        const text = this.lastText.get(key) ?? a.text;
        rows.push([at, 'alert.cleared', a.subject, JSON.stringify({ severity: a.severity, text })]);
        delete next.alerts[key];
      }
    }
    if (look.uplink !== next.uplink && look.uplink === prev.uplink) {
      if (look.uplink === 'down') {
        rows.push([at, 'uplink.down', null, JSON.stringify(obs.uplink)]);
        next.uplinkSince = at;
      } else {
        const downSeconds = next.uplinkSince ? Math.round((at - next.uplinkSince) / 1000) : undefined;
        rows.push([at, 'uplink.up', null, JSON.stringify({ downSeconds })]);
        next.uplinkSince = undefined;
      }
      next.uplink = look.uplink;
    }
    if (look.disk !== next.disk && look.disk === prev.disk) {
      rows.push(
        look.disk === 'full'
          ? [at, 'disk.full', obs.diskFull ?? null, JSON.stringify({ reason: obs.diskFull, ...obs.disk })]
          : [at, 'disk.ok', null, JSON.stringify(obs.disk)],
      );
      next.disk = look.disk;
    }
    if (rows.length === 0) return 0;
    this.writing = this.store
      .write({
        sql: [
          { sql: 'INSERT INTO events (ts, kind, subject, data) VALUES (?, ?, ?, ?)', rows },
          {
            sql: 'INSERT INTO sync_state (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value',
            params: [STATE_ROW, JSON.stringify(next)],
          },
        ],
        // A few hundred bytes, only on a change: the centre must learn why a node over its
        // quota stopped taking writes, so this row may go over it.
        freesSpace: true,
      })
      .then(
        () => {
          this.recorded = next;
          this.written += rows.length;
          this.log.info({ changes: rows.map((r) => r[1]) }, 'node health changed; recorded for the fleet');
          return rows.length;
        },
        (err: unknown) => {
          // Not recorded: the next look sees the same difference and tries again.
          this.repeats.warn({ err: (err as Error).message }, 'could not record a node health change');
          return 0;
        },
      )
      .finally(() => {
        this.writing = undefined;
      });
    return this.writing;
  }

  /** Waits for a record being written. */
  async settle(): Promise<void> {
    await this.writing;
  }

  private safeObserve(): Observation {
    try {
      return this.observe();
    } catch (err) {
      return {
        ready: false,
        failing: { health: `health could not be observed: ${(err as Error).message}` },
        uplinkDown: false,
        uplink: { state: 'unknown' },
        disk: {},
      };
    }
  }
}

function clipAll(o: Record<string, string>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(o)
      .slice(0, HEALTH_MAX_ITEMS)
      .map(([k, v]) => [clip(k, 100), clip(v)]),
  );
}
