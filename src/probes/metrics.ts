/**
 * Prometheus export. prom-client's Histogram can only `observe()` single values, and bpftrace
 * hands us bucket counts (hundreds of thousands of events per interval for runqlat): replaying
 * them one by one would cost more than the probe. So the histograms are a small custom collector
 * that prom-client's Registry serialises like any metric (it calls `get()`), with cumulative
 * `_bucket{le}` counts on the log2 bounds, `_count`, and `_sum` estimated from bucket midpoints.
 */
import { Counter, Gauge, type Metric, type Registry } from 'prom-client';
import { bucketHigh, type Log2Histogram } from './histogram.js';

/** le bounds exported: 1 us .. 2^25 us (33.5 s), then +Inf. */
const EXPORT_MAX_INDEX = 25;

export interface Series {
  labels: Record<string, string>;
  /** Cumulative since start, in microseconds. */
  hist: Log2Histogram;
}

interface MetricValue {
  metricName: string;
  labels: Record<string, string | number>;
  value: number;
}

/** Registers a histogram (unit: seconds) whose series come from `series()` at scrape time. */
export function registerBucketHistogram(
  registry: Registry,
  name: string,
  help: string,
  series: () => Series[],
): void {
  const metric = {
    name,
    help,
    type: 'histogram',
    aggregator: 'sum',
    async get() {
      const values: MetricValue[] = [];
      for (const s of series()) {
        let cum = 0;
        for (let i = 0; i <= EXPORT_MAX_INDEX; i++) {
          cum += s.hist.counts[i] ?? 0;
          values.push({
            metricName: `${name}_bucket`,
            labels: { ...s.labels, le: bucketHigh(i) / 1e6 },
            value: cum,
          });
        }
        values.push({
          metricName: `${name}_bucket`,
          labels: { ...s.labels, le: '+Inf' },
          value: s.hist.total,
        });
        values.push({ metricName: `${name}_sum`, labels: s.labels, value: s.hist.sumEstimate() / 1e6 });
        values.push({ metricName: `${name}_count`, labels: s.labels, value: s.hist.total });
      }
      return { name, help, type: 'histogram', aggregator: 'sum', values };
    },
    reset() {},
  };
  registry.registerMetric(metric as unknown as Metric);
}

export interface ProbeMetrics {
  up: Gauge<'probe' | 'reason'>;
  tcpRetransmits: Counter<'state'>;
  tcpSynackRetransmits: Counter;
  oomKills: Counter;
  badLines: Counter;
  restarts: Counter;
  samplesDropped: Counter;
  writeErrors: Counter;
}

export function createProbeMetrics(
  registry: Registry,
  upCollect: (g: Gauge<'probe' | 'reason'>) => void,
): ProbeMetrics {
  return {
    up: new Gauge({
      name: 'edgekeeper_probe_up',
      help: 'Whether each probe runs (1, also while idle in its duty cycle) or not (0), with the reason.',
      labelNames: ['probe', 'reason'],
      registers: [registry],
      collect() {
        upCollect(this);
      },
    }),
    tcpRetransmits: new Counter({
      name: 'edgekeeper_probe_tcp_retransmits_total',
      help: 'TCP segments retransmitted, by the socket state (tcp:tcp_retransmit_skb).',
      labelNames: ['state'],
      registers: [registry],
    }),
    tcpSynackRetransmits: new Counter({
      name: 'edgekeeper_probe_tcp_synack_retransmits_total',
      help: 'SYN-ACKs retransmitted (tcp:tcp_retransmit_synack).',
      registers: [registry],
    }),
    oomKills: new Counter({
      name: 'edgekeeper_probe_oom_kills_total',
      help: 'Processes chosen by the kernel OOM killer (oom:mark_victim).',
      registers: [registry],
    }),
    badLines: new Counter({
      name: 'edgekeeper_probe_bad_lines_total',
      help: 'Lines from bpftrace that could not be parsed (dropped).',
      registers: [registry],
    }),
    restarts: new Counter({
      name: 'edgekeeper_probe_restarts_total',
      help: 'bpftrace processes that died and were restarted.',
      registers: [registry],
    }),
    samplesDropped: new Counter({
      name: 'edgekeeper_probe_samples_dropped_total',
      help: 'Probe samples deleted by the hard row cap before the uplink had sent them.',
      registers: [registry],
    }),
    writeErrors: new Counter({
      name: 'edgekeeper_probe_write_errors_total',
      help: 'Probe sample writes the store refused.',
      registers: [registry],
    }),
  };
}
