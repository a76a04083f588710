/**
 * Metrics computed when scraped, for the daemon and every part: prom-client's Registry serialises
 * them like its own (it calls `get()`). A view shows no sample at all where nothing is known
 * (prom-client's Gauge always shows an unlabelled 0, which would read as a measurement), can
 * export totals kept elsewhere (/proc/stat) and whole histograms (`metricName` per sample).
 */
import type { Metric, Registry } from 'prom-client';

export interface Sample {
  /** `<name>_bucket` and the like; the metric's own name when absent. */
  metricName?: string;
  labels?: Record<string, string | number>;
  value: number;
}

export function registerView(
  registry: Registry,
  name: string,
  help: string,
  type: 'counter' | 'gauge' | 'histogram',
  collect: () => Sample[],
): void {
  const metric = {
    name,
    help,
    type,
    aggregator: 'sum',
    async get() {
      const values = collect().map((s) => ({
        metricName: s.metricName ?? name,
        labels: s.labels ?? {},
        value: s.value,
      }));
      return { name, help, type, aggregator: 'sum', values };
    },
    reset() {},
  };
  registry.registerMetric(metric as unknown as Metric);
}
