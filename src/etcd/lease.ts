/**
 * etcd's Lease service. Keep-alives renew in memory (no disk write, as etcd); a keep-alive for an
 * unknown lease answers TTL 0 and TimeToLive answers TTL -1, both exactly as etcd's v3rpc does.
 */
import type { ServerDuplexStream, UntypedServiceImplementation } from '@grpc/grpc-js';
import { LeaseNotFoundError } from '../errors.js';
import { type EtcdContext, unary } from './context.js';
import { toGrpcError } from './errors.js';
import { big, type Decoded, long, num } from './proto.js';

// biome-ignore lint/suspicious/noExplicitAny: decoded wire messages are dynamically shaped
type M = Decoded & Record<string, any>;

export function leaseService(ctx: EtcdContext): UntypedServiceImplementation {
  const { store, hdr, metrics } = ctx;
  return {
    LeaseGrant: unary(ctx, 'LeaseGrant', (m: M) => {
      const id = big(m.ID);
      return store
        .leaseGrant(num(m.TTL), id === 0n ? undefined : id)
        .then((r) => ({ header: hdr(r.header.revision), ID: long(r.id), TTL: r.ttl }));
    }),
    LeaseRevoke: unary(ctx, 'LeaseRevoke', (m: M) =>
      store.leaseRevoke(big(m.ID)).then((h) => ({ header: hdr(h.revision) })),
    ),
    LeaseTimeToLive: unary(ctx, 'LeaseTimeToLive', (m: M) => {
      const id = big(m.ID);
      try {
        const r = store.leaseTimeToLive(id, !!m.keys);
        return {
          header: hdr(r.header.revision),
          ID: long(r.id),
          TTL: r.ttl,
          grantedTTL: r.grantedTtl,
          keys: r.keys,
        };
      } catch (err) {
        if (err instanceof LeaseNotFoundError)
          return { header: hdr(store.revision()), ID: long(id), TTL: -1 };
        throw err;
      }
    }),
    LeaseLeases: unary(ctx, 'LeaseLeases', () => ({
      header: hdr(store.revision()),
      leases: store.leaseList().map((id) => ({ ID: long(id) })),
    })),
    LeaseKeepAlive: (call: ServerDuplexStream<M, object>) => {
      let closed = false;
      const stop = () => {
        closed = true;
      };
      call.on('cancelled', stop);
      call.on('error', stop);
      call.on('close', stop);
      call.on('end', () => {
        stop();
        call.end();
      });
      // A client that sends keep-alives but never reads replies: stop reading its requests
      // until gRPC's buffer drains, so the backlog stays bounded.
      call.on('drain', () => call.resume());
      call.on('data', (m: M) => {
        if (closed) return;
        const id = big(m.ID);
        let out: object;
        try {
          const r = store.leaseKeepAlive(id);
          out = { header: hdr(r.header.revision), ID: long(r.id), TTL: r.ttl };
          metrics.count('LeaseKeepAlive', 0);
        } catch (err) {
          if (!(err instanceof LeaseNotFoundError)) {
            const e = toGrpcError(err);
            metrics.count('LeaseKeepAlive', e.code);
            closed = true;
            call.emit('error', e);
            return;
          }
          metrics.count('LeaseKeepAlive', 5);
          out = { header: hdr(store.revision()), ID: long(id) };
        }
        if (!call.write(out)) call.pause();
      });
    },
  };
}
