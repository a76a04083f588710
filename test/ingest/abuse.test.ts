/**
 * Attacks on the embedded broker, each reproduced on loopback with bounded sizes and times:
 * a fixed header claiming 256 MB (before and after log-in, MQTT 3.1.1 and 5), sockets that never
 * send a complete CONNECT, a shutdown while such sockets are open, SUBSCRIBE packets with
 * 10,000 filters, wrong-secret log-ins for a real device id, and connections that together
 * hold more unfinished packets than the memory budget. Each is refused, counted per reason,
 * and the registered devices keep working meanwhile.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import mqttPacket from 'mqtt-packet';
import {
  callRoute,
  device,
  endClient,
  type Harness,
  harness,
  metricValue,
  publish,
  reportCount,
  waitFor,
} from './helpers.js';
import { freePort } from './mosquitto.js';
import { attempt, closesWithin, header, login, open, type Raw } from './raw.js';

// the largest remaining length MQTT can express (4 bytes of 7 bits): 256 MB - 1
const HUGE = 268_435_455;

async function addDevices(h: Harness, ids: string[]): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const id of ids)
    out[id] = ((await callRoute(h, 'POST', '/v1/devices', { id })).body as { secret: string }).secret;
  return out;
}

async function until(fn: () => Promise<boolean>, what: string): Promise<void> {
  for (const end = Date.now() + 10_000; !(await fn()); ) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Stream `total` bytes in 64 KiB chunks until the socket closes; returns the bytes written. */
async function stream(r: Raw, total: number): Promise<number> {
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  let sent = 0;
  while (sent < total && !r.isClosed()) {
    const ok = r.sock.write(chunk);
    sent += chunk.length;
    if (!ok) await Promise.race([new Promise((x) => r.sock.once('drain', x)), r.closed]);
  }
  return sent;
}

describe('ingest, attacks on the embedded broker', () => {
  let h: Harness;
  let secrets: Record<string, string>;
  const rejects = async (reason: string) => {
    await h.part.flush();
    return metricValue(h.registry, 'edgekeeper_ingest_rejects_total', { reason });
  };

  before(async () => {
    h = await harness({ connectTimeout: 3000, maxPendingConnections: 20 });
    secrets = await addDevices(h, ['honest', 'big', 'v5', 'subs', 'victim', 'fresh']);
  });
  after(() => h.close());

  it('closes a connection whose fixed header claims 256 MB as soon as the header arrives', async () => {
    const before = await rejects('too_large');
    // before log-in: a CONNECT claiming 256 MB (it used to be buffered whole, and never closed)
    const anon = await open(h.port, '127.0.0.2');
    anon.send(header(0x10, HUGE));
    anon.send(Buffer.from([0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 2, 0, 60]));
    await stream(anon, 32 * 1024 * 1024);
    assert.ok(await closesWithin(anon, 5000), 'CONNECT over the limit closed');
    // after log-in: a PUBLISH claiming 256 MB
    const big = await login(h.port, 'big', secrets.big!);
    big.send(header(0x32, HUGE));
    const sent = await stream(big, 32 * 1024 * 1024);
    assert.ok(await closesWithin(big, 5000), 'PUBLISH over the limit closed');
    assert.ok(sent < 32 * 1024 * 1024, `closed while streaming (${sent} bytes written)`);
    assert.equal((await rejects('too_large')) - before, 2);
    const dl = (await callRoute(h, 'GET', '/v1/ingest/rejects?limit=50')).body as {
      reason: string;
      device: string | null;
      detail: string;
    }[];
    assert.ok(dl.some((r) => r.reason === 'too_large' && r.device === 'big' && /268435455/.test(r.detail)));
    // a device that keeps to the limit is not disturbed
    const c = await device(h.url, 'honest', secrets.honest);
    await publish(c, 'edgekeeper/v1/devices/honest/report', '{"metrics":{"x":1}}', 1);
    assert.equal(reportCount(h.store, 'honest'), 1);
    await endClient(c);
  });

  it('tells MQTT 5 devices the packet limit and refuses a larger packet with DISCONNECT 0x95', async () => {
    const r = await open(h.port, '127.0.0.1', 5);
    r.send(
      mqttPacket.generate(
        {
          cmd: 'connect',
          protocolId: 'MQTT',
          protocolVersion: 5,
          clean: true,
          clientId: 'v5',
          username: 'v5',
          password: Buffer.from(secrets.v5!),
          keepalive: 60,
        },
        { protocolVersion: 5 },
      ),
    );
    const ack = (await r.next('connack')) as mqttPacket.IConnackPacket;
    assert.equal(ack.reasonCode, 0);
    // the default mqtt.maxPacket (128 KiB) plus the 5 bytes a fixed header may take
    assert.equal(ack.properties?.maximumPacketSize, 128 * 1024 + 5);
    r.send(header(0x32, 10 * 1024 * 1024));
    const d = (await r.next('disconnect')) as mqttPacket.IDisconnectPacket | undefined;
    assert.equal(d?.reasonCode, 0x95);
    assert.ok(await closesWithin(r, 5000));
  });

  it('closes sockets that never log in at the deadline, and they cannot crowd out a device', async () => {
    const beforeTimeout = await rejects('timeout');
    const beforeEvicted = await rejects('connections');
    // 60 silent sockets and 5 partial CONNECTs from one address, 20 may wait (maxPendingConnections)
    const idle: Raw[] = [];
    for (let i = 0; i < 60; i++) idle.push(await open(h.port, '127.0.0.2'));
    for (let i = 0; i < 5; i++) {
      const r = await open(h.port, '127.0.0.2');
      r.send(Buffer.from([0x10, 0x20, 0x00]));
      idle.push(r);
    }
    await waitFor(() => idle.filter((r) => !r.isClosed()).length <= 20, 'the oldest pending closed');
    // a registered device from another address gets in and reports meanwhile
    const stored = reportCount(h.store, 'honest');
    const c = await device(h.url, 'honest', secrets.honest);
    await publish(c, 'edgekeeper/v1/devices/honest/report', '{"metrics":{"x":2}}', 1);
    assert.equal(reportCount(h.store, 'honest'), stored + 1);
    // every one of them is gone after the deadline (3 s here)
    for (const r of idle) assert.ok(await closesWithin(r, 5000), 'closed at the deadline');
    // 45 closed as the oldest pending (46: the device's arrival made one more), the rest at the deadline
    const evicted = (await rejects('connections')) - beforeEvicted;
    assert.ok(evicted === 45 || evicted === 46, `${evicted} closed as the oldest pending`);
    assert.equal((await rejects('timeout')) - beforeTimeout, 65 - evicted);
    await until(
      async () => (await metricValue(h.registry, 'edgekeeper_ingest_pending_connections')) === 0,
      'the pending connections gauge back to 0',
    );
    await endClient(c);
  });

  it('refuses a SUBSCRIBE of 10,000 filters at once, and closes a connection after 16 refused subscriptions', async () => {
    const acl = await rejects('acl');
    const filters = await rejects('too_many_filters');
    const r = await login(h.port, 'subs', secrets.subs!);
    const subscriptions = Array.from({ length: 10_000 }, (_, i) => ({ topic: `x/${i}`, qos: 1 as const }));
    r.send(mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions }));
    assert.ok(await closesWithin(r, 5000));
    assert.equal((await rejects('too_many_filters')) - filters, 1);
    // each refused filter would have been a dead letter for the main thread to write
    assert.equal((await rejects('acl')) - acl, 0);

    const refusals = await rejects('too_many_refusals');
    const again = await login(h.port, 'subs', secrets.subs!);
    for (let i = 0; i < 20; i++) {
      const eight = Array.from({ length: 8 }, (_, k) => ({ topic: `y/${i}/${k}`, qos: 1 as const }));
      again.send(mqttPacket.generate({ cmd: 'subscribe', messageId: i + 1, subscriptions: eight }));
    }
    assert.ok(await closesWithin(again, 5000));
    assert.equal((await rejects('acl')) - acl, 16);
    assert.equal((await rejects('too_many_refusals')) - refusals, 1);
    // its own command topic is still granted on a new connection
    const ok = await device(h.url, 'subs', secrets.subs);
    const granted = await new Promise<number | undefined>((res) =>
      ok.subscribe('edgekeeper/v1/devices/subs/command', { qos: 1 }, (_e, g) => res(g?.[0]?.qos)),
    );
    assert.equal(granted, 1);
    await endClient(ok);
  });

  it('throttles wrong-secret log-ins per device id and address; the device and others still get in', async () => {
    // the victim logged in once since start: its password check is a cache hit from now on
    await endClient(await device(h.url, 'victim', secrets.victim));
    const auth = await rejects('auth');
    const throttled = await rejects('throttled');
    // from another host (address): 40 guesses at once
    const attempts = Array.from({ length: 40 }, () =>
      attempt(h.port, 'victim', 'guess', { localAddress: '127.0.0.2' }).then(({ raw, code }) => {
        raw.sock.destroy();
        return code;
      }),
    );
    // meanwhile: the victim itself, and a device never seen before
    const v = await device(h.url, 'victim', secrets.victim);
    const f = await device(h.url, 'fresh', secrets.fresh);
    const codes = await Promise.all(attempts);
    // checked: 10 attempts per id and address, then about one a second; the others are answered
    // "server unavailable" unchecked, or closed as the oldest of too many pending (20 here)
    const checked = (await rejects('auth')) - auth;
    // (fewer than 10 on a slow machine, where more of them wait long enough to be the oldest)
    assert.ok(checked >= 1 && checked <= 14, `passwords checked: ${checked}`);
    assert.ok(codes.filter((c) => c === 4).length <= checked);
    assert.ok(
      codes.every((c) => c === 3 || c === 4 || c === -1),
      `every guess refused: ${codes}`,
    );
    assert.equal((await rejects('throttled')) - throttled, codes.filter((c) => c === 3).length);
    assert.ok(codes.filter((c) => c === 3).length >= 10);
    await endClient(v);
    await endClient(f);
  });
});

describe('ingest, the memory budget', () => {
  it('closes the connection holding the most when unfinished packets pass the budget', async () => {
    const h = await harness({ memoryBudget: 1024 * 1024, maxPacket: 700 * 1024 });
    try {
      const secrets = await addDevices(h, ['m1', 'm2', 'm3']);
      const conns: Raw[] = [];
      // three unfinished 690 KiB PUBLISHes, 300/350/400 KiB of each sent: 1,050 KiB in all
      for (const [i, id] of ['m1', 'm2', 'm3'].entries()) {
        const r = await login(h.port, id, secrets[id]!);
        conns.push(r);
        r.send(header(0x30, 690 * 1024));
        r.send(Buffer.alloc((300 + 50 * i) * 1024, 0x62));
        await new Promise((res) => setTimeout(res, 100));
      }
      assert.ok(await closesWithin(conns[2]!, 5000), 'the largest holder closed');
      assert.equal(conns[0]!.isClosed() || conns[1]!.isClosed(), false, 'the others kept');
      await h.part.flush();
      assert.equal(await metricValue(h.registry, 'edgekeeper_ingest_rejects_total', { reason: 'memory' }), 1);
      for (const r of conns) r.sock.destroy();
    } finally {
      await h.close();
    }
  });
});

describe('ingest, shutdown with sockets that never logged in', () => {
  it('stops at once, while a silent socket is still open', async () => {
    const h = await harness({ connectTimeout: 300_000 });
    const idle = await open(h.port);
    const partial = await open(h.port);
    partial.send(Buffer.from([0x10, 0x20]));
    const stopped = h.part.stop().then(() => 'stopped');
    // a stop that waits for the clients would wait for as long as they stay: 5 minutes here
    const outcome = await Promise.race([
      stopped,
      new Promise((r) => setTimeout(() => r('still waiting'), 10_000).unref()),
    ]);
    assert.equal(outcome, 'stopped');
    assert.ok(await closesWithin(idle, 1000));
    assert.ok(await closesWithin(partial, 1000));
    await h.close();
  });

  it('`edgekeeper run` exits on SIGTERM while a silent socket is open', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ek-abuse-'));
    const [http, etcd, mqtt] = [await freePort(), await freePort(), await freePort()];
    writeFileSync(
      join(dir, 'config.json'),
      JSON.stringify({
        node: { name: 'abuse', dataDir: dir },
        http: { listen: `127.0.0.1:${http}` },
        etcd: { listen: `127.0.0.1:${etcd}` },
        mqtt: { listen: `127.0.0.1:${mqtt}`, connectTimeout: '5m' },
        probes: { enabled: [] },
      }),
    );
    const main = join(import.meta.dirname, '..', '..', 'src', 'main.ts');
    const proc: ChildProcess = spawn(
      process.execPath,
      ['--import', 'tsx', main, 'run', '--config', join(dir, 'config.json')],
      { stdio: 'ignore', env: { ...process.env, NOTIFY_SOCKET: '' } },
    );
    const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
    try {
      for (let ready = false; !ready; ) {
        assert.equal(proc.exitCode, null, 'the daemon is running');
        ready = await fetch(`http://127.0.0.1:${http}/readyz`).then(
          (r) => r.ok,
          () => false,
        );
        if (!ready) await new Promise((r) => setTimeout(r, 200));
      }
      const idle = await open(mqtt);
      proc.kill('SIGTERM');
      // systemd sends SIGKILL after TimeoutStopSec (30 s): the daemon must be gone well before
      const code = await Promise.race([
        exited,
        new Promise<string>((r) => setTimeout(() => r('still running'), 20_000).unref()),
      ]);
      assert.equal(code, 0);
      assert.ok(await closesWithin(idle, 1000));
    } finally {
      proc.kill('SIGKILL');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
