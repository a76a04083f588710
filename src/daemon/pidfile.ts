/**
 * `<dataDir>/edgekeeper.pid`: one daemon per state directory, and a way for `restore` and
 * `backup --data-dir` to tell a stopped node from a running one. A pid file left by a crash is
 * recognised (its process is gone) and replaced.
 */
import { readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AlreadyRunningError } from '../errors.js';

export const PID_FILE = 'edgekeeper.pid';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to another user (the service's dynamic user).
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The pid of a live edgekeeper using `dir`, or undefined. */
export function runningPid(dir: string): number | undefined {
  let text: string;
  try {
    text = readFileSync(join(dir, PID_FILE), 'utf8');
  } catch {
    return undefined;
  }
  const pid = Number(text.trim());
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return undefined;
  return alive(pid) ? pid : undefined;
}

/** Directories claimed by daemons in this process (the pid file cannot tell them apart). */
const claimed = new Set<string>();

/** Claims `dir` for this process; throws AlreadyRunningError when another live daemon has it. Returns the release function. */
export function acquirePidFile(dir: string): () => void {
  const file = join(dir, PID_FILE);
  if (claimed.has(file)) throw new AlreadyRunningError(dir, process.pid);
  const other = runningPid(dir);
  if (other !== undefined) throw new AlreadyRunningError(dir, other);
  writeFileSync(file, `${process.pid}\n`, { mode: 0o644 });
  claimed.add(file);
  return () => {
    claimed.delete(file);
    try {
      if (readFileSync(file, 'utf8').trim() === String(process.pid)) unlinkSync(file);
    } catch {
      // already gone
    }
  };
}
