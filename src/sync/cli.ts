import { readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { parseArgs } from 'node:util';
import { createLogger } from '../log.js';
import type { CliCommand } from '../part.js';
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
  if (i < 0 || !Number.isInteger(port) || port < 0 || port > 65535)
    throw new Error(`--listen must be HOST:PORT, got ${s}`);
  return { host: s.slice(0, i).replace(/^\[|\]$/g, ''), port };
}

function parseNodes(lines: string[], where: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of lines) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const i = line.indexOf('=');
    if (i <= 0 || i === line.length - 1)
      throw new Error(`${where}: expected NAME=TOKEN, got ${JSON.stringify(line)}`);
    out[line.slice(0, i)] = line.slice(i + 1);
  }
  return out;
}

export const fleetServerCommand: CliCommand = {
  name: 'fleet-server',
  summary: 'Run the reference fleet receiver (PostgreSQL) that nodes upload to',
  usage: FLEET_USAGE,
  async run(args) {
    let v: Record<string, string | string[] | boolean | undefined>;
    try {
      v = parseArgs({
        args,
        options: {
          database: { type: 'string' },
          listen: { type: 'string', default: '127.0.0.1:9490' },
          node: { type: 'string', multiple: true },
          'nodes-file': { type: 'string' },
          'admin-token': { type: 'string' },
          'tls-cert': { type: 'string' },
          'tls-key': { type: 'string' },
          'client-ca': { type: 'string' },
          'max-batch': { type: 'string' },
          'stale-after': { type: 'string' },
          help: { type: 'boolean', short: 'h' },
        },
      }).values;
    } catch (err) {
      process.stderr.write(`${(err as Error).message}\n\n${FLEET_USAGE}\n`);
      return 2;
    }
    if (v.help) {
      process.stdout.write(`${FLEET_USAGE}\n`);
      return 0;
    }
    const database = (v.database as string | undefined) ?? process.env.EDGEKEEPER_FLEET_DATABASE;
    if (!database) {
      process.stderr.write(`--database is required\n\n${FLEET_USAGE}\n`);
      return 2;
    }
    let server: FleetServer;
    const file = v['nodes-file'] as string | undefined;
    const readNodes = () => ({
      ...(file ? parseNodes(readFileSync(file, 'utf8').split('\n'), file) : {}),
      ...parseNodes((v.node as string[] | undefined) ?? [], '--node'),
    });
    try {
      const { host, port } = parseHostPort(v.listen as string);
      const nodes = readNodes();
      const staleAfter = v['stale-after'] === undefined ? undefined : Number(v['stale-after']);
      if (staleAfter !== undefined && !(Number.isInteger(staleAfter) && staleAfter >= 0))
        throw new Error(`--stale-after must be a whole number of seconds, got ${String(v['stale-after'])}`);
      if ((v['tls-cert'] === undefined) !== (v['tls-key'] === undefined))
        throw new Error('--tls-cert and --tls-key go together');
      server = await (await import('./receiver/server.js')).startFleetServer({
        database,
        host,
        port,
        nodes,
        nodesAuthoritative: file !== undefined,
        staleAfterSeconds: staleAfter,
        adminToken: (v['admin-token'] as string | undefined) ?? process.env.EDGEKEEPER_FLEET_ADMIN_TOKEN,
        maxBatchBytes: v['max-batch'] ? Number(v['max-batch']) : undefined,
        tls: v['tls-cert']
          ? {
              cert: v['tls-cert'] as string,
              key: v['tls-key'] as string,
              clientCa: v['client-ca'] as string | undefined,
            }
          : undefined,
        logger: createLogger(),
      });
    } catch (err) {
      process.stderr.write(`fleet-server could not start: ${(err as Error).message}\n`);
      return 1;
    }
    process.stdout.write(`fleet-server listening on ${server.url}\n`);
    const reload = () => {
      let list: Record<string, string>;
      try {
        list = readNodes();
      } catch (err) {
        process.stderr.write(`SIGHUP: nodes file not read, nothing changed: ${(err as Error).message}\n`);
        return;
      }
      server.applyNodes(list, file !== undefined).then(
        (r) =>
          process.stdout.write(
            `nodes file applied: ${r.revoked.length} revoked, ${r.ignored.length} ignored\n`,
          ),
        (err: unknown) => process.stderr.write(`SIGHUP: nodes file not applied: ${(err as Error).message}\n`),
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
};

const NODE_USAGE = `Usage: edgekeeper fleet-node add|rotate|revoke|decommission NAME [options]
       edgekeeper fleet-node list [--state STATE] [--json]

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
  --json              print the server's JSON answer`;

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

export const fleetNodeCommand: CliCommand = {
  name: 'fleet-node',
  summary: 'Add, rotate, revoke, decommission or list the nodes of a fleet server',
  usage: NODE_USAGE,
  async run(args) {
    let v: Record<string, string | boolean | undefined>;
    let pos: string[];
    try {
      const parsed = parseArgs({
        args,
        allowPositionals: true,
        options: {
          server: { type: 'string' },
          'admin-token': { type: 'string' },
          token: { type: 'string' },
          ca: { type: 'string' },
          state: { type: 'string' },
          json: { type: 'boolean' },
          help: { type: 'boolean', short: 'h' },
        },
      });
      v = parsed.values;
      pos = parsed.positionals;
    } catch (err) {
      process.stderr.write(`${(err as Error).message}\n\n${NODE_USAGE}\n`);
      return 2;
    }
    if (v.help) {
      process.stdout.write(`${NODE_USAGE}\n`);
      return 0;
    }
    const [action, name, ...rest] = pos;
    const needsName = ['add', 'rotate', 'revoke', 'decommission'].includes(action ?? '');
    if (
      !(needsName || action === 'list') ||
      (needsName && !name) ||
      (action === 'list' && name) ||
      rest.length
    ) {
      process.stderr.write(`${NODE_USAGE}\n`);
      return 2;
    }
    const token = (v['admin-token'] as string | undefined) ?? process.env.EDGEKEEPER_FLEET_ADMIN_TOKEN;
    if (!token) {
      process.stderr.write('--admin-token (or EDGEKEEPER_FLEET_ADMIN_TOKEN) is required\n');
      return 2;
    }
    const server =
      (v.server as string | undefined) ?? process.env.EDGEKEEPER_FLEET_URL ?? 'http://127.0.0.1:9490';
    const ca = v.ca as string | undefined;
    try {
      const node = encodeURIComponent(name ?? '');
      const r =
        action === 'list'
          ? await adminCall(
              server,
              token,
              'GET',
              `/v1/nodes?sort=health&state=${encodeURIComponent((v.state as string | undefined) ?? 'active')}`,
              undefined,
              ca,
            )
          : action === 'add'
            ? await adminCall(
                server,
                token,
                'POST',
                '/v1/nodes',
                { name, ...(v.token ? { token: v.token } : {}) },
                ca,
              )
            : await adminCall(server, token, 'POST', `/v1/nodes/${node}/${action}`, undefined, ca);
      if (r.status >= 300) {
        process.stderr.write(`${String(r.body.code ?? r.status)}: ${String(r.body.message ?? '')}\n`);
        return 1;
      }
      if (v.json) process.stdout.write(`${JSON.stringify(r.body, null, 2)}\n`);
      else if (action === 'list') {
        const rows = r.body.nodes as {
          name: string;
          health: string;
          lastSeen: string | null;
          problem: string | null;
        }[];
        const lines = rows.map(
          (n) =>
            `${n.health.toUpperCase().padEnd(8)} ${n.name.padEnd(24)} ${(n.lastSeen ?? 'never').padEnd(24)} ${n.problem ?? ''}`,
        );
        process.stdout.write(
          `${['HEALTH   NODE                     LAST CONTACT             PROBLEM', ...lines].join('\n')}\n`,
        );
        if ((r.body.total as number) > rows.length)
          process.stderr.write(`(${rows.length} of ${String(r.body.total)} nodes shown)\n`);
      } else if (r.body.token) {
        // The token alone on stdout, so TOKEN=$(edgekeeper fleet-node add NAME) works.
        process.stdout.write(`${String(r.body.token)}\n`);
        process.stderr.write(`token of ${name} shown once: put it in the node's sync.tokenFile\n`);
      } else process.stdout.write(`${name}: ${String(r.body.status)}\n`);
      return 0;
    } catch (err) {
      process.stderr.write(`cannot reach the fleet server at ${server}: ${(err as Error).message}\n`);
      return 1;
    }
  },
};

const SYNC_USAGE = `Usage: edgekeeper sync status [--http HOST:PORT]

Shows the uplink of a running node: state (ok, retrying, offline, disabled), records waiting per
table, oldest unsent age, last successful upload, applied desired-state version, records dropped.`;

export const syncCommand: CliCommand = {
  name: 'sync',
  summary: 'Show the fleet uplink status of a running node (sync status)',
  usage: SYNC_USAGE,
  async run(args) {
    let v: Record<string, string | boolean | undefined>;
    let positionals: string[];
    try {
      const parsed = parseArgs({
        args,
        allowPositionals: true,
        options: {
          http: { type: 'string', default: '127.0.0.1:9480' },
          json: { type: 'boolean' },
          help: { type: 'boolean', short: 'h' },
        },
      });
      v = parsed.values;
      positionals = parsed.positionals;
    } catch (err) {
      process.stderr.write(`${(err as Error).message}\n\n${SYNC_USAGE}\n`);
      return 2;
    }
    if (v.help) {
      process.stdout.write(`${SYNC_USAGE}\n`);
      return 0;
    }
    if (positionals[0] !== 'status') {
      process.stderr.write(`${SYNC_USAGE}\n`);
      return 2;
    }
    try {
      const res = await fetch(`http://${v.http as string}/v1/sync/status`);
      if (!res.ok) throw new Error(`the daemon answered ${res.status}`);
      const s = (await res.json()) as Record<string, unknown>;
      if (v.json) {
        process.stdout.write(`${JSON.stringify(s, null, 2)}\n`);
        return 0;
      }
      const b = s.backlog as Record<string, number>;
      process.stdout.write(
        [
          `state:            ${String(s.state)}`,
          `backlog:          events ${b.events}, reports ${b.reports}, samples ${b.samples} (${String(s.backlogBytes)} bytes)`,
          `oldest unsent:    ${s.oldestUnsentAgeSeconds === null ? '-' : `${Math.round(s.oldestUnsentAgeSeconds as number)} s`}`,
          `last success:     ${String(s.lastSuccess ?? 'never')}`,
          `last error:       ${String(s.lastError ?? '-')}`,
          `batch seq:        ${String(s.seq)}`,
          `desired version:  ${String(s.desiredVersion ?? '-')}`,
          `reports admitted: ${s.admittingReports ? 'yes' : 'NO (disk budget full, stop-ack)'}`,
          `records dropped:  ${String(s.droppedRecords)}`,
        ].join('\n') + '\n',
      );
      return 0;
    } catch (err) {
      process.stderr.write(`cannot reach the daemon at ${v.http as string}: ${(err as Error).message}\n`);
      return 1;
    }
  },
};
