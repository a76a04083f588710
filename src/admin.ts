/**
 * The local admin token. The HTTP routes that change the node or read its secrets (device
 * registration, backups, dead letters) need it: the daemon writes a new random token to
 * `<dataDir>/http.token` (0600, in a 0700 directory) at every start and removes it at stop, so
 * whoever may read that file may administer the node, and any other local process gets 401.
 * A request sends it as `Authorization: Bearer <token>`. The 401 answer names the file, so the
 * CLI finds it without being told the state directory: `adminFetch` reads it when the user it
 * runs as may (or `EDGEKEEPER_HTTP_TOKEN_FILE`), and otherwise says which file it needs.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const ADMIN_TOKEN_FILE = 'http.token';
const ENV = 'EDGEKEEPER_HTTP_TOKEN_FILE';

/** Writes a fresh token into `dir` (0600, atomically); returns the token and the file. */
export function writeAdminToken(dir: string): { token: string; file: string } {
  const token = randomBytes(32).toString('base64url');
  const file = join(dir, ADMIN_TOKEN_FILE);
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${token}\n`, { mode: 0o600 });
  renameSync(tmp, file);
  return { token, file };
}

export function removeAdminToken(file: string): void {
  rmSync(file, { force: true });
}

/** Whether an `Authorization` header carries `token`; 'missing' when it carries no bearer token at all. */
export function checkBearer(header: string | undefined, token: string): 'ok' | 'missing' | 'wrong' {
  const m = /^Bearer +(\S+)\s*$/i.exec(header ?? '');
  if (!m) return 'missing';
  const got = Buffer.from(m[1]!);
  const want = Buffer.from(token);
  return got.length === want.length && timingSafeEqual(got, want) ? 'ok' : 'wrong';
}

/**
 * `fetch` for the CLI: sends the admin token from `EDGEKEEPER_HTTP_TOKEN_FILE` when set;
 * without it, a 401 that names the daemon's token file is retried once with that file's token.
 * A file this user may not read ends in an error that says which file and why.
 */
export async function adminFetch(url: string, init: RequestInit = {}): Promise<Response> {
  const fromEnv = process.env[ENV];
  const send = (token?: string) =>
    fetch(url, {
      ...init,
      headers: {
        ...(init.headers as Record<string, string>),
        ...(token ? { authorization: `Bearer ${token}` } : {}),
      },
    });
  if (fromEnv) return send(readToken(fromEnv));
  const res = await send();
  if (res.status !== 401) return res;
  const body = (await res
    .clone()
    .json()
    .catch(() => ({}))) as { tokenFile?: string };
  if (typeof body.tokenFile !== 'string') return res;
  return send(readToken(body.tokenFile));
}

/** The admin token file cannot be read by this user. */
export class AdminTokenError extends Error {}

function readToken(file: string): string {
  try {
    return readFileSync(file, 'utf8').trim();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new AdminTokenError(
      `the daemon wants its admin token from ${file}, which this user cannot read (${code}); ` +
        `run as the daemon's user (e.g. with sudo) or point ${ENV} at a copy you may read`,
    );
  }
}
