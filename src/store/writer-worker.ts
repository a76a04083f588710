/** The writer thread: owns the writer connection and runs batches sent by `Writer`. */
import { parentPort, workerData } from 'node:worker_threads';
import { Engine, type EngineOptions, type EngineRequest, toWireError } from './engine.js';
import { revive } from './wire.js';

let engine: Engine | undefined;
const port = parentPort!;

port.on('message', (msg: { t: string; reqs?: EngineRequest[]; wantPrev?: boolean }) => {
  try {
    if (msg.t === 'open') {
      engine = new Engine((workerData as { data: EngineOptions }).data);
      port.postMessage(engine.open());
    } else if (msg.t === 'batch') port.postMessage(engine!.runBatch(revive(msg.reqs!), msg.wantPrev!));
    else if (msg.t === 'close') {
      engine?.close();
      port.postMessage({ closed: true });
    }
  } catch (e) {
    port.postMessage({ error: toWireError(e) });
  }
});
