import { readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { type CliCommand, DEFAULT_HTTP, daemonJson, defineCommand, io, output } from '../cli.js';
import { EdgeError, UnreachableError, UsageError } from '../errors.js';
import { createLogger } from '../log.js';
import type { FleetServer } from './receiver/server.js';

const FLEET_USAGE = `Usage: edgekeeper fleet-server --database postgres://USER@HOST:PORT/DB [options]

Runs the reference fleet receiver: nodes upload batches to it, it stores them in PostgreSQL
(once, by idempotency key), serves desired state per node, the fleet pages (/, log in with the
admin token) and /metrics. Several receivers may share one database behind a load balancer.

Options:
  --database URL        PostgreSQL connection string (or EDGEKEEPER_FLEET_DATABASE)
  --listen HOST:PORT    where to listen (default 127.0.0.1:9490)
  --node NAME=TOKEN     register a node and its bearer token (repeatable; stored hashed)
  --nodes-file FILE     NAME=TOKEN lines, same as --node; nodes it added and no longer lists are
                        revoked; read again on SIGHUP
  --admin-token TOKEN   token for the fleet pages and the admin API (or
                        EDGEKEEPER_FLEET_ADMIN_TOKEN); without it everything is read-only
  --stale-after SECONDS a node is STALE this long after the contact it promised (default 120)
  --tls-cert FILE --tls-key FILE   serve HTTPS
  --client-ca FILE      accept node client certificates signed by this CA (CN = node name)
  --max-batch BYTES     largest compressed batch (default 16 MiB)

Desired state: PUT /v1/nodes/NAME/desired with {"keys": {"name": value}} and the admin token.
Nodes changed with \`edgekeeper fleet-node\` (rotate, revoke, decommission) are no longer
touched by --node or the nodes file.`;

function parseHostPort(s: string): { host: string; port: number } {
  const i = s.lastIndexOf(':');
  const port = Number(s.slice(i + 1));
  if (i < 0 || !/^\d{1,5}$/.test(s.slice(i + 1)) || port > 65535)
    throw new UsageError(`--listen must be HOST:PORT, got ${JSON.stringify(s)}`);
  return { host: s.slice(0, i).replace(/^\[|\]$/g, ''), port };
}

function parseNodes(lines: string[], where: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of lines) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const i = line.indexOf('=');
    if (i <= 0 || i === line.length - 1)
      throw new UsageError(`${where}: expected NAME=TOKEN, got ${JSON.stringify(line.slice(0, 80))}`);
    out[line.slice(0, i)] = line.slice(i + 1);
  }
  return out;
}

export const fleetServerCommand: CliCommand = defineCommand({
  name: 'fleet-server',
  summary: 'Run the reference fleet receiver (PostgreSQL) that nodes upload to',
  usage: FLEET_USAGE,
  options: {
    database: { type: 'string', value: 'URL', env: 'EDGEKEEPER_FLEET_DATABASE' },
    listen: { type: 'string', value: 'HOST:PORT', default: '127.0.0.1:9490' },
    node: { type: 'string', value: 'NAME=TOKEN', multiple: true },
    'nodes-file': { type: 'string', value: 'FILE' },
    'admin-token': { type: 'string', value: 'TOKEN', env: 'EDGEKEEPER_FLEET_ADMIN_TOKEN' },
    'tls-cert': { type: 'string', value: 'FILE' },
    'tls-key': { type: 'string', value: 'FILE' },
    'client-ca': { type: 'string', value: 'FILE' },
    'max-batch': { type: 'string', value: 'BYTES' },
    'stale-after': { type: 'string', value: 'SECONDS' },
  },
  async main({ values: v }) {
    const database = v.database as string | undefined;
    if (!database) throw new UsageError('--database is required (or EDGEKEEPER_FLEET_DATABASE)');
    const file = v['nodes-file'] as string | undefined;
    const readNodes = () => ({
      ...(file ? parseNodes(readFileSync(file, 'utf8').split('\n'), file) : {}),
      ...parseNodes((v.node as string[] | undefined) ?? [], '--node'),
    });
    const { host, port } = parseHostPort(v.listen as string);
    const nodes = readNodes();
    const staleAfter = v['stale-after'] === undefined ? undefined : Number(v['stale-after']);
    if (staleAfter !== undefined && !(Number.isInteger(staleAfter) && staleAfter >= 0))
      throw new UsageError(
        `--stale-after must be a whole number of seconds, got ${JSON.stringify(v['stale-after'])}`,
      );
    const maxBatch = v['max-batch'] === undefined ? undefined : Number(v['max-batch']);
    if (maxBatch !== undefined && !(Number.isInteger(maxBatch) && maxBatch > 0))
      throw new UsageError(`--max-batch must be a number of bytes, got ${JSON.stringify(v['max-batch'])}`);
    if ((v['tls-cert'] === undefined) !== (v['tls-key'] === undefined))
      throw new UsageError('--tls-cert and --tls-key go together');
    const server: FleetServer = await (await import('./receiver/server.js')).startFleetServer({
      database,
      host,
      port,
      nodes,
      nodesAuthoritative: file !== undefined,
      staleAfterSeconds: staleAfter,
      adminToken: v['admin-token'] as string | undefined,
      maxBatchBytes: maxBatch,
      tls: v['tls-cert']
        ? {
            cert: v['tls-cert'] as string,
            key: v['tls-key'] as string,
            clientCa: v['client-ca'] as string | undefined,
          }
        : undefined,
      logger: createLogger(),
    });
    io.out(`fleet-server listening on ${server.url}\n`);
    const reload = () => {
      let list: Record<string, string>;
      try {
        list = readNodes();
      } catch (err) {
        io.err(`SIGHUP: nodes file not read, nothing changed: ${(err as Error).message}\n`);
        return;
      }
      server.applyNodes(list, file !== undefined).then(
        (r) => io.out(`nodes file applied: ${r.revoked.length} revoked, ${r.ignored.length} ignored\n`),
        (err: unknown) => io.err(`SIGHUP: nodes file not applied: ${(err as Error).message}\n`),
      );
    };
    process.on('SIGHUP', reload);
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
    process.off('SIGHUP', reload);
    await server.close();
    return 0;
  },
});

const NODE_USAGE = `Usage: edgekeeper fleet-node add|rotate|revoke|decommission NAME [options]
       edgekeeper fleet-node list [--state STATE] [-w table|simple|json]

Manages the nodes of a fleet server through its admin API.
  add NAME           register a node; prints its new token (once) on stdout
  rotate NAME        a new token; the old one is refused at once (also reinstates a revoked node)
  revoke NAME        refuse the node's token at once (a stolen or lost node); its data stays
  decommission NAME  the node is gone for good: token dropped, hidden from the list, data kept
  list               nodes worst first: health, name, last contact, problem

Options:
  --server URL        the fleet server (default http://127.0.0.1:9490, or EDGEKEEPER_FLEET_URL)
  --admin-token TOKEN (or EDGEKEEPER_FLEET_ADMIN_TOKEN)
  --token TOKEN       add: this token instead of a random one (16+ printable characters)
  --ca FILE           CA bundle to trust for an https server
  --state STATE       list: active (default), problems, all, stale, alert, warn, ok, revoked, retired
  -w, --write-out     table (default), simple or json (the server's answer; --json is -w json)`;

/** One admin API call; resolves with the status and the parsed JSON body. */
function adminCall(
  server: string,
  token: string,
  method: string,
  path: string,
  body: unknown,
  ca: string | undefined,
): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const url = new URL(path, server);
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(
      url,
      {
        method,
        ...(ca ? { ca: readFileSync(ca) } : {}),
        headers: {
          Authorization: `Bearer ${token}`,
          ...(data ? { 'Content-Type': 'application/json', 'Content-Length': data.length } : {}),
        },
        timeout: 30_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          try {
            resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown> });
          } catch {
            reject(new Error(`the server answered ${res.statusCode} with no JSON: ${text.slice(0, 200)}`));
          }
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('no answer within 30 s')));
    req.on('error', reject);
    req.end(data);
  });
}

export const fleetNodeCommand: CliCommand = defineCommand({
  name: 'fleet-node',
  summary: 'Add, rotate, revoke, decommission or list the nodes of a fleet server',
  usage: NODE_USAGE,
  subcommands: { add: [1, 1], rotate: [1, 1], revoke: [1, 1], decommission: [1, 1], list: [0, 0] },
  options: {
    server: { type: 'string', value: 'URL', env: 'EDGEKEEPER_FLEET_URL', default: 'http://127.0.0.1:9490' },
    'admin-token': { type: 'string', value: 'TOKEN', env: 'EDGEKEEPER_FLEET_ADMIN_TOKEN' },
    token: { type: 'string', value: 'TOKEN' },
    ca: { type: 'string', value: 'FILE' },
    state: {
      type: 'string',
      value: 'STATE',
      choices: ['active', 'problems', 'all', 'stale', 'alert', 'warn', 'ok', 'revoked', 'retired'],
      default: 'active',
    },
  },
  formats: ['simple', 'table', 'json'],
  defaultFormat: (sub) => (sub === 'list' ? 'table' : 'simple'),
  async main({ values: v, sub, args, format }) {
    const token = v['admin-token'] as string | undefined;
    if (!token) throw new UsageError('--admin-token (or EDGEKEEPER_FLEET_ADMIN_TOKEN) is required');
    const server = v.server as string;
    const name = args[0];
    const ca = v.ca as string | undefined;
    let r: { status: number; body: Record<string, unknown> };
    try {
      const node = encodeURIComponent(name ?? '');
      r =
        sub === 'list'
          ? await adminCall(
              server,
              token,
              'GET',
              `/v1/nodes?sort=health&state=${encodeURIComponent(v.state as string)}`,
              undefined,
              ca,
            )
          : sub === 'add'
            ? await adminCall(
                server,
                token,
                'POST',
                '/v1/nodes',
                { name, ...(v.token ? { token: v.token } : {}) },
                ca,
              )
            : await adminCall(server, token, 'POST', `/v1/nodes/${node}/${sub}`, undefined, ca);
    } catch (err) {
      if (err instanceof EdgeError || (err as NodeJS.ErrnoException).code === 'ENOENT') throw err;
      throw new UnreachableError(server, (err as Error).message, { cause: err });
    }
    if (r.status >= 300) {
      const code = String(r.body.code ?? '');
      throw new EdgeError(
        code.startsWith('EDGE_ERR_') ? code : 'EDGE_ERR_INTERNAL',
        String(r.body.message ?? `HTTP ${r.status}`),
        r.status,
      );
    }
    if (sub === 'list') {
      const rows = r.body.nodes as {
        name: string;
        health: string;
        lastSeen: string | null;
        problem: string | null;
      }[];
      output(format, {
        json: r.body,
        table: rows.map((n) => ({
          health: n.health.toUpperCase(),
          node: n.name,
          lastContact: n.lastSeen ?? 'never',
          problem: n.problem ?? '',
        })),
        simple: () =>
          rows.map((n) => `${n.health} ${n.name} ${n.lastSeen ?? 'never'} ${n.problem ?? ''}`.trimEnd()),
      });
      if ((r.body.total as number) > rows.length)
        io.err(`(${rows.length} of ${String(r.body.total)} nodes shown)\n`);
    } else if (r.body.token) {
      // The token alone on stdout, so TOKEN=$(edgekeeper fleet-node add NAME) works.
      output(format, { json: r.body, simple: () => String(r.body.token) });
      if (format !== 'json') io.err(`token of ${name} shown once: put it in the node's sync.tokenFile\n`);
    } else output(format, { json: r.body, simple: () => `${name}: ${String(r.body.status)}` });
    return 0;
  },
});

const SYNC_USAGE = `Usage: edgekeeper sync status [--http HOST:PORT] [-w simple|table|json]

Shows the uplink of a running node: state (ok, retrying, offline, disabled), records waiting per
table, oldest unsent age, last successful upload, applied desired-state version, records dropped.`;

export const syncCommand: CliCommand = defineCommand({
  name: 'sync',
  summary: 'Show the fleet uplink status of a running node (sync status)',
  usage: SYNC_USAGE,
  subcommands: { status: [0, 0] },
  options: { http: { type: 'string', value: 'HOST:PORT', default: DEFAULT_HTTP } },
  formats: ['simple', 'table', 'json'],
  async main({ values, format }) {
    const { status, body: s } = await daemonJson<Record<string, unknown>>(
      values.http as string,
      'GET',
      '/v1/sync/status',
    );
    if (status === 404)
      throw new EdgeError('EDGE_ERR_NOT_FOUND', 'the daemon has no uplink status (/v1/sync/status)', 404);
    const b = s.backlog as Record<string, number>;
    output(format, {
      json: s,
      simple: () => [
        `state:            ${String(s.state)}`,
        `backlog:          events ${b.events}, reports ${b.reports}, samples ${b.samples} (${String(s.backlogBytes)} bytes)`,
        `oldest unsent:    ${s.oldestUnsentAgeSeconds === null ? '-' : `${Math.round(s.oldestUnsentAgeSeconds as number)} s`}`,
        `last success:     ${String(s.lastSuccess ?? 'never')}`,
        `last error:       ${String(s.lastError ?? '-')}`,
        `batch seq:        ${String(s.seq)}`,
        `desired version:  ${String(s.desiredVersion ?? '-')}`,
        `reports admitted: ${s.admittingReports ? 'yes' : 'NO (disk budget full, stop-ack)'}`,
        `records dropped:  ${String(s.droppedRecords)}`,
      ],
    });
    return 0;
  },
});
