import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { createLogger } from '../log.js';
import type { CliCommand } from '../part.js';
import type { FleetServer } from './receiver/server.js';

const FLEET_USAGE = `Usage: edgekeeper fleet-server --database postgres://USER@HOST:PORT/DB [options]

Runs the reference fleet receiver: nodes upload batches to it, it stores them in PostgreSQL
(once, by idempotency key), serves desired state per node and a page listing the nodes.
Several receivers may share one database behind a load balancer.

Options:
  --database URL        PostgreSQL connection string (or EDGEKEEPER_FLEET_DATABASE)
  --listen HOST:PORT    where to listen (default 127.0.0.1:9490)
  --node NAME=TOKEN     register a node and its bearer token (repeatable; stored hashed)
  --nodes-file FILE     NAME=TOKEN lines, same as --node
  --admin-token TOKEN   token for the node list, the page, frames and changing desired state
                        (or EDGEKEEPER_FLEET_ADMIN_TOKEN); without it desired state is read-only
  --tls-cert FILE --tls-key FILE   serve HTTPS
  --client-ca FILE      accept node client certificates signed by this CA (CN = node name)
  --max-batch BYTES     largest compressed batch (default 16 MiB)

Desired state: PUT /v1/nodes/NAME/desired with {"keys": {"name": value}} and the admin token.`;

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
    try {
      const { host, port } = parseHostPort(v.listen as string);
      const nodes = {
        ...(v['nodes-file']
          ? parseNodes(readFileSync(v['nodes-file'] as string, 'utf8').split('\n'), v['nodes-file'] as string)
          : {}),
        ...parseNodes((v.node as string[] | undefined) ?? [], '--node'),
      };
      if ((v['tls-cert'] === undefined) !== (v['tls-key'] === undefined))
        throw new Error('--tls-cert and --tls-key go together');
      server = await (await import('./receiver/server.js')).startFleetServer({
        database,
        host,
        port,
        nodes,
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
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
    await server.close();
    return 0;
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
