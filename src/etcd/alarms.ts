/**
 * etcd's alarms (Maintenance.Alarm): a set of (member, alarm type) pairs kept in the etcd part's
 * own table, so they survive a restart as etcd's (kept in its backend) do. Semantics of etcd's
 * applier, checked against etcd 3.4:
 * - NOSPACE raised (by a client, or by the quota: a write the store refused for space) caps the
 *   key space until it is disarmed, even once space is freed: Put, a Txn with a Put in its top
 *   level branches, and LeaseGrant fail with "etcdserver: mvcc: database space exceeded";
 *   deletes, compaction and lease revokes still work. Disarm after compacting and defragmenting.
 * - CORRUPT refuses every write: Put, DeleteRange, a Txn that is not read-only, Compact,
 *   LeaseGrant and LeaseRevoke fail with "etcdserver: corrupt cluster"; reads still work.
 * - Any other type is recorded and listed, and changes nothing else.
 */
import type { Logger } from '../log.js';
import type { Migration, Store, StoreStats } from '../store/types.js';
import { Code, ETCD_MESSAGES, grpcError } from './errors.js';
import type { Msg } from './rpc.js';

export const ALARM_NONE = 0;
export const ALARM_NOSPACE = 1;
export const ALARM_CORRUPT = 2;
export const ALARM_NAMES: Record<number, string> = { 0: 'NONE', 1: 'NOSPACE', 2: 'CORRUPT' };

export const ACTION_GET = 0;
export const ACTION_ACTIVATE = 1;
export const ACTION_DEACTIVATE = 2;

/** The alarms table (the etcd part's schema, version 1). Member IDs are uint64, kept as decimal text (SQLite integers are signed). */
export const alarmsMigration: Migration = {
  part: 'etcd',
  version: 1,
  sql: `
CREATE TABLE IF NOT EXISTS etcd_alarms(
  member_id TEXT NOT NULL,
  alarm INTEGER NOT NULL,
  PRIMARY KEY (member_id, alarm)
) WITHOUT ROWID;
`,
};

export interface AlarmMember {
  memberId: bigint;
  alarm: number;
}

const key = (memberId: bigint, alarm: number) => `${alarm}/${memberId}`;

export class Alarms {
  private readonly active = new Map<string, AlarmMember>();
  /** NOSPACE is raised: puts and lease grants are refused. Read on every write, so a field. */
  capped = false;
  /** CORRUPT is raised: every write is refused. */
  corrupt = false;
  /** Either of them: the one test a write pays while no alarm is raised. */
  restricting = false;
  private raising: Promise<unknown> | undefined;

  constructor(
    private readonly store: Store,
    private readonly self: bigint,
    private readonly log: Logger,
  ) {
    let rows: { member_id: string; alarm: number }[];
    try {
      rows = store
        .query<{ member_id: string; alarm: number }>('SELECT member_id, alarm FROM etcd_alarms')
        .all();
    } catch (err) {
      throw new Error(
        `the store has no etcd_alarms table: open it with the etcd part's migrations (etcdMigrations) (${String(err)})`,
      );
    }
    for (const r of rows) this.add({ memberId: BigInt(r.member_id), alarm: r.alarm });
  }

  /** Raised alarms of `alarm`'s type (every type for NONE), as etcd's AlarmStore.Get. */
  list(alarm = ALARM_NONE): AlarmMember[] {
    const out: AlarmMember[] = [];
    for (const m of this.active.values()) if (alarm === ALARM_NONE || m.alarm === alarm) out.push(m);
    return out.sort((a, b) => a.alarm - b.alarm || (a.memberId < b.memberId ? -1 : 1));
  }

  /** Raise an alarm (idempotent); resolves with the alarm once it is stored. */
  async activate(memberId: bigint, alarm: number): Promise<AlarmMember> {
    const existing = this.active.get(key(memberId, alarm));
    if (existing) return existing;
    // freesSpace: the write must go through while the database is over its quota, which is
    // exactly when NOSPACE is raised; it adds one short row.
    await this.store.write({
      sql: [
        {
          sql: 'INSERT OR IGNORE INTO etcd_alarms(member_id, alarm) VALUES (?, ?)',
          params: [memberId.toString(), alarm],
        },
      ],
      freesSpace: true,
    });
    const m = this.active.get(key(memberId, alarm)) ?? this.add({ memberId, alarm });
    this.log.warn({ alarm: ALARM_NAMES[alarm] ?? alarm, member: memberId.toString(16) }, 'alarm raised');
    return m;
  }

  /** Disarm an alarm; resolves with it, or undefined when it was not raised. */
  async deactivate(memberId: bigint, alarm: number): Promise<AlarmMember | undefined> {
    const m = this.active.get(key(memberId, alarm));
    if (!m) return undefined;
    await this.store.write({
      sql: [
        {
          sql: 'DELETE FROM etcd_alarms WHERE member_id = ? AND alarm = ?',
          params: [memberId.toString(), alarm],
        },
      ],
      freesSpace: true,
    });
    if (this.active.delete(key(memberId, alarm))) this.recompute();
    this.log.warn({ alarm: ALARM_NAMES[alarm] ?? alarm, member: memberId.toString(16) }, 'alarm disarmed');
    return m;
  }

  /**
   * The store refused a write for space, or reports being over its quota: raise NOSPACE for this
   * member, as etcd's quota does. Never throws; a failure is logged.
   */
  quotaExceeded(): void {
    if (this.active.has(key(this.self, ALARM_NOSPACE)) || this.raising) return;
    this.raising = this.activate(this.self, ALARM_NOSPACE)
      .catch((err: unknown) => this.log.error({ err }, 'could not record the NOSPACE alarm'))
      .finally(() => {
        this.raising = undefined;
      });
  }

  /** Raise NOSPACE now if the store is over its quota (before answering GET, Status, /health). */
  async sync(stats: StoreStats = this.store.stats()): Promise<void> {
    if (stats.noSpace && !this.active.has(key(this.self, ALARM_NOSPACE))) {
      await this.activate(this.self, ALARM_NOSPACE);
    }
  }

  // --- what each request may do while alarms are raised (etcd's capped and corrupt appliers) ---

  /** Put and the lock/election recipes that put a key. */
  checkPut(): void {
    if (this.corrupt) throw corrupt();
    if (this.capped) throw noSpace();
  }

  checkLeaseGrant(): void {
    this.checkPut();
  }

  /** DeleteRange, Compact, LeaseRevoke, Unlock, Resign. */
  checkDelete(): void {
    if (this.corrupt) throw corrupt();
  }

  /** A Txn: NOSPACE refuses one with a put in its top-level branches (etcd's quota cost), CORRUPT any that writes. */
  checkTxn(m: Msg): void {
    if (this.corrupt && !readOnly(m)) throw corrupt();
    if (this.capped && (hasPut(m.success) || hasPut(m.failure))) throw noSpace();
  }

  private add(m: AlarmMember): AlarmMember {
    this.active.set(key(m.memberId, m.alarm), m);
    this.recompute();
    return m;
  }

  private recompute(): void {
    let capped = false;
    let corrupt = false;
    for (const m of this.active.values()) {
      if (m.alarm === ALARM_NOSPACE) capped = true;
      if (m.alarm === ALARM_CORRUPT) corrupt = true;
    }
    this.capped = capped;
    this.corrupt = corrupt;
    this.restricting = capped || corrupt;
  }
}

function noSpace(): Error {
  return grpcError(Code.RESOURCE_EXHAUSTED, ETCD_MESSAGES.noSpace);
}

function corrupt(): Error {
  return grpcError(Code.DATA_LOSS, ETCD_MESSAGES.corrupt);
}

// etcd's quota counts only the puts directly in a branch, not those of nested txns.
function hasPut(ops: Msg[] | undefined): boolean {
  if (!ops) return false;
  for (const op of ops) if (op.request_put) return true;
  return false;
}

// etcd's isTxnReadonly: every op of both branches is a range.
function readOnly(m: Msg): boolean {
  for (const op of (m.success as Msg[] | undefined) ?? []) if (!op.request_range) return false;
  for (const op of (m.failure as Msg[] | undefined) ?? []) if (!op.request_range) return false;
  return true;
}

/** etcd's text of an alarm in Status.errors ("memberID:5 alarm:NOSPACE "). */
export function alarmText(m: AlarmMember): string {
  const alarm = m.alarm === ALARM_NONE ? '' : `alarm:${ALARM_NAMES[m.alarm] ?? m.alarm} `;
  return `memberID:${m.memberId} ${alarm}`;
}
