/** Runs a command in this process with its output captured (src/cli.ts `io`). */
import { io } from '../src/cli.js';

/** Runs `fn` with the CLI's stdout and stderr captured (the test runner's own output untouched). */
export async function capture(
  fn: () => Promise<number>,
): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const saved = { ...io };
  io.out = (d) => {
    out.push(String(d));
  };
  io.err = (d) => {
    err.push(d);
  };
  try {
    const code = await fn();
    return { code, out: out.join(''), err: err.join('') };
  } finally {
    Object.assign(io, saved);
  }
}
