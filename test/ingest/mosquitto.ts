/** Start a real mosquitto on a free loopback port with a temp config (see ../shared/peers.md). */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

export interface Mosquitto {
  port: number;
  url: string;
  proc: ChildProcess;
  stop(): Promise<void>;
}

/** Fails loudly when mosquitto is not installed. */
export async function startMosquitto(extraConf = ''): Promise<Mosquitto> {
  const which = spawnSync('mosquitto', ['-h']);
  if (which.error)
    throw new Error('mosquitto is not installed: apt-get install -y mosquitto mosquitto-clients');
  const dir = mkdtempSync(join(tmpdir(), 'ek-mosq-'));
  // as root mosquitto drops to the mosquitto user, which must read its config
  chmodSync(dir, 0o755);
  const port = await freePort();
  const conf = join(dir, 'm.conf');
  writeFileSync(
    conf,
    [
      `listener ${port} 127.0.0.1`,
      'allow_anonymous true',
      'persistence false',
      // edgekeeper holds PUBACKs until its commit: let the broker keep many in flight to it
      'max_inflight_messages 1000',
      'max_queued_messages 1000000',
      extraConf,
      '',
    ].join('\n'),
  );
  chmodSync(conf, 0o644);
  const proc = spawn('mosquitto', ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (d) => (stderr += d));
  // wait until it accepts connections
  const end = Date.now() + 10_000;
  for (;;) {
    const ok = await new Promise<boolean>((r) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        r(true);
      });
      s.once('error', () => r(false));
    });
    if (ok) break;
    if (proc.exitCode !== null || Date.now() > end) throw new Error(`mosquitto did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const kill = () => {
    if (proc.exitCode === null) proc.kill('SIGKILL');
  };
  process.on('exit', kill);
  return {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    proc,
    async stop() {
      if (proc.exitCode === null) {
        proc.kill('SIGTERM');
        await new Promise((r) => proc.once('exit', r));
      }
      process.off('exit', kill);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
