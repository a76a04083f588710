import type { ConfigSection } from '../config/types.js';

export const sloConfigSection: ConfigSection = {
  name: 'slo',
  doc: 'Latency objectives for interactive traffic, their burn rates, and the guard that makes bulk work yield to it.',
  fields: {
    guard: {
      type: 'boolean',
      default: true,
      doc: 'Bulk work (device reports, uploads, frames, probe samples) yields while interactive traffic waits. false: the objectives are measured and exported, nothing yields.',
    },
    // p99, as etcd's own latency guidance is stated
    target: {
      type: 'number',
      default: 0.99,
      min: 0.5,
      max: 0.9999,
      doc: 'Fraction of events that must be within their threshold; the error budget is 1 - target.',
    },
    // etcd's guidance: a healthy member answers a put well under 50 ms
    etcdLatency: {
      type: 'duration',
      default: 50,
      min: 1,
      max: 60_000,
      doc: 'Objective for etcd unary requests (Lock and Campaign excepted: they wait by design; so are Authenticate, UserAdd and UserChangePassword, which hash a password).',
    },
    commitLatency: {
      type: 'duration',
      default: 50,
      min: 1,
      max: 60_000,
      doc: 'Objective for store commits (execute, commit and WAL sync of one group commit).',
    },
    // 2% of a 30-day budget in an hour: the usual paging rate for a 1 h / 5 m pair
    pageBurnRate: {
      type: 'number',
      default: 14.4,
      min: 1,
      max: 1000,
      doc: 'The alert: an objective burns (`edgekeeper_slo_burning{pair="page"}`) while both its 1 h and 5 m burn rates are at or above this.',
    },
    fastBurnRate: {
      type: 'number',
      default: 14.4,
      min: 1,
      max: 1000,
      doc: 'Both the 1 m and 5 s burn rates at or above this count as interactive traffic waiting (bulk yields).',
    },
    // A put on an idle node waits a few ms at most; 5 ms more of delay is already twice that.
    loopDelay: {
      type: 'duration',
      default: 5,
      min: 1,
      max: 10_000,
      doc: 'Event-loop delay above its quiet level (its level while bulk work runs at its minimum) at which interactive traffic counts as waiting (bulk yields).',
    },
    // a thousand devices reporting once a second keep moving, whatever the pressure
    minBulkRate: {
      type: 'integer',
      default: 1000,
      min: 1,
      max: 10_000_000,
      doc: 'Device reports a second always admitted while bulk yields, so it never starves.',
    },
  },
  check(v) {
    return Number(v.target) >= 1
      ? [`Expected \`slo.target\` to be below 1 (it leaves 1 - target as the error budget), got ${v.target}`]
      : [];
  },
};
