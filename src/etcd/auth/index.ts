/**
 * etcd auth, as etcd 3.4 does it for its clients (etcdctl, clientv3, the JSON gateway).
 *
 * Contract:
 * - `Auth` holds users, roles (key-range permissions READ, WRITE, READWRITE on a key, a range
 *   [key, range_end) or key onwards with range_end "\0") and the enabled flag in the etcd part's
 *   tables (`authMigration`, version 2 of the part's schema), so they survive a restart. Passwords
 *   are scrypt hashes with their salt and parameters (a successful check is remembered per user as
 *   a SHA-256 of hash and password, since etcdctl authenticates on every command). Simple tokens
 *   live in memory only and expire `tokenTtlMs` (etcd: 300 s) after their last use; disabling
 *   auth, deleting a user or changing its password ends its tokens, and a restart ends all of
 *   them, as in etcd.
 * - `authMethods` is the Auth service (AuthEnable ... RoleRevokePermission, Authenticate,
 *   AuthStatus). `guardServices` wraps the other services' method tables so every transport (gRPC,
 *   the gateway) enforces the same rules; while auth is disabled a call pays one boolean test.
 * - Who calls: the `token` (or `authorization`) gRPC metadata, the gateway's `Authorization`
 *   (or `Grpc-Metadata-Token`) header, or else, with client-cert-auth, the verified client certificate's CN (gRPC only, as
 *   etcd's gateway). A token that is unknown or expired is "etcdserver: invalid auth token".
 * - What each call needs (etcd 3.4's rules): Range, Txn compares and range ops: READ on their
 *   range; Put, DeleteRange: WRITE (plus READ with prev_kv); a Put on a lease and LeaseRevoke:
 *   WRITE on every key attached to the lease; Watch: READ on its range when created (a running
 *   watch is not cut when a permission goes, as in etcd); Lock/Election: the key operations etcd's
 *   recipes make; user and role management, AuthDisable, Defragment, Snapshot, Hash, HashKV: the
 *   root role (a user may read itself and the roles it has). LeaseGrant, LeaseTimeToLive,
 *   LeaseLeases, LeaseKeepAlive, Compact, Alarm, Status and Cluster calls need nothing, as in 3.4.
 *   Errors are etcd's texts and codes (./errors.ts).
 */
import type { Logger } from '../../log.js';
import type { Store } from '../../store/types.js';
import type { EtcdContext } from '../context.js';
import { toGrpcError } from '../errors.js';
import { big, buf, num } from '../proto.js';
import {
  type CallOrigin,
  hashes,
  type Methods,
  type Msg,
  type StreamCall,
  type StreamHandler,
  type Unary,
} from '../rpc.js';
import { authError, cancelReason, rawAuthError } from './errors.js';
import { allowed, type Permission, READ, WRITE } from './perms.js';
import { AuthStore, hashPassword, ROOT, type Role, type User } from './store.js';

export { authMigration } from './store.js';

/** etcd's default --auth-token-ttl. */
export const DEFAULT_TOKEN_TTL_MS = 300_000;

export interface AuthOptions {
  tokenTtlMs?: number;
  /** The server verifies client certificates (etcd's --client-cert-auth): their CN is the user. */
  clientCertAuth?: boolean;
  now?: () => number;
}

/** Who calls: a user name, or null for nobody (no token, no certificate). */
type Who = { user: string } | null;

const EMPTY = Buffer.alloc(0);

function first(v: unknown): string | undefined {
  if (Array.isArray(v)) v = v[0];
  if (typeof v === 'string') return v;
  if (Buffer.isBuffer(v)) return v.toString();
  return undefined;
}

export class Auth {
  readonly state: AuthStore;
  private readonly clientCertAuth: boolean;

  constructor(store: Store, log: Logger, opts: AuthOptions = {}) {
    this.state = new AuthStore(store, log, opts.tokenTtlMs ?? DEFAULT_TOKEN_TTL_MS, opts.now ?? Date.now);
    this.clientCertAuth = !!opts.clientCertAuth;
  }

  /** Auth is on: the only test a call pays while it is not. */
  get enabled(): boolean {
    return this.state.enabled;
  }

  /** etcd's AuthInfoFromCtx: the token's user, else the certificate's CN; a bad token throws. */
  who(origin: CallOrigin | undefined): Who {
    if (!origin) return null;
    const token =
      first(origin.metadata?.get('token')) ??
      first(origin.metadata?.get('authorization')) ??
      first(origin.headers?.authorization) ??
      first(origin.headers?.['grpc-metadata-token']);
    if (token !== undefined) {
      const user = this.state.tokens.user(token);
      if (user === undefined) throw authError('invalidAuthToken');
      return { user };
    }
    if (this.clientCertAuth && origin.getAuthContext) {
      const cn = origin.getAuthContext().sslPeerCertificate?.subject?.CN;
      const name = Array.isArray(cn) ? cn[0] : cn;
      if (typeof name === 'string') return { user: name };
    }
    return null;
  }

  /** etcd's isOpPermitted: READ or WRITE on [key, rangeEnd) (a single key when rangeEnd is empty). */
  check(who: Who, type: number, key: Buffer, rangeEnd: Buffer): void {
    if (!this.state.enabled) return;
    if (!who) throw authError('userEmpty');
    const u = this.state.users.get(who.user);
    if (!u) throw authError('permissionDenied');
    if (this.state.isRoot(u)) return;
    const p = this.state.permsOf(who.user);
    if (p && allowed(type === READ ? p.read : p.write, key, rangeEnd)) return;
    throw authError('permissionDenied');
  }

  /** etcd's IsAdminPermitted: the root role. */
  admin(who: Who): void {
    if (!this.state.enabled) return;
    if (!who || who.user === '') throw authError('userEmpty');
    const u = this.state.users.get(who.user);
    if (!u) throw authError('userNotFound');
    if (!this.state.isRoot(u)) throw authError('permissionDenied');
  }

  /** The cancel reason of a watch create request that may not be served, or undefined. */
  watchRefusal(origin: CallOrigin, key: Buffer, rangeEnd: Buffer): string | undefined {
    try {
      this.check(this.who(origin), READ, key, rangeEnd);
      return undefined;
    } catch (e) {
      return cancelReason(e);
    }
  }
}

// --- what each call needs ----------------------------------------------------------------------

type Rule = (a: Auth, who: Who, m: Msg, store: Store) => void;

/** WRITE on every key attached to `lease` (etcd's checkLeasePuts); an unknown lease needs nothing. */
function leaseKeys(a: Auth, who: Who, lease: bigint, store: Store): void {
  if (lease === 0n) return;
  let keys: Buffer[];
  try {
    keys = store.leaseTimeToLive(lease, true).keys;
  } catch {
    return;
  }
  for (const k of keys) a.check(who, WRITE, k, EMPTY);
}

function put(a: Auth, who: Who, m: Msg, store: Store): void {
  const key = buf(m.key);
  a.check(who, WRITE, key, EMPTY);
  leaseKeys(a, who, big(m.lease), store);
  if (m.prev_kv) a.check(who, READ, key, EMPTY);
}

function del(a: Auth, who: Who, m: Msg): void {
  a.check(who, WRITE, buf(m.key), buf(m.range_end));
  if (m.prev_kv) a.check(who, READ, buf(m.key), buf(m.range_end));
}

function ops(a: Auth, who: Who, list: Msg[] | undefined, store: Store): void {
  for (const op of list ?? []) {
    if (op.request_range) a.check(who, READ, buf(op.request_range.key), buf(op.request_range.range_end));
    else if (op.request_put) a.check(who, WRITE, buf(op.request_put.key), EMPTY);
    else if (op.request_delete_range) {
      const d = op.request_delete_range;
      if (d.prev_kv) a.check(who, READ, buf(d.key), buf(d.range_end));
      a.check(who, WRITE, buf(d.key), buf(d.range_end));
    } else if (op.request_txn) txn(a, who, op.request_txn, store);
  }
}

/** etcd's checkTxnAuth: compares need READ, then both branches' ops (nested txns too). */
function txn(a: Auth, who: Who, m: Msg, store: Store): void {
  for (const c of m.compare ?? []) a.check(who, READ, buf(c.key), buf(c.range_end));
  ops(a, who, m.success, store);
  ops(a, who, m.failure, store);
}

const prefixEnd = (p: Buffer): Buffer => {
  const e = Buffer.from(p);
  for (let i = e.length - 1; i >= 0; i--) {
    if (e[i]! < 0xff) {
      e[i]!++;
      return e.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
};

/** The keys etcd's lock and election recipes touch: `name/<lease hex>` and reads of `name/`. */
function recipe(a: Auth, who: Who, name: Buffer, lease: bigint): void {
  const pfx = Buffer.concat([name, Buffer.from('/')]);
  const own = Buffer.concat([pfx, Buffer.from(lease.toString(16))]);
  a.check(who, READ, own, EMPTY);
  a.check(who, WRITE, own, EMPTY);
  a.check(who, READ, pfx, prefixEnd(pfx));
}

function leaderKey(a: Auth, who: Who, m: Msg): void {
  const key = buf(m.leader?.key);
  a.check(who, READ, key, EMPTY);
  a.check(who, WRITE, key, EMPTY);
}

const identify: Rule = () => {};
/** The root role, with the errors etcd's maintenance server sends (its auth package's, as UNKNOWN). */
const maintenanceAdmin: Rule = (a, who) => a.admin(who);
const readPrefix: Rule = (a, who, m) => {
  const pfx = Buffer.concat([buf(m.name), Buffer.from('/')]);
  a.check(who, READ, pfx, prefixEnd(pfx));
};

/** Per service and method: the rule (absent: the call needs nothing, not even a valid token). */
const RULES: Record<string, Record<string, Rule>> = {
  'etcdserverpb.KV': {
    Range: (a, who, m) => a.check(who, READ, buf(m.key), buf(m.range_end)),
    Put: put,
    DeleteRange: del,
    Txn: txn,
    Compact: identify,
  },
  'etcdserverpb.Lease': {
    LeaseGrant: identify,
    LeaseRevoke: (a, who, m, store) => leaseKeys(a, who, big(m.ID), store),
  },
  'etcdserverpb.Maintenance': {
    Alarm: identify,
    Defragment: maintenanceAdmin,
    Hash: maintenanceAdmin,
    HashKV: maintenanceAdmin,
    Snapshot: maintenanceAdmin,
  },
  'v3lockpb.Lock': {
    Lock: (a, who, m) => recipe(a, who, buf(m.name), big(m.lease)),
    Unlock: (a, who, m) => a.check(who, WRITE, buf(m.key), EMPTY),
  },
  'v3electionpb.Election': {
    Campaign: (a, who, m) => recipe(a, who, buf(m.name), big(m.lease)),
    Proclaim: leaderKey,
    Resign: leaderKey,
    Leader: readPrefix,
    Observe: readPrefix,
  },
};

/**
 * The services' method tables with auth enforced (Watch checks its create requests itself, through
 * `Auth.watchRefusal`, since a stream's requests come one by one).
 */
export function guardServices(auth: Auth, store: Store, services: [string, Methods][]): [string, Methods][] {
  return services.map(([name, methods]) => {
    const rules = RULES[name];
    if (!rules) return [name, methods];
    const out: Methods = { ...methods };
    for (const [method, rule] of Object.entries(rules)) {
      const impl = methods[method];
      if (!impl) continue;
      const enforce = (origin: CallOrigin | undefined, req: Msg) => {
        try {
          rule(auth, auth.who(origin), req, store);
        } catch (e) {
          throw rule === maintenanceAdmin ? rawAuthError(e) : e;
        }
      };
      if (method === 'Snapshot' || method === 'Observe') {
        const handler = impl as StreamHandler;
        out[method] = (call: StreamCall) => {
          if (auth.enabled) {
            try {
              enforce(call, call.request);
            } catch (e) {
              call.emit('error', toGrpcError(e));
              return;
            }
          }
          handler(call);
        };
        continue;
      }
      const unary = impl as Unary;
      const wrapped: Unary = (req, signal, origin) => {
        if (auth.enabled) enforce(origin, req);
        return unary(req, signal, origin);
      };
      wrapped.waits = unary.waits;
      out[method] = wrapped;
    }
    return [name, out];
  });
}

// --- the Auth service --------------------------------------------------------------------------

const str = (v: unknown): string => (typeof v === 'string' ? v : v == null ? '' : String(v));

export function authMethods(ctx: EtcdContext, auth: Auth): Methods {
  const s = auth.state;
  const header = () => ({ header: ctx.hdr(ctx.store.revision()) });
  /** A management call: the root role (while enabled), then the change. */
  const managed =
    (
      fn: (m: Msg) => Promise<void> | void,
      check: (who: Who, m: Msg) => void = (who) => auth.admin(who),
    ): Unary =>
    async (m, _signal, origin) => {
      if (auth.enabled) check(auth.who(origin), m);
      await fn(m);
      return header();
    };
  const user = (name: string): User => {
    const u = s.users.get(name);
    if (!u) throw authError('userNotFound');
    return u;
  };
  const role = (name: string): Role => {
    const r = s.roles.get(name);
    if (!r) throw authError('roleNotFound');
    return r;
  };
  const none = { sql: [], apply: () => {}, bump: false };

  return {
    AuthEnable: managed(() => s.setEnabled(true)),
    AuthDisable: managed(() => s.setEnabled(false)),
    AuthStatus: () => ({ ...header(), enabled: s.enabled, authRevision: s.revision }),

    Authenticate: hashes(async (m: Msg) => {
      if (!s.enabled) throw authError('authNotEnabled');
      const name = str(m.name);
      const u = s.users.get(name);
      if (!u) throw authError('authFailed');
      if (u.noPassword) throw authError('noPasswordUser');
      if (!(await s.verified.check(name, str(m.password), u.password))) throw authError('authFailed');
      // The user may have gone or changed its password while the hash was computed.
      if (s.users.get(name)?.password !== u.password || !s.enabled) throw authError('authFailed');
      return { ...header(), token: s.tokens.assign(name) };
    }),

    UserAdd: hashes(
      managed(async (m) => {
        const name = str(m.name);
        if (name === '') throw authError('userEmpty');
        const noPassword = !!m.options?.no_password;
        const password = noPassword ? '' : await hashPassword(str(m.password));
        await s.change(() => {
          if (s.users.has(name)) throw authError('userAlreadyExist');
          const u: User = { name, password, roles: [], noPassword };
          return { sql: [s.putUser(u)], apply: () => s.users.set(name, u) };
        });
      }),
    ),
    UserGet: async (m, _signal, origin) => {
      const name = str(m.name);
      if (auth.enabled) {
        const who = auth.who(origin);
        try {
          auth.admin(who);
        } catch (e) {
          if (who?.user !== name) throw e;
        }
      }
      return { ...header(), roles: [...user(name).roles] };
    },
    UserList: async (_m, _signal, origin) => {
      if (auth.enabled) auth.admin(auth.who(origin));
      return { ...header(), users: s.userNames() };
    },
    UserDelete: managed(async (m) => {
      const name = str(m.name);
      if (s.enabled && name === ROOT) throw authError('invalidAuthMgmt');
      await s.change(() => {
        user(name);
        return {
          sql: [{ sql: 'DELETE FROM etcd_auth_users WHERE name = ?', params: [name] }],
          apply: () => {
            s.users.delete(name);
            s.verified.forget(name);
            s.tokens.invalidateUser(name);
          },
        };
      });
    }),
    UserChangePassword: hashes(
      managed(async (m) => {
        const name = str(m.name);
        const password = await hashPassword(str(m.password));
        await s.change(() => {
          const u = { ...user(name), password };
          return {
            sql: [s.putUser(u)],
            apply: () => {
              s.users.set(name, u);
              s.verified.forget(name);
              s.tokens.invalidateUser(name);
            },
          };
        });
      }),
    ),
    UserGrantRole: managed((m) =>
      s.change(() => {
        const u = user(str(m.user));
        const r = str(m.role);
        if (r !== ROOT) role(r);
        if (u.roles.includes(r)) return none;
        const next = { ...u, roles: [...u.roles, r].sort() };
        return { sql: [s.putUser(next)], apply: () => s.users.set(u.name, next) };
      }),
    ),
    UserRevokeRole: managed((m) => {
      const name = str(m.name);
      const r = str(m.role);
      if (s.enabled && name === ROOT && r === ROOT) throw authError('invalidAuthMgmt');
      return s.change(() => {
        const u = user(name);
        if (!u.roles.includes(r)) throw authError('roleNotGranted');
        const next = { ...u, roles: u.roles.filter((x) => x !== r) };
        return { sql: [s.putUser(next)], apply: () => s.users.set(name, next) };
      });
    }),

    RoleAdd: managed((m) => {
      const name = str(m.name);
      if (name === '') throw authError('roleEmpty');
      return s.change(() => {
        if (s.roles.has(name)) throw authError('roleAlreadyExist');
        const r: Role = { name, perms: [] };
        return { sql: [s.putRole(r)], apply: () => s.roles.set(name, r) };
      });
    }),
    RoleGet: async (m, _signal, origin) => {
      const name = str(m.role);
      if (auth.enabled) {
        const who = auth.who(origin);
        try {
          auth.admin(who);
        } catch (e) {
          if (!who || !s.users.get(who.user)?.roles.includes(name)) throw e;
        }
      }
      const r = role(name);
      return {
        ...header(),
        perm: r.perms.map((p) => ({ permType: p.permType, key: p.key, range_end: p.rangeEnd })),
      };
    },
    RoleList: async (_m, _signal, origin) => {
      if (auth.enabled) auth.admin(auth.who(origin));
      return { ...header(), roles: s.roleNames() };
    },
    RoleDelete: managed((m) => {
      const name = str(m.role);
      if (s.enabled && name === ROOT) throw authError('invalidAuthMgmt');
      return s.change(() => {
        role(name);
        const changed = [...s.users.values()]
          .filter((u) => u.roles.includes(name))
          .map((u) => ({ ...u, roles: u.roles.filter((x) => x !== name) }));
        return {
          sql: [
            { sql: 'DELETE FROM etcd_auth_roles WHERE name = ?', params: [name] },
            ...changed.map((u) => s.putUser(u)),
          ],
          apply: () => {
            s.roles.delete(name);
            for (const u of changed) s.users.set(u.name, u);
          },
        };
      });
    }),
    RoleGrantPermission: managed((m) =>
      s.change(() => {
        const r = role(str(m.name));
        if (!m.perm) throw authError('permissionNotGiven');
        const p: Permission = {
          permType: num(m.perm.permType),
          key: buf(m.perm.key),
          rangeEnd: buf(m.perm.range_end),
        };
        const perms = r.perms.map((x) => ({ ...x }));
        // etcd looks only at the first permission whose key is not below the new one's.
        const at = perms.findIndex((x) => Buffer.compare(x.key, p.key) >= 0);
        if (at >= 0 && perms[at]!.key.equals(p.key) && perms[at]!.rangeEnd.equals(p.rangeEnd))
          perms[at]!.permType = p.permType;
        else {
          perms.push(p);
          perms.sort((a, b) => Buffer.compare(a.key, b.key));
        }
        const next = { name: r.name, perms };
        return { sql: [s.putRole(next)], apply: () => s.roles.set(r.name, next) };
      }),
    ),
    RoleRevokePermission: managed((m) =>
      s.change(() => {
        const r = role(str(m.role));
        const key = buf(m.key);
        const end = buf(m.range_end);
        const perms = r.perms.filter((p) => !p.key.equals(key) || !p.rangeEnd.equals(end));
        if (perms.length === r.perms.length) throw authError('permissionNotGranted');
        const next = { name: r.name, perms };
        return { sql: [s.putRole(next)], apply: () => s.roles.set(r.name, next) };
      }),
    ),
  };
}
