/**
 * `edgekeeper kv|lease|lock|elect|endpoint`: a small etcd client for users without etcdctl. It
 * speaks the same gRPC API as etcdctl (our own protos), so it also works against real etcd.
 * `--endpoints` defaults to $ETCDCTL_ENDPOINTS, then 127.0.0.1:2379, as etcdctl's does.
 */
import { spawn } from 'node:child_process';
import {
  type Client,
  type ClientDuplexStream,
  type ClientReadableStream,
  credentials,
  makeClientConstructor,
  Metadata,
  type ServiceError,
} from '@grpc/grpc-js';
import { type CliCommand, type CliOption, defineCommand, io, type OutputFormat, output } from '../cli.js';
import { EdgeError, EtcdRemoteError, FileError, UnreachableError, UsageError } from '../errors.js';
import { CODE_NAMES, Code, ETCD_MESSAGES } from './errors.js';
import { big, buf, type Decoded, hexId, long, num, serviceDefinition } from './proto.js';

// biome-ignore lint/suspicious/noExplicitAny: decoded wire messages are dynamically shaped
type M = Decoded & Record<string, any>;

const DEFAULT_ENDPOINT = '127.0.0.1:2379';
/** etcdctl's session TTL for lock and elect. */
const SESSION_TTL = 60;

type Unary = (
  req: object,
  md: Metadata,
  opts: object,
  cb: (err: ServiceError | null, res: M) => void,
) => void;

export class EtcdClient {
  private readonly clients: Record<string, Client> = {};
  constructor(readonly endpoint: string) {}

  private client(service: string): Client & Record<string, unknown> {
    let c = this.clients[service];
    if (!c) {
      const Ctor = makeClientConstructor(serviceDefinition(service), service);
      const target = this.endpoint.startsWith('unix://')
        ? `unix:${this.endpoint.slice(7)}`
        : this.endpoint.replace(/^https?:\/\//, '');
      c = new Ctor(target, credentials.createInsecure(), { 'grpc.max_receive_message_length': -1 });
      this.clients[service] = c;
    }
    return c as Client & Record<string, unknown>;
  }

  call(service: string, method: string, req: object, deadlineMs = 10_000): Promise<M> {
    const c = this.client(service);
    const fn = c[method] as Unary;
    return new Promise((resolve, reject) => {
      const opts = deadlineMs > 0 ? { deadline: Date.now() + deadlineMs } : {};
      fn.call(c, req, new Metadata(), opts, (err, res) => (err ? reject(err) : resolve(res)));
    });
  }

  duplex(service: string, method: string): ClientDuplexStream<object, M> {
    const c = this.client(service);
    return (c[method] as (md: Metadata) => ClientDuplexStream<object, M>).call(c, new Metadata());
  }

  serverStream(service: string, method: string, req: object): ClientReadableStream<M> {
    const c = this.client(service);
    return (c[method] as (r: object, md: Metadata) => ClientReadableStream<M>).call(c, req, new Metadata());
  }

  close(): void {
    for (const c of Object.values(this.clients)) c.close();
  }
}

/** The key just after every key with this prefix (etcd's GetPrefixRangeEnd). */
export function prefixRangeEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]!++;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}

function rangeEndFor(
  key: Buffer,
  explicit: string | undefined,
  prefix: boolean,
  fromKey: boolean,
): Buffer | undefined {
  if (explicit !== undefined) return Buffer.from(explicit);
  if (prefix) return key.length === 0 ? Buffer.from([0]) : prefixRangeEnd(key);
  if (fromKey) return Buffer.from([0]);
  return undefined;
}

const ENDPOINTS: CliOption = {
  type: 'string',
  value: 'HOST:PORT',
  env: 'ETCDCTL_ENDPOINTS',
  default: DEFAULT_ENDPOINT,
};
const ALL_FORMATS: readonly OutputFormat[] = ['simple', 'table', 'json'];
/** Streams (watch, keep-alive, observe) print as they go: a line, or a JSON document, per message. */
const STREAM_FORMATS: readonly OutputFormat[] = ['simple', 'json'];

/** etcdctl takes a comma-separated list; this client talks to the first. */
function endpointOf(v: unknown): string {
  return String(v ?? DEFAULT_ENDPOINT)
    .split(',')[0]!
    .trim();
}

/** etcd's own error texts, back to edgekeeper's codes. */
const CODE_OF_MESSAGE: Record<string, string> = {
  [ETCD_MESSAGES.emptyKey]: 'EDGE_ERR_EMPTY_KEY',
  [ETCD_MESSAGES.keyNotFound]: 'EDGE_ERR_KEY_NOT_FOUND',
  [ETCD_MESSAGES.tooManyOps]: 'EDGE_ERR_TOO_MANY_OPS',
  [ETCD_MESSAGES.duplicateKey]: 'EDGE_ERR_DUPLICATE_KEY',
  [ETCD_MESSAGES.compacted]: 'EDGE_ERR_COMPACTED',
  [ETCD_MESSAGES.futureRev]: 'EDGE_ERR_FUTURE_REV',
  [ETCD_MESSAGES.noSpace]: 'EDGE_ERR_NO_SPACE',
  [ETCD_MESSAGES.leaseNotFound]: 'EDGE_ERR_LEASE_NOT_FOUND',
  [ETCD_MESSAGES.leaseExist]: 'EDGE_ERR_LEASE_EXISTS',
  [ETCD_MESSAGES.leaseTtlTooLarge]: 'EDGE_ERR_LEASE_TTL_TOO_LARGE',
  [ETCD_MESSAGES.requestTooLarge]: 'EDGE_ERR_REQUEST_TOO_LARGE',
  [ETCD_MESSAGES.stopped]: 'EDGE_ERR_CLOSED',
  [ETCD_MESSAGES.corrupt]: 'EDGE_ERR_CORRUPT',
  [ETCD_MESSAGES.tooManyRequests]: 'EDGE_ERR_BUSY',
  [ETCD_MESSAGES.electionNoLeader]: 'EDGE_ERR_NO_LEADER',
  [ETCD_MESSAGES.electionNotLeader]: 'EDGE_ERR_NOT_LEADER',
};

/** A gRPC failure as an error with a code: no answer at all, etcd's known refusals, the rest. */
function etcdError(err: unknown, endpoint: string): unknown {
  const e = err as Partial<ServiceError>;
  if (typeof e?.code !== 'number' || typeof e.details !== 'string') return err;
  const known = CODE_OF_MESSAGE[e.details];
  if (known) return new EdgeError(known, e.details);
  const fromServer = /^(etcdserver|edgekeeper|election):/.test(e.details);
  if (!fromServer && (e.code === Code.UNAVAILABLE || e.code === Code.DEADLINE_EXCEEDED)) {
    // grpc-js: "No connection established. Last error: Error: connect ECONNREFUSED ...".
    const why = /\b(E[A-Z]{3,})\b/.exec(e.details)?.[1] ?? e.details;
    return new UnreachableError(endpoint, `${why}; is an etcd API (edgekeeper or etcd) running there?`);
  }
  return new EtcdRemoteError(CODE_NAMES[e.code] ?? String(e.code), e.details);
}

/** Runs `fn` with a client for `--endpoints`, closing it after; gRPC errors get their codes. */
async function withClient(
  values: Record<string, unknown>,
  fn: (c: EtcdClient) => Promise<number>,
): Promise<number> {
  const c = new EtcdClient(endpointOf(values.endpoints));
  try {
    return await fn(c);
  } catch (err) {
    throw etcdError(err, c.endpoint);
  } finally {
    c.close();
  }
}

/** etcdctl's simple form of a key: its key and its value, a line each. */
function kvText(kv: M, opts: { keysOnly?: boolean; valueOnly?: boolean } = {}): string {
  return (
    (opts.valueOnly ? '' : `${buf(kv.key).toString()}\n`) +
    (opts.keysOnly ? '' : `${buf(kv.value).toString()}\n`)
  );
}

/** etcdctl's JSON for a key (bytes in base64). */
function kvJson(kv: M): object {
  return {
    key: buf(kv.key).toString('base64'),
    create_revision: num(kv.create_revision),
    mod_revision: num(kv.mod_revision),
    version: num(kv.version),
    value: buf(kv.value).toString('base64'),
    lease: big(kv.lease).toString(),
  };
}

/** A table row for a key (bytes as text). */
function kvRow(kv: M): object {
  return {
    key: buf(kv.key).toString(),
    value: buf(kv.value).toString(),
    modRevision: num(kv.mod_revision),
    createRevision: num(kv.create_revision),
    version: num(kv.version),
    lease: big(kv.lease) === 0n ? '-' : hexId(big(kv.lease)),
  };
}

/** A whole non-negative number from a flag; anything else is a usage error. */
function count(values: Record<string, unknown>, flag: string): number {
  const v = values[flag];
  if (v === undefined) return 0;
  const n = Number(v);
  if (!/^\d{1,15}$/.test(String(v)) || !Number.isSafeInteger(n))
    throw new UsageError(`--${flag} must be a whole number >= 0, got ${JSON.stringify(v)}`);
  return n;
}

/** Resolves on SIGINT/SIGTERM, so long-running commands clean up (unlock, resign, revoke). */
function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    const on = (sig: string) => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(sig);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}

/** A lease kept alive from this process (etcdctl's session). */
async function session(c: EtcdClient, ttl = SESSION_TTL): Promise<{ id: bigint; close(): Promise<void> }> {
  const g = await c.call('etcdserverpb.Lease', 'LeaseGrant', { TTL: ttl, ID: 0 });
  const id = big(g.ID);
  const ka = c.duplex('etcdserverpb.Lease', 'LeaseKeepAlive');
  ka.on('data', () => {});
  ka.on('error', () => {});
  const timer = setInterval(() => ka.write({ ID: long(id) }), (ttl * 1000) / 3);
  ka.write({ ID: long(id) });
  return {
    id,
    async close() {
      clearInterval(timer);
      ka.end();
      await c.call('etcdserverpb.Lease', 'LeaseRevoke', { ID: long(id) }).catch(() => {});
    },
  };
}

/** Ends on a stream error (as the error), its end, or a signal. */
function streamDone(stream: NodeJS.EventEmitter, onSignal?: () => void): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    stream.on('error', reject);
    stream.on('end', () => resolve(0));
    untilSignal().then(
      () => {
        onSignal?.();
        resolve(0);
      },
      () => {},
    );
  });
}

// --- kv ---------------------------------------------------------------------------------------

const KV_USAGE = `Usage:
  edgekeeper kv get KEY [RANGE_END] [--prefix] [--from-key] [--rev N] [--limit N]
                    [--sort-by KEY|VERSION|CREATE|MODIFY|VALUE] [--order ASCEND|DESCEND]
                    [--keys-only] [--print-value-only] [-w simple|table|json]
  edgekeeper kv put KEY [VALUE] [--lease HEX_ID] [--prev-kv] [-w ...]   (VALUE from stdin when omitted)
  edgekeeper kv del KEY [RANGE_END] [--prefix] [--from-key] [--prev-kv] [-w ...]
  edgekeeper kv watch KEY [RANGE_END] [--prefix] [--rev N] [--prev-kv] [-w simple|json]

Talks to the etcd API of a running edgekeeper (or any etcd) at --endpoints (default
$ETCDCTL_ENDPOINTS, else ${DEFAULT_ENDPOINT}; unix:///path/etcd.sock for the unix socket).
-w json prints what etcdctl -w json prints (keys and values in base64).`;

const SORT_TARGETS: Record<string, number> = { KEY: 0, VERSION: 1, CREATE: 2, MODIFY: 3, MOD: 3, VALUE: 4 };
const ORDERS: Record<string, number> = { ASCEND: 1, DESCEND: 2 };

async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function leaseArg(v: unknown, what = 'a lease ID'): bigint {
  const s = String(v ?? '');
  if (!/^[0-9a-fA-F]{1,16}$/.test(s))
    throw new UsageError(`expected ${what} in hex, got ${JSON.stringify(s)}`);
  return BigInt.asIntN(64, BigInt(`0x${s}`));
}

const kvCommand = defineCommand({
  name: 'kv',
  summary: 'get, put, delete and watch keys through the etcd API',
  usage: KV_USAGE,
  subcommands: { get: [1, 2], put: [1, 2], del: [1, 2], watch: [1, 2] },
  options: {
    endpoints: ENDPOINTS,
    prefix: { type: 'boolean' },
    'from-key': { type: 'boolean' },
    rev: { type: 'string', value: 'N' },
    limit: { type: 'string', value: 'N' },
    'sort-by': { type: 'string', value: 'TARGET', choices: ['KEY', 'VERSION', 'CREATE', 'MODIFY', 'VALUE'] },
    order: { type: 'string', value: 'ORDER', choices: ['ASCEND', 'DESCEND'] },
    'keys-only': { type: 'boolean' },
    'print-value-only': { type: 'boolean' },
    lease: { type: 'string', value: 'HEX_ID' },
    'prev-kv': { type: 'boolean' },
  },
  formats: ALL_FORMATS,
  main: ({ values: v, sub, args, format }) => {
    const key = Buffer.from(args[0]!);
    const third = args[1];
    if (sub === 'watch' && format === 'table')
      throw new UsageError('kv watch prints simple or json, not a table');
    const rangeEnd = () => rangeEndFor(key, third, !!v.prefix, !!v['from-key']);
    return withClient(v, async (c) => {
      switch (sub) {
        case 'get': {
          const r = await c.call('etcdserverpb.KV', 'Range', {
            key,
            range_end: rangeEnd(),
            revision: count(v, 'rev'),
            limit: count(v, 'limit'),
            sort_target: v['sort-by'] ? SORT_TARGETS[v['sort-by'] as string] : 0,
            sort_order: v.order ? ORDERS[v.order as string] : v['sort-by'] ? 1 : 0,
            keys_only: !!v['keys-only'],
          });
          const kvs = r.kvs as M[];
          output(format, {
            json: {
              header: { revision: num(r.header?.revision) },
              kvs: kvs.map(kvJson),
              more: r.more,
              count: num(r.count),
            },
            table: kvs.map(kvRow),
            simple: () =>
              kvs
                .map((kv) => kvText(kv, { keysOnly: !!v['keys-only'], valueOnly: !!v['print-value-only'] }))
                .join(''),
          });
          return 0;
        }
        case 'put': {
          const lease = v.lease === undefined ? 0n : leaseArg(v.lease);
          const value = third !== undefined ? Buffer.from(third) : await readStdin();
          const r = await c.call('etcdserverpb.KV', 'Put', {
            key,
            value,
            lease: long(lease),
            prev_kv: !!v['prev-kv'],
          });
          output(format, {
            json: {
              header: { revision: num(r.header?.revision) },
              ...(r.prev_kv ? { prev_kv: kvJson(r.prev_kv) } : {}),
            },
            table: { revision: num(r.header?.revision), ...(r.prev_kv ? { prev: kvRow(r.prev_kv) } : {}) },
            simple: () => `OK\n${r.prev_kv ? kvText(r.prev_kv) : ''}`,
          });
          return 0;
        }
        case 'del': {
          const r = await c.call('etcdserverpb.KV', 'DeleteRange', {
            key,
            range_end: rangeEnd(),
            prev_kv: !!v['prev-kv'],
          });
          const prev = (r.prev_kvs ?? []) as M[];
          output(format, {
            json: {
              header: { revision: num(r.header?.revision) },
              deleted: num(r.deleted),
              prev_kvs: prev.map(kvJson),
            },
            table: prev.length ? prev.map(kvRow) : { deleted: num(r.deleted) },
            simple: () => `${num(r.deleted)}\n${prev.map((kv) => kvText(kv)).join('')}`,
          });
          return 0;
        }
        default: {
          const w = c.duplex('etcdserverpb.Watch', 'Watch');
          const done = new Promise<number>((resolve, reject) => {
            w.on('data', (m: M) => {
              if (m.canceled) {
                const why =
                  m.cancel_reason ||
                  (m.compact_revision ? `compacted at ${num(m.compact_revision)}` : 'by the server');
                reject(
                  m.compact_revision
                    ? new EdgeError('EDGE_ERR_COMPACTED', `the watch was cancelled: ${why}`)
                    : new EtcdRemoteError('CANCELLED', `the watch was cancelled: ${why}`),
                );
                return;
              }
              const events = (m.events ?? []) as M[];
              if (events.length === 0) return;
              output(format, {
                json: {
                  header: { revision: num(m.header?.revision) },
                  events: events.map((ev) => ({
                    type: ev.type === 1 ? 'DELETE' : 'PUT',
                    kv: kvJson(ev.kv),
                    ...(ev.prev_kv ? { prev_kv: kvJson(ev.prev_kv) } : {}),
                  })),
                },
                simple: () =>
                  events
                    .map(
                      (ev) =>
                        `${ev.type === 1 ? 'DELETE' : 'PUT'}\n${ev.prev_kv ? kvText(ev.prev_kv) : ''}${kvText(ev.kv)}`,
                    )
                    .join(''),
              });
            });
            streamDone(w).then(resolve, reject);
          });
          w.write({
            create_request: {
              key,
              range_end: rangeEnd(),
              start_revision: count(v, 'rev'),
              prev_kv: !!v['prev-kv'],
            },
          });
          try {
            return await done;
          } finally {
            w.cancel();
          }
        }
      }
    });
  },
});

// --- lease ------------------------------------------------------------------------------------

const LEASE_USAGE = `Usage:
  edgekeeper lease grant TTL_SECONDS
  edgekeeper lease revoke HEX_ID
  edgekeeper lease keep-alive HEX_ID [--once]
  edgekeeper lease timetolive HEX_ID [--keys]
  edgekeeper lease list
Options: --endpoints HOST:PORT (default $ETCDCTL_ENDPOINTS, else ${DEFAULT_ENDPOINT}),
-w simple|table|json (keep-alive: simple|json).`;

const leaseCommand = defineCommand({
  name: 'lease',
  summary: 'grant, revoke, keep alive and inspect leases',
  usage: LEASE_USAGE,
  subcommands: { grant: [1, 1], revoke: [1, 1], 'keep-alive': [1, 1], timetolive: [1, 1], list: [0, 0] },
  options: { endpoints: ENDPOINTS, once: { type: 'boolean' }, keys: { type: 'boolean' } },
  formats: ALL_FORMATS,
  main: ({ values: v, sub, args, format }) => {
    const arg = args[0];
    let ttl = 0;
    if (sub === 'grant') {
      ttl = Number(arg);
      if (!/^\d{1,10}$/.test(arg ?? '') || ttl <= 0)
        throw new UsageError(`expected a TTL in whole seconds, got ${JSON.stringify(arg)}`);
    }
    const id = sub === 'grant' || sub === 'list' ? 0n : leaseArg(arg);
    if (sub === 'keep-alive' && format === 'table')
      throw new UsageError('lease keep-alive prints simple or json, not a table');
    return withClient(v, async (c) => {
      switch (sub) {
        case 'grant': {
          const r = await c.call('etcdserverpb.Lease', 'LeaseGrant', { TTL: ttl, ID: 0 });
          const out = { id: hexId(big(r.ID)), ttl: num(r.TTL) };
          output(format, { json: out, simple: () => `lease ${out.id} granted with TTL(${out.ttl}s)` });
          return 0;
        }
        case 'revoke': {
          await c.call('etcdserverpb.Lease', 'LeaseRevoke', { ID: long(id) });
          output(format, {
            json: { id: hexId(id), revoked: true },
            simple: () => `lease ${hexId(id)} revoked`,
          });
          return 0;
        }
        case 'timetolive': {
          const r = await c.call('etcdserverpb.Lease', 'LeaseTimeToLive', { ID: long(id), keys: !!v.keys });
          const expired = num(r.TTL) === -1;
          const keys = ((r.keys ?? []) as Buffer[]).map((k) => buf(k).toString());
          const out = {
            id: hexId(id),
            ttl: num(r.TTL),
            grantedTtl: num(r.grantedTTL),
            ...(v.keys ? { keys } : {}),
          };
          output(format, {
            json: out,
            simple: () =>
              expired
                ? `lease ${hexId(id)} already expired`
                : `lease ${hexId(id)} granted with TTL(${out.grantedTtl}s), remaining(${out.ttl}s)${v.keys ? `, attached keys([${keys.join(' ')}])` : ''}`,
          });
          return 0;
        }
        case 'list': {
          const r = await c.call('etcdserverpb.Lease', 'LeaseLeases', {});
          const ids = ((r.leases ?? []) as M[]).map((l) => hexId(big(l.ID)));
          output(format, {
            json: { leases: ids },
            table: ids.map((x) => ({ id: x })),
            simple: () => [`found ${ids.length} leases`, ...ids],
          });
          return 0;
        }
        default: {
          const ka = c.duplex('etcdserverpb.Lease', 'LeaseKeepAlive');
          let timer: NodeJS.Timeout | undefined;
          try {
            return await new Promise<number>((resolve, reject) => {
              ka.on('data', (m: M) => {
                const left = num(m.TTL);
                if (left <= 0) {
                  // Gone: a failure for --once, the normal end of a keep-alive loop otherwise.
                  if (v.once)
                    reject(
                      new EdgeError('EDGE_ERR_LEASE_NOT_FOUND', `lease ${hexId(id)} expired or revoked`),
                    );
                  else {
                    output(format, {
                      json: { id: hexId(id), ttl: left },
                      simple: () => `lease ${hexId(id)} expired or revoked.`,
                    });
                    resolve(0);
                  }
                  return;
                }
                output(format, {
                  json: { id: hexId(id), ttl: left },
                  simple: () => `lease ${hexId(id)} keepalived with TTL(${left})`,
                });
                if (v.once) resolve(0);
                else
                  timer ??= setInterval(() => ka.write({ ID: long(id) }), Math.max(500, (left * 1000) / 3));
              });
              streamDone(ka).then(resolve, reject);
              ka.write({ ID: long(id) });
            });
          } finally {
            clearInterval(timer);
            ka.cancel();
          }
        }
      }
    });
  },
});

// --- lock, elect, endpoint --------------------------------------------------------------------

const LOCK_USAGE = `Usage: edgekeeper lock NAME [-- COMMAND ARGS...]
Waits for the lock NAME (the same lock etcdctl lock and etcd clients take), then runs COMMAND while
holding it and exits with COMMAND's exit code. Without COMMAND it prints the lock key and holds the
lock until interrupted.
Options: --endpoints HOST:PORT (default $ETCDCTL_ENDPOINTS, else ${DEFAULT_ENDPOINT})`;

const lockCommand = defineCommand({
  name: 'lock',
  summary: 'run a command while holding a distributed lock',
  usage: LOCK_USAGE,
  options: { endpoints: ENDPOINTS },
  args: [1, 1],
  passthrough: true,
  main: ({ values, args, rest }) =>
    withClient(values, async (c) => {
      const s = await session(c);
      try {
        const r = await c.call(
          'v3lockpb.Lock',
          'Lock',
          { name: Buffer.from(args[0]!), lease: long(s.id) },
          0,
        );
        const key = buf(r.key);
        try {
          if (rest.length === 0) {
            io.out(`${key.toString()}\n`);
            await untilSignal();
            return 0;
          }
          const child = spawn(rest[0]!, rest.slice(1), {
            stdio: 'inherit',
            env: { ...process.env, EDGEKEEPER_LOCK_KEY: key.toString() },
          });
          return await new Promise<number>((resolve, reject) => {
            child.on('error', (err) =>
              reject(new FileError(`cannot run ${rest[0]}: ${err.message}`, { cause: err })),
            );
            child.on('exit', (code, sig) => resolve(code ?? (sig ? 128 : 1)));
          });
        } finally {
          await c.call('v3lockpb.Lock', 'Unlock', { key }).catch(() => {});
        }
      } finally {
        await s.close();
      }
    }),
});

const ELECT_USAGE = `Usage: edgekeeper elect NAME [PROPOSAL] [-w simple|json]
With PROPOSAL: campaign in election NAME, print the leader key and value once elected, and stay
leader until interrupted (then resign). Without PROPOSAL: print each leader as it changes.
Options: --endpoints HOST:PORT (default $ETCDCTL_ENDPOINTS, else ${DEFAULT_ENDPOINT})`;

const electCommand = defineCommand({
  name: 'elect',
  summary: 'campaign in or observe a leader election',
  usage: ELECT_USAGE,
  options: { endpoints: ENDPOINTS },
  args: [1, 2],
  formats: STREAM_FORMATS,
  main: ({ values, args, format }) =>
    withClient(values, async (c) => {
      const [name, proposal] = args as [string, string | undefined];
      const show = (kv: M) => output(format, { json: kvJson(kv), simple: () => kvText(kv) });
      if (proposal === undefined) {
        const st = c.serverStream('v3electionpb.Election', 'Observe', { name: Buffer.from(name) });
        st.on('data', (m: M) => show(m.kv));
        return streamDone(st, () => st.cancel());
      }
      const s = await session(c);
      try {
        const r = await c.call(
          'v3electionpb.Election',
          'Campaign',
          { name: Buffer.from(name), lease: long(s.id), value: Buffer.from(proposal) },
          0,
        );
        output(format, {
          json: {
            key: buf(r.leader.key).toString('base64'),
            value: Buffer.from(proposal).toString('base64'),
          },
          simple: () => `${buf(r.leader.key).toString()}\n${proposal}`,
        });
        await untilSignal();
        await c.call('v3electionpb.Election', 'Resign', { leader: r.leader }).catch(() => {});
        return 0;
      } finally {
        await s.close();
      }
    }),
});

const ENDPOINT_USAGE = `Usage: edgekeeper endpoint status [--endpoints HOST:PORT] [-w simple|table|json]
The etcd API's view of the node (etcdctl endpoint status): version, revision, database size and
alarms. The daemon's own status is \`edgekeeper status\`.`;

const endpointCommand = defineCommand({
  name: 'endpoint',
  summary: "the etcd API's status (etcdctl endpoint status): version, revision, db size, alarms",
  usage: ENDPOINT_USAGE,
  subcommands: { status: [0, 0] },
  options: { endpoints: ENDPOINTS },
  formats: ALL_FORMATS,
  main: ({ values, format }) =>
    withClient(values, async (c) => {
      const s = await c.call('etcdserverpb.Maintenance', 'Status', {});
      const out = {
        endpoint: c.endpoint,
        memberId: hexId(big(s.header?.member_id)),
        version: s.version,
        revision: num(s.header?.revision),
        dbSize: num(s.dbSize),
        dbSizeInUse: num(s.dbSizeInUse),
        dbSizeQuota: num(s.dbSizeQuota),
        alarms: (s.errors ?? []) as string[],
      };
      output(format, {
        json: out,
        table: { ...out, alarms: out.alarms.join(', ') || 'none' },
        simple: () =>
          Object.entries(out).map(
            ([k, val]) => `${k}: ${Array.isArray(val) ? val.join(', ') || 'none' : val}`,
          ),
      });
      return 0;
    }),
});

export const etcdCliCommands: CliCommand[] = [
  kvCommand,
  leaseCommand,
  lockCommand,
  electCommand,
  endpointCommand,
];
