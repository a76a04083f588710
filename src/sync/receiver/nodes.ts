/**
 * Nodes on the receiver: their lifecycle (add, rotate, revoke, decommission), their health as the
 * operator sees it, and the queries of the node list and a node's page. All state is in
 * PostgreSQL, so every receiver sharing the database answers the same.
 *
 * Health, worst first:
 *   stale    no batch within the time the node promised (or never one);
 *   alert    not ready, disk full, or a critical alert, as of the node's latest batch;
 *   warn     a warning alert, or uploads far behind;
 *   ok       none of these;
 *   revoked  the node's token is refused (stolen, lost); shown apart;
 *   retired  decommissioned: gone for good, its data kept; listed only when asked for.
 */
import { randomBytes } from 'node:crypto';
import type pg from 'pg';
import { EdgeError, FleetNodeStateError } from '../../errors.js';
import type { HealthSummary } from '../codec.js';
import { sha256 } from './auth.js';

export const NODE_NAME = /^[A-Za-z0-9._-]{1,128}$/;
export const HEALTH_STATES = ['stale', 'alert', 'warn', 'ok', 'revoked', 'retired'] as const;
export type Health = (typeof HEALTH_STATES)[number];
/** Uploads this far behind (oldest record not yet sent) make a node WARN. */
export const BACKLOG_WARN_SECONDS = 900;

export class InvalidArgument extends EdgeError {
  constructor(message: string) {
    super('EDGE_ERR_INVALID_ARGUMENT', message, 400);
  }
}

export class NotFound extends EdgeError {
  constructor(what: string) {
    super('EDGE_ERR_NOT_FOUND', `${what} not found`, 404);
  }
}

export function checkName(name: string): void {
  if (!NODE_NAME.test(name))
    throw new InvalidArgument(
      `node name ${JSON.stringify(name.slice(0, 140))} must be 1-128 letters, digits, ".", "_" or "-"`,
    );
}

/** A fresh node token: 32 random bytes, base64url (43 characters). */
export function newToken(): string {
  return randomBytes(32).toString('base64url');
}

function fmtBytes(n: number | undefined): string {
  if (n === undefined) return '?';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let v = n;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${v >= 100 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

export function fmtDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min`;
  if (s < 48 * 3600) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

/** Level (0 ok, 1 warn, 2 alert) and the worst problem in words, from a node's summary. */
export function assess(
  h: HealthSummary | undefined,
  backlogRecords: number,
): { level: number; reason: string | null } {
  if (!h) return { level: 0, reason: null };
  const failing = Object.values(h.failing);
  if (!h.ready)
    return {
      level: 2,
      reason: `not ready: ${failing[0] ?? 'no reason given'}${failing.length > 1 ? ` (+${failing.length - 1} more)` : ''}`,
    };
  if (h.disk.full) {
    const d = h.disk;
    const why =
      d.dbBytes !== undefined && d.quotaBytes !== undefined && d.dbBytes > d.quotaBytes
        ? `database ${fmtBytes(d.dbBytes)} over its quota of ${fmtBytes(d.quotaBytes)}`
        : d.backlogBytes !== undefined && d.budgetBytes !== undefined && d.backlogBytes > d.budgetBytes * 0.9
          ? `upload backlog ${fmtBytes(d.backlogBytes)} at its budget of ${fmtBytes(d.budgetBytes)}; reports refused`
          : d.usedBytes !== undefined && d.totalBytes
            ? `file system ${Math.round((d.usedBytes / d.totalBytes) * 100)}% used`
            : 'no room left';
    return { level: 2, reason: `disk full: ${why}` };
  }
  const critical = h.alerts.find((a) => a.severity === 'critical');
  if (critical) return { level: 2, reason: critical.text };
  const warning = h.alerts.find((a) => a.severity === 'warning');
  if (warning) return { level: 1, reason: warning.text };
  if ((h.oldestUnsentSeconds ?? 0) > BACKLOG_WARN_SECONDS)
    return {
      level: 1,
      reason: `uploads ${fmtDuration(h.oldestUnsentSeconds!)} behind (${backlogRecords.toLocaleString('en-US')} records waiting)`,
    };
  return { level: 0, reason: null };
}

/** SQL for a node's health; $1 is the grace after a missed promise, $2 the promise of a node that made none. */
const HEALTH_SQL = `CASE
  WHEN n.status = 'decommissioned' THEN 'retired'
  WHEN n.status = 'revoked' THEN 'revoked'
  WHEN n.last_seen IS NULL OR now() > coalesce(n.expect_by, n.last_seen + $2::interval) + $1::interval THEN 'stale'
  WHEN n.health_level = 2 THEN 'alert'
  WHEN n.health_level = 1 THEN 'warn'
  ELSE 'ok' END`;
const RANK_SQL = `array_position(ARRAY['retired','revoked','ok','warn','alert','stale'], health)`;
const BACKLOG_SQL = `coalesce((v.backlog->>'events')::bigint + (v.backlog->>'reports')::bigint + (v.backlog->>'samples')::bigint, 0)`;

export interface ListQuery {
  /** Health states to show; default every state but retired. */
  states?: Health[];
  /** Part of the name or of the problem, case-insensitive. */
  q?: string;
  sort?: 'health' | 'name' | 'contact' | 'backlog';
  page?: number;
  limit?: number;
}

export const SORTS = ['health', 'name', 'contact', 'backlog'] as const;
export const MAX_LIMIT = 1000;

export interface NodeRowView {
  name: string;
  status: string;
  health: Health;
  problem: string | null;
  lastSeen: Date | null;
  lastSeq: number;
  backlog: { events: number; reports: number; samples: number } | null;
  backlogRecords: number;
  oldestUnsentSeconds: number | null;
  appliedVersion: string | null;
  desiredVersion: string | null;
  frameAt: Date | null;
  expectBy: Date | null;
  statusAt: Date | null;
}

export interface ListResult {
  nodes: NodeRowView[];
  /** Nodes matching the search, per health state (the whole fleet when there is no search). */
  counts: Record<Health, number>;
  /** Nodes matching search and states. */
  total: number;
  page: number;
  limit: number;
}

export class NodeDirectory {
  constructor(
    private readonly pool: pg.Pool,
    /** How long past its promised contact a node turns stale. */
    private readonly graceSeconds: number,
    /** The promise assumed for a node that sent none (before health upload): one heartbeat. */
    private readonly defaultExpectSeconds = 60,
  ) {}

  private params(): string[] {
    return [`${this.graceSeconds} seconds`, `${this.defaultExpectSeconds} seconds`];
  }

  /** Parse and check list parameters from a query string; every defect is a 400. */
  static parseQuery(
    u: URLSearchParams,
    defaultLimit: number,
    defaultSort: ListQuery['sort'] & string,
  ): Required<ListQuery> {
    const one = (k: string) => {
      const all = u.getAll(k);
      if (all.length > 1) throw new InvalidArgument(`${k} given ${all.length} times`);
      return all[0];
    };
    const int = (k: string, min: number, max: number, dflt: number) => {
      const v = one(k);
      if (v === undefined || v === '') return dflt;
      if (!/^\d{1,9}$/.test(v) || Number(v) < min || Number(v) > max)
        throw new InvalidArgument(`${k} must be a whole number from ${min} to ${max}`);
      return Number(v);
    };
    const state = one('state') ?? '';
    let states: Health[];
    if (state === '' || state === 'active') states = ['stale', 'alert', 'warn', 'ok', 'revoked'];
    else if (state === 'problems') states = ['stale', 'alert', 'warn'];
    else if (state === 'all') states = [...HEALTH_STATES];
    else if ((HEALTH_STATES as readonly string[]).includes(state)) states = [state as Health];
    else throw new InvalidArgument(`state must be one of active, problems, all, ${HEALTH_STATES.join(', ')}`);
    const q = one('q') ?? '';
    if (q.length > 128) throw new InvalidArgument('q (search) is longer than 128 characters');
    const sort = one('sort') || defaultSort;
    if (!(SORTS as readonly string[]).includes(sort))
      throw new InvalidArgument(`sort must be one of ${SORTS.join(', ')}`);
    return {
      states,
      q,
      sort: sort as ListQuery['sort'] & string,
      page: int('page', 1, 1_000_000, 1),
      limit: int('limit', 1, MAX_LIMIT, defaultLimit),
    };
  }

  async list(query: Required<ListQuery>): Promise<ListResult> {
    const pattern = `%${query.q.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
    const base = `WITH v AS (
        SELECT n.*, ${HEALTH_SQL} AS health FROM fleet_nodes n
        WHERE ($3 = '' OR n.name ILIKE $4 OR n.health_reason ILIKE $4))`;
    const counts = await this.pool.query<{ health: Health; n: number }>(
      `${base} SELECT health, count(*)::int AS n FROM v GROUP BY health`,
      [...this.params(), query.q, pattern],
    );
    const c = Object.fromEntries(HEALTH_STATES.map((h) => [h, 0])) as Record<Health, number>;
    for (const r of counts.rows) c[r.health] = r.n;
    const total = query.states.reduce((sum, h) => sum + c[h], 0);
    const order = {
      health: `${RANK_SQL} DESC, v.name`,
      name: 'v.name',
      contact: 'v.last_seen ASC NULLS FIRST, v.name',
      backlog: `${BACKLOG_SQL} DESC, v.name`,
    }[query.sort];
    const r = await this.pool.query(
      `${base}
       SELECT v.*, d.version AS desired_version, f.updated_at AS frame_at
       FROM v LEFT JOIN fleet_desired d ON d.node_id = v.id LEFT JOIN fleet_frames f ON f.node_id = v.id
       WHERE v.health = ANY($5::text[])
       ORDER BY ${order} LIMIT $6 OFFSET $7`,
      [...this.params(), query.q, pattern, query.states, query.limit, (query.page - 1) * query.limit],
    );
    return { nodes: r.rows.map(view), counts: c, total, page: query.page, limit: query.limit };
  }

  /** One node with everything its page shows, or undefined. */
  async get(name: string): Promise<(NodeRowView & NodeDetail) | undefined> {
    const r = await this.pool.query(
      `WITH v AS (SELECT n.*, ${HEALTH_SQL} AS health FROM fleet_nodes n WHERE n.name = $3)
       SELECT v.*, d.version AS desired_version, d.keys AS desired_keys, d.updated_at AS desired_at,
              f.updated_at AS frame_at,
              (SELECT s.stream FROM fleet_streams s WHERE s.node_id = v.id ORDER BY s.id DESC LIMIT 1) AS stream
       FROM v LEFT JOIN fleet_desired d ON d.node_id = v.id LEFT JOIN fleet_frames f ON f.node_id = v.id`,
      [...this.params(), name],
    );
    const row = r.rows[0];
    if (!row) return undefined;
    return {
      ...view(row),
      id: row.id,
      summary: (row.health_summary ?? null) as HealthSummary | null,
      managedBy: row.managed_by,
      createdAt: row.created_at,
      tokenAt: row.token_at,
      refusedAt: row.refused_at,
      sentAt: row.sent_at,
      stream: row.stream ?? null,
      desiredKeys: row.desired_keys ?? null,
      desiredAt: row.desired_at ?? null,
    };
  }

  /** A node's latest events, newest first; `health` keeps node, alert, uplink and disk events. */
  async events(nodeId: number, limit: number, healthOnly: boolean): Promise<EventView[]> {
    const r = await this.pool.query(
      `SELECT ts_ms, ts, kind, subject, data FROM fleet_events WHERE node_id = $1
         ${healthOnly ? "AND (kind LIKE 'node.%' OR kind LIKE 'alert.%' OR kind LIKE 'uplink.%' OR kind LIKE 'disk.%')" : ''}
       ORDER BY ts_ms DESC LIMIT $2`,
      [nodeId, limit],
    );
    return r.rows.map((e) => ({
      tsMs: Number(e.ts_ms),
      ts: e.ts as Date | null,
      kind: e.kind as string,
      subject: e.subject as string | null,
      data: e.data as string | null,
    }));
  }

  /** How many nodes are in each health state (the receiver's /metrics). */
  async countByHealth(): Promise<{
    counts: Record<Health, number>;
    backlog: number;
    oldestUnsent: number;
    oldestContact: number;
  }> {
    const r = await this.pool.query<{
      health: Health;
      n: number;
      backlog: string;
      oldest: number;
      contact: number;
    }>(
      `WITH v AS (SELECT n.*, ${HEALTH_SQL} AS health FROM fleet_nodes n)
       SELECT health, count(*)::int AS n, sum(${BACKLOG_SQL})::text AS backlog,
              coalesce(max((v.health_summary->>'oldestUnsentSeconds')::float8), 0) AS oldest,
              coalesce(max(extract(epoch FROM now() - v.last_seen)), 0)::float8 AS contact
       FROM v GROUP BY health`,
      this.params(),
    );
    const counts = Object.fromEntries(HEALTH_STATES.map((h) => [h, 0])) as Record<Health, number>;
    let backlog = 0;
    let oldestUnsent = 0;
    let oldestContact = 0;
    for (const x of r.rows) {
      counts[x.health] = x.n;
      if (x.health === 'retired' || x.health === 'revoked') continue;
      backlog += Number(x.backlog ?? 0);
      oldestUnsent = Math.max(oldestUnsent, x.oldest);
      oldestContact = Math.max(oldestContact, x.contact);
    }
    return { counts, backlog, oldestUnsent, oldestContact };
  }

  // --- lifecycle -------------------------------------------------------------------------------

  /** A new node with a fresh token (or the given one); refused when the name exists. */
  async add(name: string, token = newToken()): Promise<{ name: string; token: string }> {
    checkName(name);
    checkToken(token);
    const r = await this.pool.query(
      `INSERT INTO fleet_nodes (name, token_hash, managed_by, token_at, status_at)
       VALUES ($1, $2, 'api', now(), now()) ON CONFLICT (name) DO NOTHING RETURNING id`,
      [name, sha256(token)],
    );
    if (r.rowCount === 0)
      throw new FleetNodeStateError(`node ${name} exists already; rotate its token instead`);
    return { name, token };
  }

  /** A new token; the old one is refused from now on. A revoked node becomes active again. */
  async rotate(name: string): Promise<{ name: string; token: string }> {
    checkName(name);
    const token = newToken();
    const r = await this.pool.query<{ status: string }>(
      `UPDATE fleet_nodes SET token_hash = $2, token_at = now(), managed_by = 'api',
         status_at = CASE WHEN status = 'active' THEN status_at ELSE now() END, status = 'active'
       WHERE name = $1 AND status <> 'decommissioned' RETURNING status`,
      [name, sha256(token)],
    );
    if (r.rowCount === 0) await this.refuse(name, 'rotate the token of');
    return { name, token };
  }

  /** Refuse the node's token at once; its data stays. Idempotent. */
  async revoke(name: string): Promise<{ name: string; status: string }> {
    checkName(name);
    const r = await this.pool.query(
      `UPDATE fleet_nodes SET status = 'revoked', status_at = CASE WHEN status = 'revoked' THEN status_at ELSE now() END,
         managed_by = 'api'
       WHERE name = $1 AND status <> 'decommissioned'`,
      [name],
    );
    if (r.rowCount === 0) await this.refuse(name, 'revoke');
    return { name, status: 'revoked' };
  }

  /** The node is gone for good: token dropped, hidden from the list, data kept. Idempotent. */
  async decommission(name: string): Promise<{ name: string; status: string }> {
    checkName(name);
    const r = await this.pool.query(
      `UPDATE fleet_nodes SET status = 'decommissioned', token_hash = NULL, managed_by = 'api',
         status_at = CASE WHEN status = 'decommissioned' THEN status_at ELSE now() END
       WHERE name = $1`,
      [name],
    );
    if (r.rowCount === 0) throw new NotFound(`node ${name}`);
    return { name, status: 'decommissioned' };
  }

  private async refuse(name: string, action: string): Promise<never> {
    const r = await this.pool.query<{ status: string }>('SELECT status FROM fleet_nodes WHERE name = $1', [
      name,
    ]);
    if (!r.rows[0]) throw new NotFound(`node ${name}`);
    throw new FleetNodeStateError(`cannot ${action} node ${name}: it is ${r.rows[0].status}`);
  }

  /**
   * Nodes from --node and --nodes-file. They are added or get the token given; a node changed
   * through the admin API since (rotated, revoked, decommissioned) is left as it is. With
   * `authoritative` (a nodes file), nodes the file added earlier and no longer lists are revoked.
   */
  async applyNodesFile(
    nodes: Record<string, string>,
    authoritative: boolean,
  ): Promise<{ ignored: string[]; revoked: string[] }> {
    const ignored: string[] = [];
    for (const [name, token] of Object.entries(nodes)) {
      checkName(name);
      checkToken(token, 1);
      const r = await this.pool.query(
        `INSERT INTO fleet_nodes (name, token_hash, managed_by, token_at, status_at) VALUES ($1, $2, 'file', now(), now())
         ON CONFLICT (name) DO UPDATE SET token_hash = EXCLUDED.token_hash,
           token_at = CASE WHEN fleet_nodes.token_hash IS DISTINCT FROM EXCLUDED.token_hash THEN now() ELSE fleet_nodes.token_at END
         WHERE fleet_nodes.managed_by = 'file' AND fleet_nodes.status = 'active'`,
        [name, sha256(token)],
      );
      if (r.rowCount === 0) ignored.push(name);
    }
    let revoked: string[] = [];
    if (authoritative) {
      const r = await this.pool.query<{ name: string }>(
        `UPDATE fleet_nodes SET status = 'revoked', status_at = now()
         WHERE managed_by = 'file' AND status = 'active' AND NOT (name = ANY($1::text[])) RETURNING name`,
        [Object.keys(nodes)],
      );
      revoked = r.rows.map((x) => x.name).sort();
    }
    return { ignored: ignored.sort(), revoked };
  }
}

/**
 * Control characters and spaces cannot travel in a header. A token chosen through the API must
 * be long enough not to be guessed; the nodes file keeps what older receivers accepted.
 */
function checkToken(token: string, min = 16): void {
  if (token.length < min || token.length > 512 || !/^[!-~]+$/.test(token))
    throw new InvalidArgument(`a node token must be ${min}-512 printable ASCII characters without spaces`);
}

export interface NodeDetail {
  id: number;
  summary: HealthSummary | null;
  managedBy: string;
  createdAt: Date;
  tokenAt: Date | null;
  refusedAt: Date | null;
  sentAt: Date | null;
  stream: string | null;
  desiredKeys: Record<string, unknown> | null;
  desiredAt: Date | null;
}

export interface EventView {
  tsMs: number;
  ts: Date | null;
  kind: string;
  subject: string | null;
  data: string | null;
}

function view(n: Record<string, unknown>): NodeRowView {
  const backlog = n.backlog as NodeRowView['backlog'];
  const records = backlog ? backlog.events + backlog.reports + backlog.samples : 0;
  const summary = n.health_summary as HealthSummary | null;
  const health = n.health as Health;
  return {
    name: n.name as string,
    status: n.status as string,
    health,
    problem: problem(health, n),
    lastSeen: (n.last_seen as Date | null) ?? null,
    lastSeq: Number(n.last_seq),
    backlog,
    backlogRecords: records,
    oldestUnsentSeconds: summary?.oldestUnsentSeconds ?? null,
    appliedVersion: (n.applied_version as string | null) ?? null,
    desiredVersion:
      n.desired_version === null || n.desired_version === undefined ? null : String(n.desired_version),
    frameAt: (n.frame_at as Date | null) ?? null,
    expectBy: (n.expect_by as Date | null) ?? null,
    statusAt: (n.status_at as Date | null) ?? null,
  };
}

function problem(health: Health, n: Record<string, unknown>): string | null {
  const reason = (n.health_reason as string | null) ?? null;
  if (health === 'retired') return 'decommissioned';
  if (health === 'revoked') return n.refused_at ? 'revoked; still tries to upload' : 'revoked';
  if (health === 'stale') {
    const seen = n.last_seen as Date | null;
    if (!seen) return 'never contacted';
    const ago = `no contact for ${fmtDuration((Date.now() - seen.getTime()) / 1000)}`;
    return reason ? `${ago}; last known: ${reason}` : ago;
  }
  return reason;
}
