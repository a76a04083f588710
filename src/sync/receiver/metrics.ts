/**
 * The receiver's /metrics. Counters are this receiver's own; the fleet gauges (nodes by health,
 * backlog, oldest contact) come from the shared database, so every receiver reports the same
 * fleet: aggregate them with max(), not sum(). The database is asked at most every 5 s however
 * often Prometheus scrapes.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { Logger } from '../../log.js';
import { HEALTH_STATES, type NodeDirectory } from './nodes.js';

const FLEET_QUERY_EVERY_MS = 5000;

export interface ReceiverMetrics {
  registry: Registry;
  batches: Counter<'result'>;
  records: Counter<'source'>;
  bytes: Counter;
  lag: Histogram;
  storeSeconds: Histogram;
  errors: Counter<'code'>;
  logins: Counter<'result'>;
}

export function receiverMetrics(nodes: NodeDirectory, log: Logger): ReceiverMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  let last: { at: number; value: Awaited<ReturnType<NodeDirectory['countByHealth']>> } | undefined;
  let dbUp = 1;
  const fleet = async () => {
    if (!last || Date.now() - last.at > FLEET_QUERY_EVERY_MS) {
      try {
        last = { at: Date.now(), value: await nodes.countByHealth() };
        dbUp = 1;
      } catch (err) {
        dbUp = 0;
        log.warn({ err: (err as Error).message }, 'metrics: PostgreSQL did not answer');
      }
    }
    return last?.value;
  };
  new Gauge({
    name: 'edgekeeper_fleet_nodes',
    help: 'Nodes by health: stale, alert, warn, ok, revoked, retired (the whole fleet, from the database)',
    labelNames: ['health'],
    registers: [registry],
    async collect() {
      const f = await fleet();
      for (const h of HEALTH_STATES) this.set({ health: h }, f?.counts[h] ?? 0);
    },
  });
  new Gauge({
    name: 'edgekeeper_fleet_backlog_records',
    help: 'Records waiting on the nodes to be uploaded, summed over active nodes (as of their latest batch)',
    registers: [registry],
    async collect() {
      this.set((await fleet())?.backlog ?? 0);
    },
  });
  new Gauge({
    name: 'edgekeeper_fleet_oldest_unsent_age_seconds',
    help: 'The oldest record any active node still has to upload, as of its latest batch',
    registers: [registry],
    async collect() {
      this.set((await fleet())?.oldestUnsent ?? 0);
    },
  });
  new Gauge({
    name: 'edgekeeper_fleet_oldest_contact_age_seconds',
    help: 'Time since the active node heard from longest ago last uploaded (nodes never heard from excluded)',
    registers: [registry],
    async collect() {
      this.set((await fleet())?.oldestContact ?? 0);
    },
  });
  new Gauge({
    name: 'edgekeeper_fleet_database_up',
    help: '1 when the last fleet query to PostgreSQL succeeded',
    registers: [registry],
    async collect() {
      await fleet();
      this.set(dbUp);
    },
  });
  return {
    registry,
    batches: new Counter({
      name: 'edgekeeper_fleet_batches_total',
      help: 'Batches answered 200: result stored (new) or duplicate (a retry of a stored batch)',
      labelNames: ['result'],
      registers: [registry],
    }),
    records: new Counter({
      name: 'edgekeeper_fleet_records_total',
      help: 'Records stored, by source table: events, reports, samples',
      labelNames: ['source'],
      registers: [registry],
    }),
    bytes: new Counter({
      name: 'edgekeeper_fleet_received_bytes_total',
      help: 'Bytes of stored batches as they came over the wire (compressed)',
      registers: [registry],
    }),
    lag: new Histogram({
      name: 'edgekeeper_fleet_batch_lag_seconds',
      help: "Age of a stored batch's oldest record when it was stored (node clock to receiver clock)",
      buckets: [1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 7 * 86400],
      registers: [registry],
    }),
    storeSeconds: new Histogram({
      name: 'edgekeeper_fleet_batch_store_seconds',
      help: 'Time to store one batch in PostgreSQL (one transaction)',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    errors: new Counter({
      name: 'edgekeeper_fleet_request_errors_total',
      help: 'Requests answered with an error, by error code (EDGE_ERR_INTERNAL: PostgreSQL failed)',
      labelNames: ['code'],
      registers: [registry],
    }),
    logins: new Counter({
      name: 'edgekeeper_fleet_admin_auth_failures_total',
      help: 'Admin credentials refused: failed (wrong token) or limited (too many failures from one address)',
      labelNames: ['result'],
      registers: [registry],
    }),
  };
}
