/**
 * The reference fleet receiver: node:http (or https with client certificates) in front of
 * PostgreSQL. Stateless apart from the database, so several receivers can share one database
 * behind a load balancer: idempotency, ordering and "never half-stored" are enforced by
 * PostgreSQL (a unique key per (node, seq), one transaction per batch), and so are node tokens,
 * revocations and login sessions.
 *
 * Routes (node = [A-Za-z0-9._-]{1,128}):
 *   node:      POST /v1/nodes/<node>/batches, GET /v1/nodes/<node>/desired, PUT /v1/nodes/<node>/frame
 *   admin API: GET|POST /v1/nodes, GET /v1/nodes/<node>, GET /v1/nodes/<node>/events,
 *              POST /v1/nodes/<node>/{rotate,revoke,decommission}, PUT /v1/nodes/<node>/desired,
 *              GET /v1/nodes/<node>/frame
 *   pages:     GET /, GET /nodes/<node>, GET|POST /login, POST /logout, POST /nodes,
 *              POST /nodes/<node>/{desired,rotate,revoke,decommission}, GET /ui.css
 *   open:      GET /healthz, GET /metrics
 * Who may call what is in auth.ts; what a node's health means in nodes.ts.
 */
import { timingSafeEqual } from 'node:crypto';
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
  FleetUnauthorizedError,
  RequestTooLargeError,
  SyncBadBatchError,
  SyncConflictError,
  SyncRevokedError,
  SyncUnauthorizedError,
  SyncUnknownNodeError,
} from '../../errors.js';
import { type Logger, silentLogger } from '../../log.js';
import { type DecodedBatch, decodeBatch, type ReportColumns } from '../codec.js';
import { AdminAuth, type Principal, sha256 } from './auth.js';
import { copyIn, copyNumber, copyText } from './copy.js';
import { receiverMetrics } from './metrics.js';
import {
  assess,
  checkName,
  InvalidArgument,
  NODE_NAME,
  NodeDirectory,
  type NodeRowView,
  NotFound,
} from './nodes.js';
import { migrate } from './schema.js';
import {
  CSP,
  errorPage,
  fleetPage,
  loginPage,
  nodePage,
  type PageContext,
  STYLESHEET,
  tokenPage,
} from './ui.js';

export interface FleetServerOptions {
  /** PostgreSQL connection string, e.g. postgres://fleet@db:5432/fleet. */
  database: string;
  host?: string;
  /** 0 picks a free port. Default 9490. */
  port?: number;
  /**
   * Nodes and their bearer tokens (--node, --nodes-file), stored hashed (sha256). A node changed
   * through the admin API since (rotated, revoked, decommissioned) is left as it is.
   */
  nodes?: Record<string, string>;
  /** `nodes` is the whole nodes file: nodes it added earlier and no longer lists are revoked. */
  nodesAuthoritative?: boolean;
  /** Token for the operator routes; without it they are open for reading and nothing can be changed. */
  adminToken?: string;
  /** How long past the contact it promised a node turns STALE; default 120 s. */
  staleAfterSeconds?: number;
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
  readonly nodes: NodeDirectory;
  /** Apply a nodes file again (the CLI does on SIGHUP), by the rules of `FleetServerOptions.nodes`. */
  applyNodes(
    nodes: Record<string, string>,
    authoritative: boolean,
  ): Promise<{ ignored: string[]; revoked: string[] }>;
  close(): Promise<void>;
}

export const hashToken = sha256;

interface NodeRow {
  id: number;
  name: string;
  token_hash: string | null;
  status: string;
}

/** Nodes on one page unless asked otherwise. */
const PAGE_LIMIT = 50;
/** Nodes in one answer of GET /v1/nodes unless asked otherwise (at most MAX_LIMIT). */
const API_LIMIT = 1000;
/** Forms and admin JSON bodies (a desired state may be larger: 1 MiB). */
const FORM_MAX_BYTES = 256 * 1024;
const DESIRED_MAX_BYTES = 1024 * 1024;
/** Events on a node's page. */
const NODE_EVENTS = 200;

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
  const nodes = new NodeDirectory(pool, opts.staleAfterSeconds ?? 120);
  const metrics = receiverMetrics(nodes, log);
  const auth = new AdminAuth(pool, opts.adminToken, !!opts.tls, Date.now, (result) =>
    metrics.logins.inc({ result }),
  );

  async function applyNodes(list: Record<string, string>, authoritative: boolean) {
    const r = await nodes.applyNodesFile(list, authoritative);
    if (r.ignored.length)
      log.warn(
        { nodes: r.ignored },
        'nodes-file entries ignored: these nodes were changed through the admin API (rotated, revoked, decommissioned)',
      );
    if (r.revoked.length) log.warn({ nodes: r.revoked }, 'nodes no longer in the nodes file: revoked');
    return r;
  }

  try {
    await migrate(pool);
    await applyNodes(opts.nodes ?? {}, opts.nodesAuthoritative ?? false);
  } catch (err) {
    await pool.end();
    throw err;
  }

  // --- nodes ------------------------------------------------------------------------------------

  async function authNode(req: IncomingMessage, name: string): Promise<NodeRow> {
    if (!NODE_NAME.test(name)) throw new SyncUnknownNodeError(name);
    const r = await pool.query<NodeRow>(
      'SELECT id, name, token_hash, status FROM fleet_nodes WHERE name = $1',
      [name],
    );
    const node = r.rows[0];
    if (!node) throw new SyncUnknownNodeError(name);
    // Decommissioned: no token left to check; the node learns why it is refused.
    if (node.status === 'decommissioned') await refuse(node);
    const sock = req.socket as Partial<TLSSocket>;
    const byCert =
      sock.authorized === true &&
      typeof sock.getPeerCertificate === 'function' &&
      sock.getPeerCertificate().subject?.CN === name;
    if (!byCert) {
      const auth = req.headers.authorization ?? '';
      if (!auth.startsWith('Bearer '))
        throw new SyncUnauthorizedError('send Authorization: Bearer <node token> or a client certificate');
      if (!node.token_hash && node.status === 'active')
        throw new SyncUnauthorizedError(`node ${name} authenticates with a client certificate only`);
      const given = Buffer.from(hashToken(auth.slice(7).trim()), 'hex');
      const want = Buffer.from(node.token_hash ?? '', 'hex');
      if (given.length !== want.length || !timingSafeEqual(given, want))
        throw new SyncUnauthorizedError(`wrong token for node ${name}`);
    }
    if (node.status !== 'active') await refuse(node);
    return node;
  }

  async function refuse(node: NodeRow): Promise<never> {
    // Noted (at most once a minute) so the operator sees a retired node that still calls in.
    await pool.query(
      "UPDATE fleet_nodes SET refused_at = now() WHERE id = $1 AND (refused_at IS NULL OR refused_at < now() - interval '1 minute')",
      [node.id],
    );
    throw new SyncRevokedError(node.name, node.status);
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
    const timer = metrics.storeSeconds.startTimer();
    const ack = await storeBatch(node, batch, body.length);
    timer();
    if (ack.duplicate) {
      counters.duplicates++;
      metrics.batches.inc({ result: 'duplicate' });
    } else {
      counters.batches++;
      counters.records += batch.events.length + batch.reports.n + batch.samples.length;
      metrics.batches.inc({ result: 'stored' });
      metrics.bytes.inc(body.length);
      if (batch.events.length) metrics.records.inc({ source: 'events' }, batch.events.length);
      if (batch.reports.n) metrics.records.inc({ source: 'reports' }, batch.reports.n);
      if (batch.samples.length) metrics.records.inc({ source: 'samples' }, batch.samples.length);
      let oldest = Number.POSITIVE_INFINITY;
      for (const e of batch.events) oldest = Math.min(oldest, e.ts);
      for (const t of batch.reports.receivedAt) oldest = Math.min(oldest, t);
      for (const x of batch.samples) oldest = Math.min(oldest, x.ts);
      if (Number.isFinite(oldest)) metrics.lag.observe(Math.max(0, (Date.now() - oldest) / 1000));
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
        `INSERT INTO fleet_batches(node_id, stream_id, seq, records, wire_bytes, events_to, reports_to, samples_to, sent_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, fleet_ms_time($9)) ON CONFLICT (stream_id, seq) DO NOTHING RETURNING seq`,
        [
          node.id,
          streamId,
          b.seq,
          b.events.length + b.reports.n + b.samples.length,
          wireBytes,
          upTo.events,
          upTo.reports,
          upTo.samples,
          Math.round(b.sentAt),
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
      const backlog = b.backlog.events + b.backlog.reports + b.backlog.samples;
      const health = assess(b.health, backlog);
      // Only while the node is active: a revocation committed since authNode refuses the batch.
      const upd = await c.query(
        `UPDATE fleet_nodes SET last_seen = now(), last_seq = greatest(last_seq, $2), backlog = $3::jsonb,
           applied_version = coalesce($4, applied_version), sent_at = fleet_ms_time($5),
           health_summary = $6::jsonb, health_level = $7, health_reason = $8,
           expect_by = now() + make_interval(secs => $9::float8)
         WHERE id = $1 AND status = 'active'`,
        [
          node.id,
          b.seq,
          JSON.stringify(b.backlog),
          b.applied,
          Math.round(b.sentAt),
          b.health ? pgJson(b.health) : null,
          health.level,
          health.reason,
          // A node without a promise (before health upload) is expected within one heartbeat.
          b.health ? b.health.nextContactSeconds : 60,
        ],
      );
      if (upd.rowCount === 0) throw new SyncRevokedError(node.name, 'revoked');
      await c.query('COMMIT');
      return { seq: b.seq, duplicate: false, upTo };
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {});
      // A record already stored under another batch: the uplink and receiver disagree, which
      // must never pass silently; the batch is refused whole.
      if ((err as { code?: string }).code === '23505') throw new SyncConflictError(b.seq);
      // class 22, data exception: a value the decoder let through and PostgreSQL cannot hold
      // (a NUL in a text, a number out of range): the batch is at fault, not the receiver
      const code = (err as { code?: unknown }).code;
      if (typeof code === 'string' && code.startsWith('22'))
        throw new SyncBadBatchError(`a value cannot be stored: ${(err as Error).message}`);
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

  async function putFrame(req: IncomingMessage, res: ServerResponse, nodeName: string): Promise<void> {
    const node = await authNode(req, nodeName);
    const png = await readBody(req, maxFrame);
    // The PNG signature; anything else is not a frame.
    if (png.length < 8 || png.readUInt32BE(0) !== 0x89504e47)
      throw new InvalidArgument('frame must be a PNG image');
    await pool.query(
      `INSERT INTO fleet_frames(node_id, png) VALUES ($1, $2)
       ON CONFLICT (node_id) DO UPDATE SET png = EXCLUDED.png, updated_at = now()`,
      [node.id, png],
    );
    res.writeHead(204).end();
  }

  // --- admin: desired state, frames, the node list, lifecycle -------------------------------------

  /** Validates and stores a desired state (an object of key -> value); returns its new version. */
  async function storeDesired(nodeName: string, keys: unknown): Promise<string> {
    if (keys === null || typeof keys !== 'object' || Array.isArray(keys))
      throw new InvalidArgument('desired state must be a JSON object of key -> value');
    const names = Object.keys(keys);
    // The node applies it as one etcd transaction with a delete per dropped key and the version.
    if (names.length > 120) throw new InvalidArgument(`desired state has ${names.length} keys; at most 120`);
    for (const k of names)
      if (k === '' || k.startsWith('.') || k.length > 1024)
        throw new InvalidArgument(
          `desired key ${JSON.stringify(k.slice(0, 40))} is empty, reserved (starts with ".") or too long`,
        );
    checkName(nodeName);
    const n = await pool.query<{ id: number; status: string }>(
      'SELECT id, status FROM fleet_nodes WHERE name = $1',
      [nodeName],
    );
    const node = n.rows[0];
    if (!node) throw new NotFound(`node ${nodeName}`);
    if (node.status === 'decommissioned') throw new InvalidArgument(`node ${nodeName} is decommissioned`);
    const r = await pool.query<{ version: string }>(
      `INSERT INTO fleet_desired(node_id, version, keys) VALUES ($1, 1, $2::jsonb)
       ON CONFLICT (node_id) DO UPDATE SET version = fleet_desired.version + 1, keys = EXCLUDED.keys, updated_at = now()
       RETURNING version`,
      [node.id, pgJson(keys)],
    );
    return String(r.rows[0]!.version);
  }

  async function putDesired(req: IncomingMessage, res: ServerResponse, nodeName: string): Promise<void> {
    await auth.write(req);
    const doc = parseJson(
      await readBody(req, DESIRED_MAX_BYTES),
      'desired state must be JSON {"keys": {name: value}}',
    );
    const keys = (doc as { keys?: unknown } | null)?.keys;
    json(res, 200, { version: await storeDesired(nodeName, keys) });
  }

  async function getFrame(req: IncomingMessage, res: ServerResponse, nodeName: string): Promise<void> {
    await auth.read(req);
    const r = await pool.query<{ png: Buffer }>(
      'SELECT f.png FROM fleet_frames f JOIN fleet_nodes n ON n.id = f.node_id WHERE n.name = $1',
      [nodeName],
    );
    const row = r.rows[0];
    if (!row) throw new NotFound(`frame of node ${nodeName}`);
    res.writeHead(200, {
      'Content-Type': 'image/png',
      'Cache-Control': 'private, max-age=60',
      'Content-Length': row.png.length,
      'X-Content-Type-Options': 'nosniff',
    });
    res.end(row.png);
  }

  function apiNode(n: NodeRowView): Record<string, unknown> {
    const iso = (d: Date | null) => (d ? d.toISOString() : null);
    return {
      name: n.name,
      status: n.status,
      health: n.health,
      problem: n.problem,
      lastSeen: iso(n.lastSeen),
      expectBy: iso(n.expectBy),
      lastSeq: n.lastSeq,
      backlog: n.backlog,
      backlogRecords: n.backlogRecords,
      oldestUnsentSeconds: n.oldestUnsentSeconds,
      appliedVersion: n.appliedVersion,
      desiredVersion: n.desiredVersion,
      frameAt: iso(n.frameAt),
    };
  }

  async function lifecycle(
    action: string,
    name: string,
  ): Promise<{ name: string; token?: string; status?: string }> {
    if (action === 'rotate') return nodes.rotate(name);
    if (action === 'revoke') return nodes.revoke(name);
    if (action === 'decommission') return nodes.decommission(name);
    throw new NotFound(`action ${action}`);
  }

  async function api(
    req: IncomingMessage,
    res: ServerResponse,
    url: URL,
    parts: string[],
    m: string,
  ): Promise<void> {
    if (parts.length === 2) {
      if (m === 'GET') {
        await auth.read(req);
        const r = await nodes.list(NodeDirectory.parseQuery(url.searchParams, API_LIMIT, 'name'));
        return json(res, 200, {
          nodes: r.nodes.map(apiNode),
          total: r.total,
          page: r.page,
          limit: r.limit,
          counts: r.counts,
        });
      }
      if (m === 'POST') {
        await auth.write(req);
        const doc = parseJson(
          await readBody(req, FORM_MAX_BYTES),
          'expected JSON {"name": ..., "token"?: ...}',
        ) as {
          name?: unknown;
          token?: unknown;
        } | null;
        if (typeof doc?.name !== 'string') throw new InvalidArgument('name must be a string');
        if (doc.token !== undefined && typeof doc.token !== 'string')
          throw new InvalidArgument('token must be a string');
        return json(res, 201, await nodes.add(doc.name, doc.token));
      }
    }
    const name = nodeParam(parts[2]!);
    if (parts.length === 3 && m === 'GET') {
      await auth.read(req);
      const n = await nodes.get(name);
      if (!n) throw new NotFound(`node ${name}`);
      return json(res, 200, {
        ...apiNode(n),
        summary: n.summary,
        managedBy: n.managedBy,
        createdAt: n.createdAt.toISOString(),
        tokenAt: n.tokenAt?.toISOString() ?? null,
        desired: n.desiredKeys,
      });
    }
    const what = parts[3];
    if (parts.length !== 4) throw new NotFound(`${m} ${url.pathname}`);
    if (what === 'batches' && m === 'POST') return handleBatch(req, res, name);
    if (what === 'desired' && m === 'GET') return getDesired(req, res, name);
    if (what === 'desired' && m === 'PUT') return putDesired(req, res, name);
    if (what === 'frame' && m === 'PUT') return putFrame(req, res, name);
    if (what === 'frame' && m === 'GET') return getFrame(req, res, name);
    if (what === 'events' && m === 'GET') {
      await auth.read(req);
      const n = await nodes.get(name);
      if (!n) throw new NotFound(`node ${name}`);
      const limit = NodeDirectory.parseQuery(
        new URLSearchParams({ limit: url.searchParams.get('limit') ?? '' }),
        200,
        'name',
      ).limit;
      const events = await nodes.events(n.id, limit, url.searchParams.get('kinds') === 'health');
      return json(res, 200, {
        events: events.map((e) => ({
          ts: e.ts?.toISOString() ?? null,
          tsMs: e.tsMs,
          kind: e.kind,
          subject: e.subject,
          data: e.data,
        })),
      });
    }
    if ((what === 'rotate' || what === 'revoke' || what === 'decommission') && m === 'POST') {
      await auth.write(req);
      const r = await lifecycle(what, name);
      log.info({ node: name, action: what }, 'node lifecycle changed through the admin API');
      return json(res, 200, r);
    }
    throw new NotFound(`${m} ${url.pathname}`);
  }

  // --- pages ------------------------------------------------------------------------------------

  function pageCtx(p: Principal): PageContext {
    return {
      now: Date.now(),
      csrf: p.via === 'session' ? p.csrf : undefined,
      session: p.via === 'session',
      readOnly: !auth.enabled,
    };
  }

  function html(
    res: ServerResponse,
    status: number,
    body: string,
    headers: Record<string, string> = {},
  ): void {
    res.writeHead(status, {
      'Content-Type': 'text/html; charset=utf-8',
      'Content-Length': Buffer.byteLength(body),
      'Cache-Control': 'no-store',
      'Content-Security-Policy': CSP,
      'X-Frame-Options': 'DENY',
      'X-Content-Type-Options': 'nosniff',
      'Referrer-Policy': 'same-origin',
      ...headers,
    });
    res.end(body);
  }

  function redirect(res: ServerResponse, to: string, headers: Record<string, string> = {}): void {
    res.writeHead(303, { Location: to, 'Cache-Control': 'no-store', 'Content-Length': 0, ...headers }).end();
  }

  async function form(req: IncomingMessage): Promise<URLSearchParams> {
    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/x-www-form-urlencoded')
      throw new InvalidArgument('expected a form (application/x-www-form-urlencoded)');
    return new URLSearchParams((await readBody(req, FORM_MAX_BYTES)).toString('utf8'));
  }

  /** A page needs a reader; without one a browser goes to the login form. */
  async function viewer(req: IncomingMessage, res: ServerResponse, url: URL): Promise<Principal | undefined> {
    const p = await auth.identify(req);
    if (!p) redirect(res, `/login?next=${encodeURIComponent(url.pathname + url.search)}`);
    return p;
  }

  const DONE: Record<string, string> = {
    desired: 'Desired state saved as a new version; the node fetches it at its next poll.',
    revoke: 'Node revoked: its token is refused from now on.',
    decommission: 'Node decommissioned: it can no longer upload and left the list; its data stays.',
  };

  async function renderNode(
    res: ServerResponse,
    p: Principal,
    name: string,
    url: URL,
    status = 200,
    extra: { error?: string; desiredText?: string } = {},
  ): Promise<void> {
    const n = await nodes.get(name);
    if (!n) throw new NotFound(`node ${name}`);
    const filter = url.searchParams.get('events') === 'all' ? 'all' : 'health';
    const events = await nodes.events(n.id, NODE_EVENTS, filter === 'health');
    html(
      res,
      status,
      nodePage(
        {
          node: n,
          events,
          eventsFilter: filter,
          message: DONE[url.searchParams.get('done') ?? ''],
          ...extra,
        },
        pageCtx(p),
      ),
    );
  }

  async function pages(
    req: IncomingMessage,
    res: ServerResponse,
    url: URL,
    parts: string[],
    m: string,
  ): Promise<void> {
    if (url.pathname === '/' && m === 'GET') {
      const p = await viewer(req, res, url);
      if (!p) return;
      const q = NodeDirectory.parseQuery(url.searchParams, PAGE_LIMIT, 'health');
      const gone = url.searchParams.get('gone') ?? '';
      const message = NODE_NAME.test(gone)
        ? `Node ${gone} decommissioned: it left the list; its data stays.`
        : undefined;
      return html(res, 200, fleetPage(await nodes.list(q), q, pageCtx(p), message));
    }
    if (url.pathname === '/login' && m === 'GET') {
      if (!auth.enabled) return redirect(res, '/');
      return html(res, 200, loginPage({ next: safeNext(url.searchParams.get('next')), now: Date.now() }));
    }
    if (url.pathname === '/login' && m === 'POST') {
      const f = await form(req);
      const next = safeNext(f.get('next'));
      try {
        const cookie = await auth.login(req, f.get('token') ?? '');
        return redirect(res, next, { 'Set-Cookie': cookie });
      } catch (err) {
        if (!(err instanceof EdgeError) || err.status >= 500) throw err;
        metrics.errors.inc({ code: err.code });
        return html(res, err.status, loginPage({ next, error: err.message, now: Date.now() }));
      }
    }
    if (url.pathname === '/logout' && m === 'POST') {
      const p = await auth.write(req, (await form(req)).get('csrf') ?? '');
      return redirect(res, '/login', { 'Set-Cookie': await auth.logout(p) });
    }
    if (url.pathname === '/nodes' && m === 'POST') {
      const f = await form(req);
      const p = await auth.write(req, f.get('csrf') ?? '');
      const r = await nodes.add(f.get('name') ?? '');
      log.info({ node: r.name, action: 'add' }, 'node added from the fleet page');
      return html(res, 200, tokenPage(r.name, r.token, 'New node', pageCtx(p)));
    }
    if (parts[0] === 'nodes' && (parts.length === 2 || parts.length === 3)) {
      const name = nodeParam(parts[1]!);
      if (parts.length === 2 && m === 'GET') {
        const p = await viewer(req, res, url);
        if (!p) return;
        return renderNode(res, p, name, url);
      }
      const action = parts[2] ?? '';
      if (m === 'POST' && ['desired', 'rotate', 'revoke', 'decommission'].includes(action)) {
        const f = await form(req);
        const p = await auth.write(req, f.get('csrf') ?? '');
        const back = `/nodes/${encodeURIComponent(name)}`;
        if (action === 'desired') {
          const text = f.get('keys') ?? '';
          try {
            await storeDesired(name, parseJson(Buffer.from(text), 'desired state is not JSON'));
          } catch (err) {
            if (!(err instanceof InvalidArgument)) throw err;
            metrics.errors.inc({ code: err.code });
            return renderNode(res, p, name, url, 400, { error: err.message, desiredText: text });
          }
          return redirect(res, `${back}?done=desired`);
        }
        const r = await lifecycle(action, name);
        log.info({ node: name, action }, 'node lifecycle changed from the fleet page');
        if (r.token) return html(res, 200, tokenPage(name, r.token, 'New token', pageCtx(p)));
        return redirect(
          res,
          action === 'decommission' ? `/?gone=${encodeURIComponent(name)}` : `${back}?done=${action}`,
        );
      }
    }
    throw new NotFound(`${m} ${url.pathname}`);
  }

  async function route(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const parts = url.pathname.split('/').filter(Boolean);
    const m = req.method ?? 'GET';
    if (parts[0] === 'v1' && parts[1] === 'nodes' && parts.length >= 2) return api(req, res, url, parts, m);
    if (url.pathname === '/healthz' && m === 'GET') return json(res, 200, { ok: true, ...counters });
    if (url.pathname === '/metrics' && m === 'GET') {
      const text = await metrics.registry.metrics();
      res.writeHead(200, { 'Content-Type': metrics.registry.contentType, 'Cache-Control': 'no-store' });
      res.end(text);
      return;
    }
    if (url.pathname === '/ui.css' && m === 'GET') {
      res.writeHead(200, { 'Content-Type': 'text/css; charset=utf-8', 'Cache-Control': 'max-age=300' });
      res.end(STYLESHEET);
      return;
    }
    return pages(req, res, url, parts, m);
  }

  const handler = (req: IncomingMessage, res: ServerResponse) => {
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://receiver');
    } catch {
      url = new URL('http://receiver/');
    }
    const page =
      !url.pathname.startsWith('/v1/') && url.pathname !== '/metrics' && url.pathname !== '/healthz';
    route(req, res, url).catch(async (err: unknown) => {
      const e = err instanceof EdgeError ? err : undefined;
      const status = e ? e.status : 500;
      metrics.errors.inc({ code: e?.code ?? 'EDGE_ERR_INTERNAL' });
      if (status >= 500) log.error({ err }, 'request failed');
      else {
        counters.rejected++;
        log.warn({ code: e?.code, msg: e?.message, url: req.url }, 'request refused');
      }
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const message = e ? e.message : 'the receiver failed to store the request; retry later';
      // A refused upload may still be streaming in: answer and close rather than read it all.
      const close: Record<string, string> =
        status === 413 || status === 401 || status === 403 ? { Connection: 'close' } : {};
      if (page) {
        let ctx: PageContext | undefined;
        try {
          const p = await auth.identify(req);
          ctx = p ? pageCtx(p) : undefined;
        } catch {
          ctx = undefined;
        }
        const hint = e instanceof FleetUnauthorizedError ? `${message}. Log in again at /login.` : message;
        html(res, status, errorPage(status, hint, ctx), close);
        return;
      }
      const challenge: Record<string, string> =
        e instanceof FleetUnauthorizedError
          ? {
              'WWW-Authenticate':
                'Bearer realm="edgekeeper fleet", Basic realm="edgekeeper fleet", charset="UTF-8"',
            }
          : e instanceof SyncUnauthorizedError || e instanceof SyncRevokedError
            ? { 'WWW-Authenticate': 'Bearer realm="edgekeeper fleet nodes"' }
            : {};
      if (e && 'retryAfterSeconds' in e) challenge['Retry-After'] = String(e.retryAfterSeconds);
      json(res, status, { code: e ? e.code : 'EDGE_ERR_INTERNAL', message }, { ...close, ...challenge });
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
    nodes,
    applyNodes,
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

/** The node name in a path, decoded; each route checks it (node routes answer 403, others 404). */
function nodeParam(raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw new SyncUnknownNodeError(raw.slice(0, 140));
  }
}

/** Where to go after login: a path on this server only (never //host or a scheme). */
function safeNext(v: string | null): string {
  // Printable ASCII without backslash (some browsers read "/\host" as another host); a search
  // with other characters arrives percent-encoded anyway.
  if (!v || v.length > 2000 || !v.startsWith('/') || v.startsWith('//') || !/^[!-[\]-~]+$/.test(v))
    return '/';
  return v;
}

function parseJson(body: Buffer, message: string): unknown {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    throw new InvalidArgument(message);
  }
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
