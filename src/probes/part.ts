/**
 * The probes part: checks the machine, runs the supervisor, turns bpftrace's interval prints
 * (cumulative maps) into interval deltas, cumulative Prometheus histograms and `probe_samples`
 * rows (CBOR, one per map and key per interval, for the fleet sync), and applies retention.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { encode } from 'cbor-x';
import { ConfigError } from '../errors.js';
import type { Migration } from '../store/types.js';
import type { Part, PartContext } from '../part.js';
import { type Logger, RepeatLimiter } from '../log.js';
import { PROBE_NAMES, type ProbeName, probeOfMap } from './catalog.js';
import { checkEnvironment, type EnvironmentReport } from './environment.js';
import { Log2Histogram } from './histogram.js';
import { createProbeMetrics, type ProbeMetrics, registerBucketHistogram, type Series } from './metrics.js';
import type { ParsedLine, RawBucket } from './parser.js';
import { type ProbeStatus, ProbeSupervisor } from './supervisor.js';
import type { LatestPercentiles, ProbesOptions } from './types.js';

export const probesMigrations: Migration[] = [
  {
    part: 'probes',
    version: 1,
    sql: `
      CREATE TABLE IF NOT EXISTS probe_samples (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts INTEGER NOT NULL,
        probe TEXT NOT NULL,
        metric TEXT NOT NULL,
        data BLOB NOT NULL
      );
      CREATE INDEX IF NOT EXISTS probe_samples_ts ON probe_samples(ts);
      CREATE INDEX IF NOT EXISTS probe_samples_probe_ts ON probe_samples(probe, metric, ts);
    `,
  },
];

const BPF_STATS = '/proc/sys/kernel/bpf_stats_enabled';
const INSERT = 'INSERT INTO probe_samples (ts, probe, metric, data) VALUES (?, ?, ?, ?)';
/** The fleet sync's upload cursor for this table (`cursors.name`). */
const CURSOR_NAME = 'probe_samples';
/** How much less often samples are stored while the SLO guard makes bulk work yield. */
const YIELD_SLOWDOWN = 4;
/** Samples waiting in memory that make a store happen before `storeInterval`. */
const MAX_PENDING_SAMPLES = 1000;
/** Label values we keep per keyed map: a map keyed by something unbounded cannot grow /metrics. */
const MAX_KEYS = 64;
/** Previous prints kept for deltas: the fixed maps times MAX_KEYS, with room to spare. */
const MAX_PREV = 1024;
const TCP_STATES = [
  '',
  'ESTABLISHED',
  'SYN_SENT',
  'SYN_RECV',
  'FIN_WAIT1',
  'FIN_WAIT2',
  'TIME_WAIT',
  'CLOSE',
  'CLOSE_WAIT',
  'LAST_ACK',
  'LISTEN',
  'CLOSING',
  'NEW_SYN_RECV',
];

const HIST_METRICS: Record<string, { probe: ProbeName; metric: string; help: string }> = {
  fsync_us: {
    probe: 'fsync',
    metric: 'edgekeeper_probe_fsync_seconds',
    help: 'fsync/fdatasync latency, every process (syscall tracepoints).',
  },
  fsync_own_us: {
    probe: 'fsync',
    metric: 'edgekeeper_probe_fsync_own_seconds',
    help: "fsync/fdatasync latency of edgekeeper's own process (the floor of its commit latency).",
  },
  runq_us: {
    probe: 'runqlat',
    metric: 'edgekeeper_probe_runqlat_seconds',
    help: 'Run-queue latency, measured during the duty-cycle windows (sched tracepoints).',
  },
  bio_us: {
    probe: 'biolat',
    metric: 'edgekeeper_probe_biolat_seconds',
    help: 'Block I/O latency from issue to completion, per device (block tracepoints).',
  },
};

function resolveEnabled(list: readonly string[] | undefined): ProbeName[] {
  const want = list ?? PROBE_NAMES;
  const unknown = want.filter((p) => !(PROBE_NAMES as readonly string[]).includes(p));
  if (unknown.length) {
    throw new ConfigError([
      `Expected \`probes.enabled\` to hold only ${PROBE_NAMES.join(', ')}; got unknown probe ${unknown.join(', ')}`,
    ]);
  }
  return PROBE_NAMES.filter((p) => want.includes(p));
}

/** `major:minor` of a kernel dev_t (MINORBITS = 20) and its name from /sys/dev/block. */
export function deviceName(devt: string, cache: Map<string, string>): string {
  const hit = cache.get(devt);
  if (hit) return hit;
  const n = Number(devt);
  let name = devt;
  if (Number.isInteger(n) && n >= 0) {
    const mm = `${Math.floor(n / 2 ** 20)}:${n % 2 ** 20}`;
    name = mm;
    try {
      const m = /^DEVNAME=(.+)$/m.exec(readFileSync(`/sys/dev/block/${mm}/uevent`, 'utf8'));
      if (m) name = m[1]!;
    } catch {
      // Gone or not a block device: keep major:minor.
    }
  }
  if (cache.size < 256) cache.set(devt, name);
  return name;
}

export function parseOomLine(text: string): Record<string, string | number> | undefined {
  const m = /^oomkill pid=(\d+) uid=(\d+) total_vm_kb=(\d+) anon_rss_kb=(\d+) comm=(.*)$/.exec(text.trim());
  if (!m) return undefined;
  // The tracepoint records total_vm and anon_rss in kB (its format prints "total-vm=%lukB").
  return {
    pid: Number(m[1]),
    uid: Number(m[2]),
    totalVmKb: Number(m[3]),
    anonRssKb: Number(m[4]),
    comm: m[5]!,
  };
}

/**
 * `edgekeeper_probe_up`'s reason: one word from a fixed set, so a label never carries free text
 * (paths, exit messages, percentages). The full sentence is in /v1/probes and the log.
 */
const REASON_CODES: [RegExp, string][] = [
  [/^running$/, 'running'],
  [/^idle/, 'idle'],
  // First: a restart's reason quotes bpftrace's own output, which may contain any other phrase.
  [/restarting in \d+ s$/, 'restarting'],
  [/disabled in config/, 'disabled'],
  [/^not root/, 'no_root'],
  [/missing capabilities/, 'no_capabilities'],
  [/bpftrace not found/, 'no_bpftrace'],
  [/does not run$/, 'bpftrace_broken'],
  [/too old/, 'bpftrace_too_old'],
  [/tracefs not mounted/, 'no_tracefs'],
  [/bpftrace -l failed/, 'bpftrace_list_failed'],
  [/tracepoint missing/, 'no_tracepoint'],
  [/over CPU budget/, 'over_cpu_budget'],
  [/^starting$/, 'starting'],
  [/^not started$/, 'not_started'],
  [/^stopped$/, 'stopped'],
];

export function reasonCode(state: ProbeStatus): string {
  const why = state.replace(/^unavailable: /, '');
  for (const [re, code] of REASON_CODES) if (re.test(why)) return code;
  return 'other';
}

export class ProbesPart implements Part {
  readonly name = 'probes';
  private readonly log: Logger;
  /** Sample writes and retention fail every tick on a full disk: one line a minute, with a count. */
  private readonly repeats: RepeatLimiter;
  private readonly enabled: ProbeName[];
  private readonly o: Required<
    Pick<
      ProbesOptions,
      | 'interval'
      | 'storeInterval'
      | 'runqlatPeriod'
      | 'runqlatOn'
      | 'cpuBudget'
      | 'bpftracePath'
      | 'sharing'
      | 'retention'
      | 'maxSamples'
      | 'mountTracefs'
      | 'tracefsDir'
      | 'uplinkEnabled'
    >
  >;
  private env: EnvironmentReport | undefined;
  private sup: ProbeSupervisor | undefined;
  private readonly metrics: ProbeMetrics;
  /** Cumulative histograms for /metrics, by map name and key ("" for unkeyed). */
  private readonly cumulative = new Map<string, Map<string, Log2Histogram>>();
  private readonly latest = new Map<string, LatestPercentiles>();
  /** The last cumulative print per map and key, for deltas. */
  private readonly prev = new Map<string, Log2Histogram | number>();
  private readonly devices = new Map<string, string>();
  private retentionTimer: { cancel(): void } | undefined;
  private stopped = false;
  private started = false;
  private booting: Promise<void> | undefined;
  private writes = new Set<Promise<unknown>>();
  /** Samples waiting to be stored (see ProbesOptions.storeInterval). */
  private pending: [number, string, string, Buffer][] = [];
  private storeTimer: { cancel(): void } | undefined;
  private lastOom: Record<string, string | number> | undefined;
  samplesWritten = 0;
  private bpfStatsPrev: string | undefined;

  constructor(
    private readonly ctx: PartContext,
    private readonly opts: ProbesOptions = {},
  ) {
    this.log = ctx.logger.child({ part: 'probes' });
    this.repeats = new RepeatLimiter(this.log);
    this.enabled = resolveEnabled(opts.enabled);
    this.o = {
      interval: opts.interval ?? 10_000,
      storeInterval: opts.storeInterval ?? 60_000,
      runqlatPeriod: opts.runqlatPeriod ?? 60_000,
      runqlatOn: Math.min(opts.runqlatOn ?? 10_000, opts.runqlatPeriod ?? 60_000),
      cpuBudget: opts.cpuBudget ?? 2,
      bpftracePath: opts.bpftracePath ?? 'bpftrace',
      sharing: opts.sharing ?? 'shared',
      retention: opts.retention ?? 7 * 24 * 3_600_000,
      maxSamples: opts.maxSamples ?? 500_000,
      mountTracefs: opts.mountTracefs ?? true,
      tracefsDir: opts.tracefsDir ?? '/sys/kernel/tracing',
      uplinkEnabled: opts.uplinkEnabled ?? false,
    };
    this.metrics = createProbeMetrics(ctx.registry, (g) => {
      g.reset();
      for (const [probe, s] of Object.entries(this.probeStates()))
        g.set({ probe, reason: reasonCode(s) }, s === 'running' || s === 'idle (duty cycle)' ? 1 : 0);
    });
    for (const [map, spec] of Object.entries(HIST_METRICS)) {
      registerBucketHistogram(ctx.registry, spec.metric, spec.help, () => this.series(map));
    }
    ctx.http.add('GET', '/v1/probes', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(this.status()));
    });
  }

  private series(map: string): Series[] {
    const byKey = this.cumulative.get(map);
    if (!byKey) return [];
    return [...byKey].map(
      ([key, hist]): Series => ({ labels: map === 'bio_us' ? { device: key } : {}, hist }),
    );
  }

  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    this.scheduleRetention(0);
    if (this.enabled.length === 0) {
      // Nothing to run: no bpftrace is looked for or started, so probes that are off cost nothing.
      const off = 'disabled in config (probes.enabled)';
      const unavailable = Object.fromEntries(PROBE_NAMES.map((p) => [p, off])) as Record<ProbeName, string>;
      this.env = { checks: [], unavailable };
      return;
    }
    this.booting = this.boot().catch((err: unknown) => this.log.error({ err }, 'probes failed to start'));
    if (!this.opts.background) await this.booting;
  }

  /** Checks the machine, then starts the supervisor for the probes that can run. */
  private async boot(): Promise<void> {
    this.env = await checkEnvironment({
      bpftracePath: this.o.bpftracePath,
      tracefsDir: this.o.tracefsDir,
      mountTracefs: this.o.mountTracefs,
      probes: this.enabled,
      host: this.opts.host,
    });
    for (const c of this.env.checks.filter((x) => !x.ok)) {
      this.log.warn(
        { check: c.name, fix: c.fix },
        `probes: ${c.name}: ${c.detail}${c.fix ? `; fix: ${c.fix}` : ''}`,
      );
    }
    const runnable = this.enabled.filter((p) => this.env!.unavailable[p] === undefined);
    if (this.opts.bpfStats && runnable.length) this.enableBpfStats();
    if (this.stopped) return;
    if (runnable.length && this.env.bpftrace) {
      this.sup = new ProbeSupervisor({
        bpftrace: this.env.bpftrace,
        setpriv: this.env.setpriv,
        probes: runnable,
        intervalMs: this.o.interval,
        ownPid: this.opts.ownPid ?? process.pid,
        runqlatPeriodMs: this.o.runqlatPeriod,
        runqlatOnMs: this.o.runqlatOn,
        cpuBudgetPercent: this.o.cpuBudget,
        cpuCheckMs: this.opts.cpuCheckMs ?? Math.max(this.o.interval, 10_000),
        sharing: this.o.sharing,
        backoffInitialMs: this.opts.backoffInitialMs ?? 1000,
        backoffMaxMs: this.opts.backoffMaxMs ?? 60_000,
        bpfDir: this.opts.bpfDir,
        clock: this.ctx.clock,
        logger: this.log,
        monotonicNs: this.opts.monotonicNs,
        readProcStat: this.opts.readProcStat,
        readBpfRunNs: this.opts.readBpfRunNs,
        env: this.opts.env,
        onLine: (line, probe) => this.onLine(line, probe),
        onAttached: (probes) => this.onAttached(probes),
        onRestart: () => this.metrics.restarts.inc(),
      });
      this.sup.start();
    }
  }

  private enableBpfStats(): void {
    try {
      const prev = readFileSync(BPF_STATS, 'utf8').trim();
      if (prev !== '1') {
        writeFileSync(BPF_STATS, '1');
        this.bpfStatsPrev = prev;
      }
    } catch (err) {
      this.log.warn(
        { err },
        `probes.bpfStats: cannot turn on ${BPF_STATS} (needs CAP_SYS_ADMIN and a writable /proc/sys); the CPU budget counts bpftrace's own CPU only`,
      );
    }
  }

  /** Stop bpftrace (its final partial interval is still stored), wait for pending writes. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.retentionTimer?.cancel();
    await this.booting;
    await this.sup?.stop();
    this.storeTimer?.cancel();
    this.flush();
    if (this.bpfStatsPrev !== undefined) {
      try {
        writeFileSync(BPF_STATS, this.bpfStatsPrev);
      } catch {
        // Read-only /proc/sys now: nothing more to do.
      }
    }
    await Promise.allSettled([...this.writes]);
  }

  /** bpftrace pids (tests, status). */
  pids(): number[] {
    return this.sup?.pids() ?? [];
  }

  probeStates(): Record<ProbeName, ProbeStatus> {
    const live = this.sup?.states() ?? {};
    const out = {} as Record<ProbeName, ProbeStatus>;
    for (const p of PROBE_NAMES) {
      const why = this.env?.unavailable[p];
      out[p] =
        live[p] ??
        (why ? `unavailable: ${why}` : this.env ? 'unavailable: not started' : 'unavailable: starting');
    }
    return out;
  }

  status(): Record<string, unknown> {
    const latest: Record<string, LatestPercentiles | undefined> = {
      fsync: this.latest.get('fsync_us\u0000'),
      fsyncOwn: this.latest.get('fsync_own_us\u0000'),
      runqlat: this.latest.get('runq_us\u0000'),
    };
    const biolat: Record<string, LatestPercentiles> = {};
    for (const [k, v] of this.latest) if (k.startsWith('bio_us\u0000')) biolat[k.slice(7)] = v;
    return {
      probes: this.probeStates(),
      latest: { ...latest, biolat },
      lastOomKill: this.lastOom,
      bpftrace: this.env ? { path: this.env.bpftrace ?? null, version: this.env.version ?? null } : null,
      processes: this.sup?.cpu() ?? [],
      intervalMs: this.o.interval,
      runqlatDutyCycle: { onMs: this.o.runqlatOn, periodMs: this.o.runqlatPeriod },
    };
  }

  // --- data path --------------------------------------------------------------------------------

  private onLine(line: ParsedLine, probe: ProbeName | undefined): void {
    if (line.kind === 'bad') {
      this.metrics.badLines.inc();
      this.log.debug({ reason: line.reason }, 'unparseable bpftrace line dropped');
      return;
    }
    if (!probe) return;
    const now = this.ctx.clock.now();
    const rows: [number, string, string, Buffer][] = [];
    if (line.kind === 'hist') {
      const entries: [string, RawBucket[]][] = 'buckets' in line ? [['', line.buckets]] : [...line.keyed];
      for (const [rawKey, buckets] of entries) {
        const key = line.name === 'bio_us' && rawKey ? deviceName(rawKey, this.devices) : rawKey;
        const delta = this.histDelta(`${line.name}\u0000${rawKey}`, Log2Histogram.fromRaw(buckets));
        if (!delta || delta.total === 0) continue;
        const byKey = this.cumulative.get(line.name) ?? new Map<string, Log2Histogram>();
        this.cumulative.set(line.name, byKey);
        let cum = byKey.get(key);
        if (!cum && byKey.size >= MAX_KEYS) continue;
        if (!cum) {
          cum = new Log2Histogram();
          byKey.set(key, cum);
        }
        cum.add(delta);
        const p = delta.percentiles()!;
        this.latest.set(`${line.name}\u0000${key}`, {
          p50Ms: p.p50 / 1000,
          p90Ms: p.p90 / 1000,
          p99Ms: p.p99 / 1000,
          count: delta.total,
          at: now,
        });
        rows.push([
          now,
          probe,
          line.name,
          encode({
            unit: 'us',
            intervalMs: this.o.interval,
            ...(key ? { key } : {}),
            buckets: delta.toPairs(),
            count: delta.total,
            p50: p.p50,
            p90: p.p90,
            p99: p.p99,
          }),
        ]);
      }
    } else if (line.kind === 'map') {
      if ('values' in line) {
        let total = 0;
        const byKey: Record<string, number> = {};
        for (const [k, cur] of line.values) {
          const n = this.countDelta(`${line.name}\u0000${k}`, cur);
          if (n <= 0) continue;
          total += n;
          const name = line.name === 'tcpretrans' ? (TCP_STATES[Number(k)] ?? `state ${k}`) : k;
          byKey[name] = n;
          if (line.name === 'tcpretrans') this.metrics.tcpRetransmits.inc({ state: name }, n);
        }
        if (total > 0)
          rows.push([now, probe, line.name, encode({ intervalMs: this.o.interval, count: total, byKey })]);
      } else {
        const n = this.countDelta(`${line.name}\u0000`, line.value);
        if (n > 0) {
          if (line.name === 'tcpretrans_synack') this.metrics.tcpSynackRetransmits.inc(n);
          if (line.name === 'oomkill') this.metrics.oomKills.inc(n);
          rows.push([now, probe, line.name, encode({ intervalMs: this.o.interval, count: n })]);
        }
      }
    } else if (line.kind === 'printf' && probe === 'oomkill') {
      const ev = parseOomLine(line.text);
      if (!ev) {
        this.metrics.badLines.inc();
        return;
      }
      this.lastOom = { ...ev, at: now };
      this.log.warn(ev, `the kernel OOM killer chose pid ${ev.pid} (${ev.comm})`);
      rows.push([now, probe, 'oomkill_event', encode(ev)]);
    }
    if (rows.length) this.write(rows);
  }

  /**
   * bpftrace prints cumulative maps (see bpf/fsync.bt on why they are not cleared); the previous
   * print of the same map and key gives the interval's delta. A count going down means a new
   * bpftrace process whose attach we missed: the whole print is the delta then.
   */
  private histDelta(id: string, cur: Log2Histogram): Log2Histogram | undefined {
    const prev = this.prev.get(id);
    if (prev === undefined && this.prev.size >= MAX_PREV) return undefined;
    this.prev.set(id, cur);
    if (!(prev instanceof Log2Histogram)) return cur;
    const d = new Log2Histogram();
    for (let i = 0; i < cur.counts.length; i++) {
      const x = (cur.counts[i] ?? 0) - (prev.counts[i] ?? 0);
      if (x < 0) return cur;
      d.counts[i] = x;
      d.total += x;
    }
    return d;
  }

  private countDelta(id: string, cur: number): number {
    const prev = this.prev.get(id);
    if (prev === undefined && this.prev.size >= MAX_PREV) return 0;
    this.prev.set(id, cur);
    return typeof prev === 'number' && cur >= prev ? cur - prev : cur;
  }

  /** A new bpftrace process starts its maps at zero. */
  private onAttached(probes: readonly ProbeName[]): void {
    for (const id of [...this.prev.keys()]) {
      const owner = probeOfMap(id.slice(0, id.indexOf('\u0000')));
      if (owner && probes.includes(owner)) this.prev.delete(id);
    }
  }

  /** Keep `rows` until the next store (at most `storeInterval` away, or 1,000 rows). */
  private write(rows: [number, string, string, Buffer][]): void {
    for (const r of rows) this.pending.push(r);
    if (this.pending.length >= MAX_PENDING_SAMPLES || this.stopped) this.flush();
    // While bulk work yields to interactive traffic (the SLO guard), samples are stored 4x less
    // often: fewer, larger writes; none is dropped (MAX_PENDING_SAMPLES still bounds them).
    else
      this.storeTimer ??= this.ctx.clock.setTimeout(
        () => {
          this.storeTimer = undefined;
          this.flush();
        },
        this.ctx.slo?.yielding() ? this.o.storeInterval * YIELD_SLOWDOWN : this.o.storeInterval,
      );
  }

  private flush(): void {
    this.storeTimer?.cancel();
    this.storeTimer = undefined;
    const rows = this.pending;
    if (rows.length === 0) return;
    this.pending = [];
    const p = this.ctx.store
      .write({ sql: [{ sql: INSERT, rows }] })
      .then(() => {
        this.samplesWritten += rows.length;
      })
      .catch((err: unknown) => {
        this.metrics.writeErrors.inc();
        this.repeats.error({ err }, 'storing probe samples failed; they are still in /metrics');
      })
      .finally(() => this.writes.delete(p));
    this.writes.add(p);
  }

  // --- retention --------------------------------------------------------------------------------

  private scheduleRetention(ms: number): void {
    if (this.stopped) return;
    this.retentionTimer = this.ctx.clock.setTimeout(() => {
      void this.applyRetention().finally(() => this.scheduleRetention(this.opts.retentionCheckMs ?? 600_000));
    }, ms);
  }

  /** Deletes old samples (never past the uplink cursor) and enforces the hard row cap. */
  async applyRetention(): Promise<{ aged: number; capped: number }> {
    const cutoff = this.ctx.clock.now() - this.o.retention;
    let limitId = Number.MAX_SAFE_INTEGER;
    if (this.o.uplinkEnabled) {
      // No cursor yet means nothing was uploaded: keep everything.
      const row = this.ctx.store
        .query<{ pos: number | null }>('SELECT position AS pos FROM cursors WHERE name = ?')
        .get(CURSOR_NAME);
      limitId = row?.pos ?? 0;
    }
    let aged = 0;
    let capped = 0;
    try {
      const r = await this.ctx.store.write({
        sql: [{ sql: 'DELETE FROM probe_samples WHERE ts < ? AND id <= ?', params: [cutoff, limitId] }],
        freesSpace: true,
      });
      aged = r.sql[0]?.changes ?? 0;
      const max = this.ctx.store
        .query<{ maxId: number | null; n: number }>(
          'SELECT MAX(id) AS maxId, COUNT(*) AS n FROM probe_samples',
        )
        .get();
      if (max && max.n > this.o.maxSamples && max.maxId !== null) {
        const below = max.maxId - this.o.maxSamples;
        const unsent = this.o.uplinkEnabled ? Math.max(0, below - limitId) : 0;
        const r2 = await this.ctx.store.write({
          sql: [
            { sql: 'DELETE FROM probe_samples WHERE id <= ?', params: [below] },
            ...(unsent > 0
              ? [
                  {
                    sql: 'INSERT INTO events (ts, kind, subject, data) VALUES (?, ?, ?, ?)',
                    params: [
                      this.ctx.clock.now(),
                      'sync.gap',
                      'probe_samples',
                      JSON.stringify({ reason: 'probes.maxSamples', firstId: limitId + 1, lastId: below }),
                    ],
                  },
                ]
              : []),
          ],
          freesSpace: true,
        });
        capped = r2.sql[0]?.changes ?? 0;
        if (unsent > 0) {
          this.metrics.samplesDropped.inc(Math.min(unsent, capped));
          this.log.warn(
            { capped, unsent },
            `probe_samples over probes.maxSamples (${this.o.maxSamples}): deleted ${capped} oldest rows, up to ${unsent} not yet uploaded; check the uplink`,
          );
        }
      }
    } catch (err) {
      this.repeats.error({ err }, 'probe sample retention failed; will retry');
    }
    return { aged, capped };
  }
}

export function createProbesPart(ctx: PartContext, options: ProbesOptions = {}): ProbesPart {
  return new ProbesPart(ctx, options);
}
