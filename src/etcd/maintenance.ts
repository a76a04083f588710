/**
 * etcd's Maintenance and Cluster services for a single-member "cluster", plus grpc.health.v1 and
 * the two Auth calls an unauthenticated client makes. What a one-node SQLite store cannot do
 * (moving leadership, downgrades, membership changes) is refused with a message that says why.
 */
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportHistory } from '../store/index.js';
import {
  ACTION_ACTIVATE,
  ACTION_DEACTIVATE,
  ACTION_GET,
  ALARM_NONE,
  type AlarmMember,
  alarmText,
} from './alarms.js';
import type { EtcdContext } from './context.js';
import { Code, grpcError, toGrpcError } from './errors.js';
import { big, long, num } from './proto.js';
import type { Methods, Msg as M, StreamCall } from './rpc.js';
import { writeEtcdSnapshot } from './snapshot/index.js';

/** etcd's snapshot chunk size (32 KiB). */
const SNAPSHOT_CHUNK = 32 * 1024;

function singleMember(what: string): Error {
  return grpcError(
    Code.FAILED_PRECONDITION,
    `edgekeeper: ${what} is not possible: edgekeeper is a single-member store (one SQLite file per node)`,
  );
}

const alarmOut = (a: AlarmMember) => ({ memberID: long(a.memberId), alarm: a.alarm || undefined });

export function maintenanceMethods(ctx: EtcdContext): Methods {
  const { store, hdr, alarms } = ctx;
  return {
    Status: async () => {
      const s = store.stats();
      await alarms.sync(s);
      return {
        header: hdr(s.revision),
        version: ctx.version,
        dbSize: s.dbSize,
        leader: long(ctx.memberId),
        // There is no raft log; the revision is the closest monotonic counter a client can compare.
        raftIndex: s.revision,
        raftTerm: 1,
        raftAppliedIndex: s.revision,
        errors: alarms.list().map(alarmText),
        dbSizeInUse: s.dbSizeInUse,
        isLearner: false,
        dbSizeQuota: s.quota,
      };
    },
    Alarm: async (m: M) => {
      const action = m.action as number;
      const alarm = (m.alarm as number) || ALARM_NONE;
      // memberID is a uint64: a client may send any 64-bit value.
      const member = BigInt.asUintN(64, big(m.memberID));
      let out: AlarmMember[];
      if (action === ACTION_GET) {
        await alarms.sync();
        out = alarms.list(alarm);
      } else if (action === ACTION_ACTIVATE) {
        out = [await alarms.activate(member, alarm)];
      } else if (action === ACTION_DEACTIVATE) {
        const gone = await alarms.deactivate(member, alarm);
        out = gone ? [gone] : [];
      } else {
        // etcd 3.4 crashes on an unknown action (it answers with a nil response); we refuse it.
        throw grpcError(Code.INVALID_ARGUMENT, `edgekeeper: unknown alarm action ${action}`);
      }
      return { header: hdr(store.revision()), alarms: out.map(alarmOut) };
    },
    // etcd answers Defragment without a header.
    Defragment: () => store.defragment().then(() => ({})),
    Hash: () => {
      const h = store.hashKv();
      return { header: hdr(store.revision()), hash: h.hash >>> 0 };
    },
    HashKV: (m: M) => {
      const rev = num(m.revision) || undefined;
      const h = store.hashKv(rev);
      return {
        header: hdr(store.revision()),
        hash: h.hash >>> 0,
        compact_revision: h.compactRevision,
        hash_revision: h.revision,
      };
    },
    Snapshot: (call: StreamCall) => {
      streamSnapshot(ctx, call).catch((err) => {
        const e = toGrpcError(err);
        ctx.metrics.count('Snapshot', e.code);
        call.emit('error', e);
      });
    },
    MoveLeader: () => {
      throw singleMember('moving the leader');
    },
    Downgrade: () => {
      throw grpcError(
        Code.FAILED_PRECONDITION,
        'edgekeeper: cluster downgrade is not supported; install the older edgekeeper package instead',
      );
    },
  };
}

/**
 * The store's history as the bbolt file an etcd member would snapshot (./snapshot/), written from
 * one read transaction into a temporary file (memory stays at a few pages; the disk holds the
 * snapshot once), then streamed in etcd's chunk size with `remaining_bytes` counting down and the
 * file's SHA-256 as the last 32 bytes, as etcd sends it. The stream honours backpressure.
 */
async function streamSnapshot(ctx: EtcdContext, call: StreamCall): Promise<void> {
  // In the state directory when there is one: same filesystem as the database, not a small tmpfs.
  const file = join(
    ctx.stateDir || tmpdir(),
    `.edgekeeper-snapshot-${process.pid}-${randomBytes(6).toString('hex')}.db`,
  );
  let cancelled = false;
  const cancel = new Promise<void>((resolve) =>
    call.once('cancelled', () => {
      cancelled = true;
      resolve();
    }),
  );
  try {
    const history = exportHistory(ctx.store);
    let revision: number;
    try {
      ({ revision } = await writeEtcdSnapshot(file, history, {
        member: { name: ctx.nodeName, clientUrls: ctx.clientUrls() },
      }));
    } finally {
      history.close();
    }
    const fh = await open(file, 'r');
    try {
      const { size: fileSize } = await fh.stat();
      const size = fileSize + 32;
      const hash = createHash('sha256');
      let sent = 0;
      const header = ctx.hdr(revision);
      while (!cancelled && sent < size) {
        let blob: Buffer;
        if (sent < fileSize) {
          const chunk = Buffer.allocUnsafe(Math.min(SNAPSHOT_CHUNK, fileSize - sent));
          const { bytesRead } = await fh.read(chunk, 0, chunk.length, sent);
          if (bytesRead === 0) throw new Error('snapshot file shrank while streaming');
          blob = chunk.subarray(0, bytesRead);
          hash.update(blob);
        } else {
          blob = hash.digest();
        }
        sent += blob.length;
        const msg = { header, remaining_bytes: size - sent, blob, version: ctx.version };
        // A client that leaves while we wait for `drain` must not keep us (and the file) forever.
        if (!call.write(msg)) await Promise.race([once(call, 'drain'), cancel]);
      }
      ctx.metrics.count('Snapshot', 0);
      call.end();
    } finally {
      await fh.close();
    }
  } finally {
    await rm(file, { force: true });
  }
}

export function clusterMethods(ctx: EtcdContext): Methods {
  const { hdr } = ctx;
  // Clients that take their endpoints from the member list (Patroni, clientv3's auto-sync) must
  // be able to dial them: the unix socket is advertised only when there is no TCP listener.
  const advertised = () => {
    const urls = ctx.clientUrls();
    const tcp = urls.filter((u) => !u.startsWith('unix://'));
    return tcp.length ? tcp : urls;
  };
  const member = () => ({
    ID: long(ctx.memberId),
    name: ctx.nodeName,
    peerURLs: [],
    clientURLs: advertised(),
    isLearner: false,
  });
  const refuse = (what: string) => () => {
    throw singleMember(what);
  };
  return {
    // etcd's cluster service answers with a header without a revision.
    MemberList: () => ({ header: hdr(0), members: [member()] }),
    MemberAdd: refuse('adding a member'),
    MemberRemove: refuse('removing a member'),
    MemberUpdate: refuse('updating a member'),
    MemberPromote: refuse('promoting a member'),
  };
}

const SERVING = 1;
const SERVICE_UNKNOWN = 3;
const KNOWN_SERVICES = new Set([
  '',
  'etcdserverpb.KV',
  'etcdserverpb.Watch',
  'etcdserverpb.Lease',
  'etcdserverpb.Maintenance',
]);

export function healthMethods(): Methods {
  return {
    Check: (m: M) => {
      if (!KNOWN_SERVICES.has(String(m.service ?? ''))) throw grpcError(Code.NOT_FOUND, 'unknown service');
      return { status: SERVING };
    },
    Watch: (call: StreamCall) => {
      const svc = String(call.request.service ?? '');
      call.write({ status: KNOWN_SERVICES.has(svc) ? SERVING : SERVICE_UNKNOWN });
      // The stream stays open until the client leaves or the server stops.
    },
  };
}
