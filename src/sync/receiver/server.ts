/**
 * The reference fleet receiver: node:http (or https with client certificates) in front of
 * PostgreSQL. Stateless apart from the database, so several receivers can share one database
 * behind a load balancer: idempotency, ordering and "never half-stored" are all enforced by
 * PostgreSQL (a unique key per (node, seq), one transaction per batch).
 *
 * Routes (node = [A-Za-z0-9._-]{1,128}):
 *   POST /v1/nodes/<node>/batches   node auth; body = compressed CBOR batch (see codec.ts)
 *   GET  /v1/nodes/<node>/desired   node auth; ETag / If-None-Match; 204 when nothing is desired
 *   PUT  /v1/nodes/<node>/desired   admin; JSON {keys: {name: value}}; bumps the version
 *   PUT  /v1/nodes/<node>/frame     node auth; image/png
 *   GET  /v1/nodes/<node>/frame     admin (when an admin token is set)
 *   GET  /v1/nodes                  admin (when an admin token is set)
 *   GET  /                          admin (when an admin token is set): HTML list of nodes
 *   GET  /healthz
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { brotliDecompress, gunzip } from 'node:zlib';
import pg from 'pg';
import {
  EdgeError,
  RequestTooLargeError,
  SyncBadBatchError,
  SyncConflictError,
  SyncUnauthorizedError,
  SyncUnknownNodeError,
} from '../../errors.js';
import { type Logger, silentLogger } from '../../log.js';
import { type DecodedBatch, decodeBatch, type ReportColumns } from '../codec.js';
import { copyIn, copyNumber, copyText } from './copy.js';
import { migrate } from './schema.js';

export interface FleetServerOptions {
  /** PostgreSQL connection string, e.g. postgres://fleet@db:5432/fleet. */
  database: string;
  host?: string;
  /** 0 picks a free port. Default 9490. */
  port?: number;
  /** Nodes and their bearer tokens; stored hashed (sha256), replacing an existing token. */
  nodes?: Record<string, string>;
  /** Bearer token (or Basic password) for the operator routes; without it they are open for reading and desired state cannot be changed. */
  adminToken?: string;
  /** Largest compressed batch; default 16 MiB. */
  maxBatchBytes?: number;
  /** Largest batch after decompression (zip bombs); default 128 MiB. */
  maxDecodedBytes?: number;
  /** Largest frame PNG; default 4 MiB. */
  maxFrameBytes?: number;
  /** HTTPS; with `clientCa`, nodes may authenticate with a certificate whose CN is the node name. */
  tls?: { cert: string; key: string; clientCa?: string };
  /** Connections to PostgreSQL; default 8. */
  poolSize?: number;
  logger?: Logger;
}

export interface FleetServer {
  readonly url: string;
  readonly port: number;
  readonly pool: pg.Pool;
  close(): Promise<void>;
}

const NODE_NAME = /^[A-Za-z0-9._-]{1,128}$/;

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

class HttpError extends EdgeError {}

function notFound(what: string): HttpError {
  return new HttpError('EDGE_ERR_NOT_FOUND', `${what} not found`, 404);
}

interface NodeRow {
  id: number;
  name: string;
  token_hash: string | null;
}

/** Start a receiver; resolves once it listens and the schema is current. */
export async function startFleetServer(opts: FleetServerOptions): Promise<FleetServer> {
  const log = (opts.logger ?? silentLogger()).child({ part: 'fleet-server' });
  const pool = new pg.Pool({ connectionString: opts.database, max: opts.poolSize ?? 8 });
  // An idle client's error (database restarted) must not crash the receiver.
  pool.on('error', (err) => log.warn({ err }, 'PostgreSQL connection lost; the pool reconnects on next use'));
  const maxBatch = opts.maxBatchBytes ?? 16 * 1024 * 1024;
  const maxDecoded = opts.maxDecodedBytes ?? 128 * 1024 * 1024;
  const maxFrame = opts.maxFrameBytes ?? 4 * 1024 * 1024;
  const counters = { batches: 0, duplicates: 0, rejected: 0, records: 0 };

  try {
    await migrate(pool);
    for (const [name, token] of Object.entries(opts.nodes ?? {})) {
      if (!NODE_NAME.test(name)) throw new Error(`node name ${JSON.stringify(name)} must match ${NODE_NAME}`);
      await pool.query(
        `INSERT INTO fleet_nodes(name, token_hash) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET token_hash = EXCLUDED.token_hash`,
        [name, hashToken(token)],
      );
    }
  } catch (err) {
    await pool.end();
    throw err;
  }

  async function authNode(req: IncomingMessage, name: string): Promise<NodeRow> {
    if (!NODE_NAME.test(name)) throw new SyncUnknownNodeError(name);
    const r = await pool.query<NodeRow>('SELECT id, name, token_hash FROM fleet_nodes WHERE name = $1', [
      name,
    ]);
    const node = r.rows[0];
    if (!node) throw new SyncUnknownNodeError(name);
    const sock = req.socket as Partial<TLSSocket>;
    if (sock.authorized && typeof sock.getPeerCertificate === 'function') {
      const cn = sock.getPeerCertificate().subject?.CN;
      if (cn === name) return node;
    }
    const auth = req.headers.authorization ?? '';
    if (!auth.startsWith('Bearer '))
      throw new SyncUnauthorizedError('send Authorization: Bearer <node token> or a client certificate');
    if (!node.token_hash)
      throw new SyncUnauthorizedError(`node ${name} authenticates with a client certificate only`);
    const given = Buffer.from(hashToken(auth.slice(7).trim()), 'hex');
    const want = Buffer.from(node.token_hash, 'hex');
    if (given.length !== want.length || !timingSafeEqual(given, want))
      throw new SyncUnauthorizedError(`wrong token for node ${name}`);
    return node;
  }

  function authAdmin(req: IncomingMessage, write: boolean): void {
    if (!opts.adminToken) {
      if (write)
        throw new SyncUnauthorizedError('start the fleet server with an admin token to change desired state');
      return;
    }
    const auth = req.headers.authorization ?? '';
    let given = '';
    if (auth.startsWith('Bearer ')) given = auth.slice(7).trim();
    else if (auth.startsWith('Basic ')) {
      const dec = Buffer.from(auth.slice(6), 'base64').toString('utf8');
      given = dec.slice(dec.indexOf(':') + 1);
    }
    const a = Buffer.from(hashToken(given), 'hex');
    const b = Buffer.from(hashToken(opts.adminToken), 'hex');
    if (!timingSafeEqual(a, b)) throw new SyncUnauthorizedError('admin token required');
  }

  async function handleBatch(req: IncomingMessage, res: ServerResponse, nodeName: string): Promise<void> {
    const node = await authNode(req, nodeName);
    const body = await readBody(req, maxBatch);
    const enc = (req.headers['content-encoding'] ?? 'identity').toLowerCase();
    let raw: Buffer;
    if (enc === 'identity') raw = body;
    else if (enc === 'gzip' || enc === 'br') raw = await decompress(body, enc, maxDecoded);
    else throw new SyncBadBatchError(`Content-Encoding ${enc} is not supported (gzip, br, identity)`);
    if (raw.length > maxDecoded) throw new RequestTooLargeError(raw.length, maxDecoded);
    const batch = decodeBatch(raw);
    if (batch.node !== nodeName)
      throw new SyncBadBatchError(`batch names node ${batch.node} but was sent to ${nodeName}`);
    const ack = await storeBatch(node, batch, body.length);
    if (ack.duplicate) counters.duplicates++;
    else {
      counters.batches++;
      counters.records += batch.events.length + batch.reports.n + batch.samples.length;
    }
    json(res, 200, ack);
  }

  async function storeBatch(node: NodeRow, b: DecodedBatch, wireBytes: number) {
    const last = <T extends { id: number }>(rows: T[]) => (rows.length ? rows[rows.length - 1]!.id : null);
    const upTo = {
      events: last(b.events),
      reports: b.reports.n ? b.reports.ids[b.reports.n - 1]! : null,
      samples: last(b.samples),
    };
    const c = await pool.connect();
    try {
      await c.query('BEGIN');
      // The stream (the node's database) this batch belongs to; created on its first batch.
      const st = await c.query<{ id: number }>(
        `INSERT INTO fleet_streams(node_id, stream) VALUES ($1, $2)
         ON CONFLICT (node_id, stream) DO UPDATE SET stream = EXCLUDED.stream RETURNING id`,
        [node.id, b.stream],
      );
      const streamId = st.rows[0]!.id;
      // The idempotency key: a concurrent insert of the same (stream, seq) on another receiver
      // waits here for the first transaction and then does nothing.
      const ins = await c.query(
        `INSERT INTO fleet_batches(node_id, stream_id, seq, records, wire_bytes, events_to, reports_to, samples_to)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (stream_id, seq) DO NOTHING RETURNING seq`,
        [
          node.id,
          streamId,
          b.seq,
          b.events.length + b.reports.n + b.samples.length,
          wireBytes,
          upTo.events,
          upTo.reports,
          upTo.samples,
        ],
      );
      if (ins.rowCount === 0) {
        const prev = await c.query<{
          events_to: string | null;
          reports_to: string | null;
          samples_to: string | null;
        }>('SELECT events_to, reports_to, samples_to FROM fleet_batches WHERE node_id = $1 AND seq = $2', [
          node.id,
          b.seq,
        ]);
        await c.query('COMMIT');
        const p = prev.rows[0]!;
        const num = (v: string | null) => (v === null ? null : Number(v));
        return {
          seq: b.seq,
          duplicate: true,
          upTo: { events: num(p.events_to), reports: num(p.reports_to), samples: num(p.samples_to) },
        };
      }
      if (b.events.length) {
        await c.query(
          `INSERT INTO fleet_events(node_id, stream_id, id, ts_ms, kind, subject, data)
           SELECT $1, $2, r.id, r.ts, r.kind, r.subject, r.data
           FROM json_to_recordset($3::json) AS r(id bigint, ts bigint, kind text, subject text, data text)`,
          [node.id, streamId, pgJson(b.events)],
        );
      }
      if (b.reports.n) await copyIn(c, REPORTS_COPY, reportsCopyText(`${node.id}\t${streamId}`, b.reports));
      if (b.samples.length) {
        const rows = b.samples.map((s) => ({
          id: s.id,
          ts: s.ts,
          p: s.probe,
          m: s.metric,
          d: jsonSafe(s.data),
        }));
        await c.query(
          `INSERT INTO fleet_samples(node_id, stream_id, id, ts_ms, probe, metric, data)
           SELECT $1, $2, r.id, r.ts, r.p, r.m, r.d
           FROM json_to_recordset($3::json) AS r(id bigint, ts bigint, p text, m text, d jsonb)`,
          [node.id, streamId, pgJson(rows)],
        );
      }
      await c.query(
        `UPDATE fleet_nodes SET last_seen = now(), last_seq = greatest(last_seq, $2), backlog = $3::jsonb,
           applied_version = coalesce($4, applied_version) WHERE id = $1`,
        [node.id, b.seq, JSON.stringify(b.backlog), b.applied],
      );
      await c.query('COMMIT');
      return { seq: b.seq, duplicate: false, upTo };
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {});
      // A record already stored under another batch: the uplink and receiver disagree, which
      // must never pass silently; the batch is refused whole.
      if ((err as { code?: string }).code === '23505') throw new SyncConflictError(b.seq);
      throw err;
    } finally {
      c.release();
    }
  }

  async function getDesired(req: IncomingMessage, res: ServerResponse, nodeName: string): Promise<void> {
    const node = await authNode(req, nodeName);
    const r = await pool.query<{ version: string; keys: unknown }>(
      'SELECT version, keys FROM fleet_desired WHERE node_id = $1',
      [node.id],
    );
    const row = r.rows[0];
    if (!row) {
      res.writeHead(204).end();
      return;
    }
    const etag = `"${row.version}"`;
    if (req.headers['if-none-match'] === etag) {
      res.writeHead(304, { ETag: etag }).end();
      return;
    }
    json(res, 200, { version: String(row.version), keys: row.keys }, { ETag: etag });
  }

  async function putDesired(req: IncomingMessage, res: ServerResponse, nodeName: string): Promise<void> {
    authAdmin(req, true);
    const body = await readBody(req, 1024 * 1024);
    let doc: unknown;
    try {
      doc = JSON.parse(body.toString('utf8'));
    } catch {
      throw new HttpError(
        'EDGE_ERR_INVALID_ARGUMENT',
        'desired state must be JSON {"keys": {name: value}}',
        400,
      );
    }
    const keys = (doc as { keys?: unknown } | null)?.keys;
    if (keys === null || typeof keys !== 'object' || Array.isArray(keys))
      throw new HttpError(
        'EDGE_ERR_INVALID_ARGUMENT',
        'desired state must be JSON {"keys": {name: value}}',
        400,
      );
    const n = await pool.query<{ id: number }>('SELECT id FROM fleet_nodes WHERE name = $1', [nodeName]);
    if (!n.rows[0]) throw new SyncUnknownNodeError(nodeName);
    const r = await pool.query<{ version: string }>(
      `INSERT INTO fleet_desired(node_id, version, keys) VALUES ($1, 1, $2::jsonb)
       ON CONFLICT (node_id) DO UPDATE SET version = fleet_desired.version + 1, keys = EXCLUDED.keys, updated_at = now()
       RETURNING version`,
      [n.rows[0].id, JSON.stringify(keys)],
    );
    json(res, 200, { version: String(r.rows[0]!.version) });
  }

  async function putFrame(req: IncomingMessage, res: ServerResponse, nodeName: string): Promise<void> {
    const node = await authNode(req, nodeName);
    const png = await readBody(req, maxFrame);
    // The PNG signature; anything else is not a frame.
    if (png.length < 8 || png.readUInt32BE(0) !== 0x89504e47)
      throw new HttpError('EDGE_ERR_INVALID_ARGUMENT', 'frame must be a PNG image', 400);
    await pool.query(
      `INSERT INTO fleet_frames(node_id, png) VALUES ($1, $2)
       ON CONFLICT (node_id) DO UPDATE SET png = EXCLUDED.png, updated_at = now()`,
      [node.id, png],
    );
    res.writeHead(204).end();
  }

  async function getFrame(req: IncomingMessage, res: ServerResponse, nodeName: string): Promise<void> {
    authAdmin(req, false);
    const r = await pool.query<{ png: Buffer }>(
      'SELECT f.png FROM fleet_frames f JOIN fleet_nodes n ON n.id = f.node_id WHERE n.name = $1',
      [nodeName],
    );
    const row = r.rows[0];
    if (!row) throw notFound(`frame of node ${nodeName}`);
    res.writeHead(200, {
      'Content-Type': 'image/png',
      'Cache-Control': 'no-store',
      'Content-Length': row.png.length,
    });
    res.end(row.png);
  }

  async function listNodes(): Promise<Record<string, unknown>[]> {
    const r = await pool.query(
      `SELECT n.name, n.last_seen, n.last_seq, n.backlog, n.applied_version, d.version AS desired_version,
              f.updated_at AS frame_at
       FROM fleet_nodes n LEFT JOIN fleet_desired d ON d.node_id = n.id LEFT JOIN fleet_frames f ON f.node_id = n.id
       ORDER BY n.name`,
    );
    return r.rows.map((n) => ({
      name: n.name,
      lastSeen: n.last_seen ? (n.last_seen as Date).toISOString() : null,
      lastSeq: Number(n.last_seq),
      backlog: n.backlog,
      appliedVersion: n.applied_version,
      desiredVersion: n.desired_version === null ? null : String(n.desired_version),
      frameAt: n.frame_at ? (n.frame_at as Date).toISOString() : null,
    }));
  }

  async function page(res: ServerResponse): Promise<void> {
    const nodes = await listNodes();
    const rows = nodes
      .map((n) => {
        const name = esc(String(n.name));
        const img = n.frameAt
          ? `<img src="/v1/nodes/${encodeURIComponent(String(n.name))}/frame" alt="status frame of ${name}" width="320">`
          : 'no frame yet';
        const backlog = n.backlog ? esc(JSON.stringify(n.backlog)) : '';
        return `<tr><td>${name}</td><td>${esc(String(n.lastSeen ?? 'never'))}</td><td>${backlog}</td><td>${esc(String(n.appliedVersion ?? '-'))} / ${esc(String(n.desiredVersion ?? '-'))}</td><td>${img}</td></tr>`;
      })
      .join('\n');
    const html = `<!doctype html><html><head><meta charset="utf-8"><title>edgekeeper fleet</title>
<meta http-equiv="refresh" content="30"><style>body{font-family:sans-serif}td{padding:4px 10px;vertical-align:top}</style></head>
<body><h1>edgekeeper fleet</h1><table><tr><th>node</th><th>last seen</th><th>backlog</th><th>applied / desired</th><th>frame</th></tr>
${rows}
</table></body></html>`;
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
    res.end(html);
  }

  async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://receiver');
    const parts = url.pathname.split('/').filter(Boolean);
    const m = req.method ?? 'GET';
    if (parts[0] === 'v1' && parts[1] === 'nodes' && parts.length === 4) {
      let node: string;
      try {
        node = decodeURIComponent(parts[2]!);
      } catch {
        throw new SyncUnknownNodeError(parts[2]!);
      }
      const what = parts[3];
      if (what === 'batches' && m === 'POST') return handleBatch(req, res, node);
      if (what === 'desired' && m === 'GET') return getDesired(req, res, node);
      if (what === 'desired' && m === 'PUT') return putDesired(req, res, node);
      if (what === 'frame' && m === 'PUT') return putFrame(req, res, node);
      if (what === 'frame' && m === 'GET') return getFrame(req, res, node);
    }
    if (url.pathname === '/v1/nodes' && m === 'GET') {
      authAdmin(req, false);
      return json(res, 200, { nodes: await listNodes() });
    }
    if (url.pathname === '/' && m === 'GET') {
      authAdmin(req, false);
      return page(res);
    }
    if (url.pathname === '/healthz' && m === 'GET') return json(res, 200, { ok: true, ...counters });
    throw notFound(`${m} ${url.pathname}`);
  }

  const handler = (req: IncomingMessage, res: ServerResponse) => {
    route(req, res).catch((err: unknown) => {
      const e = err instanceof EdgeError ? err : undefined;
      const status = e ? e.status : 500;
      if (status >= 500) log.error({ err }, 'request failed; the node will retry');
      else {
        counters.rejected++;
        log.warn({ code: e?.code, msg: e?.message, url: req.url }, 'request refused');
      }
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const body = e
        ? { code: e.code, message: e.message }
        : { code: 'EDGE_ERR_INTERNAL', message: 'the receiver failed to store the request; retry later' };
      // A refused upload may still be streaming in: answer and close rather than read it all.
      json(
        res,
        status,
        body,
        status === 413 || status === 401 || status === 403 ? { Connection: 'close' } : {},
      );
    });
  };

  let server: Server;
  if (opts.tls) {
    const read = (v: string) => (v.includes('-----BEGIN') ? v : readFileSync(v, 'utf8'));
    server = createHttpsServer(
      {
        cert: read(opts.tls.cert),
        key: read(opts.tls.key),
        ...(opts.tls.clientCa
          ? { ca: read(opts.tls.clientCa), requestCert: true, rejectUnauthorized: false }
          : {}),
      },
      handler,
    );
  } else server = createHttpServer(handler);
  // Slow or stalled uploads must not hold sockets forever.
  server.requestTimeout = 120_000;
  server.headersTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 9490, opts.host ?? '127.0.0.1', () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const scheme = opts.tls ? 'https' : 'http';
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  log.info({ url: `${scheme}://${host}:${addr.port}` }, 'fleet receiver listening');
  let closed: Promise<void> | undefined;
  return {
    url: `${scheme}://${host}:${addr.port}`,
    port: addr.port,
    pool,
    close() {
      closed ??= (async () => {
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections();
        });
        await pool.end();
      })();
      return closed;
    },
  };
}

async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? Number.NaN);
  if (declared > limit) throw new RequestTooLargeError(declared, limit);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new RequestTooLargeError(size, limit);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks, size);
}

function decompress(body: Buffer, enc: 'gzip' | 'br', max: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const done = (err: Error | null, out: Buffer) => {
      if (!err) return resolve(out);
      if ((err as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE')
        reject(new RequestTooLargeError(max + 1, max));
      else reject(new SyncBadBatchError(`corrupt ${enc} compression: ${err.message}`));
    };
    // maxOutputLength stops a small body that inflates to gigabytes.
    if (enc === 'gzip') gunzip(body, { maxOutputLength: max }, done);
    else brotliDecompress(body, { maxOutputLength: max }, done);
  });
}

function json(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/**
 * JSON text PostgreSQL accepts: it refuses U+0000 in text and jsonb, so it becomes U+FFFD (only
 * an escape preceded by an even number of backslashes is a real NUL).
 */
function pgJson(v: unknown): string {
  const s = JSON.stringify(v);
  return s.includes('\\u0000') ? s.replace(/(?<!\\)((?:\\\\)*)\\u0000/g, '$1\\ufffd') : s;
}

const REPORTS_COPY =
  'COPY fleet_reports (node_id, stream_id, id, device, received_at_ms, ts_ms, seq, metrics, state, tags, other) FROM STDIN';

/**
 * COPY text for a batch's reports, straight from the columns: the metrics JSON of a row is the
 * shape's pre-escaped keys with the numbers between them, no object per row (this is the hot
 * path of a draining node).
 */
function reportsCopyText(lead: string, r: ReportColumns): Buffer {
  const keys = r.names.map((n) => copyText(JSON.stringify(n)));
  const devices = r.devices.map((d) => copyText(d));
  const pos = new Array<number>(r.names.length).fill(0);
  const parts: string[] = [];
  for (let i = 0; i < r.n; i++) {
    const shape = r.shapes[r.shapeIndex[i]!]!;
    const x = r.extras.get(i);
    let metrics: string;
    if (x?.metrics) {
      const o: Record<string, unknown> = {};
      for (const m of shape) o[r.names[m]!] = r.values[m]![pos[m]!++];
      metrics = copyText(pgJson(jsonSafe({ ...o, ...x.metrics })));
    } else {
      metrics = '{';
      for (let k = 0; k < shape.length; k++) {
        const m = shape[k]!;
        const v = r.values[m]![pos[m]!++]!;
        // JSON has no NaN or Infinity: they become null, as JSON.stringify does.
        metrics += `${k ? ',' : ''}${keys[m]}:${Number.isFinite(v) ? v : 'null'}`;
      }
      metrics += '}';
    }
    parts.push(
      `${lead}\t${r.ids[i]}\t${devices[r.deviceIndex[i]!]}\t${r.receivedAt[i]}\t${copyNumber(r.ts[i]!)}\t${copyNumber(r.seq[i]!)}\t${metrics}\t${
        x ? `${optJson(x.state)}\t${optJson(x.tags)}\t${optJson(x.other)}` : '\\N\t\\N\t\\N'
      }\n`,
    );
  }
  return Buffer.from(parts.join(''));
}

function optJson(v: unknown): string {
  return v === undefined ? '\\N' : copyText(pgJson(jsonSafe(v)));
}

/** Values decoded from CBOR made JSON-safe: bigint -> string, bytes -> {base64}, Map -> object. */
export function jsonSafe(v: unknown): unknown {
  if (v === null || typeof v === 'string' || typeof v === 'boolean') return v;
  if (typeof v === 'number') return Number.isFinite(v) ? v : String(v);
  if (typeof v === 'bigint') return v.toString();
  if (v === undefined) return null;
  if (v instanceof Uint8Array) return { base64: Buffer.from(v).toString('base64') };
  if (Array.isArray(v)) return v.map(jsonSafe);
  if (v instanceof Map) {
    const o: Record<string, unknown> = {};
    for (const [k, x] of v) o[String(k)] = jsonSafe(x);
    return o;
  }
  if (v instanceof Date) return v.toISOString();
  if (typeof v === 'object') {
    const o: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) o[k] = jsonSafe(x);
    return o;
  }
  return String(v);
}
