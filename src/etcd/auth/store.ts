/**
 * Users, roles and the enabled flag, kept in the etcd part's tables (authMigration) and mirrored in
 * memory, plus the simple tokens (in memory only, as etcd's: a restart ends every session).
 * Changes are serialized (one at a time) and applied in memory only once they are stored.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from '../../log.js';
import { VerifiedCache, verifySecret } from '../../secret.js';
import type { Migration, Store } from '../../store/types.js';
import { authError } from './errors.js';
import { mergePerms, type Permission, type UserPerms } from './perms.js';

/** The auth tables: version 2 of the etcd part's schema (version 1 is the alarms table). */
export const authMigration: Migration = {
  part: 'etcd',
  version: 2,
  sql: `
CREATE TABLE IF NOT EXISTS etcd_auth_users(
  name TEXT PRIMARY KEY,
  password TEXT NOT NULL,
  roles TEXT NOT NULL,
  no_password INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS etcd_auth_roles(
  name TEXT PRIMARY KEY,
  perms TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS etcd_auth_state(
  id INTEGER PRIMARY KEY CHECK (id = 1),
  enabled INTEGER NOT NULL,
  revision INTEGER NOT NULL
);
INSERT OR IGNORE INTO etcd_auth_state(id, enabled, revision) VALUES (1, 0, 1);
`,
};

export const ROOT = 'root';

export interface User {
  name: string;
  /** `scrypt$N$r$p$salt$hash` (empty for a no-password user). */
  password: string;
  /** Sorted, as etcd keeps them. */
  roles: string[];
  noPassword: boolean;
}

export interface Role {
  name: string;
  /** Sorted by key, as etcd keeps them. */
  perms: Permission[];
}

// --- passwords: scrypt hashes (src/secret.ts) ---------------------------------------------------

export { hashSecret as hashPassword } from '../../secret.js';

/**
 * Successful checks, remembered per user: etcdctl authenticates on every command, and a scrypt
 * per command would cost a Pi tens of ms of CPU each time.
 */
export class VerifiedPasswords {
  private readonly cache = new VerifiedCache();
  async check(user: string, pw: string, stored: string): Promise<boolean> {
    if (this.cache.has(user, stored, pw)) return true;
    if (!(await verifySecret(pw, stored))) return false;
    this.cache.add(user, stored, pw);
    return true;
  }
  forget(user: string): void {
    this.cache.drop(user);
  }
}

// --- simple tokens ------------------------------------------------------------------------------

const LETTERS = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ';

/** etcd's simple tokens: opaque, bound to a user, expiring `ttlMs` after their last use. */
class Tokens {
  private readonly live = new Map<string, { user: string; expires: number }>();
  private seq = 0;
  constructor(
    private readonly ttlMs: number,
    private readonly now: () => number,
  ) {}

  assign(user: string): string {
    const t = this.now();
    if (++this.seq % 64 === 0) for (const [k, v] of this.live) if (v.expires <= t) this.live.delete(k);
    const rnd = randomBytes(16);
    let prefix = '';
    for (const b of rnd) prefix += LETTERS[b % LETTERS.length];
    const token = `${prefix}.${this.seq}`;
    this.live.set(token, { user, expires: t + this.ttlMs });
    return token;
  }

  /** The token's user (its TTL starts again), or undefined when unknown or expired. */
  user(token: string): string | undefined {
    const e = this.live.get(token);
    if (!e) return undefined;
    const t = this.now();
    if (e.expires <= t) {
      this.live.delete(token);
      return undefined;
    }
    e.expires = t + this.ttlMs;
    return e.user;
  }

  invalidateUser(user: string): void {
    for (const [k, v] of this.live) if (v.user === user) this.live.delete(k);
  }

  clear(): void {
    this.live.clear();
  }
}

// --- the store ----------------------------------------------------------------------------------

const nameOrder = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));

interface PermRow {
  t: number;
  k: string;
  e: string;
}

export class AuthStore {
  /** Read on every request: the one test interactive traffic pays while auth is off. */
  enabled = false;
  revision = 1;
  readonly users = new Map<string, User>();
  readonly roles = new Map<string, Role>();
  private readonly perms = new Map<string, UserPerms>();
  readonly tokens: Tokens;
  readonly verified = new VerifiedPasswords();
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly store: Store,
    private readonly log: Logger,
    tokenTtlMs: number,
    now: () => number,
  ) {
    this.tokens = new Tokens(tokenTtlMs, now);
    let state: { enabled: number; revision: number } | undefined;
    try {
      state = store
        .query<{ enabled: number; revision: number }>(
          'SELECT enabled, revision FROM etcd_auth_state WHERE id = 1',
        )
        .get();
    } catch (err) {
      throw new Error(
        `the store has no etcd auth tables: open it with the etcd part's migrations (etcdMigrations) (${String(err)})`,
      );
    }
    this.enabled = !!state?.enabled;
    this.revision = state?.revision ?? 1;
    for (const r of store
      .query<{ name: string; password: string; roles: string; no_password: number }>(
        'SELECT name, password, roles, no_password FROM etcd_auth_users',
      )
      .all())
      this.users.set(r.name, {
        name: r.name,
        password: r.password,
        roles: JSON.parse(r.roles) as string[],
        noPassword: !!r.no_password,
      });
    for (const r of store
      .query<{ name: string; perms: string }>('SELECT name, perms FROM etcd_auth_roles')
      .all())
      this.roles.set(r.name, {
        name: r.name,
        perms: (JSON.parse(r.perms) as PermRow[]).map((p) => ({
          permType: p.t,
          key: Buffer.from(p.k, 'base64'),
          rangeEnd: Buffer.from(p.e, 'base64'),
        })),
      });
    this.refresh();
  }

  userNames(): string[] {
    return [...this.users.keys()].sort(nameOrder);
  }

  roleNames(): string[] {
    return [...this.roles.keys()].sort(nameOrder);
  }

  isRoot(user: User): boolean {
    return user.roles.includes(ROOT);
  }

  permsOf(user: string): UserPerms | undefined {
    return this.perms.get(user);
  }

  /** Rebuild every user's merged permissions (after any change, as etcd's cache). */
  private refresh(): void {
    this.perms.clear();
    for (const u of this.users.values()) {
      const ps: Permission[] = [];
      for (const r of u.roles) ps.push(...(this.roles.get(r)?.perms ?? []));
      this.perms.set(u.name, mergePerms(ps));
    }
  }

  /**
   * Run one change: `plan` looks at the current state and returns what to store and how to apply
   * it (or throws etcd's error); changes run one at a time. `bump`: the auth revision moves on.
   */
  change(
    plan: () => { sql: { sql: string; params: unknown[] }[]; apply: () => void; bump?: boolean },
  ): Promise<void> {
    const run = async () => {
      const p = plan();
      const sql = [...p.sql];
      const bump = p.bump !== false;
      if (bump)
        sql.push({
          sql: 'UPDATE etcd_auth_state SET revision = ? WHERE id = 1',
          params: [this.revision + 1],
        });
      if (sql.length) await this.store.write({ sql });
      p.apply();
      if (bump) this.revision++;
      this.refresh();
    };
    const next = this.queue.then(run, run);
    this.queue = next.catch(() => {});
    return next;
  }

  putUser(u: User): { sql: string; params: unknown[] } {
    return {
      sql: 'INSERT OR REPLACE INTO etcd_auth_users(name, password, roles, no_password) VALUES (?, ?, ?, ?)',
      params: [u.name, u.password, JSON.stringify(u.roles), u.noPassword ? 1 : 0],
    };
  }

  putRole(r: Role): { sql: string; params: unknown[] } {
    const rows: PermRow[] = r.perms.map((p) => ({
      t: p.permType,
      k: p.key.toString('base64'),
      e: p.rangeEnd.toString('base64'),
    }));
    return {
      sql: 'INSERT OR REPLACE INTO etcd_auth_roles(name, perms) VALUES (?, ?)',
      params: [r.name, JSON.stringify(rows)],
    };
  }

  setEnabled(on: boolean): Promise<void> {
    return this.change(() => {
      if (on) {
        if (this.enabled) return { sql: [], apply: () => {}, bump: false };
        const root = this.users.get(ROOT);
        if (!root) throw authError('rootUserNotExist');
        if (!this.isRoot(root)) throw authError('rootRoleNotExist');
      } else if (!this.enabled) return { sql: [], apply: () => {}, bump: false };
      return {
        sql: [{ sql: 'UPDATE etcd_auth_state SET enabled = ? WHERE id = 1', params: [on ? 1 : 0] }],
        apply: () => {
          this.enabled = on;
          this.tokens.clear();
          this.log.warn({ enabled: on }, on ? 'etcd auth enabled' : 'etcd auth disabled');
        },
        // etcd moves the auth revision when auth is disabled, not when it is enabled.
        bump: !on,
      };
    });
  }
}
