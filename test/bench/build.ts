/**
 * Benches that measure the daemon as it runs under systemd (plain node on compiled JavaScript,
 * not tsx, in its own process) build it here: every file of src/ plus the bench's own entry
 * files are transpiled one by one with esbuild (no bundling, so the module graph and lazy
 * imports stay as they are) into a temporary directory laid out like the repository, with
 * node_modules, assets and bpf linked and the proto files copied.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../', import.meta.url));

export interface JsBuild {
  /** The compiled path of a repository .ts file (absolute or relative to the repository). */
  js(tsFile: string): string;
  cleanup(): void;
}

export function buildJs(extraEntries: string[] = []): JsBuild {
  const out = mkdtempSync(join(tmpdir(), 'ek-bench-js-'));
  const files = [...walk(join(root, 'src')), ...extraEntries];
  const r = spawnSync(
    join(root, 'node_modules', '.bin', 'esbuild'),
    [
      ...files,
      `--outdir=${out}`,
      `--outbase=${root}`,
      '--format=esm',
      '--platform=node',
      '--target=node20',
      '--log-level=error',
    ],
    { encoding: 'utf8' },
  );
  if (r.status !== 0) throw new Error(`esbuild failed: ${r.stderr}`);
  cpSync(join(root, 'src', 'etcd', 'proto'), join(out, 'src', 'etcd', 'proto'), { recursive: true });
  // the daemon reads its version from package.json, which also makes .js files ES modules
  copyFileSync(join(root, 'package.json'), join(out, 'package.json'));
  for (const d of ['node_modules', 'assets', 'bpf']) symlinkSync(join(root, d), join(out, d));
  return {
    js: (tsFile) =>
      join(out, relative(root, tsFile.startsWith('/') ? tsFile : join(root, tsFile)).replace(/\.ts$/, '.js')),
    cleanup: () => rmSync(out, { recursive: true, force: true }),
  };
}

/** The environment the systemd unit gives the daemon (its `Environment=` lines), over ours. */
export function unitEnvironment(): NodeJS.ProcessEnv {
  const unit = readFileSync(join(root, 'systemd', 'edgekeeper.service'), 'utf8');
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const m of unit.matchAll(/^Environment=([A-Za-z_][A-Za-z0-9_]*)=(.*)$/gm)) env[m[1]!] = m[2]!;
  return env;
}

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p));
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}
