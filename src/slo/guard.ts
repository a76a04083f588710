/**
 * The SLO guard: objectives for interactive latency, their burn rates, and the advice to bulk
 * work that keeps interactive traffic within them on one node.
 *
 * Objectives. Two latency objectives, each "a fraction `slo.target` of events within a
 * threshold": `etcd_request` (every etcd unary RPC but Lock and Campaign, which wait by design, and those that hash a password;
 * threshold `slo.etcdLatency`) and `store_commit` (every commit of the store's writer;
 * `slo.commitLatency`). The error budget is `1 - target`; a window's burn rate is its fraction of
 * slow events divided by the budget (1: the budget lasts exactly the objective's period; 14.4:
 * an hour burns 2% of a 30-day budget). Events are counted in one-second buckets on the injected
 * clock; the windows are 5 s, 1 m, 5 m and 1 h. Two pairs, each burning when both its windows are
 * at or above its rate: `page` (1 h and 5 m, `slo.pageBurnRate`) is the alert
 * (`edgekeeper_slo_burning{pair="page"}`), `fast` (1 m and 5 s, `slo.fastBurnRate`) is one of the
 * guard's signals. A window without events burns 0. The objectives are metrics and alerts, never
 * readiness: readiness is "can serve" (src/daemon/health.ts).
 *
 * Pressure. Every `TICK_MS` the guard looks at the last tick: interactive traffic is present
 * (etcd requests in the last 5 s) and waiting — the event loop's delay is more than
 * `slo.loopDelay` above its quiet level, or an objective's fast pair burns (a single slow request
 * or commit is not enough: on a busy machine one always comes, bulk or not; nor is a fast burn
 * of fewer than `FAST_MIN_EVENTS` events in 5 s). Without interactive traffic there is no
 * pressure: nobody waits for bulk to yield. The loop delay is the median of the last
 * `LOOP_TICKS` ticks' p99 (one tick's p99 is nearly its maximum: one GC pause), and its quiet
 * level is what it is while bulk runs at most at `slo.minBulkRate` (falling at once, rising
 * slowly): delay that other processes on the machine cause is no reason to hold reports back,
 * since holding them would not remove it.
 *
 * Yielding. Under pressure the guard limits bulk rows (device reports) to half the rate it
 * admitted in the last tick (never below `slo.minBulkRate`, so bulk never starves), by a token
 * bucket that `admitBulk` draws from; each calm tick raises the limit by `INCREASE`, and after
 * `RELEASE_MS` without pressure, once the limit is twice what bulk uses (or at once, when the
 * interactive traffic has gone) the limit is lifted. While limited, `yielding()` is true:
 * uploads pause, frames slow down, probe samples are stored less often. Ingest holds the reports
 * it may not write unacknowledged, so devices keep them; nothing is dropped. Interactive etcd
 * traffic is never limited. With `slo.guard` false everything is measured and nothing yields.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { Clock, Timer } from '../clock.js';
import type { Logger } from '../log.js';
import type { LoadGuard } from '../part.js';

export interface SloOptions {
  /** Bulk work yields under pressure; false: measure and export only. */
  guard: boolean;
  /** Fraction of events that must be within their threshold (0.99: p99). */
  target: number;
  /** Threshold of an etcd unary request, ms. */
  etcdLatency: number;
  /** Threshold of a store commit, ms. */
  commitLatency: number;
  /** The alert pair (1 h and 5 m) burns at or above this rate. */
  pageBurnRate: number;
  /** The fast pair (1 m and 5 s) burns at or above this rate (a pressure signal). */
  fastBurnRate: number;
  /** Event-loop delay p99 (ms, beyond the timer's own period) that counts as interactive waiting. */
  loopDelay: number;
  /** Bulk rows a second always admitted, however hard the pressure. */
  minBulkRate: number;
}

/** The guard looks at the last quarter second: fast enough to act within a few device reports. */
export const TICK_MS = 250;
/** A calm tick raises the limit by 5%: about 20% a second, so it finds the ceiling in seconds. */
const INCREASE = 1.05;
/** Calm this long (and limit twice what bulk uses) before the limit is lifted. */
const RELEASE_MS = 10_000;
/** The token bucket holds at most this many seconds of the limit (bounds a burst after a pause). */
const BURST_S = 0.25;
/** Interactive traffic counts as present while the 5 s window has events. */
const PRESENT_S = 5;
/** Events the 5 s window needs before its fast burn counts as pressure (one slow of two is not). */
const FAST_MIN_EVENTS = 20;
/** Ticks whose loop-delay p99s the signal is the median of. */
const LOOP_TICKS = 4;
/** How far the quiet level moves up toward a higher reading per quiet tick. */
const QUIET_RISE = 0.1;
/** Event-loop delay sampling period (ms); subtracted from its samples. */
const LOOP_RESOLUTION_MS = 5;

export const WINDOWS = { '5s': 5, '1m': 60, '5m': 300, '1h': 3600 } as const;
export type WindowName = keyof typeof WINDOWS;
const SPAN = WINDOWS['1h'];
export const PAIRS = { fast: ['1m', '5s'], page: ['1h', '5m'] } as const;
export type ObjectiveName = 'etcd_request' | 'store_commit';

/** Events of one objective in one-second buckets over the longest window. */
export class BurnWindows {
  private readonly sec = new Float64Array(SPAN).fill(-1);
  private readonly total = new Float64Array(SPAN);
  private readonly bad = new Float64Array(SPAN);
  events = 0;
  slow = 0;

  constructor(readonly thresholdMs: number) {}

  record(nowSec: number, ms: number): void {
    const i = nowSec % SPAN;
    if (this.sec[i] !== nowSec) {
      this.sec[i] = nowSec;
      this.total[i] = 0;
      this.bad[i] = 0;
    }
    this.total[i]!++;
    this.events++;
    if (ms > this.thresholdMs) {
      this.bad[i]!++;
      this.slow++;
    }
  }

  /** Events and slow events in the last `seconds` (the current second included). */
  counts(nowSec: number, seconds: number): { total: number; bad: number } {
    let total = 0;
    let bad = 0;
    for (let s = nowSec - seconds + 1; s <= nowSec; s++) {
      const i = ((s % SPAN) + SPAN) % SPAN;
      if (this.sec[i] === s) {
        total += this.total[i]!;
        bad += this.bad[i]!;
      }
    }
    return { total, bad };
  }

  /** The slow fraction over the error budget; 0 without events. */
  burnRate(nowSec: number, seconds: number, target: number): number {
    const c = this.counts(nowSec, seconds);
    if (c.total === 0) return 0;
    // Rounded to a millionth: 1 - 0.99 is not 0.01 in floating point, and 2% slow should burn 2.
    return Math.round((c.bad / c.total / (1 - target)) * 1e6) / 1e6;
  }
}

export interface SloGuardDeps {
  clock: Clock;
  logger: Logger;
  registry?: Registry;
  /**
   * The event loop's delay p99 in ms since the last call (undefined: no sample). Default: a
   * perf_hooks monitor. Tests pass their own.
   */
  loopDelay?: () => number | undefined;
}

export class SloGuard implements LoadGuard {
  readonly objectives: Record<ObjectiveName, BurnWindows>;
  /** Bulk rows a second allowed; Infinity while not yielding. */
  private limit = Number.POSITIVE_INFINITY;
  private tokens = 0;
  private tokensAt = 0;
  private admitted = 0;
  private lastTick: number;
  private calmMs = 0;
  private lastLoopDelay: number | undefined;
  private loopTicks: number[] = [];
  /** The loop delay while bulk work runs at most at its minimum rate (see the header). */
  private quietLoop: number | undefined;
  private timer: Timer | undefined;
  private monitor: ReturnType<typeof monitorEventLoopDelay> | undefined;
  private readonly loopDelay: () => number | undefined;
  private yieldingSince: number | undefined;
  /** Why the last pressured tick was pressured (for the log and status). */
  private reason = '';
  private pressure = false;
  private readonly yields?: Counter;
  private readonly refused?: Counter;

  constructor(
    private readonly o: SloOptions,
    private readonly d: SloGuardDeps,
  ) {
    this.objectives = {
      etcd_request: new BurnWindows(o.etcdLatency),
      store_commit: new BurnWindows(o.commitLatency),
    };
    this.lastTick = d.clock.monotonic();
    this.loopDelay = d.loopDelay ?? (() => this.sampleLoop());
    if (d.registry) {
      const m = registerSloMetrics(d.registry, this);
      this.yields = m.yields;
      this.refused = m.refused;
    }
  }

  start(): void {
    if (!this.d.loopDelay && !this.monitor) {
      this.monitor = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
      this.monitor.enable();
    }
    this.lastTick = this.d.clock.monotonic();
    this.schedule();
  }

  stop(): void {
    this.timer?.cancel();
    this.timer = undefined;
    this.monitor?.disable();
    this.monitor = undefined;
    this.limit = Number.POSITIVE_INFINITY;
  }

  private schedule(): void {
    this.timer = this.d.clock.setTimeout(() => {
      this.tick();
      this.schedule();
    }, TICK_MS);
  }

  private sampleLoop(): number | undefined {
    const m = this.monitor;
    if (!m || m.count === 0) return undefined;
    const p99 = m.percentile(99) / 1e6 - LOOP_RESOLUTION_MS;
    m.reset();
    return Math.max(0, p99);
  }

  private nowSec(): number {
    return Math.floor(this.d.clock.monotonic() / 1000);
  }

  observeRequest(seconds: number): void {
    const ms = seconds * 1000;
    this.objectives.etcd_request.record(this.nowSec(), ms);
  }

  /** A store commit took `seconds` (the daemon wires the store's commits here). */
  observeCommit(seconds: number): void {
    const ms = seconds * 1000;
    this.objectives.store_commit.record(this.nowSec(), ms);
  }

  yielding(): boolean {
    return this.limit !== Number.POSITIVE_INFINITY;
  }

  admitBulk(n: number): boolean {
    if (this.limit !== Number.POSITIVE_INFINITY) {
      const now = this.d.clock.monotonic();
      this.tokens = Math.min(
        this.limit * BURST_S,
        this.tokens + (this.limit * Math.max(0, now - this.tokensAt)) / 1000,
      );
      this.tokensAt = now;
      // Debt is allowed: a batch larger than the bucket goes once the bucket is not empty.
      if (this.tokens <= 0) {
        this.refused?.inc();
        return false;
      }
      this.tokens -= n;
    }
    this.admitted += n;
    return true;
  }

  burnRate(objective: ObjectiveName, window: WindowName): number {
    return this.objectives[objective].burnRate(this.nowSec(), WINDOWS[window], this.o.target);
  }

  /** Both windows of `pair` burn at or above the pair's rate. */
  burning(objective: ObjectiveName, pair: keyof typeof PAIRS): boolean {
    const rate = pair === 'page' ? this.o.pageBurnRate : this.o.fastBurnRate;
    return PAIRS[pair].every((w) => this.burnRate(objective, w) >= rate);
  }

  /** One control step; runs every TICK_MS on the clock (tests may call it through the clock). */
  tick(): void {
    const now = this.d.clock.monotonic();
    const dt = Math.max(1, now - this.lastTick);
    this.lastTick = now;
    const admittedRate = (this.admitted * 1000) / dt;
    this.admitted = 0;
    const loop = this.loopSignal(admittedRate);
    const present = this.objectives.etcd_request.counts(this.nowSec(), PRESENT_S).total > 0;
    const reasons: string[] = [];
    if (present) {
      const quiet = this.quietLoop ?? 0;
      if (loop !== undefined && loop > quiet + this.o.loopDelay)
        reasons.push(
          `event-loop delay p99 ${loop.toFixed(1)} ms > ${quiet.toFixed(1)} ms quiet + ${this.o.loopDelay} ms`,
        );
      for (const name of Object.keys(this.objectives) as ObjectiveName[])
        if (
          this.objectives[name].counts(this.nowSec(), WINDOWS['5s']).total >= FAST_MIN_EVENTS &&
          this.burning(name, 'fast')
        )
          reasons.push(`${name} burns its budget fast`);
    }
    this.pressure = reasons.length > 0;
    if (this.pressure) this.reason = reasons.join('; ');
    if (!this.o.guard) return;

    if (this.pressure) {
      this.calmMs = 0;
      const was = this.limit;
      const base = Math.min(was, Math.max(admittedRate, this.o.minBulkRate));
      this.limit = Math.max(this.o.minBulkRate, base / 2);
      if (was === Number.POSITIVE_INFINITY) {
        this.tokens = 0;
        this.tokensAt = now;
        this.yieldingSince = this.d.clock.now();
        this.yields?.inc();
        this.d.logger.info(
          { reason: this.reason, bulkLimit: Math.round(this.limit) },
          'interactive traffic is waiting: bulk work yields',
        );
      }
    } else if (this.limit !== Number.POSITIVE_INFINITY) {
      this.calmMs += dt;
      this.limit *= INCREASE;
      if (!present || (this.calmMs >= RELEASE_MS && this.limit >= 2 * admittedRate)) {
        this.d.logger.info(
          { yieldedMs: this.d.clock.now() - (this.yieldingSince ?? this.d.clock.now()) },
          'interactive traffic no longer waits: bulk work resumes at full rate',
        );
        this.limit = Number.POSITIVE_INFINITY;
        this.yieldingSince = undefined;
      }
    }
  }

  /** The median of the last ticks' loop delay; updates the quiet level while bulk is at its minimum. */
  private loopSignal(admittedRate: number): number | undefined {
    const sample = this.loopDelay();
    this.lastLoopDelay = sample;
    if (sample === undefined) return undefined;
    this.loopTicks.push(sample);
    if (this.loopTicks.length > LOOP_TICKS) this.loopTicks.shift();
    const sorted = [...this.loopTicks].sort((a, b) => a - b);
    const median = sorted[Math.floor((sorted.length - 1) / 2)]!;
    const q = this.quietLoop;
    if (q !== undefined && median < q) this.quietLoop = median;
    else if (admittedRate <= this.o.minBulkRate)
      this.quietLoop = q === undefined ? median : q + (median - q) * QUIET_RISE;
    return median;
  }

  /** Plain data for `/v1/status`. */
  status(): Record<string, unknown> {
    return {
      guard: this.o.guard,
      yielding: this.yielding(),
      bulkLimitPerSecond: this.yielding() ? Math.round(this.limit) : null,
      pressure: this.pressure ? this.reason : null,
      quietLoopDelayMs: this.quietLoop ?? null,
      burning: Object.fromEntries(
        (Object.keys(this.objectives) as ObjectiveName[]).map((n) => [
          n,
          { fast: this.burning(n, 'fast'), page: this.burning(n, 'page') },
        ]),
      ),
    };
  }

  /** For the metrics: the current limit (Infinity while not yielding) and the last loop delay. */
  get bulkLimit(): number {
    return this.limit;
  }
  get loopDelayMs(): number | undefined {
    return this.lastLoopDelay;
  }
  get options(): Readonly<SloOptions> {
    return this.o;
  }
}

/** `edgekeeper_slo_*` (see docs/http.md). */
function registerSloMetrics(registry: Registry, g: SloGuard): { yields: Counter; refused: Counter } {
  const names = Object.keys(g.objectives) as ObjectiveName[];
  const objective = new Gauge({
    name: 'edgekeeper_slo_objective_seconds',
    help: 'Latency threshold of each objective (slo.etcdLatency, slo.commitLatency)',
    labelNames: ['objective'],
    registers: [registry],
  });
  for (const n of names) objective.set({ objective: n }, g.objectives[n].thresholdMs / 1000);
  new Gauge({
    name: 'edgekeeper_slo_target_ratio',
    help: 'Fraction of events that must be within their threshold (slo.target)',
    registers: [registry],
  }).set(g.options.target);
  new Counter({
    name: 'edgekeeper_slo_events_total',
    help: 'Events judged against each objective',
    labelNames: ['objective'],
    registers: [registry],
    collect() {
      this.reset();
      for (const n of names) this.inc({ objective: n }, g.objectives[n].events);
    },
  });
  new Counter({
    name: 'edgekeeper_slo_slow_events_total',
    help: "Events above their objective's threshold",
    labelNames: ['objective'],
    registers: [registry],
    collect() {
      this.reset();
      for (const n of names) this.inc({ objective: n }, g.objectives[n].slow);
    },
  });
  new Gauge({
    name: 'edgekeeper_slo_burn_rate',
    help: 'Slow fraction over the error budget, per window (0 without events)',
    labelNames: ['objective', 'window'],
    registers: [registry],
    collect() {
      for (const n of names)
        for (const w of Object.keys(WINDOWS) as WindowName[])
          this.set({ objective: n, window: w }, g.burnRate(n, w));
    },
  });
  new Gauge({
    name: 'edgekeeper_slo_burning',
    help: 'Per objective and window pair (page: 1h and 5m, fast: 1m and 5s): 1 while both burn at or above the pair rate',
    labelNames: ['objective', 'pair'],
    registers: [registry],
    collect() {
      for (const n of names)
        for (const p of Object.keys(PAIRS) as (keyof typeof PAIRS)[])
          this.set({ objective: n, pair: p }, g.burning(n, p) ? 1 : 0);
    },
  });
  new Gauge({
    name: 'edgekeeper_slo_yielding',
    help: '1 while bulk work yields to interactive traffic',
    registers: [registry],
    collect() {
      this.set(g.yielding() ? 1 : 0);
    },
  });
  view(
    registry,
    'edgekeeper_slo_bulk_limit_per_second',
    'Bulk rows a second admitted while yielding; no sample while not yielding',
    () => (g.yielding() ? g.bulkLimit : undefined),
  );
  view(
    registry,
    'edgekeeper_slo_loop_delay_seconds',
    "The event loop's delay p99 over the guard's last tick; no sample before one",
    () => {
      const v = g.loopDelayMs;
      return v === undefined ? undefined : v / 1000;
    },
  );
  const yields = new Counter({
    name: 'edgekeeper_slo_yields_total',
    help: 'Times bulk work started yielding',
    registers: [registry],
  });
  const refused = new Counter({
    name: 'edgekeeper_slo_bulk_refusals_total',
    help: 'Bulk writes told to wait (their reports stay held, unacknowledged)',
    registers: [registry],
  });
  return { yields, refused };
}

/** A gauge with one unlabelled sample, or none while `value` is undefined (a Gauge would show 0). */
function view(registry: Registry, name: string, help: string, value: () => number | undefined): void {
  const get = () => {
    const v = value();
    return {
      name,
      help,
      type: 'gauge',
      aggregator: 'sum',
      values: v === undefined ? [] : [{ labels: {}, value: v }],
    };
  };
  registry.registerMetric({
    name,
    help,
    type: 'gauge',
    aggregator: 'sum',
    get,
    reset() {},
  } as unknown as Parameters<Registry['registerMetric']>[0]);
}
