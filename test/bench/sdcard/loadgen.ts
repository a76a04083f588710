/**
 * The Go load generator (loadgen/main.go): built once per version of its source into
 * node_modules/.cache (so repeated runs do not rebuild), and run as a child process whose JSON
 * lines are collected.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { onPath } from './card.js';

const here = fileURLToPath(new URL('.', import.meta.url));
const root = join(here, '..', '..', '..');
const SOURCE = join(here, 'loadgen', 'main.go');
// Debian's etcd 3.4 client sources (golang-etcd-server-dev) and their dependencies
const GOPATH = '/usr/share/gocode';

export function missingGo(): string[] {
  const out: string[] = [];
  if (!onPath('go')) out.push('go (Debian package golang-go)');
  if (!existsSync(join(GOPATH, 'src/go.etcd.io/etcd/clientv3/client.go')))
    out.push(`etcd's Go client sources in ${GOPATH} (Debian package golang-etcd-server-dev)`);
  return out;
}

/** The loadgen binary for the current source, built if this version was never built here. */
export function buildLoadgen(): string {
  const hash = createHash('sha256').update(readFileSync(SOURCE)).digest('hex').slice(0, 16);
  const dir = join(root, 'node_modules', '.cache', 'edgekeeper-sdcard');
  const bin = join(dir, `loadgen-${hash}`);
  if (existsSync(bin)) return bin;
  mkdirSync(dir, { recursive: true });
  const tmp = `${bin}.${process.pid}.tmp`;
  try {
    execFileSync('go', ['build', '-o', tmp, 'main.go'], {
      cwd: join(here, 'loadgen'),
      // GOPATH mode: no module downloads, Debian's sources only
      env: { ...process.env, GO111MODULE: 'off', GOPATH, GOFLAGS: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (err) {
    rmSync(tmp, { force: true });
    const e = err as { stderr?: Buffer };
    throw new Error(`go build of the load generator failed: ${e.stderr?.toString() ?? String(err)}`);
  }
  renameSync(tmp, bin);
  // earlier versions' binaries are of no more use
  for (const f of readdirSync(dir))
    if (/^loadgen-[0-9a-f]{16}$/.test(f) && join(dir, f) !== bin) rmSync(join(dir, f));
  return bin;
}

export type Line = Record<string, unknown> & { phase?: string; class?: string };

/**
 * Run the loadgen with `args`. `onPhase` is awaited on each {"phase": ...} line it prints (with
 * -wait: "preloaded", after which the loadgen is told to start, and "done"). Resolves with every
 * line once it exits 0.
 */
export function runLoadgen(
  bin: string,
  args: string[],
  onPhase: (phase: string) => void | Promise<void> = () => undefined,
  /** Called with the process the moment it is spawned. */
  track?: (p: ChildProcess) => void,
): Promise<Line[]> {
  const child = spawn(bin, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  track?.(child);
  const lines: Line[] = [];
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  let hooks: Promise<void> = Promise.resolve();
  createInterface({ input: child.stdout }).on('line', (l) => {
    let m: Line;
    try {
      m = JSON.parse(l) as Line;
    } catch {
      stderr += `\nnot JSON: ${l}`;
      return;
    }
    lines.push(m);
    if (m.phase === 'preloaded' || m.phase === 'done') {
      const phase = m.phase;
      hooks = hooks.then(async () => {
        try {
          await onPhase(phase);
        } catch (err) {
          // the loadgen may be waiting for its start line: it must not outlive the error
          child.kill('SIGKILL');
          throw err;
        }
        if (phase === 'preloaded') child.stdin.write('go\n');
      });
    }
  });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    // 'close', not 'exit': every line of stdout has been read by then
    child.once('close', (code, signal) => {
      child.stdin.destroy();
      hooks.then(() => {
        if (code === 0) resolve(lines);
        else reject(new Error(`loadgen ${args.join(' ')} exited with ${code ?? signal}: ${stderr}`));
      }, reject);
    });
  });
}
