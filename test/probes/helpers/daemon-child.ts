/**
 * A stand-in daemon for interop tests: runs the probes part with a real store and HTTP server in
 * its own process, prints `{"port": N}` once listening, and stops cleanly on SIGTERM. Options come
 * as JSON in argv[2]. Tests kill it with SIGKILL to prove no bpftrace outlives it, and run it in
 * a private mount namespace without BTF.
 */
import { makeHarness } from './harness.js';

const opts = JSON.parse(process.argv[2] ?? '{}');
const h = await makeHarness(opts);
await h.part.start();
const port = await h.listen();
process.stdout.write(`${JSON.stringify({ port, pid: process.pid })}\n`);
process.on('SIGTERM', () => {
  void h.close().then(() => process.exit(0));
});
// Keep the event loop alive (the store's and part's timers are unref'd).
setInterval(() => {}, 1 << 30);
