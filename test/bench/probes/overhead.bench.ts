/**
 * Probe overhead as ratios measured in one run (absolute rates drift on a shared machine;
 * interleaved with/without rounds make the ratio hold):
 *  - probes.fsync_overhead: a loop of 4 KiB write + fsync, rate with the fsync probe / without;
 *  - probes.runqlat_overhead_on: a pipe ping-pong (2 context switches per round trip), rate with
 *    runqlat recording / without;
 *  - probes.runqlat_overhead_idle: the same with runqlat attached but outside its window;
 *  - probes.runqlat_overhead_duty: on and idle weighted by the default duty cycle (10 s of 60 s).
 * ratio = with / without (1.0 = no overhead); overhead_pct = (1 - ratio) * 100.
 * On a shared, loaded machine the rates swing by more than the overhead, so each line also
 * carries the kernel's own account (kernel.bpf_stats_enabled, on only during this bench):
 * bpf_ns_per_op = BPF program run time per loop operation, and est_overhead_pct = that over the
 * loop's CPU time per operation without the probe (fsync: over its wall time per operation, as
 * fsync waits for the disk). It leaves out the tracepoint's own record set-up, a few tens of ns.
 * Needs root, bpftrace, setpriv, python3.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bpfRunTime, enableBpfStats, median, quantile, runRate, startProbes } from './util.js';

const FSYNC = `
import os, sys, time
fd = os.open('f', os.O_WRONLY | os.O_CREAT, 0o600)
buf = b'x' * 4096
end = time.monotonic() + float(sys.argv[1]); n = 0; off = 0
while time.monotonic() < end:
    os.pwrite(fd, buf, off); os.fsync(fd); n += 1; off = (off + 4096) % (1 << 20)
print(n / float(sys.argv[1]))
`;
const PINGPONG = `
import os, sys, time
a_r, a_w = os.pipe(); b_r, b_w = os.pipe()
if os.fork() == 0:
    while True:
        x = os.read(a_r, 1)
        if not x or x == b'q': os._exit(0)
        os.write(b_w, x)
end = time.monotonic() + float(sys.argv[1]); n = 0
while time.monotonic() < end:
    for _ in range(200): os.write(a_w, b'x'); os.read(b_r, 1)
    n += 200
os.write(a_w, b'q'); os.wait()
t = os.times()
# rate, and CPU microseconds per round trip of both processes (BPF runs on their CPU time)
print(n / float(sys.argv[1]), (t.user + t.system + t.children_user + t.children_system) * 1e6 / n)
`;

// Interleaved rounds, without and with in alternating order; 1.5 s each keeps the bench < 1 min.
const ROUNDS = 3;
const SECONDS = 1.5;

async function ab(
  name: string,
  script: string,
  probes: Parameters<typeof startProbes>,
  dir: string,
  perOpWall = false,
) {
  const ratios: number[] = [];
  const basePerOpNs: number[] = [];
  const cpuRatios: number[] = [];
  const base: number[] = [];
  const withP: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    // Alternate the order (without-with, with-without) so drift on the machine cancels out.
    let off: number[];
    let on: number[];
    if (i % 2 === 0) {
      off = await runRate(script, SECONDS, dir);
      const r = await startProbes(...probes);
      on = await runRate(script, SECONDS, dir);
      await r.stop();
    } else {
      const r = await startProbes(...probes);
      on = await runRate(script, SECONDS, dir);
      await r.stop();
      off = await runRate(script, SECONDS, dir);
    }
    basePerOpNs.push(perOpWall || off[1] === undefined ? 1e9 / off[0]! : off[1] * 1000);
    base.push(off[0]!);
    withP.push(on[0]!);
    ratios.push(on[0]! / off[0]!);
    if (on[1] !== undefined && off[1] !== undefined) cpuRatios.push(off[1] / on[1]);
  }
  // The kernel's own account, in a separate run: its accounting (two clock reads per program
  // run) would otherwise slow the rate runs above.
  let bpfPerOp: number;
  {
    const r = await startProbes(...probes);
    const restore = enableBpfStats();
    try {
      const before = bpfRunTime(r.child.pid!);
      const on = await runRate(script, SECONDS, dir);
      const after = bpfRunTime(r.child.pid!);
      bpfPerOp = (after.ns - before.ns) / (on[0]! * SECONDS);
    } finally {
      restore();
      await r.stop();
    }
  }
  const ratio = median(ratios);
  return {
    bench: name,
    unit: 'ratio',
    p50: ratio,
    p99: quantile(ratios, 0.99),
    n: ROUNDS,
    ratio,
    overhead_pct: (1 - ratio) * 100,
    rate_without: median(base),
    rate_with: median(withP),
    // BPF run time (all events on the machine, so an upper bound) per loop operation.
    bpf_ns_per_op: bpfPerOp,
    est_overhead_pct: (bpfPerOp / median(basePerOpNs)) * 100,
    // CPU time per operation is steadier than the rate on a shared machine.
    ...(cpuRatios.length
      ? { cpu_ratio: median(cpuRatios), cpu_overhead_pct: (1 / median(cpuRatios) - 1) * 100 }
      : {}),
  };
}

export default async function run(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'edgekeeper-bench-probes-'));
  try {
    const fs = await ab('probes.fsync_overhead', FSYNC, [['fsync']], dir, true);
    console.log(JSON.stringify({ ...fs, target_pct: 2 }));
    // runqlat always on (on = period), then attached but idle (1 ns window per hour of uptime:
    // practically never inside it during the bench).
    const on = await ab('probes.runqlat_overhead_on', PINGPONG, [['runqlat'], 1000, 1000], dir);
    console.log(JSON.stringify({ ...on, target_pct: 5 }));
    const idle = await ab('probes.runqlat_overhead_idle', PINGPONG, [['runqlat'], 3_600_000, 1], dir);
    console.log(JSON.stringify(idle));
    const w = (a: number, b: number) => (10 / 60) * a + (50 / 60) * b;
    const duty = w(on.ratio, idle.ratio);
    console.log(
      JSON.stringify({
        bench: 'probes.runqlat_overhead_duty',
        unit: 'ratio',
        p50: duty,
        p99: duty,
        n: ROUNDS,
        ratio: duty,
        overhead_pct: (1 - duty) * 100,
        cpu_overhead_pct: w(on.cpu_overhead_pct ?? 0, idle.cpu_overhead_pct ?? 0),
        est_overhead_pct: w(on.est_overhead_pct, idle.est_overhead_pct),
        target_pct: 1,
        duty: '10 s of 60 s',
      }),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
