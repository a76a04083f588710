/**
 * `edgekeeper device add|list|rotate|remove` and `edgekeeper ingest rejects`, against a stopped
 * node's state directory (--data-dir) and against a running daemon (--http). `add` prints the
 * secret once, as the last word, and that secret authenticates the device.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, it } from 'node:test';
import { ingestCliCommands } from '../../src/ingest/index.js';
import { capture } from '../capture.js';
import { verifySecret } from '../../src/ingest/auth.js';
import { device, endClient, harness, openTestStore, refused, tempDir } from './helpers.js';

async function cli(name: string, args: string[]): Promise<{ code: number; out: string; err: string }> {
  const cmd = ingestCliCommands.find((c) => c.name === name)!;
  const r = await capture(() => cmd.run(args));
  return { code: r.code, out: r.out.replace(/\n$/, ''), err: r.err };
}

describe('ingest CLI', () => {
  it('manages devices in a stopped node with --data-dir', async () => {
    const dir = tempDir();
    try {
      await (await openTestStore(dir)).close();
      const add = await cli('device', ['add', 'pump-1', '--data-dir', dir]);
      assert.equal(add.code, 0, add.err);
      const secret = add.out.trim().split(/\s+/).at(-1)!;
      const s = await openTestStore(dir);
      const hash = s
        .query<{ secret_hash: string }>("SELECT secret_hash FROM ingest_devices WHERE id = 'pump-1'")
        .get()!.secret_hash;
      await s.close();
      assert.ok(await verifySecret(secret, hash), 'the printed secret matches the stored hash');
      assert.ok(!hash.includes(secret));
      assert.equal((await cli('device', ['add', 'pump-1', '--data-dir', dir])).code, 1, 'adding twice fails');
      assert.equal((await cli('device', ['add', 'bad/id', '--data-dir', dir])).code, 1);
      const list = await cli('device', ['list', '--json', '--data-dir', dir]);
      assert.deepEqual(
        (JSON.parse(list.out) as { id: string }[]).map((d) => d.id),
        ['pump-1'],
      );
      const rot = await cli('device', ['rotate', 'pump-1', '--data-dir', dir]);
      assert.notEqual(rot.out.split(/\s+/).at(-1), secret);
      assert.equal((await cli('device', ['remove', 'pump-1', '--data-dir', dir])).code, 0);
      assert.equal((await cli('device', ['remove', 'pump-1', '--data-dir', dir])).code, 1);
      assert.equal((await cli('ingest', ['rejects', '--data-dir', dir])).out, 'no rejected input recorded');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('manages devices of a running daemon with --http', async () => {
    const h = await harness();
    const server = http.createServer((req, res) => {
      const url = new URL(req.url!, 'http://x');
      const route = h.routes.get(`${req.method} ${url.pathname}`);
      if (!route) {
        res.writeHead(404).end('{}');
        return;
      }
      Promise.resolve(route(req, res, url)).catch(
        (e: { status?: number; message: string; code?: string }) => {
          res
            .writeHead(e.status ?? 500, { 'content-type': 'application/json' })
            .end(JSON.stringify({ code: e.code, message: e.message }));
        },
      );
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const target = `127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const add = await cli('device', ['add', 'fan-2', '--http', target]);
      assert.equal(add.code, 0, add.err);
      const secret = add.out.trim().split(/\s+/).at(-1)!;
      const c = await device(h.url, 'fan-2', secret);
      await endClient(c);
      const bad = await cli('device', ['add', 'x#y', '--http', target]);
      assert.equal(bad.code, 1);
      assert.match(bad.err, /invalid/);
      assert.equal((await cli('device', ['remove', 'fan-2', '--http', target])).code, 0);
      assert.equal(
        (await refused(h.url, { clientId: 'fan-2', username: 'fan-2', password: secret })).code,
        4,
      );
      await h.part.flush();
      const rej = await cli('ingest', ['rejects', '--json', '--http', target]);
      assert.ok(
        (JSON.parse(rej.out) as { reason: string; device: string }[]).some(
          (r) => r.reason === 'unknown_device' && r.device === 'fan-2',
        ),
      );
      assert.equal(
        (await cli('device', ['list', '--http', '127.0.0.1:1'])).code,
        1,
        'no daemon: a clear error',
      );
    } finally {
      server.close();
      await h.close();
    }
  });
});
