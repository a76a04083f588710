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
import type {
  sendUnaryData,
  ServerUnaryCall,
  ServerWritableStream,
  UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { exportHistory } from '../store/index.js';
import { type EtcdContext, unary } from './context.js';
import { Code, ETCD_MESSAGES, grpcError, toGrpcError } from './errors.js';
import { type Decoded, long, num } from './proto.js';
import { writeEtcdSnapshot } from './snapshot/index.js';

// biome-ignore lint/suspicious/noExplicitAny: decoded wire messages are dynamically shaped
type M = Decoded & Record<string, any>;

/** etcd's snapshot chunk size (32 KiB). */
const SNAPSHOT_CHUNK = 32 * 1024;
const ALARM_NOSPACE = 1;

function singleMember(what: string): Error {
  return grpcError(
    Code.FAILED_PRECONDITION,
    `edgekeeper: ${what} is not possible: edgekeeper is a single-member store (one SQLite file per node)`,
  );
}

export function maintenanceService(ctx: EtcdContext): UntypedServiceImplementation {
  const { store, hdr } = ctx;
  const alarms = () =>
    store.stats().noSpace ? [{ memberID: long(ctx.memberId), alarm: ALARM_NOSPACE }] : [];
  return {
    Status: unary(ctx, 'Status', () => {
      const s = store.stats();
      const errors = s.noSpace ? [`memberID:${ctx.memberId.toString()} alarm:NOSPACE `] : [];
      return {
        header: hdr(s.revision),
        version: ctx.version,
        dbSize: s.dbSize,
        leader: long(ctx.memberId),
        // There is no raft log; the revision is the closest monotonic counter a client can compare.
        raftIndex: s.revision,
        raftTerm: 1,
        raftAppliedIndex: s.revision,
        errors,
        dbSizeInUse: s.dbSizeInUse,
        isLearner: false,
        dbSizeQuota: s.quota,
      };
    }),
    Alarm: unary(ctx, 'Alarm', (m: M) => {
      const action = m.action as number;
      if (action === 1) {
        throw grpcError(
          Code.FAILED_PRECONDITION,
          'edgekeeper: alarms are raised by the store itself (NOSPACE when the database passes its quota)',
        );
      }
      // GET lists the raised alarms. DEACTIVATE answers with what is still raised: NOSPACE clears
      // itself once compaction and defragmentation bring the database under its quota.
      return { header: hdr(store.revision()), alarms: alarms() };
    }),
    Defragment: unary(ctx, 'Defragment', () =>
      store.defragment().then(() => ({ header: hdr(store.revision()) })),
    ),
    Hash: unary(ctx, 'Hash', () => {
      const h = store.hashKv();
      return { header: hdr(store.revision()), hash: h.hash >>> 0 };
    }),
    HashKV: unary(ctx, 'HashKV', (m: M) => {
      const rev = num(m.revision) || undefined;
      const h = store.hashKv(rev);
      return {
        header: hdr(store.revision()),
        hash: h.hash >>> 0,
        compact_revision: h.compactRevision,
        hash_revision: h.revision,
      };
    }),
    Snapshot: (call: ServerWritableStream<M, object>) => {
      streamSnapshot(ctx, call).catch((err) => {
        const e = toGrpcError(err);
        ctx.metrics.count('Snapshot', e.code);
        call.emit('error', e);
      });
    },
    MoveLeader: unary(ctx, 'MoveLeader', () => {
      throw singleMember('moving the leader');
    }),
    Downgrade: unary(ctx, 'Downgrade', () => {
      throw grpcError(
        Code.FAILED_PRECONDITION,
        'edgekeeper: cluster downgrade is not supported; install the older edgekeeper package instead',
      );
    }),
  };
}

/**
 * The store's history as the bbolt file an etcd member would snapshot (./snapshot/), written from
 * one read transaction into a temporary file (memory stays at a few pages; the disk holds the
 * snapshot once), then streamed in etcd's chunk size with `remaining_bytes` counting down and the
 * file's SHA-256 as the last 32 bytes, as etcd sends it. The stream honours backpressure.
 */
async function streamSnapshot(ctx: EtcdContext, call: ServerWritableStream<M, object>): Promise<void> {
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

export function clusterService(ctx: EtcdContext): UntypedServiceImplementation {
  const { store, hdr } = ctx;
  const member = () => ({
    ID: long(ctx.memberId),
    name: ctx.nodeName,
    peerURLs: [],
    clientURLs: ctx.clientUrls(),
    isLearner: false,
  });
  return {
    MemberList: unary(ctx, 'MemberList', () => ({ header: hdr(store.revision()), members: [member()] })),
    MemberAdd: unary(ctx, 'MemberAdd', () => {
      throw singleMember('adding a member');
    }),
    MemberRemove: unary(ctx, 'MemberRemove', () => {
      throw singleMember('removing a member');
    }),
    MemberUpdate: unary(ctx, 'MemberUpdate', () => {
      throw singleMember('updating a member');
    }),
    MemberPromote: unary(ctx, 'MemberPromote', () => {
      throw singleMember('promoting a member');
    }),
  };
}

export function authService(ctx: EtcdContext): UntypedServiceImplementation {
  return {
    Authenticate: unary(ctx, 'Authenticate', () => {
      throw grpcError(Code.FAILED_PRECONDITION, ETCD_MESSAGES.authNotEnabled);
    }),
    AuthStatus: unary(ctx, 'AuthStatus', () => ({
      header: ctx.hdr(ctx.store.revision()),
      enabled: false,
      authRevision: 0,
    })),
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

export function healthService(ctx: EtcdContext): UntypedServiceImplementation {
  return {
    Check: (call: ServerUnaryCall<M, object>, cb: sendUnaryData<object>) => {
      ctx.metrics.count('HealthCheck', 0);
      const svc = String(call.request.service ?? '');
      if (!KNOWN_SERVICES.has(svc)) {
        cb(grpcError(Code.NOT_FOUND, 'unknown service'));
        return;
      }
      cb(null, { status: SERVING });
    },
    Watch: (call: ServerWritableStream<M, object>) => {
      const svc = String(call.request.service ?? '');
      call.write({ status: KNOWN_SERVICES.has(svc) ? SERVING : SERVICE_UNKNOWN });
      // The stream stays open until the client leaves or the server stops.
    },
  };
}
