/**
 * What storing a report costs the store once the table is large, with and without `ts`, and
 * what the upgrade to the (ts, device, seq) de-duplication index costs at start-up.
 *
 * Per case: a store (durability fsync) with 200,000 reports from 1,000 devices, then 300 writes
 * of 150 reports from random devices through the report writer, one after another. Printed: the
 * process's CPU per report (every thread: the store writer does the work) and the bytes it
 * wrote per report (wchar from /proc/self/io: mostly WAL frames, one whole page for each page a
 * commit dirtied).
 *
 * Then the upgrade: a store created with the first ingest schema and 1,000,000 reports, opened
 * with the current one (which replaces the (device, seq) index): the time that open takes.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ingestMigrations } from '../../../src/ingest/schema.js';
import { openStore, type Store } from '../../../src/store/index.js';
import type { Migration } from '../../../src/store/types.js';
import { writerOn } from '../../ingest/helpers.js';

const DEVICES = 1000;
const PREFILL = 200_000;
const WRITES = 300;
const BATCH = 150;
const UPGRADE_ROWS = 1_000_000;
const HOUR = 3_600_000;

const devices = Array.from({ length: DEVICES }, (_, i) => `device-${String(i).padStart(4, '0')}`);
const body = Buffer.alloc(120, 7);

function wchar(): number {
  const m = /^wchar: (\d+)$/m.exec(readFileSync('/proc/self/io', 'utf8'));
  return Number(m![1]);
}

/**
 * Reports from `pick(i)`'s devices through the report writer (one write), received 1 ms apart
 * from `clock.t` on; each device's seq counts up.
 */
async function write(
  store: Store,
  n: number,
  pick: (i: number) => number,
  withTs: boolean,
  clock: { t: number },
  seqs: number[],
): Promise<void> {
  const writer = writerOn(store, n);
  const adds: Promise<void>[] = [];
  for (let i = 0; i < n; i++) {
    const d = pick(i);
    const t = clock.t++;
    // device clocks within a second of ours
    const ts = withTs ? t - (d % 1000) : null;
    adds.push(writer.add({ device: devices[d]!, receivedAt: t, ts, seq: seqs[d]!++, body }, 1, 0));
  }
  await Promise.all(adds);
}

async function steadyCost(withTs: boolean): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ek-bench-insert-'));
  const store = await openStore({
    file: join(dir, 'r.db'),
    migrations: ingestMigrations,
    durability: 'fsync',
  });
  try {
    const clock = { t: Date.now() - HOUR };
    const seqs = new Array<number>(DEVICES).fill(0);
    for (let done = 0; done < PREFILL; done += 500)
      await write(store, 500, (i) => (done + i) % DEVICES, withTs, clock, seqs);
    const cpu0 = process.cpuUsage();
    const w0 = wchar();
    const t0 = performance.now();
    for (let b = 0; b < WRITES; b++)
      await write(store, BATCH, () => Math.floor(Math.random() * DEVICES), withTs, clock, seqs);
    const wall = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    const reports = WRITES * BATCH;
    console.log(
      JSON.stringify({
        bench: 'ingest.report_insert',
        unit: 'µs/report',
        ts: withTs,
        tableRows: PREFILL,
        batch: BATCH,
        cpuUsPerReport: Math.round(((cpu.user + cpu.system) / reports) * 100) / 100,
        systemUsPerReport: Math.round((cpu.system / reports) * 100) / 100,
        writtenBytesPerReport: Math.round((wchar() - w0) / reports),
        wallUsPerReport: Math.round(((wall * 1000) / reports) * 100) / 100,
      }),
    );
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function upgradeCost(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ek-bench-upgrade-'));
  const file = join(dir, 'r.db');
  try {
    const first: Migration[] = ingestMigrations.filter((m) => m.version === 1);
    const old = await openStore({ file, migrations: first, durability: 'relaxed' });
    const clock = { t: Date.now() - HOUR };
    const seqs = new Array<number>(DEVICES).fill(0);
    for (let done = 0; done < UPGRADE_ROWS; done += 500)
      await write(old, 500, (i) => (done + i) % DEVICES, true, clock, seqs);
    await old.close();
    const t0 = performance.now();
    const store = await openStore({ file, migrations: ingestMigrations, durability: 'fsync' });
    const ms = performance.now() - t0;
    await store.close();
    console.log(
      JSON.stringify({
        bench: 'ingest.schema_upgrade',
        unit: 'ms',
        reports: UPGRADE_ROWS,
        openMs: Math.round(ms),
      }),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export default async function run(): Promise<void> {
  await steadyCost(true);
  await steadyCost(false);
  await upgradeCost();
}
