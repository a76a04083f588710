/**
 * The probes part in-process: degradation (no bpftrace, not root, no tracefs) with an injected
 * host reader, the duty-cycle state, the CPU budget, garbage and dying bpftrace (a fake binary:
 * faults the real one cannot produce on demand), retention against the uplink cursor, CLI.
 * Real SQLite store; the budget and duty-cycle cases run the real bpftrace (root).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { encode } from 'cbor-x';
import { ManualClock } from '../../src/clock.js';
import { type HostAccess, realHost } from '../../src/probes/environment.js';
import { PROBE_NAMES, probesCommand, probesConfigSection } from '../../src/probes/index.js';
import { reasonCode } from '../../src/probes/part.js';
import { cpuTicks } from '../../src/probes/supervisor.js';
import { capture as captureCli } from '../capture.js';
import { type Harness, makeHarness, metricValue, waitFor } from './helpers/harness.js';

const FIX = join(import.meta.dirname, 'fixtures');
const FAKE = join(FIX, 'fake-bpftrace.sh');
const NOBODY = 'Name:\tnode\nUid:\t65534\t65534\t65534\t65534\nCapEff:\t0000000000000000\n';
const BPF_ONLY = 'Name:\tnode\nUid:\t0\t0\t0\t0\nCapEff:\t000000c000000000\n';
const host = (over: Partial<HostAccess>): HostAccess => ({ ...realHost, ...over });

const open: Harness[] = [];
async function harness(...args: Parameters<typeof makeHarness>): Promise<Harness> {
  const h = await makeHarness(...args);
  open.push(h);
  return h;
}
after(async () => {
  for (const h of open) await h.close();
});

it('probe_up reasons come from a fixed set; free text stays out of labels', () => {
  const cases: [string, string][] = [
    ['running', 'running'],
    ['idle (duty cycle)', 'idle'],
    ['unavailable: disabled in config (probes.enabled)', 'disabled'],
    ['unavailable: not root: bpftrace needs uid 0 with CAP_BPF and CAP_PERFMON', 'no_root'],
    ['unavailable: missing capabilities: CAP_BPF and CAP_PERFMON', 'no_capabilities'],
    ['unavailable: bpftrace not found (/opt/x/bpftrace)', 'no_bpftrace'],
    ['unavailable: bpftrace at /usr/bin/bpftrace does not run', 'bpftrace_broken'],
    ['unavailable: bpftrace v0.9.4 too old (need >= 0.16.0)', 'bpftrace_too_old'],
    ['unavailable: tracefs not mounted at /sys/kernel/tracing', 'no_tracefs'],
    ['unavailable: bpftrace -l failed', 'bpftrace_list_failed'],
    ['unavailable: tracepoint missing: block:block_rq_issue', 'no_tracepoint'],
    ['unavailable: over CPU budget (4.2% of a CPU > 2%)', 'over_cpu_budget'],
    [
      'unavailable: bpftrace exit code 1: ERROR: not root, bpftrace not found; restarting in 4 s',
      'restarting',
    ],
    ['unavailable: starting', 'starting'],
    ['unavailable: not started', 'not_started'],
    ['unavailable: stopped', 'stopped'],
    ['unavailable: <script>"quoted"\nnew line</script>', 'other'],
  ];
  for (const [state, code] of cases) assert.equal(reasonCode(state as never), code, state);
});

describe('degradation: each probe says why, /metrics shows probe_up 0 with the reason', () => {
  it('no bpftrace on PATH', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'edgekeeper-nopath-'));
    try {
      const h = await harness({ host: host({ path: () => empty }) });
      await h.part.start();
      const st = h.part.probeStates();
      for (const p of PROBE_NAMES) assert.equal(st[p], 'unavailable: bpftrace not found (bpftrace)');
      const m = await h.metrics();
      assert.equal(metricValue(m, 'edgekeeper_probe_up', 'probe="fsync",reason="no_bpftrace"'), 0);
      assert.deepEqual(h.part.pids(), []);
    } finally {
      rmSync(empty, { recursive: true });
    }
  });

  it('not root', async () => {
    const h = await harness({ host: host({ procStatus: () => NOBODY }) });
    await h.part.start();
    const reason = 'not root: bpftrace needs uid 0 with CAP_BPF and CAP_PERFMON';
    assert.equal(h.part.probeStates().runqlat, `unavailable: ${reason}`);
    assert.equal(
      metricValue(await h.metrics(), 'edgekeeper_probe_up', 'probe="runqlat",reason="no_root"'),
      0,
    );
  });

  it('tracefs missing and not mountable (no CAP_SYS_ADMIN)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'edgekeeper-notracefs-'));
    try {
      let mounts = 0;
      const h = await harness({
        tracefsDir: dir,
        host: host({
          procStatus: () => BPF_ONLY,
          run: (f, a, t) => {
            if (f !== 'mount') return realHost.run(f, a, t);
            mounts++;
            return realHost.run('false', [], t);
          },
        }),
      });
      await h.part.start();
      assert.equal(mounts, 0, 'must not try to mount without CAP_SYS_ADMIN');
      const reason = `tracefs not mounted at ${dir}`;
      assert.equal(h.part.probeStates().biolat, `unavailable: ${reason}`);
      assert.equal(
        metricValue(await h.metrics(), 'edgekeeper_probe_up', 'probe="biolat",reason="no_tracefs"'),
        0,
      );
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it('a disabled probe and a missing tracepoint are named', async () => {
    const h = await harness({
      enabled: ['fsync', 'oomkill'],
      bpftracePath: FAKE,
      host: host({
        run: (f, a, t) =>
          a[0] === '-l'
            ? Promise.resolve({ code: 0, stdout: 'tracepoint:syscalls:sys_enter_fsync\n', stderr: '' })
            : realHost.run(f, a, t),
      }),
    });
    await h.part.start();
    const st = h.part.probeStates();
    assert.equal(st.runqlat, 'unavailable: disabled in config (probes.enabled)');
    assert.match(st.fsync, /^unavailable: tracepoint missing: tracepoint:syscalls:sys_exit_fsync/);
    assert.equal(st.oomkill, 'unavailable: tracepoint missing: tracepoint:oom:mark_victim');
  });

  it('refuses an unknown probe name in probes.enabled', async () => {
    await assert.rejects(harness({ enabled: ['fsync', 'kprobe-magic'] }), /unknown probe kprobe-magic/);
  });
});

describe('bad and dying bpftrace (fake binary)', () => {
  it('counts garbage lines, stores the good ones, and restarts with backoff', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'edgekeeper-fake-'));
    const out = join(dir, 'out.jsonl');
    const real = readFileSync(join(FIX, 'all.jsonl'), 'utf8');
    writeFileSync(
      out,
      `garbage\n{"type": "hist", "data": {"@fsync_us": [{"min": 4, "max": 1, "count": 1}]}}\n${real}{"type":"map","data":{"@tcpretrans":{"1":3,"2":1}}}\n`,
    );
    try {
      const clock = new ManualClock();
      const h = await harness(
        { bpftracePath: FAKE, env: { ...process.env, FAKE_BPFTRACE_OUTPUT: out }, backoffInitialMs: 1000 },
        clock,
      );
      await h.part.start();
      await waitFor('the fake to exit and a restart to be scheduled', () =>
        String(h.part.probeStates().fsync).includes('restarting in 1 s'),
      );
      const m = await h.metrics();
      assert.equal(metricValue(m, 'edgekeeper_probe_bad_lines_total'), 2);
      assert.equal(metricValue(m, 'edgekeeper_probe_restarts_total'), 1);
      assert.equal(metricValue(m, 'edgekeeper_probe_tcp_retransmits_total', 'state="ESTABLISHED"'), 3);
      assert.match(h.part.probeStates().fsync, /bpftrace exit code 1: ERROR: fake bpftrace says goodbye/);
      // Samples wait in memory for storeInterval (1 s in the harness).
      assert.equal(h.part.samplesWritten, 0);
      clock.advance(1000);
      await waitFor('rows stored', () => h.part.samplesWritten > 0);
      const n = h.store
        .query<{ n: number }>("SELECT COUNT(*) AS n FROM probe_samples WHERE metric = 'runq_us'")
        .get()!.n;
      assert.ok(n >= 3);
      // Backoff doubles: after the restart dies too, the next one is in 2 s.
      clock.advance(1000);
      await waitFor('second restart scheduled with doubled delay', () =>
        /restarting in 2 s/.test(h.part.probeStates().fsync),
      );
      assert.equal(metricValue(await h.metrics(), 'edgekeeper_probe_restarts_total'), 2);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });
});

describe('a shared bpftrace that never attaches', () => {
  it('is split into one process per probe after two failures', async () => {
    const clock = new ManualClock();
    const h = await harness({ bpftracePath: FAKE, env: { ...process.env, FAKE_BPFTRACE_OUTPUT: '' } }, clock);
    await h.part.start();
    await waitFor('first failure', () => /restarting in 1 s/.test(h.part.probeStates().fsync));
    clock.advance(1000);
    // The split processes start at once and each fails on its own.
    await waitFor(
      'five separate restarts',
      async () => metricValue(await h.metrics(), 'edgekeeper_probe_restarts_total') === 6,
    );
    for (const p of PROBE_NAMES)
      assert.match(h.part.probeStates()[p], /^unavailable: bpftrace exit code 1: .*restarting in 1 s$/);
  });
});

describe('with the real bpftrace', () => {
  it('says "idle (duty cycle)" outside runqlat\'s window and "running" inside it', async () => {
    let now = 0n;
    const h = await harness({
      enabled: ['runqlat'],
      runqlatPeriod: 60_000,
      runqlatOn: 10_000,
      monotonicNs: () => now,
    });
    await h.part.start();
    await waitFor('runqlat attached', () => h.part.probeStates().runqlat === 'running');
    now = 30_000_000_000n;
    assert.equal(h.part.probeStates().runqlat, 'idle (duty cycle)');
    assert.equal(metricValue(await h.metrics(), 'edgekeeper_probe_up', 'probe="runqlat",reason="idle"'), 1);
    now = 60_000_000_001n;
    assert.equal(h.part.probeStates().runqlat, 'running');
  });

  it('stops the costliest probe of a process over its CPU budget and keeps the rest', async () => {
    let firstPid: number | undefined;
    let calls = 0;
    const h = await harness({
      enabled: ['fsync', 'runqlat'],
      cpuBudget: 2,
      cpuCheckMs: 200,
      // The first process burns 1 s of CPU per check (500% of a CPU); later ones are idle.
      readProcStat: (pid) => {
        firstPid ??= pid;
        const ticks = pid === firstPid ? 100 * ++calls : 1;
        return `${pid} (bpftrace) S 1 1 1 0 -1 0 0 0 0 0 ${ticks} 0 0 0 20 0 1 0`;
      },
    });
    await h.part.start();
    await waitFor('runqlat stopped over budget', () =>
      /^unavailable: over CPU budget \(\d+\.\d% of a CPU > 4%\)$/.test(h.part.probeStates().runqlat),
    );
    await waitFor(
      'fsync running alone in a new process',
      () => h.part.probeStates().fsync === 'running' && h.part.pids()[0] !== firstPid,
    );
    assert.equal(h.part.pids().length, 1);
  });
});

describe('CPU budget counts in-kernel BPF time', () => {
  it('stops a probe whose programs cost too much in the kernel (injected run time)', async () => {
    let firstPid: number | undefined;
    let calls = 0;
    const h = await harness({
      enabled: ['runqlat'],
      cpuBudget: 5,
      cpuCheckMs: 200,
      readProcStat: (pid) => `${pid} (bpftrace) S 1 1 1 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0`,
      // 1 s of BPF run time per check: far over 5%.
      readBpfRunNs: (pid) => {
        firstPid ??= pid;
        return pid === firstPid ? 1e9 * ++calls : 0;
      },
    });
    await h.part.start();
    await waitFor('runqlat stopped over budget', () =>
      /^unavailable: over CPU budget/.test(h.part.probeStates().runqlat),
    );
    assert.deepEqual(h.part.pids(), []);
  });
});

describe('retention of probe_samples', () => {
  async function seed(h: Harness, rows: number, ts: number): Promise<void> {
    const data = encode({ count: 1 });
    await h.store.write({
      sql: [
        {
          sql: 'INSERT INTO probe_samples (ts, probe, metric, data) VALUES (?, ?, ?, ?)',
          rows: Array.from({ length: rows }, () => [ts, 'fsync', 'fsync_us', data]),
        },
      ],
    });
  }
  const ids = (h: Harness) =>
    h.store
      .query<{ id: number }>('SELECT id FROM probe_samples ORDER BY id')
      .all()
      .map((r) => r.id);

  it('deletes old rows, but with an uplink never above its cursor', async () => {
    const clock = new ManualClock(1_800_000_000_000);
    const h = await harness({ uplinkEnabled: true, retention: 3_600_000 }, clock);
    await seed(h, 10, clock.now() - 7_200_000);
    await seed(h, 2, clock.now());
    assert.deepEqual(
      await h.part.applyRetention(),
      { aged: 0, capped: 0 },
      'no cursor yet: nothing uploaded, nothing deleted',
    );
    await h.store.write({
      sql: [{ sql: "INSERT INTO cursors (name, position) VALUES ('probe_samples', 6)" }],
    });
    assert.equal((await h.part.applyRetention()).aged, 6);
    assert.deepEqual(ids(h), [7, 8, 9, 10, 11, 12]);
  });

  it('without an uplink deletes by age only', async () => {
    const clock = new ManualClock(1_800_000_000_000);
    const h = await harness({ retention: 3_600_000 }, clock);
    await seed(h, 5, clock.now() - 7_200_000);
    await seed(h, 1, clock.now());
    assert.equal((await h.part.applyRetention()).aged, 5);
    assert.deepEqual(ids(h), [6]);
  });

  it('the hard cap deletes the oldest even unsent, says so in events, and counts it', async () => {
    const clock = new ManualClock(1_800_000_000_000);
    const h = await harness({ uplinkEnabled: true, maxSamples: 1000 }, clock);
    await seed(h, 1010, clock.now());
    await h.store.write({
      sql: [{ sql: "INSERT INTO cursors (name, position) VALUES ('probe_samples', 4)" }],
    });
    assert.equal((await h.part.applyRetention()).capped, 10);
    assert.equal(ids(h)[0], 11);
    const ev = h.store
      .query<{ kind: string; data: string }>("SELECT kind, data FROM events WHERE kind = 'sync.gap'")
      .get();
    assert.deepEqual(JSON.parse(ev!.data), { reason: 'probes.maxSamples', firstId: 5, lastId: 10 });
    assert.equal(metricValue(await h.metrics(), 'edgekeeper_probe_samples_dropped_total'), 6);
  });
});

describe('edgekeeper probes (CLI over HTTP)', () => {
  const capture = async (fn: () => Promise<number>) => {
    const r = await captureCli(fn);
    return { code: r.code, out: r.out + r.err };
  };

  it('prints each probe state from GET /v1/probes, and fails clearly without a daemon', async () => {
    const h = await harness({ host: host({ procStatus: () => NOBODY }) });
    await h.part.start();
    const port = await h.listen();
    const r = await capture(() => probesCommand.run(['--http', `127.0.0.1:${port}`]));
    assert.equal(r.code, 0);
    assert.match(r.out, /fsync\s+unavailable: not root: bpftrace needs uid 0/);
    assert.match(r.out, /fsync\s+no data yet/);
    const j = await capture(() => probesCommand.run(['--http', `127.0.0.1:${port}`, '--json']));
    assert.equal(
      JSON.parse(j.out).probes.oomkill,
      'unavailable: not root: bpftrace needs uid 0 with CAP_BPF and CAP_PERFMON',
    );
    const down = await capture(() => probesCommand.run(['--http', '127.0.0.1:1']));
    assert.equal(down.code, 1);
    assert.match(
      down.out,
      /^edgekeeper probes: nothing answers at 127\.0\.0\.1:1 .*\[EDGE_ERR_UNREACHABLE\]\n$/,
    );
    const bad = await capture(() => probesCommand.run(['--bogus']));
    assert.equal(bad.code, 2);
  });
});

describe('small pieces', () => {
  it('reads utime+stime from /proc/<pid>/stat, even with spaces and parens in the command', () => {
    assert.equal(cpuTicks('42 (a) b) c) S 1 1 1 0 -1 0 0 0 0 0 7 5 0 0 20 0'), 12);
    assert.equal(cpuTicks('garbage'), undefined);
  });

  it('declares its config section with defaults for every probe', () => {
    assert.equal(probesConfigSection.name, 'probes');
    const en = probesConfigSection.fields.enabled;
    assert.ok(en && en.type === 'string[]');
    assert.deepEqual(en.default, PROBE_NAMES);
  });
});
