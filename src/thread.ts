/**
 * Starting one of our modules on a worker thread, from the compiled JS or, in tests, from the
 * TypeScript source: loader hooks of the main thread do not reach worker threads on Node 20, so
 * from source the thread registers tsx itself before importing its entry.
 */
import { Worker, type WorkerOptions } from 'node:worker_threads';

/** `entry` is relative to `base` (the caller's import.meta.url), without its extension. */
export function startThread(base: string, entry: string, data: unknown, options: WorkerOptions = {}): Worker {
  const fromSource = base.endsWith('.ts');
  const url = new URL(`${entry}${fromSource ? '.ts' : '.js'}`, base).href;
  const boot = `const { workerData } = require('node:worker_threads');
    (async () => {
      if (workerData.fromSource) (await import('tsx/esm/api')).register();
      await import(workerData.entry);
    })().catch((e) => { throw e; });`;
  return new Worker(boot, { ...options, eval: true, workerData: { data, entry: url, fromSource } });
}
