/**
 * Crash: the process running store + embedded ingest is killed with SIGKILL while 100 devices
 * publish QoS 1 reports; after a restart every report that was PUBACKed is in the reports table.
 * The child runs under strace with every fsync delayed by 20 ms (an SD card), so at the moment
 * of the kill many reports sit between "received" and "committed": a broker that acknowledged
 * before the commit (aedes's default: PUBACK, then route) would fail this test.
 * Needs: strace (apt-get install strace).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { after, describe, it } from 'node:test';
import mqtt, { type MqttClient } from 'mqtt';
import { hashSecret } from '../../src/ingest/auth.js';
import { slowDisk } from '../slowdisk.js';
import { openTestStore, tempDir } from './helpers.js';

const DEVICES = 100;
const children: ChildProcess[] = [];
const pids: number[] = [];

function killAll(): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
}
process.on('exit', killAll);

async function startChild(
  dir: string,
  slowFsync: boolean,
): Promise<{ child: ChildProcess; pid: number; port: number }> {
  const node = [process.execPath, '--import', 'tsx', new URL('./crash-child.ts', import.meta.url).pathname];
  const cmd = slowFsync ? [...slowDisk(20), ...node] : node;
  const child = spawn(cmd[0]!, cmd.slice(1), {
    env: { ...process.env, EK_DIR: dir },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(child);
  const line = await new Promise<string>((resolve, reject) => {
    const rl = createInterface({ input: child.stdout! });
    rl.once('line', resolve);
    child.once('exit', (code) =>
      reject(
        new Error(
          `child exited with ${code} before it was ready${slowFsync ? ' (is strace installed?)' : ''}`,
        ),
      ),
    );
  });
  const { pid, port } = JSON.parse(line) as { pid: number; port: number };
  pids.push(pid);
  return { child, pid, port };
}

describe('ingest crash safety', () => {
  const dir = tempDir();
  after(() => {
    killAll();
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps every PUBACKed QoS 1 report across SIGKILL', async () => {
    // devices share one precomputed hash: 100 scrypt hashes would cost seconds of CPU
    const store = await openTestStore(dir);
    const hash = await hashSecret('crash-secret');
    const now = Date.now();
    await store.write({
      sql: [
        {
          sql: 'INSERT INTO ingest_devices(id, secret_hash, created_at, updated_at) VALUES (?, ?, ?, ?)',
          rows: Array.from({ length: DEVICES }, (_, i) => [`c${i}`, hash, now, now]),
        },
      ],
    });
    await store.close();

    const { child, pid, port } = await startChild(dir, true);
    const acked = new Set<string>();
    let sent = 0;
    const clients: MqttClient[] = [];
    let stop = false;
    await Promise.all(
      Array.from(
        { length: DEVICES },
        (_, i) =>
          new Promise<void>((resolve, reject) => {
            const id = `c${i}`;
            const c = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
              clientId: id,
              username: id,
              password: 'crash-secret',
              reconnectPeriod: 0,
            });
            clients.push(c);
            c.on('error', () => undefined);
            c.once('connect', () => {
              let seq = 0;
              // each device keeps up to 5 reports in flight
              const pump = () => {
                if (stop) return;
                const s = seq++;
                sent++;
                c.publish(
                  `edgekeeper/v1/devices/${id}/report`,
                  JSON.stringify({ seq: s, metrics: { v: s } }),
                  { qos: 1 },
                  (err) => {
                    if (!err) {
                      acked.add(`${id}:${s}`);
                      pump();
                    }
                  },
                );
              };
              for (let k = 0; k < 5; k++) pump();
              resolve();
            });
            c.once('close', () => resolve());
            setTimeout(() => reject(new Error('device did not connect')), 15_000).unref();
          }),
      ),
    );
    // let the devices get going, then kill while reports are in flight
    const t0 = Date.now();
    while (acked.size < 2000 && Date.now() - t0 < 20_000) await new Promise((r) => setTimeout(r, 10));
    process.kill(pid, 'SIGKILL');
    stop = true;
    const ackedAtKill = new Set(acked);
    child.kill('SIGKILL');
    await new Promise((r) => (child.exitCode !== null ? r(null) : child.once('exit', r)));
    for (const c of clients) c.end(true);
    assert.ok(ackedAtKill.size >= 500, `devices got going (${ackedAtKill.size} acked)`);
    assert.ok(sent > ackedAtKill.size, 'reports were in flight at the kill');

    // restart the node: store recovery and ingest start on the same files
    const second = await startChild(dir, false);
    second.child.kill('SIGTERM');
    await new Promise((r) => (second.child.exitCode !== null ? r(null) : second.child.once('exit', r)));

    const after = await openTestStore(dir);
    const rows = after.query<{ device: string; seq: number }>('SELECT device, seq FROM reports').all();
    await after.close();
    const stored = new Set(rows.map((r) => `${r.device}:${r.seq}`));
    assert.equal(stored.size, rows.length, 'no report stored twice');
    const lost = [...ackedAtKill].filter((k) => !stored.has(k));
    assert.deepEqual(lost, [], `${lost.length} acknowledged reports lost`);
  });
});
