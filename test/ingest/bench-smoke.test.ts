/**
 * The ingest bench (`npm run bench -- ingest`) end to end with short phases: real aedes, real
 * mosquitto, the daemon on compiled JavaScript and the raw-socket devices. Nothing here looks at
 * a timing; this proves that the bench still runs, prints every line docs/ingest.md's table is made
 * from, and that its accounting holds (no report taken for a redelivery, reports in every phase).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../', import.meta.url));

interface Line {
  bench: string;
  peer: string;
  devices: number;
  rate?: number;
  [k: string]: unknown;
}

function runBench(): Promise<{ code: number | null; lines: Line[]; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'test/bench/run.ts', 'ingest-100.bench'], {
    cwd: root,
    env: { ...process.env, EDGEKEEPER_BENCH_SECONDS: '1', EDGEKEEPER_BENCH_STEADY_SECONDS: '3' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (out += d));
  child.stderr.on('data', (d: Buffer) => (stderr += d));
  return new Promise((resolve) =>
    child.on('exit', (code) =>
      resolve({
        code,
        lines: out
          .split('\n')
          .filter((l) => l.startsWith('{'))
          .map((l) => JSON.parse(l) as Line),
        stderr,
      }),
    ),
  );
}

test('the ingest bench runs both modes end to end and accounts for every report', {
  timeout: 240_000,
}, async () => {
  const { code, lines, stderr } = await runBench();
  assert.equal(code, 0, stderr.slice(-2000));
  for (const [peer, name] of [
    ['aedes', 'embedded'],
    ['mosquitto', 'external'],
  ] as const) {
    const of = (bench: string) => lines.filter((l) => l.bench === bench && l.peer === peer);
    const raw = of('ingest.raw_delivery');
    assert.equal(raw.length, 2, `${peer}: raw delivery before and after the daemon`);
    for (const r of raw) assert.ok(r.rate! > 0, `${peer}: raw rate ${r.rate}`);

    const [flat] = of(`ingest.${name}`);
    assert.ok(flat, `${name}: no flat-out line`);
    assert.equal(flat.devices, 100);
    assert.equal(flat.duplicates, 0);
    assert.ok(flat.rate! > 0 && (flat.ratio as number) > 0, `${name}: rate ${flat.rate}`);
    for (const k of ['p50', 'p99', 'putDuringP99', 'daemonEventLoopP99Ms']) {
      assert.ok(Number.isFinite(flat[k]), `${name}: ${k} = ${flat[k]}`);
    }
    for (const k of ['daemonRssFirstConnectMB', 'daemonRssSteadyMB', 'daemonRssMB', 'putIdleP99']) {
      assert.ok((flat[k] as number) > 0, `${name}: ${k} = ${flat[k]}`);
    }

    const [half] = of(`ingest.${name}_half_rate`);
    assert.ok(half, `${name}: no half-rate line`);
    assert.ok(half.rate! > 0, `${name}: half rate ${half.rate}`);
  }
});
