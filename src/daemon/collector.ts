import type { Registry } from 'prom-client';

export interface Sample {
  labels?: Record<string, string>;
  value: number;
}

/**
 * A metric whose samples are computed at scrape time, with no sample at all where nothing is
 * known. prom-client's Gauge always shows an unlabelled sample (0 after a reset), which would
 * read as a measurement; its Counter cannot be set to a total kept elsewhere (/proc/stat).
 */
export function registerCollector(
  registry: Registry,
  name: string,
  help: string,
  type: 'gauge' | 'counter',
  samples: () => Sample[],
): void {
  const metric = {
    name,
    help,
    type,
    aggregator: 'sum',
    get() {
      const values = samples().map((s) => ({ labels: s.labels ?? {}, value: s.value }));
      return { name, help, type, aggregator: 'sum', values };
    },
    reset() {},
  };
  registry.registerMetric(metric as unknown as Parameters<Registry['registerMetric']>[0]);
}
