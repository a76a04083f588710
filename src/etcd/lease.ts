/**
 * etcd's Lease service. Keep-alives renew in memory (no disk write, as etcd); a keep-alive for an
 * unknown lease answers TTL 0 and TimeToLive answers TTL -1, both exactly as etcd's v3rpc does.
 */
import { LeaseNotFoundError } from '../errors.js';
import type { EtcdContext } from './context.js';
import { toGrpcError } from './errors.js';
import { big, long, num } from './proto.js';
import type { Methods, Msg as M, StreamCall } from './rpc.js';

export function leaseMethods(ctx: EtcdContext): Methods {
  const { store, hdr, metrics, alarms } = ctx;
  return {
    LeaseGrant: (m: M) => {
      const id = big(m.ID);
      if (alarms.restricting) alarms.checkLeaseGrant();
      return store
        .leaseGrant(num(m.TTL), id === 0n ? undefined : id)
        .then((r) => ({ header: hdr(r.header.revision), ID: long(r.id), TTL: r.ttl }));
    },
    LeaseRevoke: (m: M) => {
      if (alarms.restricting) alarms.checkDelete();
      return store.leaseRevoke(big(m.ID)).then((h) => ({ header: hdr(h.revision) }));
    },
    LeaseTimeToLive: (m: M) => {
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
    },
    LeaseLeases: () => ({
      header: hdr(store.revision()),
      leases: store.leaseList().map((id) => ({ ID: long(id) })),
    }),
    LeaseKeepAlive: (call: StreamCall) => {
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
