/**
 * The local HTTP server's bounds and its admin routes: one connection over `maxConnections` is
 * answered 503 and closed; a request body that would take the bodies in flight over
 * `maxPendingBodyBytes` is answered 503 and the handler never runs; a connection on which nothing
 * moves is closed after `idleTimeoutMs`; an admin route answers 401 without the token, 403 with
 * a wrong one, and runs with the right one. Every refusal is counted by code.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { Registry } from 'prom-client';
import { HttpServer } from '../../src/http/index.js';
import { silentLogger } from '../../src/log.js';

function errorsCounted(registry: Registry, code: string): Promise<number> {
  return registry
    .getSingleMetric('edgekeeper_http_errors_total')!
    .get()
    .then((m) => m.values.filter((v) => v.labels.code === code).reduce((a, v) => a + v.value, 0));
}

function rawRequest(port: number, text: string): Promise<{ sock: Socket; reply: Promise<string> }> {
  return new Promise((resolve) => {
    const sock = connect(port, '127.0.0.1', () => {
      let got = '';
      sock.on('data', (d) => (got += d));
      const reply = new Promise<string>((r) => sock.once('close', () => r(got)));
      if (text) sock.write(text);
      resolve({ sock, reply });
    });
    sock.on('error', () => undefined);
  });
}

describe('local HTTP server, bounds and admin routes', () => {
  const registry = new Registry();
  const server = new HttpServer({
    logger: silentLogger(),
    registry,
    maxConnections: 3,
    maxPendingBodyBytes: 1000,
    idleTimeoutMs: 1000,
    adminToken: { token: 'secret-token', file: '/state/http.token' },
  });
  let port = 0;
  let release: () => void = () => undefined;
  let handled = 0;

  before(async () => {
    // holds its request (and its body's share of the budget) until released
    server.add('POST', '/v1/slow', async (req, res) => {
      handled++;
      await new Promise<void>((r) => (release = r));
      for await (const _ of req) {
        // drain
      }
      res.end('{}');
    });
    server.add(
      'POST',
      '/v1/admin',
      (_req, res) => {
        res.end('{"done":true}');
      },
      { admin: true },
    );
    port = (await server.listen('127.0.0.1:0')).port;
  });
  after(() => server.close());

  test('one connection over the limit is answered 503 and closed', async () => {
    const held = await Promise.all([1, 2, 3].map(() => rawRequest(port, '')));
    const gauge = async () =>
      (await registry.getSingleMetric('edgekeeper_http_connections')!.get()).values[0]?.value;
    while ((await gauge()) !== 3) await new Promise((r) => setTimeout(r, 10));
    const over = await rawRequest(port, '');
    const text = await over.reply;
    assert.match(text, /^HTTP\/1\.1 503 /);
    assert.match(text, /"code":"EDGE_ERR_HTTP_BUSY"/);
    assert.equal(await errorsCounted(registry, 'EDGE_ERR_HTTP_BUSY'), 1);
    for (const h of held) h.sock.destroy();
    await new Promise((r) => setTimeout(r, 50));
    assert.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200);
  });

  test('request bodies in flight share one budget: past it 503, and the handler does not run', async () => {
    const first = fetch(`http://127.0.0.1:${port}/v1/slow`, { method: 'POST', body: 'x'.repeat(800) });
    while (handled === 0) await new Promise((r) => setTimeout(r, 10));
    const second = await fetch(`http://127.0.0.1:${port}/v1/slow`, { method: 'POST', body: 'y'.repeat(300) });
    assert.equal(second.status, 503);
    assert.equal(((await second.json()) as { code: string }).code, 'EDGE_ERR_HTTP_BUSY');
    assert.equal(second.headers.get('retry-after'), '1');
    assert.equal(handled, 1);
    release();
    assert.equal((await first).status, 200);
    // the first one's bytes are given back
    const third = fetch(`http://127.0.0.1:${port}/v1/slow`, { method: 'POST', body: 'z'.repeat(900) });
    while (handled === 1) await new Promise((r) => setTimeout(r, 10));
    release();
    assert.equal((await third).status, 200);
  });

  test('a connection on which nothing moves is closed', async () => {
    const idle = await rawRequest(port, 'GET /healthz HTTP/1.1\r\nHost: x\r\n');
    const outcome = await Promise.race([
      idle.reply.then(() => 'closed'),
      new Promise((r) => setTimeout(() => r('still open'), 10_000)),
    ]);
    assert.equal(outcome, 'closed');
  });

  test('an admin route: 401 without the token (naming its file), 403 with a wrong one, done with it', async () => {
    const url = `http://127.0.0.1:${port}/v1/admin`;
    const none = await fetch(url, { method: 'POST' });
    assert.equal(none.status, 401);
    assert.equal(none.headers.get('www-authenticate'), 'Bearer realm="edgekeeper"');
    assert.deepEqual(await none.json(), {
      code: 'EDGE_ERR_UNAUTHENTICATED',
      message:
        'this route needs the admin token: send `Authorization: Bearer <token>` with the token from /state/http.token',
      tokenFile: '/state/http.token',
    });
    const wrong = await fetch(url, { method: 'POST', headers: { authorization: 'Bearer secret-tokem' } });
    assert.equal(wrong.status, 403);
    const right = await fetch(url, { method: 'POST', headers: { authorization: 'Bearer secret-token' } });
    assert.equal(right.status, 200);
    assert.deepEqual(await right.json(), { done: true });
    assert.equal(await errorsCounted(registry, 'EDGE_ERR_UNAUTHENTICATED'), 1);
    assert.equal(await errorsCounted(registry, 'EDGE_ERR_PERMISSION_DENIED'), 1);
  });
});
