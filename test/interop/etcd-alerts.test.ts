/**
 * etcd's alerting rules (etcd-alerts.rules.yml: the mixin's expressions for the metrics we
 * export) load in promtool and evaluate against what edgekeeper really exports. Two scrapes of a
 * live server's /metrics on its client port, before and after traffic (puts, failing
 * Authenticate calls, a database filled past 95% of its quota), become promtool's input series:
 * gauges hold the second scrape's value for 20 minutes, counters and histograms rise linearly
 * from the first scrape's value to the second's. Then the rules that must fire do (the failed
 * gRPC share for Authenticate, the quota), the others do not (no leader missing, commits fast),
 * and a few expressions check the label sets dashboards group by.
 * Needs: promtool (Debian package prometheus); a missing one fails loudly.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Registry } from 'prom-client';
import { EtcdClient } from '../../src/etcd/cli.js';
import { curl, type Edge, requirePeer, run, startEdge } from '../etcd/helpers.js';

const PROMTOOL = '/usr/bin/promtool';
const here = dirname(fileURLToPath(import.meta.url));
const LABELS = 'instance="edge:2379",job="etcd"';
const STEPS = 20;

let edge: Edge;
let dir: string;

before(async () => {
  requirePeer(PROMTOOL, 'prometheus');
  // A small quota, so the database can pass 95% of it.
  edge = await startEdge({ store: { quotaBytes: 1024 * 1024 }, server: { registry: new Registry() } });
  dir = mkdtempSync(join(tmpdir(), 'ek-alerts-'));
});
after(async () => {
  await edge?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

interface Scrape {
  types: Map<string, string>;
  samples: Map<string, number>;
}

function parse(text: string): Scrape {
  const types = new Map<string, string>();
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    const t = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (t) types.set(t[1]!, t[2]!);
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    samples.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return { types, samples };
}

/** The promtool series name of a scraped sample, with the scrape's job and instance labels. */
function seriesName(sample: string): string {
  const b = sample.indexOf('{');
  return b < 0 ? `${sample}{${LABELS}}` : `${sample.slice(0, b)}{${sample.slice(b + 1, -1)},${LABELS}}`;
}

function familyOf(sample: string, types: Map<string, string>): string | undefined {
  const name = sample.split('{')[0]!;
  if (types.has(name)) return name;
  const base = name.replace(/_(bucket|sum|count)$/, '');
  return types.has(base) ? base : undefined;
}

describe('etcd alert rules against a scrape of edgekeeper', () => {
  it('load in promtool and fire exactly where the exported values say they must', async () => {
    const base = `http://${edge.endpoint}`;
    const c = new EtcdClient(edge.endpoint);
    try {
      await c.call('etcdserverpb.KV', 'Put', { key: Buffer.from('/warm'), value: Buffer.from('1') });
      const first = parse((await curl(`${base}/metrics`)).body);
      for (let i = 0; i < 100; i++)
        await c.call('etcdserverpb.KV', 'Put', {
          key: Buffer.from(`/a/${i % 7}`),
          value: Buffer.from(String(i)),
        });
      for (let i = 0; i < 20; i++)
        await c
          .call('etcdserverpb.Auth', 'Authenticate', { name: 'x', password: 'y' })
          .catch(() => undefined);
      // Fill towards the quota until the store refuses (NOSPACE).
      const big = Buffer.alloc(48 * 1024, 7);
      for (let i = 0; i < 40; i++) {
        const ok = await c
          .call('etcdserverpb.KV', 'Put', { key: Buffer.from(`/fill/${i}`), value: big })
          .then(
            () => true,
            () => false,
          );
        if (!ok) break;
      }
      const second = parse((await curl(`${base}/metrics`)).body);

      const series: string[] = [`      - series: 'up{${LABELS}}'\n        values: '1x${STEPS}'`];
      for (const [sample, v2] of second.samples) {
        if (!/^(etcd_|grpc_)/.test(sample)) continue;
        const family = familyOf(sample, second.types);
        const kind = family ? second.types.get(family) : 'gauge';
        const v1 = first.samples.get(sample) ?? 0;
        const values =
          kind === 'counter' || kind === 'histogram'
            ? `${v1}+${(v2 - v1) / STEPS}x${STEPS}`
            : `${v2}x${STEPS}`;
        series.push(`      - series: '${seriesName(sample)}'\n        values: '${values}'`);
      }
      const get = (name: string) => second.samples.get(name) ?? Number.NaN;
      const dbRatio = get('etcd_mvcc_db_total_size_in_bytes') / get('etcd_server_quota_backend_bytes');
      assert.ok(dbRatio > 0.95, `the database is only ${(dbRatio * 100).toFixed(1)}% of its quota`);
      // The failed share of a method over the window, as the rule computes it.
      const failedShare = (method: string) => {
        let failed = 0;
        let all = 0;
        for (const [sample, v2] of second.samples) {
          if (!sample.startsWith('grpc_server_handled_total{') || !sample.includes(`grpc_method="${method}"`))
            continue;
          const d = v2 - (first.samples.get(sample) ?? 0);
          all += d;
          if (
            /grpc_code="(Unknown|FailedPrecondition|ResourceExhausted|Internal|Unavailable|DataLoss|DeadlineExceeded)"/.test(
              sample,
            )
          )
            failed += d;
        }
        return (100 * failed) / all;
      };
      const alert = (name: string, exp: string) =>
        `      - eval_time: ${STEPS}m\n        alertname: ${name}\n        exp_alerts: ${exp}`;
      const firing = (labels: string, summary: string) =>
        `\n          - exp_labels: {${labels}, instance: "edge:2379", job: etcd}\n            exp_annotations: {summary: "${summary}"}`;
      const failed = "A share of a method's gRPC requests fail with server-side codes.";
      const tests = `rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
${series.join('\n')}
    alert_rule_test:
${alert('etcdNoLeader', '[]')}
${alert('etcdMembersDown', '[]')}
${alert('etcdInsufficientMembers', '[]')}
${alert('etcdHighNumberOfLeaderChanges', '[]')}
${alert('etcdHighNumberOfFailedProposals', '[]')}
${alert('etcdHighCommitDurations', '[]')}
${alert('etcdHighFsyncDurations', '[]')}
${alert('etcdGRPCRequestsSlow', '[]')}
${alert('etcdDatabaseHighFragmentationRatio', '[]')}
${alert(
  'etcdHighNumberOfFailedGRPCRequests',
  firing('severity: warning, grpc_method: Authenticate, grpc_service: etcdserverpb.Auth', failed) +
    firing('severity: critical, grpc_method: Authenticate, grpc_service: etcdserverpb.Auth', failed) +
    // A put refused for space is RESOURCE_EXHAUSTED: Put has a failed share too.
    (failedShare('Put') > 1
      ? firing('severity: warning, grpc_method: Put, grpc_service: etcdserverpb.KV', failed)
      : '') +
    (failedShare('Put') > 5
      ? firing('severity: critical, grpc_method: Put, grpc_service: etcdserverpb.KV', failed)
      : ''),
)}
${alert('etcdDatabaseQuotaLowSpace', firing('severity: critical', 'The database is above 95% of its quota.'))}
${alert(
  'etcdExcessiveDatabaseGrowth',
  dbRatio > 1
    ? firing('severity: warning', 'At its growth rate the database passes its quota within four hours.')
    : '[]',
)}
    promql_expr_test:
      - expr: etcd_server_has_leader
        eval_time: ${STEPS}m
        exp_samples: [{labels: 'etcd_server_has_leader{${LABELS}}', value: 1}]
      - expr: count(grpc_server_handled_total{grpc_service="etcdserverpb.KV"})
        eval_time: ${STEPS}m
        exp_samples: [{labels: '{}', value: ${5 * 17}}]
      - expr: count(grpc_server_started_total{grpc_type="bidi_stream"})
        eval_time: ${STEPS}m
        exp_samples: [{labels: '{}', value: 2}]
      - expr: histogram_quantile(0.99, rate(etcd_disk_backend_commit_duration_seconds_bucket[5m])) > bool 0
        eval_time: ${STEPS}m
        exp_samples: [{labels: '{${LABELS}}', value: 1}]
      - expr: etcd_debugging_mvcc_keys_total
        eval_time: ${STEPS}m
        exp_samples: [{labels: 'etcd_debugging_mvcc_keys_total{${LABELS}}', value: ${get('etcd_debugging_mvcc_keys_total')}}]
`;
      copyFileSync(join(here, 'etcd-alerts.rules.yml'), join(dir, 'rules.yml'));
      writeFileSync(join(dir, 'tests.yml'), tests);
      const check = await run(PROMTOOL, ['check', 'rules', join(dir, 'rules.yml')]);
      assert.equal(check.status, 0, check.stdout + check.stderr);
      const r = await run(PROMTOOL, ['test', 'rules', join(dir, 'tests.yml')], { timeoutMs: 120_000 });
      assert.equal(r.status, 0, `promtool test rules failed:\n${r.stdout}\n${r.stderr}`);
    } finally {
      c.close();
    }
  });
});
