/**
 * bpftrace start time (spawn to every probe attached: the composed program's BEGIN line) and RSS for the full probe set, shared in one
 * process (what edgekeeper does) versus one process per probe (summed) — the measurement behind
 * `probes.sharing = shared`. Needs root, bpftrace, setpriv.
 */
import { cpus, loadavg } from 'node:os';
import { PROBE_NAMES } from '../../../src/probes/catalog.js';
import { memoryMb } from '../proc.js';
import { median, quantile, startProbes } from './util.js';

export default async function run(): Promise<void> {
  const starts: number[] = [];
  const announced: number[] = [];
  const cpu: number[] = [];
  const rss: number[] = [];
  for (let i = 0; i < 3; i++) {
    const r = await startProbes([...PROBE_NAMES]);
    starts.push(r.startMs);
    announced.push(r.announcedMs);
    cpu.push(r.cpuMs);
    rss.push(memoryMb(r.child.pid!).rss);
    await r.stop();
  }
  console.log(
    JSON.stringify({
      bench: 'probes.start_full_set',
      unit: 'ms',
      p50: median(starts),
      p99: quantile(starts, 0.99),
      n: starts.length,
      // Wall time stretches with the load of a shared machine: the CPU bpftrace spent, when it
      // printed "attached_probes" (before attaching) and the load average go along.
      announced_ms: median(announced),
      cpu_ms: median(cpu),
      loadavg_1m: loadavg()[0],
      cpus: cpus().length,
      target: 1000,
    }),
  );
  console.log(
    JSON.stringify({
      bench: 'probes.rss_full_set_shared',
      unit: 'MB',
      p50: median(rss),
      p99: quantile(rss, 0.99),
      n: rss.length,
      processes: 1,
      target: 110,
    }),
  );
  // One process per probe, started one after another (as the supervisor would), all alive.
  const each = [];
  for (const p of PROBE_NAMES) each.push(await startProbes([p]));
  const per = each.map((r) => memoryMb(r.child.pid!).rss);
  for (const r of each) await r.stop();
  const sum = per.reduce((a, b) => a + b, 0);
  console.log(
    JSON.stringify({
      bench: 'probes.rss_full_set_per_probe',
      unit: 'MB',
      p50: sum,
      p99: sum,
      n: 1,
      processes: per.length,
      per_probe: per.map((x) => Math.round(x)),
      ratio: sum / median(rss),
    }),
  );
}
