/**
 * aedes alone, for the raw-rate phase of the ingest benches: the broker edgekeeper embeds,
 * in its own process, with nothing but routing. Prints {"port": P} once listening.
 */
import net from 'node:net';
import { Aedes } from 'aedes';

// aedes routes through mqemitter, which works its queue recursively once `concurrency` (100)
// deliveries are pending: with 1,000 publishers the stack overflowed. A concurrency above the
// number of publishers keeps the queue short. (edgekeeper's embedded broker routes reports to
// no one, so its queue stays empty.)
const broker = await Aedes.createBroker({ concurrency: 10_000, maxClientsIdLength: 64 });
const server = net.createServer(broker.handle as (s: net.Socket) => void);
server.listen(0, '127.0.0.1', () => {
  console.log(JSON.stringify({ port: (server.address() as net.AddressInfo).port }));
});
process.on('SIGTERM', () => broker.close(() => server.close(() => process.exit(0))));
