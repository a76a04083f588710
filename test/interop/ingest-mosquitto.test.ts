/**
 * External mode against a real mosquitto 2.0 (started here on a free loopback port) with
 * `mosquitto_pub` processes as devices. Proves: QoS 1 and QoS 0, JSON and CBOR reports arrive;
 * while the devices keep publishing, edgekeeper's ingest is restarted and every QoS 1 report is
 * stored exactly once (persistent session with a fixed client id, PUBACK after commit, seq
 * de-duplication), also when the edgekeeper process is killed with SIGKILL and started again;
 * a device killed with SIGKILL goes offline through its will.
 * Needs: mosquitto and mosquitto_pub (apt-get install -y mosquitto mosquitto-clients).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { encode } from 'cbor-x';
import { decodeBody } from '../../src/ingest/index.js';
import { createInterface } from 'node:readline';
import Database from 'better-sqlite3';
import {
  type Harness,
  harness,
  metricValue,
  reportCount,
  restartPart,
  tempDir,
  waitFor,
  watchPrefix,
} from '../ingest/helpers.js';
import { type Mosquitto, startMosquitto } from '../ingest/mosquitto.js';

const procs: ChildProcess[] = [];
process.on('exit', () => {
  for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
});

function pub(port: number, args: string[]): ChildProcess {
  const p = spawn('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(port), ...args], {
    stdio: ['pipe', 'ignore', 'pipe'],
  });
  p.on('error', (e) => {
    throw new Error(`mosquitto_pub failed to start (${e.message}); apt-get install -y mosquitto-clients`);
  });
  procs.push(p);
  // our end of its stdin would keep this process alive after the device exits
  p.once('exit', () => p.stdin?.destroy());
  p.stderr!.on('data', (d) => process.stderr.write(`mosquitto_pub: ${d}`));
  return p;
}

function exited(p: ChildProcess): Promise<number | null> {
  return p.exitCode !== null ? Promise.resolve(p.exitCode) : new Promise((r) => p.once('exit', (c) => r(c)));
}

const extOpts = (url: string) => ({
  mode: 'external' as const,
  url,
  clientId: 'edgekeeper-test',
  mirrorInterval: 0,
  ratePerSec: 10_000,
  rateBurst: 10_000,
});

for (const protocolVersion of [5, 4] as const) {
  describe(`ingest external mode with mosquitto (MQTT ${protocolVersion === 5 ? '5' : '3.1.1'} towards the broker)`, () => {
    let m: Mosquitto;
    let h: Harness;
    before(async () => {
      m = await startMosquitto();
      h = await harness({ ...extOpts(m.url), protocolVersion });
    });
    after(async () => {
      await h.close();
      await m.stop();
    });

    it('stores QoS 1 and QoS 0 reports in JSON and CBOR from mosquitto_pub', async () => {
      const a = pub(m.port, [
        '-i',
        'dev-a',
        '-q',
        '1',
        '-t',
        'edgekeeper/v1/devices/a/report',
        '-m',
        '{"seq":1,"metrics":{"t":20.5}}',
      ]);
      const b = pub(m.port, [
        '-i',
        'dev-b',
        '-q',
        '0',
        '-t',
        'edgekeeper/v1/devices/b/report',
        '-m',
        '{"metrics":{"t":1}}',
      ]);
      const f = join(h.dir, 'r.cbor');
      writeFileSync(f, encode({ seq: 9, metrics: { hum: 40 }, tags: { room: 'x' } }));
      const c = pub(m.port, ['-i', 'dev-c', '-q', '1', '-t', 'edgekeeper/v1/devices/c/report', '-f', f]);
      assert.deepEqual(await Promise.all([exited(a), exited(b), exited(c)]), [0, 0, 0]);
      await waitFor(() => reportCount(h.store) === 3, 'three reports');
      const body = h.store.query<{ body: Buffer }>("SELECT body FROM reports WHERE device = 'c'").get()!.body;
      assert.deepEqual(decodeBody(body), { metrics: { hum: 40 }, tags: { room: 'x' } });
      // bad input through the broker is refused and counted, not fatal
      assert.equal(
        await exited(pub(m.port, ['-q', '1', '-t', 'edgekeeper/v1/devices/a/report', '-m', '{"metrics":'])),
        0,
      );
      assert.equal(
        await exited(
          pub(m.port, [
            '-q',
            '1',
            '-t',
            `edgekeeper/v1/devices/${'x'.repeat(80)}/report`,
            '-m',
            '{"metrics":{"x":1}}',
          ]),
        ),
        0,
      );
      await waitFor(
        async () => (await metricValue(h.registry, 'edgekeeper_ingest_rejects_total')) >= 2,
        'rejects counted',
      );
      h.store.query('SELECT 1').get();
    });

    it('stores every QoS 1 report exactly once while ingest restarts under load', async () => {
      const start = reportCount(h.store);
      const DEVICES = 8;
      const PER = 400;
      const devs = Array.from({ length: DEVICES }, (_, i) =>
        pub(m.port, ['-i', `r${i}`, '-q', '1', '-t', `edgekeeper/v1/devices/r${i}/report`, '-l']),
      );
      let written = 0;
      const feed = async (from: number, to: number) => {
        for (let s = from; s < to; s++) {
          for (let i = 0; i < DEVICES; i++)
            devs[i]!.stdin!.write(`{"seq":${s},"ts":${1_700_000_000_000 + s},"metrics":{"v":${s}}}\n`);
          written++;
          if (s % 20 === 0) await new Promise((r) => setTimeout(r, 5));
        }
      };
      await feed(0, PER / 2);
      // restart while the devices keep going: the broker keeps our session and redelivers
      const restarting = restartPart(h, { ...extOpts(m.url), protocolVersion });
      await feed(PER / 2, (PER * 3) / 4);
      await restarting;
      await feed((PER * 3) / 4, PER);
      for (const d of devs) d.stdin!.end();
      assert.deepEqual(await Promise.all(devs.map(exited)), Array(DEVICES).fill(0));
      assert.equal(written, PER);
      await waitFor(() => reportCount(h.store) - start >= DEVICES * PER, `${DEVICES * PER} reports`, 30_000);
      await new Promise((r) => setTimeout(r, 300));
      const rows = h.store
        .query<{ device: string; seq: number; n: number }>(
          "SELECT device, seq, count(*) AS n FROM reports WHERE device LIKE 'r%' GROUP BY device, seq",
        )
        .all();
      assert.equal(rows.length, DEVICES * PER, 'every report stored');
      assert.deepEqual(
        rows.filter((r) => r.n !== 1),
        [],
        'none stored twice',
      );
    });

    it('marks a device killed with SIGKILL offline through its will', async () => {
      const w = watchPrefix(h.store, '/edgekeeper/devices/');
      const d = pub(m.port, [
        '-i',
        'willy',
        '-q',
        '1',
        '-k',
        '5',
        '-t',
        'edgekeeper/v1/devices/willy/report',
        '-l',
        '--will-topic',
        'edgekeeper/v1/devices/willy/status',
        '--will-payload',
        'offline',
        '--will-qos',
        '1',
      ]);
      d.stdin!.write('{"metrics":{"x":1}}\n');
      const doc = (online: boolean) => () => {
        const e = w.events.filter((x) => x.kv.key.toString() === '/edgekeeper/devices/willy').at(-1);
        const v = e && JSON.parse(e.kv.value.toString());
        return v?.online === online ? v : undefined;
      };
      await waitFor(doc(true), 'online');
      d.kill('SIGKILL');
      const off = await waitFor(doc(false), 'offline through the will');
      assert.equal(off.reason, 'status');
      w.cancel();
    });
  });
}

describe('ingest external mode: edgekeeper killed with SIGKILL while mosquitto_pub devices publish', () => {
  it('stores every QoS 1 report exactly once after a restart', async () => {
    const m = await startMosquitto();
    const dir = tempDir();
    const opts = JSON.stringify({ ...extOpts(m.url), protocolVersion: 5 });
    const startChild = async () => {
      const child = spawn(
        process.execPath,
        ['--import', 'tsx', new URL('../ingest/crash-child.ts', import.meta.url).pathname],
        {
          env: { ...process.env, EK_DIR: dir, EK_INGEST_OPTS: opts },
          stdio: ['ignore', 'pipe', 'inherit'],
        },
      );
      procs.push(child);
      await new Promise<string>((resolve, reject) => {
        createInterface({ input: child.stdout! }).once('line', resolve);
        child.once('exit', (c) => reject(new Error(`ingest child exited with ${c}`)));
      });
      return child;
    };
    try {
      let child = await startChild();
      const DEVICES = 6;
      const PER = 300;
      const devs = Array.from({ length: DEVICES }, (_, i) =>
        pub(m.port, ['-i', `k${i}`, '-q', '1', '-t', `edgekeeper/v1/devices/k${i}/report`, '-l']),
      );
      const feed = async (from: number, to: number) => {
        for (let s = from; s < to; s++) {
          for (const d of devs) d.stdin!.write(`{"seq":${s},"metrics":{"v":${s}}}\n`);
          if (s % 10 === 0) await new Promise((r) => setTimeout(r, 5));
        }
      };
      await feed(0, PER / 2);
      child.kill('SIGKILL');
      await exited(child);
      await feed(PER / 2, (PER * 3) / 4);
      child = await startChild();
      await feed((PER * 3) / 4, PER);
      for (const d of devs) d.stdin!.end();
      assert.deepEqual(await Promise.all(devs.map(exited)), Array(DEVICES).fill(0));
      const db = new Database(`${dir}/edgekeeper.db`, { readonly: true });
      try {
        const count = () =>
          (db.prepare("SELECT count(DISTINCT device || ':' || seq) AS n FROM reports").get() as { n: number })
            .n;
        await waitFor(() => count() >= DEVICES * PER, `${DEVICES * PER} distinct reports`, 30_000).catch(
          (e) => {
            const have = new Set(
              (db.prepare('SELECT device, seq FROM reports').all() as { device: string; seq: number }[]).map(
                (r) => `${r.device}:${r.seq}`,
              ),
            );
            const missing: string[] = [];
            for (let i = 0; i < DEVICES; i++)
              for (let q = 0; q < PER; q++) if (!have.has(`k${i}:${q}`)) missing.push(`k${i}:${q}`);
            throw new Error(
              `${e.message}: missing ${missing.slice(0, 40).join(' ')}; have ${count()}, rows ${(db.prepare('SELECT count(*) AS n FROM reports').get() as { n: number }).n}`,
            );
          },
        );
        child.kill('SIGTERM');
        await exited(child);
        const total = (db.prepare('SELECT count(*) AS n FROM reports').get() as { n: number }).n;
        assert.equal(count(), DEVICES * PER, 'every report stored');
        assert.equal(total, DEVICES * PER, 'none stored twice');
      } finally {
        db.close();
      }
    } finally {
      await m.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
