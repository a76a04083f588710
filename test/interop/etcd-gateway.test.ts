/**
 * Differential test of the JSON gateway against real etcd 3.4, with curl: the same sequence of
 * HTTP requests — every gateway route family, /v3beta, /version, /health, alarms, watch streams
 * replayed from a revision, and bad input of every kind (malformed JSON, wrong types, bad base64,
 * unknown enum names, oversized bodies, unknown routes, wrong methods) — goes to a fresh etcd and
 * a fresh edgekeeper, and the status, content type and normalised body must be identical.
 *
 * Normalisation, each one a deliberate difference (docs/etcd.md):
 * - header cluster_id / member_id / raft_term, and the member's own ID wherever it appears: random
 *   per cluster on both sides; edgekeeper has no raft;
 * - /version and Maintenance.Status: edgekeeper reports etcd 3.5.13 and its own sizes and indexes;
 *   only the fields' presence and Status's alarm list are compared;
 * - Maintenance.Alarm answers: etcd 3.4 leaves out the header, 3.5 (which edgekeeper follows) has one;
 * - Hash: a hash of a different database layout; MemberList: a member without peer URLs;
 * - lease TTLs that count down (TimeToLive): within a second of each other.
 * Routes that differ by design (MemberAdd and friends, MoveLeader, the auth administration
 * routes, the snapshot's bytes) are tested on edgekeeper alone in test/etcd/gateway.test.ts.
 * Needs: /usr/bin/etcd (etcd-server) and curl; a missing one fails loudly.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  curl,
  curlBatch,
  type Edge,
  type RealEtcd,
  requirePeer,
  startEdge,
  startRealEtcd,
} from '../etcd/helpers.js';

// biome-ignore lint/suspicious/noExplicitAny: plain JSON trees
type J = any;

interface Step {
  path: string;
  body?: string;
  method?: string;
  /** Seconds a stream is read before curl stops (streams replayed from a revision). */
  stream?: number;
  /** Extra normalisation of the parsed JSON body. */
  norm?: (j: J) => J;
}

const b64 = (s: string) => Buffer.from(s).toString('base64');

let etcd: RealEtcd;
let edge: Edge;

before(async () => {
  requirePeer('/usr/bin/curl', 'curl');
  etcd = await startRealEtcd();
  edge = await startEdge();
});
after(async () => {
  await edge?.close();
  await etcd?.close();
});

class Side {
  member = '';
  constructor(readonly base: string) {}

  /** Every step, in order, through one curl process. */
  async runAll(list: Step[]): Promise<J[]> {
    const results = await curlBatch(
      list.map((step) => ({
        url: `${this.base}${step.path}`,
        method: step.method ?? (step.body !== undefined ? 'POST' : undefined),
        body: step.body?.replaceAll('$MEMBER', this.member),
        maxTime: step.stream,
      })),
    );
    return results.map((r, i) => {
      const step = list[i]!;
      const parse = (text: string): J => {
        try {
          return this.norm(JSON.parse(text), step);
        } catch {
          return text;
        }
      };
      let body: J;
      if (step.method === 'HEAD') body = '';
      else if (step.stream !== undefined)
        body = r.body
          .split('\n')
          .filter((l) => l.length > 0)
          .map(parse);
      else body = parse(r.body);
      return { status: r.status, type: r.contentType, body };
    });
  }

  norm(v: J, step: Step): J {
    const walk = (x: J): J => {
      if (Array.isArray(x)) return x.map(walk);
      if (x && typeof x === 'object') {
        const o: J = {};
        for (const [k, y] of Object.entries(x)) {
          if (k === 'cluster_id' || k === 'member_id' || k === 'raft_term') continue;
          o[k] = walk(y);
        }
        return o;
      }
      return typeof x === 'string' && this.member ? x.replaceAll(this.member, '<member>') : x;
    };
    const j = walk(v);
    return step.norm ? step.norm(j) : j;
  }
}

const noHeader = (j: J) => {
  if (j && typeof j === 'object') delete j.header;
  return j;
};
const keys = (j: J) => (j && typeof j === 'object' ? Object.keys(j).sort() : j);

function steps(): Step[] {
  const s: Step[] = [];
  const post = (path: string, body: object | string, extra: Partial<Step> = {}) =>
    s.push({ path, body: typeof body === 'string' ? body : JSON.stringify(body), ...extra });
  const k = b64('/g/a');

  // Plain routes.
  s.push({ path: '/version', norm: keys });
  s.push({ path: '/health' }, { path: '/health?exclude=NOSPACE' });
  s.push(
    { path: '/version', method: 'POST' },
    { path: '/health', method: 'PUT' },
    { path: '/version', method: 'HEAD' },
  );
  s.push({ path: '/nothing' }, { path: '/v3/nothing', body: '{}' }, { path: '/v3/kv/nothing', body: '{}' });
  s.push({ path: '/v3alpha/kv/range', body: `{"key":"${k}"}` });
  s.push({ path: '/v3/kv/range', method: 'GET' }, { path: '/v3/kv/range', method: 'PUT', body: '{}' });
  s.push({ path: '/v3/kv/range', method: 'OPTIONS' }, { path: '/v3/kv/range/', body: '{}' });

  // KV.
  post('/v3/kv/put', { key: k, value: b64('1') });
  post('/v3beta/kv/put', { key: b64('/g/b'), value: b64('2'), prev_kv: true });
  post('/v3/kv/put', { key: b64('/g/b'), value: b64('3'), prevKv: true });
  post('/v3/kv/put', { key: b64('/g/c/1'), value: '' });
  post('/v3/kv/put', { key: b64('/g/c/2'), value: b64('<&>\u00ff') });
  post('/v3/kv/range', { key: b64('/g/'), range_end: b64('/g0') });
  post('/v3/kv/range', { key: b64('/g/'), rangeEnd: b64('/g0'), sort_order: 'DESCEND', sort_target: 'MOD' });
  post('/v3/kv/range', { key: b64('/g/'), range_end: b64('/g0'), limit: '2', keys_only: true });
  post('/v3/kv/range', { key: b64('/g/'), range_end: b64('/g0'), count_only: true, revision: 3 });
  post('/v3/kv/range', { key: b64('/g/'), range_end: 'AA==', sortOrder: 1, sortTarget: 4 });
  post('/v3/kv/range', {
    key: b64('/g/'),
    range_end: b64('/g0'),
    min_mod_revision: '3',
    max_create_revision: 4,
  });
  post('/v3/kv/range', { key: [47, 103, 47, 97] });
  post('/v3/kv/range', { key: k, revision: 100 });
  post('/v3/kv/deleterange', { key: b64('/g/c/'), range_end: b64('/g/c0'), prev_kv: true });
  post('/v3/kv/deleterange', { key: b64('/nothing') });
  post('/v3/kv/txn', {
    compare: [{ key: k, target: 'VALUE', result: 'EQUAL', value: b64('1') }],
    success: [
      { request_put: { key: k, value: b64('4') } },
      { request_range: { key: k } },
      { request_txn: { success: [{ request_put: { key: b64('/g/n'), value: b64('n') } }] } },
    ],
    failure: [{ request_delete_range: { key: k } }],
  });
  post('/v3/kv/txn', {
    compare: [{ key: k, target: 'MOD', result: 'GREATER', mod_revision: '100' }],
    failure: [{ requestRange: { key: k } }],
  });
  post('/v3/kv/txn', { compare: [{ key: k, target: 'CREATE', result: 'LESS', create_revision: 1 }] });
  post('/v3/kv/txn', { success: [{ request_put: { key: k, value: '' } }, { request_put: { key: k } }] });

  // Leases (explicit IDs: both sides grant the same ones).
  post('/v3/lease/grant', { TTL: 60, ID: 4242 });
  post('/v3/lease/grant', { TTL: '60', ID: '4242' });
  post('/v3/kv/put', { key: b64('/g/l'), value: b64('l'), lease: '4242' });
  post('/v3/lease/timetolive', { ID: 4242, keys: true }, { norm: ttlWithin });
  post('/v3/kv/lease/timetolive', { ID: 1 });
  post('/v3/lease/leases', {});
  post('/v3/kv/lease/leases', '');
  post('/v3/lease/keepalive', '{"ID":4242}{"ID":"4242"}{"ID":1}', { stream: 5 });
  post('/v3/lease/keepalive', '{"ID":4242}{"ID":"zz"}{"ID":4242}', { stream: 5 });
  post('/v3/lease/keepalive', '', { stream: 5 });
  post('/v3/lease/keepalive', '{"ID":{}}', { stream: 5 });
  post('/v3/lease/revoke', { ID: 4242 });
  post('/v3/kv/lease/revoke', { ID: 4242 });
  post('/v3/kv/range', { key: b64('/g/l') });

  // Watches, replayed from the start (responses are the same batch by batch for a replay).
  post(
    '/v3/watch',
    { create_request: { key: b64('/g/'), range_end: b64('/g0'), start_revision: 1 } },
    { stream: 1 },
  );
  post(
    '/v3/watch',
    {
      create_request: {
        key: b64('/g/'),
        range_end: b64('/g0'),
        start_revision: '2',
        prev_kv: true,
        filters: ['NODELETE'],
      },
    },
    { stream: 1 },
  );
  post('/v3/watch', '{"create_request":{"key":"L2c=","watch_id":7}}{"cancel_request":{"watch_id":7}}', {
    stream: 1,
  });
  post('/v3/watch', '{"create_request":{"key":"L2c=","range_end":"L2E="}}', { stream: 1 });
  post('/v3/watch', '{"create_request":{"key":5}}', { stream: 1 });
  post('/v3/watch', '[]', { stream: 1 });
  post('/v3/watch', '{"create_request":{"key":"L2c=","filters":"NOPUT"}}', { stream: 1 });

  // Compaction.
  post('/v3/kv/compaction', { revision: 4, physical: true });
  post('/v3/kv/range', { key: k, revision: 3 });
  post('/v3/watch', { create_request: { key: k, start_revision: 2 } }, { stream: 1 });
  post('/v3/kv/compaction', { revision: 1000 });

  // Lock and election (a lease each).
  post('/v3/lease/grant', { TTL: 60, ID: 77 });
  post('/v3/lock/lock', { name: b64('lk'), lease: 77 });
  post('/v3/lock/unlock', { key: b64('lk/4d') });
  post('/v3/election/campaign', { name: b64('el'), lease: 77, value: b64('v1') });
  post('/v3/election/leader', { name: b64('el') });
  post('/v3/election/proclaim', {
    leader: { name: b64('el'), key: b64('el/4d'), rev: 5, lease: 77 },
    value: b64('v2'),
  });
  post('/v3/election/leader', { name: b64('none') });
  post('/v3/election/resign', {});
  post('/v3/election/observe', { name: b64('el') }, { stream: 1 });
  post('/v3/lease/revoke', { ID: 77 });

  // Alarms.
  post('/v3/maintenance/alarm', {}, { norm: noHeader });
  post('/v3/maintenance/alarm', '{"action":"ACTIVATE","memberID":"$MEMBER","alarm":"NOSPACE"}', {
    norm: noHeader,
  });
  post('/v3/maintenance/alarm', '{"action":"ACTIVATE","memberID":"$MEMBER","alarm":1}', { norm: noHeader });
  post('/v3/maintenance/alarm', { action: 'GET' }, { norm: noHeader });
  post('/v3/maintenance/alarm', { action: 'GET', alarm: 'CORRUPT' }, { norm: noHeader });
  post('/v3/kv/put', { key: k, value: b64('x') });
  post('/v3/kv/put', { value: b64('x') });
  post('/v3/kv/txn', { success: [{ request_put: { key: k, value: b64('x') } }] });
  post('/v3/kv/txn', { failure: [{ request_put: { key: k, value: b64('x') } }] });
  post('/v3/kv/txn', {
    success: [{ request_txn: { success: [{ request_put: { key: k, value: b64('y') } }] } }],
  });
  post('/v3/kv/txn', { success: [{ request_delete_range: { key: b64('/g/n') } }] });
  post('/v3/lease/grant', { TTL: 5, ID: 9 });
  post('/v3/kv/range', { key: k });
  s.push({ path: '/health' }, { path: '/health?exclude=NOSPACE' }, { path: '/health?exclude=CORRUPT' });
  post('/v3/maintenance/status', {}, { norm: (j) => ({ errors: j.errors }) });
  post('/v3/maintenance/alarm', '{"action":"DEACTIVATE","memberID":"$MEMBER","alarm":"NOSPACE"}', {
    norm: noHeader,
  });
  post('/v3/maintenance/alarm', '{"action":"DEACTIVATE","memberID":"$MEMBER","alarm":"NOSPACE"}', {
    norm: noHeader,
  });
  post('/v3/kv/put', { key: k, value: b64('z') });
  post('/v3/maintenance/alarm', { action: 'ACTIVATE', memberID: 5, alarm: 'CORRUPT' }, { norm: noHeader });
  post('/v3/kv/range', { key: k });
  post('/v3/kv/txn', { success: [{ request_range: { key: k } }] });
  post('/v3/kv/txn', { success: [{ request_delete_range: { key: k } }] });
  post('/v3/kv/deleterange', { key: k });
  post('/v3/kv/put', { key: k, value: b64('c') });
  post('/v3/kv/compaction', { revision: 5 });
  post('/v3/lease/revoke', { ID: 12345 });
  s.push({ path: '/health?exclude=NOSPACE' }, { path: '/health?exclude=CORRUPT' });
  post('/v3/maintenance/alarm', { action: 'DEACTIVATE', memberID: '5', alarm: 2 }, { norm: noHeader });
  post('/v3/maintenance/alarm', { action: 'GET' }, { norm: noHeader });

  // Maintenance and cluster answers, as far as a single SQLite member can match them.
  post('/v3/maintenance/status', {}, { norm: keysExcept3_5 });
  post('/v3/maintenance/hash', {}, { norm: (j) => ({ ...j, hash: typeof j.hash }) });
  post('/v3/maintenance/defragment', {});
  post('/v3/cluster/member/list', {}, { norm: (j) => ({ ...j, members: j.members.length }) });
  post('/v3/auth/authenticate', { name: 'a', password: 'b' });

  // Bad input: each body goes to Range (and a few to Put).
  const bad = [
    '{"key":',
    'nonsense',
    '{"key":"%%%"}',
    '{"key":"YQ"}',
    '{"key":"Y Q=="}',
    '{"key":"YQ==\\n"}',
    '{"key":"YQ=\\r\\n="}',
    '{"key":"YQ==YQ=="}',
    '{"key":"\\u00e9"}',
    '{"key":5}',
    '{"key":true}',
    '{"key":{}}',
    '{"key":[256]}',
    '{"key":["a"]}',
    '{"key":null}',
    '{"foo":"YQ=="}',
    '{"key":"YQ==","limit":"x"}',
    '{"key":"YQ==","limit":""}',
    '{"key":"YQ==","limit":"1.5"}',
    '{"key":"YQ==","limit":1.5}',
    '{"key":"YQ==","limit":1e3}',
    '{"key":"YQ==","limit":" 5 "}',
    '{"key":"YQ==","limit":"99999999999999999999"}',
    '{"key":"YQ==","limit":-1}',
    '{"key":"YQ==","limit":true}',
    '{"key":"YQ==","limit":[]}',
    '{"key":"YQ==","sort_order":"NOPE"}',
    '{"key":"YQ==","sort_order":"descend"}',
    '{"key":"YQ==","sort_order":99999999999}',
    '{"key":"YQ==","sort_order":true}',
    '{"key":"YQ==","keys_only":"true"}',
    '{"key":"YQ==","keys_only":1}',
    '{"key":"YQ==","key":"Yg=="}',
    '{"key":"YQ==","range_end":"Yg==","rangeEnd":"Yw=="}',
    '[]',
    '"x"',
    '5',
    'null',
    '',
    '   ',
    '{"key":"YQ=="} trailing',
    '{"key":"YQ==",}',
    '{"key" "YQ=="}',
    '{"key":"YQ==" "x":1}',
    '{"key":"\\q"}',
    '{"key":"\\u12"}',
    '{"key":"a\u0001"}',
    '{"key":tru}',
    '{"key":-}',
    '{"key":01}',
    '{\u00e9}',
    `${'['.repeat(10001)}`,
  ];
  for (const body of bad) post('/v3/kv/range', body);
  post('/v3/kv/txn', '{"compare":{"a":1}}');
  post('/v3/kv/txn', '{"success":[{"request_put":5}]}');
  post('/v3/kv/txn', '{"compare":[{"key":"YQ==","target":"NOPE"}]}');
  post('/v3/kv/put', '{"key":"YQ==","value":"YQ==","lease":"abc"}');
  post('/v3/kv/put', '{"key":"YQ==","value":"YQ==","ignore_value":true}');
  post('/v3/lease/grant', '{"TTL":99999999999}');
  post('/v3/kv/put', `{"key":"YQ==","value":"${b64('x'.repeat(1_700_000))}"}`);
  post('/v3/kv/put', `{"key":"YQ==","value":"${b64('x'.repeat(3_000_000))}"}`);
  return s;
}

/** TimeToLive's remaining TTL counts down on both sides independently. */
function ttlWithin(j: J): J {
  if (j && typeof j.TTL === 'string' && Number(j.TTL) >= Number(j.grantedTTL) - 1) j.TTL = 'counting down';
  return j;
}

/** Status: which fields are present, minus those only 3.5 sends (dbSizeQuota). */
function keysExcept3_5(j: J): J {
  return Object.keys(j)
    .filter((x) => x !== 'dbSizeQuota')
    .sort();
}

describe('JSON gateway: edgekeeper answers like etcd 3.4', () => {
  it('the same HTTP requests, the same status, content type and body', async () => {
    const real = new Side(`http://${etcd.endpoint}`);
    const ours = new Side(`http://${edge.endpoint}`);
    for (const side of [real, ours]) {
      const st = await curl(`${side.base}/v3/maintenance/status`, { body: '{}' });
      side.member = JSON.parse(st.body).header.member_id;
    }
    const list = steps();
    const [a, b] = await Promise.all([real.runAll(list), ours.runAll(list)]);
    const mismatches: string[] = [];
    list.forEach((step, i) => {
      try {
        assert.deepEqual(b[i], a[i]);
      } catch {
        mismatches.push(
          `${step.method ?? 'POST'} ${step.path} ${step.body?.slice(0, 120) ?? ''}\n  etcd:       ${JSON.stringify(a[i]).slice(0, 600)}\n  edgekeeper: ${JSON.stringify(b[i]).slice(0, 600)}`,
        );
      }
    });
    assert.deepEqual(mismatches, [], `${mismatches.length} answers differ:\n${mismatches.join('\n')}`);
  });
});
