/**
 * A throwaway PostgreSQL 15 for the sync tests: its own data directory, a free loopback port,
 * run as the `postgres` user (PostgreSQL refuses root). A missing PostgreSQL is a loud failure.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const BIN = process.env.EDGEKEEPER_PG_BIN ?? '/usr/lib/postgresql/15/bin';

export interface TestPostgres {
  url: string;
  port: number;
  /** The cluster's data directory (postmaster.pid lives here). */
  dataDir: string;
  /** Stop the server and remove its directory; idempotent. */
  stop(): void;
}

export async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

function asPostgres(cmd: string): void {
  const isRoot = process.getuid?.() === 0;
  const r = isRoot
    ? spawnSync('su', ['postgres', '-c', cmd], { encoding: 'utf8' })
    : spawnSync('sh', ['-c', cmd], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`PostgreSQL command failed (${cmd}): ${r.stderr || r.stdout}`);
}

export async function startPostgres(): Promise<TestPostgres> {
  if (!existsSync(join(BIN, 'pg_ctl')))
    throw new Error(
      `PostgreSQL 15 is required at ${BIN} (apt-get install postgresql); the sync tests cannot run without it`,
    );
  const dir = mkdtempSync(join(tmpdir(), 'ek-pg-'));
  chmodSync(dir, 0o777);
  if (process.getuid?.() === 0) execFileSync('chown', ['postgres', dir]);
  const port = await freePort();
  const data = join(dir, 'data');
  let stopped = false;
  const stop = () => {
    if (stopped) return;
    stopped = true;
    try {
      asPostgres(`${BIN}/pg_ctl -D ${data} -m immediate -w stop`);
    } catch {
      // Already gone.
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    asPostgres(`${BIN}/initdb -D ${data} -A trust -U test --no-sync >/dev/null`);
    // fsync off: test data is thrown away; synchronous_commit stays on so commits mean commits.
    asPostgres(
      `${BIN}/pg_ctl -D ${data} -l ${dir}/log -w start -o "-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=50"`,
    );
  } catch (err) {
    stop();
    throw err;
  }
  return { url: `postgres://test@127.0.0.1:${port}/postgres`, port, dataDir: data, stop };
}
