import assert from 'node:assert/strict';
import { request } from 'node:http';
import { connect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { EdgeError, NoSpaceError } from '../../src/errors.js';
import { HttpServer } from '../../src/http/index.js';
import { silentLogger } from '../../src/log.js';

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function call(
  port: number,
  method: string,
  path: string,
  opts: { body?: Buffer; headers?: Record<string, string> } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = {
      ...(opts.body ? { 'content-length': String(opts.body.length) } : {}),
      ...opts.headers,
    };
    if (headers['transfer-encoding']) delete headers['content-length'];
    const req = request({ host: '127.0.0.1', port, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString() }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    if (opts.body) req.write(opts.body);
    req.end();
  });
}

function json(r: Reply): Record<string, unknown> {
  assert.match(String(r.headers['content-type']), /^application\/json/);
  return JSON.parse(r.body) as Record<string, unknown>;
}

/** Parses Prometheus text exposition strictly enough that a malformed line fails the test. */
function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('# HELP ') || line.startsWith('# TYPE ')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (-?[0-9.eE+-]+|NaN|[+-]Inf)$/.exec(line);
    assert.ok(m, `not a Prometheus sample line: ${JSON.stringify(line)}`);
    out.set(m[1]!, Number(m[2]));
  }
  return out;
}

describe('local HTTP server', () => {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const server = new HttpServer({ logger: silentLogger(), registry, maxBodyBytes: 1024 });
  let port = 0;
  let storeProblem: string | undefined;

  before(async () => {
    server.addReadinessCheck('store', () => storeProblem);
    server.addReadinessCheck('always-ok', () => undefined);
    server.add('POST', '/v1/echo', async (req, res) => {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.end(Buffer.concat(chunks));
    });
    server.add('GET', '/v1/edge-error', () => {
      throw new NoSpaceError(10, 5);
    });
    server.add('GET', '/v1/custom-error', () => {
      throw new EdgeError('EDGE_ERR_INVALID_ARGUMENT', 'bad thing', 422);
    });
    server.add('GET', '/v1/crash', async () => {
      throw new Error('secret internal detail /etc/shadow');
    });
    port = (await server.listen('127.0.0.1:0')).port;
  });

  after(async () => {
    await server.close();
  });

  test('/healthz says alive', async () => {
    const r = await call(port, 'GET', '/healthz');
    assert.equal(r.status, 200);
    assert.deepEqual(json(r), { status: 'alive' });
    const head = await call(port, 'HEAD', '/healthz');
    assert.equal(head.status, 200);
    assert.equal(head.body, '');
  });

  test('/readyz fails with the failing check named, then recovers', async () => {
    let r = await call(port, 'GET', '/readyz');
    assert.equal(r.status, 200);
    assert.deepEqual(json(r), { status: 'ready', checks: ['store', 'always-ok'] });
    storeProblem = 'store commit p99 120.0 ms > objective 50 ms';
    r = await call(port, 'GET', '/readyz');
    assert.equal(r.status, 503);
    assert.deepEqual(json(r), { status: 'not ready', failing: { store: storeProblem } });
    storeProblem = undefined;
    r = await call(port, 'GET', '/readyz');
    assert.equal(r.status, 200);
  });

  test('a readiness check that throws counts as failing', async () => {
    const s = new HttpServer({ logger: silentLogger(), registry: new Registry() });
    s.addReadinessCheck('broken', () => {
      throw new Error('boom');
    });
    assert.deepEqual(s.readiness().failing, { broken: 'check failed: boom' });
  });

  test('unknown path: 404 JSON; wrong method: 405 with Allow', async () => {
    let r = await call(port, 'GET', '/nope?x=1');
    assert.equal(r.status, 404);
    assert.equal(json(r).code, 'EDGE_ERR_NOT_FOUND');
    r = await call(port, 'DELETE', '/healthz');
    assert.equal(r.status, 405);
    assert.equal(json(r).code, 'EDGE_ERR_METHOD_NOT_ALLOWED');
    assert.equal(r.headers.allow, 'GET, HEAD');
  });

  test('request bodies are bounded: 413 over the limit, 411 without a length; within it the handler gets the body', async () => {
    const small = Buffer.from('hello');
    let r = await call(port, 'POST', '/v1/echo', { body: small });
    assert.equal(r.status, 200);
    assert.equal(r.body, 'hello');
    r = await call(port, 'POST', '/v1/echo', { body: Buffer.alloc(1025, 97) });
    assert.equal(r.status, 413);
    assert.equal(json(r).code, 'EDGE_ERR_REQUEST_TOO_LARGE');
    r = await call(port, 'POST', '/v1/echo', { body: small, headers: { 'transfer-encoding': 'chunked' } });
    assert.equal(r.status, 411);
    assert.equal(json(r).code, 'EDGE_ERR_LENGTH_REQUIRED');
    // Nothing else was disturbed.
    assert.equal((await call(port, 'GET', '/healthz')).status, 200);
  });

  test('EdgeError becomes its status and code; anything else is a 500 without internals', async () => {
    let r = await call(port, 'GET', '/v1/edge-error');
    assert.equal(r.status, 507);
    assert.equal(json(r).code, 'EDGE_ERR_NO_SPACE');
    r = await call(port, 'GET', '/v1/custom-error');
    assert.equal(r.status, 422);
    assert.deepEqual(json(r), { code: 'EDGE_ERR_INVALID_ARGUMENT', message: 'bad thing' });
    r = await call(port, 'GET', '/v1/crash');
    assert.equal(r.status, 500);
    assert.equal(json(r).code, 'EDGE_ERR_INTERNAL');
    assert.ok(!r.body.includes('shadow'), 'no internals leak');
  });

  test('garbage on the socket gets 400 and the server keeps serving', async () => {
    const reply = await new Promise<string>((resolve, reject) => {
      const s = connect(port, '127.0.0.1', () => s.write('\x16\x03\x01 not http at all\r\n\r\n'));
      let data = '';
      s.on('data', (d) => (data += d.toString()));
      s.on('end', () => resolve(data));
      s.on('error', reject);
    });
    assert.match(reply, /^HTTP\/1\.1 400 /);
    assert.equal((await call(port, 'GET', '/healthz')).status, 200);
  });

  test('/metrics is Prometheus text with process metrics and per-route request and error counts', async () => {
    await call(port, 'GET', '/nope');
    const r = await call(port, 'GET', '/metrics');
    assert.equal(r.status, 200);
    assert.match(String(r.headers['content-type']), /^text\/plain/);
    const m = parseMetrics(r.body);
    assert.ok(m.has('process_cpu_user_seconds_total'));
    assert.ok(
      (m.get('edgekeeper_http_requests_total{method="GET",route="/healthz",status="200"}') ?? 0) >= 1,
    );
    assert.ok((m.get('edgekeeper_http_errors_total{route="unmatched",code="EDGE_ERR_NOT_FOUND"}') ?? 0) >= 2);
    assert.ok(
      (m.get('edgekeeper_http_errors_total{route="/v1/echo",code="EDGE_ERR_REQUEST_TOO_LARGE"}') ?? 0) >= 1,
    );
    assert.ok(
      (m.get('edgekeeper_http_errors_total{route="unmatched",code="EDGE_ERR_BAD_REQUEST"}') ?? 0) >= 1,
    );
    assert.ok((m.get('edgekeeper_http_errors_total{route="/v1/crash",code="EDGE_ERR_INTERNAL"}') ?? 0) >= 1);
  });

  test('routes are exact and registered once', () => {
    assert.throws(() => server.add('GET', '/healthz', () => undefined), /registered twice/);
    assert.throws(() => server.add('GET', 'relative', () => undefined), /must start with/);
  });

  test('close: readiness fails at once, an in-flight request still completes', async () => {
    const s = new HttpServer({ logger: silentLogger(), registry: new Registry() });
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let entered!: () => void;
    const inside = new Promise<void>((r) => (entered = r));
    s.add('GET', '/slow', async (_req, res) => {
      entered();
      await gate;
      res.end('done');
    });
    const p = (await s.listen('127.0.0.1:0')).port;
    const pending = call(p, 'GET', '/slow');
    await inside;
    const closing = s.close();
    assert.deepEqual(s.readiness().failing, { shutdown: 'the daemon is shutting down' });
    release();
    const r = await pending;
    assert.equal(r.status, 200);
    assert.equal(r.body, 'done');
    await closing;
  });
});
