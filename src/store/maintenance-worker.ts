/**
 * The store's maintenance thread: checkpoints and VACUUM on a connection of its own, so the
 * fsyncs they need never stall the event loop or a commit's own work. Messages come from
 * maintenance.ts; each is answered in order.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type Database from 'better-sqlite3';
import { openDatabase } from './engine.js';

const port = parentPort!;
const { file } = (workerData as { data: { file: string } }).data;
let db: Database.Database | undefined;

type Msg = { t: 'checkpoint'; mode: 'PASSIVE' | 'TRUNCATE' } | { t: 'vacuum' } | { t: 'close' };

port.on('message', (msg: Msg) => {
  try {
    if (!db) {
      db = openDatabase(file);
      // A checkpoint reads each page once; a large cache would only cost memory.
      db.pragma('cache_size = -256');
    }
    const t = performance.now();
    if (msg.t === 'checkpoint') {
      const [r] = db.pragma(`wal_checkpoint(${msg.mode})`) as {
        busy: number;
        log: number;
        checkpointed: number;
      }[];
      port.postMessage({ ok: true, ...r, ms: performance.now() - t });
    } else if (msg.t === 'vacuum') {
      db.exec('VACUUM');
      const [r] = db.pragma('wal_checkpoint(TRUNCATE)') as {
        busy: number;
        log: number;
        checkpointed: number;
      }[];
      port.postMessage({ ok: true, ...r, ms: performance.now() - t });
    } else {
      db?.close();
      db = undefined;
      port.postMessage({ ok: true });
    }
  } catch (e) {
    port.postMessage({ ok: false, code: (e as { code?: string }).code, message: (e as Error).message });
  }
});
