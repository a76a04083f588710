/**
 * The SD-card bench (`npm run bench -- sdcard`) end to end in its short form: real etcd 3.4, the
 * real daemon, the Go load generator, cards on loop devices throttled by cgroup v1 blkio, and
 * PostgreSQL 15 with the fleet receiver for the wear phase. Nothing here looks at a timing or a
 * ratio's value: it proves that the bench prints every line docs/store.md describes, for both
 * servers, and that its accounting holds (every request issued is acknowledged or an error, the
 * schedule issued what the mix says, the watcher saw exactly the acknowledged writes, bytes per
 * put are bytes over acknowledged puts, each ratio comes from the same run's two lines), and that
 * no card, loop device, cgroup, server or compiled daemon is left behind, after a clean run or an
 * interrupted one.
 * Needs root, loop devices, cgroup v1 blkio, go with golang-etcd-server-dev, etcd, PostgreSQL 15.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { leftovers, missingPeers } from '../bench/sdcard/card.js';
import { missingGo } from '../bench/sdcard/loadgen.js';
import { ETCD_BIN } from '../etcd/helpers.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const missing = [...missingPeers(), ...missingGo(), ...(existsSync(ETCD_BIN) ? [] : ['etcd-server'])];
const skip =
  missing.length > 0 && process.env.CI !== 'true' ? `the SD-card bench needs: ${missing.join('; ')}` : false;
if (skip) process.stderr.write(`SKIPPED (not CI): ${skip}\n`);

const MIX_SECONDS = 4;
const WEAR_SECONDS = 5;

interface Line {
  bench: string;
  server?: string;
  run?: number;
  [k: string]: unknown;
}

function runBench(
  env: Record<string, string>,
  onStderr?: (text: string, pid: number) => void,
): Promise<{ code: number | null; lines: Line[]; stderr: string; pid: number }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'test/bench/run.ts', 'sdcard.bench'], {
    cwd: root,
    env: { ...process.env, EDGEKEEPER_BENCH_RUNS: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d;
  });
  child.stderr.on('data', (d: Buffer) => {
    stderr += d;
    onStderr?.(stderr, child.pid!);
  });
  return new Promise((resolve) =>
    child.on('close', (code) =>
      resolve({
        code,
        pid: child.pid!,
        stderr,
        lines: out
          .split('\n')
          .filter((l) => l.startsWith('{'))
          .map((l) => JSON.parse(l) as Line),
      }),
    ),
  );
}

/** The value of a loadgen flag in the setup line's `mix` string. */
function flag(mix: string, name: string): number {
  const m = new RegExp(`-${name} (\\S+)`).exec(mix);
  assert.ok(m, `-${name} in ${mix}`);
  return Number.parseFloat(m[1]!);
}

/** Scheduled moments at offset + k × every that fall before `seconds` (the loadgen's schedule). */
const scheduled = (seconds: number, offset: number, every: number) =>
  Math.max(0, Math.ceil((seconds - offset) / every));

function assertRatio(got: unknown, a: unknown, b: unknown, what: string): void {
  assert.equal(typeof a, 'number', `${what}: edgekeeper figure`);
  assert.equal(typeof b, 'number', `${what}: etcd figure`);
  const want = (a as number) / (b as number);
  assert.ok(
    typeof got === 'number' && Math.abs(got - want) <= 0.001 + want * 0.002,
    `${what}: ratio ${got}, but the two lines of the run give ${want}`,
  );
}

test('the SD-card bench prints every line for both servers with its accounting intact', {
  skip,
  timeout: 600_000,
}, async () => {
  assert.deepEqual(missing, [], 'in CI every peer of the SD-card bench must be there');
  const { code, lines, stderr, pid } = await runBench({
    EDGEKEEPER_BENCH_SDCARD_SECONDS: String(MIX_SECONDS),
    EDGEKEEPER_BENCH_SDCARD_KEYS: '300',
    EDGEKEEPER_BENCH_SDCARD_FAST_SECONDS: '1',
    EDGEKEEPER_BENCH_SDCARD_WEAR_SECONDS: String(WEAR_SECONDS),
    EDGEKEEPER_BENCH_SDCARD_SETTLE_SECONDS: '3',
  });
  assert.equal(code, 0, stderr.slice(-3000));
  assert.deepEqual(leftovers(pid), [], 'cards, loop devices or cgroups left behind');

  const setup = lines.find((l) => l.bench === 'sdcard.setup');
  assert.ok(setup, 'no setup line');
  assert.equal(existsSync(String(setup.daemonBuild)), false, 'the compiled daemon was left behind');
  const mix = String(setup.mix);
  const one = (bench: string, server: string) => {
    const found = lines.filter((l) => l.bench === `sdcard.${bench}` && l.server === server);
    assert.equal(found.length, 1, `${bench} ${server}: ${found.length} lines`);
    assert.equal(found[0]!.run, 0, `${bench} ${server}: run index`);
    return found[0]!;
  };
  const finite = (l: Line, k: string) => {
    assert.ok(typeof l[k] === 'number' && Number.isFinite(l[k]), `${l.bench} ${l.server}: ${k} = ${l[k]}`);
    return l[k] as number;
  };

  // the mix, on the card
  const classes = ['put_steady', 'put_steady_in_burst', 'put_burst', 'renewal'];
  for (const server of ['etcd', 'edgekeeper']) {
    const c = Object.fromEntries(classes.map((m) => [m, one(m, server)]));
    for (const [m, l] of Object.entries(c)) {
      assert.equal(l.errors, 0, `${m} ${server}: ${l.firstError}`);
      assert.equal(
        finite(l, 'n') + finite(l, 'errors'),
        finite(l, 'issued'),
        `${m} ${server}: acked + errors`,
      );
      if (finite(l, 'n') > 0) {
        const q = ['p50', 'p99', 'p999', 'max'].map((k) => finite(l, k));
        assert.ok(q[0]! > 0, `${m} ${server}: p50`);
        assert.deepEqual(
          q,
          [...q].sort((a, b) => a - b),
          `${m} ${server}: quantiles in order`,
        );
      }
    }
    const issued = (m: string) => c[m]!.issued as number;
    assert.equal(
      issued('put_steady') + issued('put_steady_in_burst'),
      Math.ceil(MIX_SECONDS * flag(mix, 'steady-rate')),
      `${server}: steady puts issued against the schedule`,
    );
    const every = flag(mix, 'burst-every');
    assert.equal(
      issued('put_burst'),
      scheduled(MIX_SECONDS, every / 2, every) * flag(mix, 'burst-writers') * flag(mix, 'burst-run'),
      `${server}: burst puts issued`,
    );
    assert.ok(issued('put_burst') > 0, 'the short mix has a burst');
    const renew = flag(mix, 'renew-every');
    assert.equal(issued('renewal'), scheduled(MIX_SECONDS, renew / 2, renew), `${server}: renewals issued`);
    const acked = classes.reduce((a, m) => a + (c[m]!.n as number), 0);

    const w = one('watch', server);
    // preload + the leader record's creation + every acknowledged write of the mix
    assert.equal(w.ackedWrites, (w.preloaded as number) + 1 + acked, `${server}: acknowledged writes`);
    assert.equal(w.preloaded, flag(mix, 'keys'));
    assert.equal(w.n, w.ackedWrites, `${server}: watcher events`);
    assert.deepEqual([w.missing, w.unexpected, w.outOfOrder, w.canceled], [0, 0, 0, ''], `${server}: watch`);

    const card = one('card', server);
    assert.equal(card.n, acked, `${server}: puts the card's bytes are divided by`);
    assert.ok(finite(card, 'bytesWritten') > 0 && finite(card, 'writeIos') > 0, `${server}: nothing written`);
    assert.ok(Math.abs(finite(card, 'value') - (card.bytesWritten as number) / acked) < 0.01);
    assert.equal(finite(card, 'throttledBytes') + finite(card, 'escapedBytes'), card.bytesWritten);
    assert.equal(finite(card, 'throttledIos') + finite(card, 'escapedIos'), card.writeIos);
    assert.ok(finite(card, 'throttledIos') > 0, `${server}: nothing went through the throttle`);

    const files = one('files', server).files as { file: string }[];
    const expect = server === 'etcd' ? /^etcd\/member\// : /^edgekeeper\/edgekeeper\.db/;
    assert.ok(
      files.some((f) => expect.test(f.file)),
      `${server}: the database is not among the changed files`,
    );
    const s = one('server', server);
    assert.ok(finite(s, 'peakRssMb') > 0 && finite(s, 'cpuUsPerPut') > 0, `${server}: server figures`);
  }
  for (const m of classes) {
    const [e, k] = [one(m, 'etcd'), one(m, 'edgekeeper')];
    assertRatio(k.p99Ratio, k.p99, e.p99, `${m} p99Ratio`);
    assertRatio(k.maxRatio, k.max, e.max, `${m} maxRatio`);
  }
  const [ec, kc] = [one('card', 'etcd'), one('card', 'edgekeeper')];
  assertRatio(kc.bytesPerPutRatio, kc.value, ec.value, 'bytesPerPutRatio');
  const commit = one('commit', 'edgekeeper').commit as { n: number };
  assert.ok(commit.n > 0, 'edgekeeper: no commit in its histogram');
  assert.ok(one('commit', 'etcd').walFsync, 'etcd: no WAL fsync histogram');

  // the fast disk
  for (const m of ['fast_seq', 'fast_inflight32', 'fast_inflight256']) {
    const [e, k] = [one(m, 'etcd'), one(m, 'edgekeeper')];
    for (const l of [e, k]) {
      assert.equal(l.errors, 0, `${m} ${l.server}`);
      assert.equal(finite(l, 'n') + finite(l, 'errors'), finite(l, 'issued'), `${m} ${l.server}: accounting`);
      assert.ok(finite(l, 'opsPerSec') > 0, `${m} ${l.server}: ops/s`);
    }
    assert.equal(e.inflight, m === 'fast_seq' ? 1 : Number(m.slice('fast_inflight'.length)));
    assertRatio(k.throughputRatio, k.opsPerSec, e.opsPerSec, `${m} throughputRatio`);
    assertRatio(k.p99Ratio, k.p99, e.p99, `${m} p99Ratio`);
  }

  // wear and memory, edgekeeper alone
  const idle = one('wear_idle', 'edgekeeper');
  assert.ok(finite(idle, 'value') >= 0 && finite(idle, 'windowS') >= WEAR_SECONDS, 'idle window');
  assert.equal(idle.target, 1024);
  const parts = idle.parts as Record<string, number>;
  assert.ok(parts.probesUp! > 0, 'probes were not running');
  const rep = one('wear_report', 'edgekeeper');
  assert.deepEqual([rep.n, rep.sent, rep.stored], [WEAR_SECONDS, WEAR_SECONDS, WEAR_SECONDS], 'reports');
  assert.ok(finite(rep, 'value') > 0, 'bytes per report');
  assert.ok(Math.abs((rep.value as number) - finite(rep, 'bytesWritten') / WEAR_SECONDS) < 0.01);
  assert.ok((rep.parts as Record<string, number>).syncBatches! > 0, 'sync uploaded nothing');
  assert.ok(finite(one('memory_idle', 'edgekeeper'), 'value') > 0, 'idle RSS');
});

test('an interrupted SD-card bench leaves no card, loop device or cgroup behind', {
  skip,
  timeout: 300_000,
}, async () => {
  assert.deepEqual(missing, [], 'in CI every peer of the SD-card bench must be there');
  let sent = false;
  const { code, pid, lines } = await runBench(
    {
      EDGEKEEPER_BENCH_SDCARD_PHASES: 'mix',
      EDGEKEEPER_BENCH_SDCARD_SECONDS: '2',
      EDGEKEEPER_BENCH_SDCARD_KEYS: '100',
    },
    (text, child) => {
      // etcd's card is gone; edgekeeper's is mounted, with the daemon and its bpftrace on it
      if (!sent && text.includes('mix on edgekeeper')) {
        sent = true;
        setTimeout(() => process.kill(child, 'SIGINT'), 4000);
      }
    },
  );
  assert.ok(sent, 'the bench never reached the mix');
  assert.equal(code, 130);
  assert.deepEqual(leftovers(pid), []);
  const build = lines.find((l) => l.bench === 'sdcard.setup')?.daemonBuild;
  assert.equal(typeof build, 'string', 'the setup line names the daemon build');
  assert.equal(existsSync(build as string), false, 'the compiled daemon was left behind');
});
