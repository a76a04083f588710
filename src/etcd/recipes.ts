/**
 * etcd's server-side Lock (v3lockpb) and Election (v3electionpb) services, on the store's
 * recipes, which use the same key layout as etcd's `concurrency` package — so a lock taken here
 * excludes one taken by `etcdctl lock` (a client-side recipe) and the other way round.
 */
import { NoLeaderError } from '../errors.js';
import { prefixEnd } from '../store/index.js';
import type { KeyValue, LeaderKey } from '../store/types.js';
import type { EtcdContext } from './context.js';
import { Code, ETCD_MESSAGES, grpcError, toGrpcError } from './errors.js';
import { kvOut } from './kv.js';
import { big, buf, EMPTY, long, num } from './proto.js';
import { type Methods, type Msg as M, type StreamCall, waits } from './rpc.js';

function leaderIn(l: M | null | undefined): LeaderKey {
  if (!l) throw grpcError(Code.UNKNOWN, ETCD_MESSAGES.missingLeaderKey);
  return { name: buf(l.name), key: buf(l.key), rev: num(l.rev), lease: big(l.lease) };
}

function leaderOut(l: LeaderKey): object {
  return { name: l.name, key: l.key, rev: l.rev, lease: long(l.lease) };
}

export function lockMethods(ctx: EtcdContext): Methods {
  const { store, hdr, alarms } = ctx;
  return {
    Lock: waits((m, signal) => {
      if (alarms.restricting) alarms.checkPut();
      return store
        .lock(buf(m.name), big(m.lease), signal)
        .then((r) => ({ header: hdr(r.header.revision), key: r.key }));
    }),
    Unlock: (m: M) => {
      if (alarms.restricting) alarms.checkDelete();
      return store.unlock(buf(m.key)).then((h) => ({ header: hdr(h.revision) }));
    },
  };
}

export function electionMethods(ctx: EtcdContext): Methods {
  const { store, hdr, alarms } = ctx;
  return {
    Campaign: waits((m, signal) => {
      if (alarms.restricting) alarms.checkPut();
      return store
        .campaign(buf(m.name), big(m.lease), buf(m.value ?? EMPTY), signal)
        .then((r) => ({ header: hdr(r.header.revision), leader: leaderOut(r.leader) }));
    }),
    Proclaim: (m: M) => {
      const leader = leaderIn(m.leader);
      if (alarms.restricting) alarms.checkPut();
      return store.proclaim(leader, buf(m.value)).then((h) => ({ header: hdr(h.revision) }));
    },
    Resign: (m: M) => {
      const leader = leaderIn(m.leader);
      if (alarms.restricting) alarms.checkDelete();
      return store.resign(leader).then((h) => ({ header: hdr(h.revision) }));
    },
    Leader: (m: M) => {
      const kv = store.leader(buf(m.name));
      if (!kv) throw new NoLeaderError();
      return { header: hdr(store.revision()), kv: kvOut(kv) };
    },
    Observe: (call: StreamCall) => observe(ctx, call),
  };
}

/**
 * Observe streams the leader of an election: the current one first (or the first to appear), then
 * every change of leader or of the leader's value (etcd's concurrency.Election.Observe).
 */
function observe(ctx: EtcdContext, call: StreamCall): void {
  const { store, hdr } = ctx;
  const name = buf(call.request.name);
  const pfx = Buffer.concat([name, Buffer.from('/')]);
  let last: KeyValue | undefined;
  let ended = false;
  const check = () => {
    if (ended) return;
    const kv = store.leader(name);
    if (!kv) return;
    if (last?.key.equals(kv.key) && last.modRevision === kv.modRevision) return;
    last = kv;
    call.write({ header: hdr(store.revision()), kv: kvOut(kv) });
  };
  let handle: { cancel(): void } | undefined;
  const stop = () => {
    ended = true;
    handle?.cancel();
  };
  call.on('cancelled', stop);
  call.on('close', stop);
  call.on('error', stop);
  try {
    handle = store.watch(
      { key: pfx, rangeEnd: prefixEnd(pfx), startRevision: store.revision() + 1 },
      {
        onEvents: check,
        onCancel: (reason) => {
          stop();
          call.emit('error', toGrpcError(reason));
        },
      },
    );
    ctx.metrics.count('Observe', 0);
    check();
  } catch (err) {
    stop();
    call.emit('error', toGrpcError(err));
  }
}
