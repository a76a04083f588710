/**
 * `edgekeeper kv|lease|lock|elect|status`: a small etcd client for users without etcdctl. It
 * speaks the same gRPC API as etcdctl (our own protos), so it also works against real etcd.
 */
import { spawn } from 'node:child_process';
import { parseArgs } from 'node:util';
import {
  type Client,
  type ClientDuplexStream,
  type ClientReadableStream,
  credentials,
  makeClientConstructor,
  Metadata,
  type ServiceError,
} from '@grpc/grpc-js';
import type { CliCommand } from '../part.js';
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

const COMMON = {
  endpoints: { type: 'string', default: DEFAULT_ENDPOINT },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

function endpointOf(v: string | undefined): string {
  return (v ?? DEFAULT_ENDPOINT).split(',')[0]!.trim();
}

function fail(err: unknown): number {
  const e = err as Partial<ServiceError>;
  process.stderr.write(`Error: ${e.details ?? (err instanceof Error ? err.message : String(err))}\n`);
  return 1;
}

function printKv(kv: M, opts: { keysOnly?: boolean; valueOnly?: boolean }): void {
  if (!opts.valueOnly) process.stdout.write(`${buf(kv.key).toString()}\n`);
  if (!opts.keysOnly) process.stdout.write(`${buf(kv.value).toString()}\n`);
}

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

// --- kv ---------------------------------------------------------------------------------------

const KV_USAGE = `Usage:
  edgekeeper kv get KEY [RANGE_END] [--prefix] [--from-key] [--rev N] [--limit N]
                    [--sort-by KEY|VERSION|CREATE|MODIFY|VALUE] [--order ASCEND|DESCEND]
                    [--keys-only] [--print-value-only] [-w simple|json]
  edgekeeper kv put KEY [VALUE] [--lease HEX_ID] [--prev-kv]   (VALUE from stdin when omitted)
  edgekeeper kv del KEY [RANGE_END] [--prefix] [--from-key] [--prev-kv]
  edgekeeper kv watch KEY [RANGE_END] [--prefix] [--rev N] [--prev-kv]

Talks to the etcd API of a running edgekeeper (or any etcd) at --endpoints (default ${DEFAULT_ENDPOINT};
unix:///path/etcd.sock for the unix socket).`;

const SORT_TARGETS: Record<string, number> = { KEY: 0, VERSION: 1, CREATE: 2, MODIFY: 3, MOD: 3, VALUE: 4 };

async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function kvRun(args: string[]): Promise<number> {
  const { values: v, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      ...COMMON,
      prefix: { type: 'boolean', default: false },
      'from-key': { type: 'boolean', default: false },
      rev: { type: 'string' },
      limit: { type: 'string' },
      'sort-by': { type: 'string' },
      order: { type: 'string' },
      'keys-only': { type: 'boolean', default: false },
      'print-value-only': { type: 'boolean', default: false },
      'write-out': { type: 'string', short: 'w', default: 'simple' },
      lease: { type: 'string' },
      'prev-kv': { type: 'boolean', default: false },
    },
  });
  const [sub, keyArg, third] = positionals;
  if (v.help || !sub) {
    process.stdout.write(`${KV_USAGE}\n`);
    return v.help ? 0 : 2;
  }
  if (keyArg === undefined) {
    process.stderr.write(`kv ${sub} needs a KEY\n${KV_USAGE}\n`);
    return 2;
  }
  const key = Buffer.from(keyArg);
  const c = new EtcdClient(endpointOf(v.endpoints));
  try {
    switch (sub) {
      case 'get': {
        const rangeEnd = rangeEndFor(key, third, v.prefix, v['from-key']);
        const sortTarget = v['sort-by'] ? SORT_TARGETS[v['sort-by'].toUpperCase()] : 0;
        if (sortTarget === undefined) throw new Error(`unknown --sort-by ${v['sort-by']}`);
        const order = v.order ? { ASCEND: 1, DESCEND: 2 }[v.order.toUpperCase()] : v['sort-by'] ? 1 : 0;
        if (order === undefined) throw new Error(`unknown --order ${v.order}`);
        const r = await c.call('etcdserverpb.KV', 'Range', {
          key,
          range_end: rangeEnd,
          revision: Number(v.rev ?? 0),
          limit: Number(v.limit ?? 0),
          sort_target: sortTarget,
          sort_order: order,
          keys_only: v['keys-only'],
        });
        if (v['write-out'] === 'json') {
          process.stdout.write(
            `${JSON.stringify({ header: { revision: num(r.header?.revision) }, kvs: (r.kvs as M[]).map(kvJson), more: r.more, count: num(r.count) })}\n`,
          );
        } else {
          for (const kv of r.kvs as M[])
            printKv(kv, { keysOnly: v['keys-only'], valueOnly: v['print-value-only'] });
        }
        return 0;
      }
      case 'put': {
        const value = third !== undefined ? Buffer.from(third) : await readStdin();
        const r = await c.call('etcdserverpb.KV', 'Put', {
          key,
          value,
          lease: v.lease ? long(BigInt.asIntN(64, BigInt(`0x${v.lease}`))) : 0,
          prev_kv: v['prev-kv'],
        });
        process.stdout.write('OK\n');
        if (r.prev_kv) printKv(r.prev_kv, {});
        return 0;
      }
      case 'del': {
        const rangeEnd = rangeEndFor(key, third, v.prefix, v['from-key']);
        const r = await c.call('etcdserverpb.KV', 'DeleteRange', {
          key,
          range_end: rangeEnd,
          prev_kv: v['prev-kv'],
        });
        process.stdout.write(`${num(r.deleted)}\n`);
        for (const kv of (r.prev_kvs ?? []) as M[]) printKv(kv, {});
        return 0;
      }
      case 'watch': {
        const rangeEnd = rangeEndFor(key, third, v.prefix, v['from-key']);
        const w = c.duplex('etcdserverpb.Watch', 'Watch');
        const done = new Promise<number>((resolve) => {
          w.on('data', (m: M) => {
            if (m.canceled) {
              process.stderr.write(
                `watch was canceled (${m.cancel_reason || (m.compact_revision ? `compacted at ${num(m.compact_revision)}` : 'by the server')})\n`,
              );
              resolve(1);
              return;
            }
            for (const ev of (m.events ?? []) as M[]) {
              process.stdout.write(`${ev.type === 1 ? 'DELETE' : 'PUT'}\n`);
              if (ev.prev_kv) printKv(ev.prev_kv, {});
              printKv(ev.kv, {});
            }
          });
          w.on('error', (err) => resolve(fail(err)));
          w.on('end', () => resolve(0));
          untilSignal().then(
            () => resolve(0),
            () => {},
          );
        });
        w.write({
          create_request: {
            key,
            range_end: rangeEnd,
            start_revision: Number(v.rev ?? 0),
            prev_kv: v['prev-kv'],
          },
        });
        const code = await done;
        w.cancel();
        return code;
      }
      default:
        process.stderr.write(`unknown kv command ${JSON.stringify(sub)}\n${KV_USAGE}\n`);
        return 2;
    }
  } catch (err) {
    return fail(err);
  } finally {
    c.close();
  }
}

// --- lease ------------------------------------------------------------------------------------

const LEASE_USAGE = `Usage:
  edgekeeper lease grant TTL_SECONDS
  edgekeeper lease revoke HEX_ID
  edgekeeper lease keep-alive HEX_ID [--once]
  edgekeeper lease timetolive HEX_ID [--keys]
  edgekeeper lease list
Options: --endpoints HOST:PORT (default ${DEFAULT_ENDPOINT})`;

function leaseIdArg(s: string | undefined): bigint {
  if (!s || !/^[0-9a-fA-F]{1,16}$/.test(s))
    throw new Error(`expected a lease ID in hex, got ${JSON.stringify(s ?? '')}`);
  return BigInt.asIntN(64, BigInt(`0x${s}`));
}

async function leaseRun(args: string[]): Promise<number> {
  const { values: v, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      ...COMMON,
      once: { type: 'boolean', default: false },
      keys: { type: 'boolean', default: false },
    },
  });
  const [sub, arg] = positionals;
  if (v.help || !sub) {
    process.stdout.write(`${LEASE_USAGE}\n`);
    return v.help ? 0 : 2;
  }
  const c = new EtcdClient(endpointOf(v.endpoints));
  try {
    switch (sub) {
      case 'grant': {
        const ttl = Number(arg);
        if (!Number.isInteger(ttl) || ttl <= 0)
          throw new Error(`expected a TTL in seconds, got ${JSON.stringify(arg ?? '')}`);
        const r = await c.call('etcdserverpb.Lease', 'LeaseGrant', { TTL: ttl, ID: 0 });
        process.stdout.write(`lease ${hexId(big(r.ID))} granted with TTL(${num(r.TTL)}s)\n`);
        return 0;
      }
      case 'revoke': {
        const id = leaseIdArg(arg);
        await c.call('etcdserverpb.Lease', 'LeaseRevoke', { ID: long(id) });
        process.stdout.write(`lease ${hexId(id)} revoked\n`);
        return 0;
      }
      case 'timetolive': {
        const id = leaseIdArg(arg);
        const r = await c.call('etcdserverpb.Lease', 'LeaseTimeToLive', { ID: long(id), keys: v.keys });
        if (num(r.TTL) === -1) {
          process.stdout.write(`lease ${hexId(id)} already expired\n`);
          return 0;
        }
        let line = `lease ${hexId(id)} granted with TTL(${num(r.grantedTTL)}s), remaining(${num(r.TTL)}s)`;
        if (v.keys)
          line += `, attached keys([${((r.keys ?? []) as Buffer[]).map((k) => buf(k).toString()).join(' ')}])`;
        process.stdout.write(`${line}\n`);
        return 0;
      }
      case 'list': {
        const r = await c.call('etcdserverpb.Lease', 'LeaseLeases', {});
        const ids = (r.leases ?? []) as M[];
        process.stdout.write(`found ${ids.length} leases\n`);
        for (const l of ids) process.stdout.write(`${hexId(big(l.ID))}\n`);
        return 0;
      }
      case 'keep-alive': {
        const id = leaseIdArg(arg);
        const ka = c.duplex('etcdserverpb.Lease', 'LeaseKeepAlive');
        const code = await new Promise<number>((resolve) => {
          let timer: NodeJS.Timeout | undefined;
          ka.on('data', (m: M) => {
            const ttl = num(m.TTL);
            if (ttl <= 0) {
              process.stdout.write(`lease ${hexId(id)} expired or revoked.\n`);
              resolve(v.once ? 1 : 0);
              return;
            }
            process.stdout.write(`lease ${hexId(id)} keepalived with TTL(${ttl})\n`);
            if (v.once) resolve(0);
            else if (!timer)
              timer = setInterval(() => ka.write({ ID: long(id) }), Math.max(500, (ttl * 1000) / 3));
          });
          ka.on('error', (err) => resolve(fail(err)));
          untilSignal().then(
            () => resolve(0),
            () => {},
          );
          ka.write({ ID: long(id) });
        }).finally(() => ka.cancel());
        return code;
      }
      default:
        process.stderr.write(`unknown lease command ${JSON.stringify(sub)}\n${LEASE_USAGE}\n`);
        return 2;
    }
  } catch (err) {
    return fail(err);
  } finally {
    c.close();
  }
}

// --- lock, elect, status ----------------------------------------------------------------------

const LOCK_USAGE = `Usage: edgekeeper lock NAME [-- COMMAND ARGS...]
Waits for the lock NAME (the same lock etcdctl lock and etcd clients take), then runs COMMAND while
holding it and exits with COMMAND's exit code. Without COMMAND it prints the lock key and holds the
lock until interrupted.
Options: --endpoints HOST:PORT (default ${DEFAULT_ENDPOINT})`;

async function lockRun(args: string[]): Promise<number> {
  const dash = args.indexOf('--');
  const own = dash >= 0 ? args.slice(0, dash) : args;
  const cmd = dash >= 0 ? args.slice(dash + 1) : [];
  const { values: v, positionals } = parseArgs({ args: own, allowPositionals: true, options: { ...COMMON } });
  const name = positionals[0];
  if (v.help || !name) {
    process.stdout.write(`${LOCK_USAGE}\n`);
    return v.help ? 0 : 2;
  }
  const c = new EtcdClient(endpointOf(v.endpoints));
  let s: Awaited<ReturnType<typeof session>> | undefined;
  try {
    s = await session(c);
    const r = await c.call('v3lockpb.Lock', 'Lock', { name: Buffer.from(name), lease: long(s.id) }, 0);
    const key = buf(r.key);
    try {
      if (cmd.length === 0) {
        process.stdout.write(`${key.toString()}\n`);
        await untilSignal();
        return 0;
      }
      const child = spawn(cmd[0]!, cmd.slice(1), {
        stdio: 'inherit',
        env: { ...process.env, EDGEKEEPER_LOCK_KEY: key.toString() },
      });
      return await new Promise<number>((resolve) => {
        child.on('error', (err) => resolve(fail(err)));
        child.on('exit', (code, sig) => resolve(code ?? (sig ? 128 : 1)));
      });
    } finally {
      await c.call('v3lockpb.Lock', 'Unlock', { key }).catch(() => {});
    }
  } catch (err) {
    return fail(err);
  } finally {
    await s?.close();
    c.close();
  }
}

const ELECT_USAGE = `Usage: edgekeeper elect NAME [PROPOSAL]
With PROPOSAL: campaign in election NAME, print the leader key and value once elected, and stay
leader until interrupted (then resign). Without PROPOSAL: print each leader as it changes.
Options: --endpoints HOST:PORT (default ${DEFAULT_ENDPOINT})`;

async function electRun(args: string[]): Promise<number> {
  const { values: v, positionals } = parseArgs({ args, allowPositionals: true, options: { ...COMMON } });
  const [name, proposal] = positionals;
  if (v.help || !name) {
    process.stdout.write(`${ELECT_USAGE}\n`);
    return v.help ? 0 : 2;
  }
  const c = new EtcdClient(endpointOf(v.endpoints));
  try {
    if (proposal === undefined) {
      const st = c.serverStream('v3electionpb.Election', 'Observe', { name: Buffer.from(name) });
      return await new Promise<number>((resolve) => {
        st.on('data', (m: M) => printKv(m.kv, {}));
        st.on('error', (err) => resolve(fail(err)));
        st.on('end', () => resolve(0));
        untilSignal().then(
          () => {
            st.cancel();
            resolve(0);
          },
          () => {},
        );
      });
    }
    const s = await session(c);
    try {
      const r = await c.call(
        'v3electionpb.Election',
        'Campaign',
        { name: Buffer.from(name), lease: long(s.id), value: Buffer.from(proposal) },
        0,
      );
      process.stdout.write(`${buf(r.leader.key).toString()}\n${proposal}\n`);
      await untilSignal();
      await c.call('v3electionpb.Election', 'Resign', { leader: r.leader }).catch(() => {});
      return 0;
    } finally {
      await s.close();
    }
  } catch (err) {
    return fail(err);
  } finally {
    c.close();
  }
}

const STATUS_USAGE = `Usage: edgekeeper status [--endpoints HOST:PORT] [-w simple|json]
Prints the etcd API's view of the node: version, revision, database size and alarms.`;

async function statusRun(args: string[]): Promise<number> {
  const { values: v } = parseArgs({
    args,
    allowPositionals: false,
    options: { ...COMMON, 'write-out': { type: 'string', short: 'w', default: 'simple' } },
  });
  if (v.help) {
    process.stdout.write(`${STATUS_USAGE}\n`);
    return 0;
  }
  const c = new EtcdClient(endpointOf(v.endpoints));
  try {
    const s = await c.call('etcdserverpb.Maintenance', 'Status', {});
    const out = {
      endpoint: c.endpoint,
      memberId: hexId(big(s.header?.member_id)),
      version: s.version,
      revision: num(s.header?.revision),
      dbSize: num(s.dbSize),
      dbSizeInUse: num(s.dbSizeInUse),
      dbSizeQuota: num(s.dbSizeQuota),
      alarms: s.errors ?? [],
    };
    if (v['write-out'] === 'json') process.stdout.write(`${JSON.stringify(out)}\n`);
    else
      for (const [k, val] of Object.entries(out))
        process.stdout.write(`${k}: ${Array.isArray(val) ? val.join(', ') || 'none' : val}\n`);
    return 0;
  } catch (err) {
    return fail(err);
  } finally {
    c.close();
  }
}

function guarded(
  run: (args: string[]) => Promise<number>,
  usage: string,
): (args: string[]) => Promise<number> {
  return async (args) => {
    try {
      return await run(args);
    } catch (err) {
      // parseArgs errors (unknown option, missing value) end here.
      process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n${usage}\n`);
      return 2;
    }
  };
}

export const etcdCliCommands: CliCommand[] = [
  {
    name: 'kv',
    summary: 'get, put, delete and watch keys through the etcd API',
    usage: KV_USAGE,
    run: guarded(kvRun, KV_USAGE),
  },
  {
    name: 'lease',
    summary: 'grant, revoke, keep alive and inspect leases',
    usage: LEASE_USAGE,
    run: guarded(leaseRun, LEASE_USAGE),
  },
  {
    name: 'lock',
    summary: 'run a command while holding a distributed lock',
    usage: LOCK_USAGE,
    run: guarded(lockRun, LOCK_USAGE),
  },
  {
    name: 'elect',
    summary: 'campaign in or observe a leader election',
    usage: ELECT_USAGE,
    run: guarded(electRun, ELECT_USAGE),
  },
  {
    name: 'status',
    summary: "the etcd API's status: version, revision, db size, alarms",
    usage: STATUS_USAGE,
    run: guarded(statusRun, STATUS_USAGE),
  },
];
