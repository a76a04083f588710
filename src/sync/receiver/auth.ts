/**
 * Who may use the operator routes. One credential, the admin token, arrives three ways:
 * - `Authorization: Bearer <token>` (API clients, the CLI): reads and writes;
 * - HTTP Basic with the token as password (curl -u, a browser's own dialog): reads only, because
 *   a browser sends Basic credentials on its own with any request, a forged cross-site form too;
 * - a login session: the login form sets a random session id in an HttpOnly, SameSite=Strict
 *   cookie; PostgreSQL keeps its hash and a CSRF token, so every receiver sharing the database
 *   knows it. Writes need the session's CSRF token (form field `csrf` or `X-CSRF-Token`) and
 *   must not come from another site (Origin, Sec-Fetch-Site).
 * Failed attempts are counted per client address: past 10 a minute the address is refused (429)
 * until the minute is over.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type pg from 'pg';
import { FleetCsrfError, FleetTooManyAttemptsError, FleetUnauthorizedError } from '../../errors.js';

export interface Principal {
  via: 'bearer' | 'basic' | 'session' | 'open';
  /** The session's CSRF token, for the forms of the pages. */
  csrf?: string;
  sessionHash?: string;
}

/** A session lasts 12 hours from login; then the form asks again. */
export const SESSION_SECONDS = 12 * 3600;
// Enough for a person who mistypes; far too few to guess a token.
const MAX_FAILURES_PER_MINUTE = 10;
// The failure table is cleared every minute; this bounds it between clearings.
const MAX_TRACKED_ADDRESSES = 10_000;

export function sha256(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

function same(a: string, b: string): boolean {
  const x = Buffer.from(sha256(a), 'hex');
  const y = Buffer.from(sha256(b), 'hex');
  return timingSafeEqual(x, y);
}

function cookies(req: IncomingMessage): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0) out.set(part.slice(0, i).trim(), part.slice(i + 1).trim());
  }
  return out;
}

export class AdminAuth {
  readonly cookieName: string;
  private readonly keyId: string;
  private failures = new Map<string, number>();
  private window = 0;

  constructor(
    private readonly pool: pg.Pool,
    private readonly adminToken: string | undefined,
    private readonly secure: boolean,
    private readonly now: () => number = Date.now,
    private readonly onFailure: (result: 'failed' | 'limited') => void = () => {},
  ) {
    // __Host- cookies must be Secure; over plain HTTP the plain name is the best there is.
    this.cookieName = secure ? '__Host-ek_fleet' : 'ek_fleet';
    this.keyId = adminToken ? sha256(`edgekeeper fleet session key:${adminToken}`).slice(0, 32) : '';
  }

  /** False when the server runs without an admin token: reads are open, writes refused. */
  get enabled(): boolean {
    return this.adminToken !== undefined;
  }

  /** The credentials on a request, or undefined when it has none that hold. */
  async identify(req: IncomingMessage): Promise<Principal | undefined> {
    if (!this.adminToken) return { via: 'open' };
    const auth = req.headers.authorization ?? '';
    if (auth.startsWith('Bearer ') || auth.startsWith('Basic ')) {
      this.checkLimit(req);
      let given = auth.slice(7).trim();
      if (auth.startsWith('Basic ')) {
        const dec = Buffer.from(auth.slice(6).trim(), 'base64').toString('utf8');
        given = dec.slice(dec.indexOf(':') + 1);
      }
      if (!same(given, this.adminToken)) {
        this.fail(req);
        throw new FleetUnauthorizedError('wrong admin token');
      }
      return { via: auth.startsWith('Bearer ') ? 'bearer' : 'basic' };
    }
    const id = cookies(req).get(this.cookieName);
    if (!id || !/^[A-Za-z0-9_-]{20,100}$/.test(id)) return undefined;
    const hash = sha256(id);
    const r = await this.pool.query<{ csrf: string }>(
      'SELECT csrf FROM fleet_sessions WHERE id_hash = $1 AND key_id = $2 AND expires_at > now()',
      [hash, this.keyId],
    );
    const row = r.rows[0];
    return row ? { via: 'session', csrf: row.csrf, sessionHash: hash } : undefined;
  }

  /** Reading: any credential (or none when there is no admin token). */
  async read(req: IncomingMessage): Promise<Principal> {
    const p = await this.identify(req);
    if (!p) throw new FleetUnauthorizedError('log in, or send the admin token as a bearer token');
    return p;
  }

  /** Writing: a bearer token, or a session with its CSRF token from this site. */
  async write(req: IncomingMessage, csrfField?: string): Promise<Principal> {
    if (!this.adminToken)
      throw new FleetUnauthorizedError('start the fleet server with an admin token to change anything');
    const p = await this.read(req);
    if (p.via === 'bearer') return p;
    if (p.via === 'basic')
      throw new FleetCsrfError('Basic credentials are for reading; send a bearer token or log in');
    this.sameSite(req);
    const given = csrfField ?? (req.headers['x-csrf-token'] as string | undefined) ?? '';
    if (!p.csrf || !given || !same(given, p.csrf)) throw new FleetCsrfError('missing or wrong CSRF token');
    return p;
  }

  /** Refuses a request a browser made for another site (forms posted from elsewhere). */
  sameSite(req: IncomingMessage): void {
    const site = req.headers['sec-fetch-site'];
    if (site === 'cross-site' || site === 'same-site') throw new FleetCsrfError('request from another site');
    const origin = req.headers.origin;
    if (origin !== undefined && origin !== 'null') {
      let host: string;
      try {
        host = new URL(origin).host;
      } catch {
        throw new FleetCsrfError('unreadable Origin');
      }
      if (host !== req.headers.host) throw new FleetCsrfError(`request from ${origin}`);
    } else if (origin === 'null') throw new FleetCsrfError('request from an opaque origin');
  }

  /** Checks the token typed into the login form; returns the Set-Cookie value of a new session. */
  async login(req: IncomingMessage, token: string): Promise<string> {
    if (!this.adminToken)
      throw new FleetUnauthorizedError('this fleet server has no admin token: nothing to log in to');
    this.sameSite(req);
    this.checkLimit(req);
    if (!same(token, this.adminToken)) {
      this.fail(req);
      throw new FleetUnauthorizedError('wrong admin token');
    }
    const id = randomBytes(32).toString('base64url');
    await this.pool.query('DELETE FROM fleet_sessions WHERE expires_at < now()');
    await this.pool.query(
      `INSERT INTO fleet_sessions (id_hash, csrf, key_id, expires_at)
       VALUES ($1, $2, $3, now() + make_interval(secs => $4))`,
      [sha256(id), randomBytes(24).toString('base64url'), this.keyId, SESSION_SECONDS],
    );
    return `${this.cookieName}=${id}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${SESSION_SECONDS}${this.secure ? '; Secure' : ''}`;
  }

  /** Ends the session of the request; returns the Set-Cookie value that clears the cookie. */
  async logout(p: Principal): Promise<string> {
    if (p.sessionHash)
      await this.pool.query('DELETE FROM fleet_sessions WHERE id_hash = $1', [p.sessionHash]);
    return `${this.cookieName}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0${this.secure ? '; Secure' : ''}`;
  }

  private addr(req: IncomingMessage): string {
    return req.socket.remoteAddress ?? '?';
  }

  private roll(): void {
    const minute = Math.floor(this.now() / 60_000);
    if (minute !== this.window) {
      this.window = minute;
      this.failures.clear();
    }
  }

  private checkLimit(req: IncomingMessage): void {
    this.roll();
    if ((this.failures.get(this.addr(req)) ?? 0) >= MAX_FAILURES_PER_MINUTE) {
      this.onFailure('limited');
      throw new FleetTooManyAttemptsError(60 - Math.floor((this.now() % 60_000) / 1000));
    }
  }

  private fail(req: IncomingMessage): void {
    this.onFailure('failed');
    const a = this.addr(req);
    if (this.failures.size >= MAX_TRACKED_ADDRESSES && !this.failures.has(a)) return;
    this.failures.set(a, (this.failures.get(a) ?? 0) + 1);
  }
}
