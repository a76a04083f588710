/**
 * The fault drill's long form (test/drill/drill.ts): ten minutes, 40 SIGKILLs, 4 receiver
 * outages, 10 devices, 4 etcd clients. One JSON line: what was acknowledged and checked.
 */
import { runDrill } from '../../drill/drill.js';

export default async function drill(): Promise<void> {
  const r = await runDrill({
    seconds: 600,
    kills: 40,
    devices: 10,
    etcdClients: 4,
    outages: 4,
    log: (l) => process.stderr.write(`drill: ${l}\n`),
  });
  process.stdout.write(`${JSON.stringify({ bench: 'drill', unit: 'count', n: r.kills, ...r })}\n`);
}
