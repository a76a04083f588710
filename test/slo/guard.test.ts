/**
 * The SLO guard (src/slo/): burn-rate arithmetic on a ManualClock, when bulk work yields and when
 * it resumes, its metrics, its config section; and, with a real store, the embedded broker and
 * MQTT.js devices, that reports held by the guard stay unacknowledged (no PUBACK) and are all
 * stored exactly once when it lets go. No timing is asserted: the guard's clock is a ManualClock
 * and its event-loop delay is given by the test.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { ManualClock } from '../../src/clock.js';
import { loadConfig } from '../../src/config/index.js';
import { allSections } from '../../src/daemon/index.js';
import { silentLogger } from '../../src/log.js';
import { BurnWindows, SloGuard, type SloOptions, TICK_MS } from '../../src/slo/index.js';
import {
  callRoute,
  device,
  endClient,
  harness,
  metricValue,
  publish,
  reportCount,
} from '../ingest/helpers.js';

const OPTS: SloOptions = {
  guard: true,
  target: 0.99,
  etcdLatency: 50,
  commitLatency: 50,
  pageBurnRate: 14.4,
  fastBurnRate: 14.4,
  loopDelay: 10,
  minBulkRate: 100,
};

function makeGuard(opts: Partial<SloOptions> = {}, registry?: Registry) {
  const clock = new ManualClock();
  let delay: number | undefined = 0;
  const g = new SloGuard(
    { ...OPTS, ...opts },
    { clock, logger: silentLogger(), registry, loopDelay: () => delay },
  );
  g.start();
  return {
    g,
    clock,
    setDelay: (ms: number | undefined) => {
      delay = ms;
    },
  };
}

describe('burn rates', () => {
  it('divide the slow fraction by the error budget, per window, on the clock', () => {
    const w = new BurnWindows(50);
    const t0 = 1_000_000;
    // 1,000 events in one second, 20 above 50 ms: 2% slow, twice the 1% budget
    for (let i = 0; i < 1000; i++) w.record(t0, i < 20 ? 51 : 50);
    for (const s of [5, 60, 300, 3600]) assert.equal(w.burnRate(t0, s, 0.99), 2);
    // 6 s later: the 5 s window is empty (burns 0), the others still hold the events
    assert.equal(w.burnRate(t0 + 6, 5, 0.99), 0);
    assert.equal(w.burnRate(t0 + 6, 60, 0.99), 2);
    // 1,000 good events at t0 + 100: 20 slow of 2,000 in 5 m and 1 h, none in 1 m
    for (let i = 0; i < 1000; i++) w.record(t0 + 100, 1);
    assert.equal(w.burnRate(t0 + 100, 60, 0.99), 0);
    assert.equal(w.burnRate(t0 + 100, 300, 0.99), 1);
    assert.equal(w.burnRate(t0 + 100, 3600, 0.99), 1);
    assert.deepEqual(w.counts(t0 + 100, 3600), { total: 2000, bad: 20 });
    // a 99.9% target has a tenth of the budget: ten times the rate
    assert.equal(w.burnRate(t0 + 100, 3600, 0.999), 10);
    // past the hour the first second has left every window; its bucket is reused, not added to
    assert.deepEqual(w.counts(t0 + 3600, 3600), { total: 1000, bad: 0 });
    w.record(t0 + 3600, 99);
    assert.deepEqual(w.counts(t0 + 3600, 3600), { total: 1001, bad: 1 });
    assert.equal(w.events, 2001);
    assert.equal(w.slow, 21);
  });

  it('pairs burn only when both windows are at or above their rate', () => {
    const { g, clock } = makeGuard();
    // 10% slow for one second: burn 10 everywhere, under 14.4
    for (let i = 0; i < 100; i++) g.observeRequest(i < 10 ? 0.1 : 0.001);
    assert.equal(g.burnRate('etcd_request', '5s'), 10);
    assert.equal(g.burning('etcd_request', 'fast'), false);
    // 20% slow: both pairs burn
    for (let i = 0; i < 100; i++) g.observeRequest(i < 30 ? 0.1 : 0.001);
    assert.equal(g.burnRate('etcd_request', '1h'), 20);
    assert.equal(g.burning('etcd_request', 'fast'), true);
    assert.equal(g.burning('etcd_request', 'page'), true);
    // 10 s later the 5 s window is empty: the fast pair stops, the page pair goes on
    clock.advance(10_000);
    assert.equal(g.burning('etcd_request', 'fast'), false);
    assert.equal(g.burning('etcd_request', 'page'), true);
    assert.equal(g.burning('store_commit', 'page'), false);
    g.stop();
  });
});

describe('the guard', () => {
  it('makes bulk yield when interactive traffic waits, admits a rate, and lets go when calm', () => {
    const { g, clock, setDelay } = makeGuard();
    // bulk flows freely and is counted: 1,000 rows in a tick is 4,000 a second
    assert.equal(g.admitBulk(1000), true);
    setDelay(30);
    g.observeRequest(0.002);
    clock.advance(TICK_MS);
    assert.equal(g.yielding(), true);
    // half of what was admitted
    assert.equal(g.status().bulkLimitPerSecond, 2000);
    // the bucket starts empty: nothing until the clock moves
    assert.equal(g.admitBulk(10), false);
    clock.advance(100); // one tenth of a second: 200 rows of tokens
    assert.equal(g.admitBulk(150), true);
    assert.equal(g.admitBulk(150), true, 'debt: a batch goes while the bucket is not empty');
    assert.equal(g.admitBulk(1), false);
    // calm: the limit rises; after 10 s of calm at twice what bulk uses, it is lifted
    setDelay(1);
    for (let i = 0; i < 10; i++) {
      g.observeRequest(0.002);
      clock.advance(TICK_MS);
    }
    assert.equal(g.yielding(), true, 'not lifted before 10 s of calm');
    assert.ok((g.status().bulkLimitPerSecond as number) > 2000, 'the limit rose while calm');
    for (let i = 0; i < 40; i++) {
      g.observeRequest(0.002);
      clock.advance(TICK_MS);
    }
    assert.equal(g.yielding(), false);
    assert.equal(g.admitBulk(100_000), true);
    g.stop();
  });

  it('never drops below the minimum rate, and lets go at once when interactive traffic leaves', () => {
    const { g, clock } = makeGuard({ minBulkRate: 40 });
    g.admitBulk(1000);
    for (let i = 0; i < 20; i++) {
      for (let k = 0; k < 20; k++) g.observeRequest(0.2); // slow requests: pressure every tick
      clock.advance(TICK_MS);
    }
    assert.equal(g.status().bulkLimitPerSecond, 40);
    // no etcd request for over 5 s: nobody waits for bulk any more
    clock.advance(6000);
    assert.equal(g.yielding(), false);
    g.stop();
  });

  it('judges the loop delay against its level with bulk at its minimum (delay bulk did not cause)', () => {
    const { g, clock, setDelay } = makeGuard();
    // the machine is busy without any bulk work: 30 ms, and bulk does not yield for it
    setDelay(30);
    for (let i = 0; i < 4; i++) {
      g.observeRequest(0.002);
      clock.advance(TICK_MS);
    }
    assert.equal(g.yielding(), false);
    assert.equal(g.status().quietLoopDelayMs, 30);
    // bulk flows and the delay rises well above that level: bulk yields
    setDelay(60);
    for (let i = 0; i < 3; i++) {
      g.admitBulk(5000);
      g.observeRequest(0.002);
      clock.advance(TICK_MS);
    }
    assert.equal(g.yielding(), true);
    assert.match(String(g.status().pressure), /event-loop delay p99 60\.0 ms > 30\.0 ms quiet \+ 10 ms/);
    // one short spike is no pressure: the signal is the median of the last four ticks
    setDelay(5);
    for (let i = 0; i < 4; i++) {
      g.observeRequest(0.002);
      clock.advance(TICK_MS);
    }
    assert.equal(g.status().pressure, null);
    assert.equal(g.status().quietLoopDelayMs, 5, 'the quiet level falls at once');
    setDelay(100);
    g.observeRequest(0.002);
    clock.advance(TICK_MS);
    assert.equal(g.status().pressure, null);
    g.stop();
  });

  it('does not yield without interactive traffic, or with slo.guard false', () => {
    const idle = makeGuard();
    idle.setDelay(500);
    idle.clock.advance(TICK_MS * 4);
    assert.equal(idle.g.yielding(), false, 'nobody waits: bulk runs at full speed');
    idle.g.stop();

    const off = makeGuard({ guard: false });
    off.setDelay(500);
    off.g.admitBulk(1000);
    off.g.observeRequest(0.002);
    off.clock.advance(TICK_MS);
    assert.match(String(off.g.status().pressure), /event-loop delay/);
    assert.equal(off.g.yielding(), false);
    assert.equal(off.g.admitBulk(1e6), true);
    off.g.stop();
  });

  it('takes a fast burn as waiting, not one slow request or commit', () => {
    const { g, clock } = makeGuard();
    g.admitBulk(1000);
    for (let i = 0; i < 99; i++) g.observeRequest(0.002);
    g.observeRequest(0.2);
    g.observeCommit(0.2);
    g.observeCommit(0.001);
    clock.advance(TICK_MS);
    assert.equal(g.status().pressure, null, 'one slow of two commits: too few to judge');
    assert.equal(g.yielding(), false);
    // 20 more commits, a fifth of all 22 slow in the last 5 s and minute: the fast pair burns
    for (let i = 0; i < 20; i++) g.observeCommit(i < 4 ? 0.08 : 0.001);
    g.observeRequest(0.002);
    clock.advance(TICK_MS);
    assert.equal(g.status().pressure, 'store_commit burns its budget fast');
    assert.equal(g.yielding(), true);
    g.stop();
  });

  it('exports edgekeeper_slo_* metrics', async () => {
    const registry = new Registry();
    const { g, clock, setDelay } = makeGuard({}, registry);
    let text = await registry.metrics();
    assert.match(text, /^edgekeeper_slo_yielding 0$/m);
    assert.doesNotMatch(text, /^edgekeeper_slo_bulk_limit_per_second /m, 'no limit while not yielding');
    assert.match(text, /^edgekeeper_slo_objective_seconds\{objective="etcd_request"\} 0\.05$/m);
    assert.match(text, /^edgekeeper_slo_target_ratio 0\.99$/m);
    for (let i = 0; i < 100; i++) g.observeRequest(i < 5 ? 0.06 : 0.001);
    g.observeCommit(0.01);
    setDelay(20);
    g.admitBulk(400);
    clock.advance(TICK_MS);
    text = await registry.metrics();
    assert.match(text, /^edgekeeper_slo_burn_rate\{objective="etcd_request",window="5s"\} 5$/m);
    assert.match(text, /^edgekeeper_slo_burn_rate\{objective="store_commit",window="1h"\} 0$/m);
    assert.match(text, /^edgekeeper_slo_events_total\{objective="etcd_request"\} 100$/m);
    assert.match(text, /^edgekeeper_slo_slow_events_total\{objective="etcd_request"\} 5$/m);
    assert.match(text, /^edgekeeper_slo_events_total\{objective="store_commit"\} 1$/m);
    assert.match(text, /^edgekeeper_slo_burning\{objective="etcd_request",pair="page"\} 0$/m);
    assert.match(text, /^edgekeeper_slo_yielding 1$/m);
    assert.match(text, /^edgekeeper_slo_bulk_limit_per_second 800$/m);
    assert.match(text, /^edgekeeper_slo_loop_delay_seconds 0\.02$/m);
    assert.match(text, /^edgekeeper_slo_yields_total 1$/m);
    g.admitBulk(1);
    assert.equal(await metricValue(registry, 'edgekeeper_slo_bulk_refusals_total'), 1);
    g.stop();
  });
});

describe('slo config', () => {
  const load = (slo: unknown) => loadConfig({ env: {}, sections: allSections(), fileData: { slo } });

  it('has defaults and takes durations and rates', () => {
    const c = load({ etcdLatency: '20ms', target: 0.999 }) as unknown as { slo: SloOptions };
    assert.equal(c.slo.etcdLatency, 20);
    assert.equal(c.slo.target, 0.999);
    assert.equal(c.slo.guard, true);
    assert.equal(c.slo.loopDelay, 5);
    assert.equal(c.slo.minBulkRate, 1000);
    const e = loadConfig({ env: { EDGEKEEPER_SLO_GUARD: 'false' }, sections: allSections() }) as unknown as {
      slo: SloOptions;
    };
    assert.equal(e.slo.guard, false);
  });

  it('refuses bad values with their paths, every one at once', () => {
    assert.throws(
      () => load({ target: 1, etcdLatency: 'soon', minBulkRate: 0, pageBurnRate: -1, nope: 1 }),
      (err: Error & { problems?: string[] }) => {
        const all = (err.problems ?? [err.message]).join('\n');
        for (const k of ['slo.target', 'slo.etcdLatency', 'slo.minBulkRate', 'slo.pageBurnRate', 'slo.nope'])
          assert.match(all, new RegExp(k.replace('.', '\\.')), k);
        return true;
      },
    );
    assert.throws(() => load('fast'), /slo/);
  });
});

describe('bulk work yields (real store, embedded broker, MQTT.js devices)', () => {
  it('holds QoS 1 reports without a PUBACK while the guard yields, then stores every one once', async () => {
    const { g, clock } = makeGuard({ minBulkRate: 1 });
    const h = await harness({}, undefined, undefined, g);
    try {
      const devices = [];
      for (const id of ['s1', 's2']) {
        const secret = ((await callRoute(h, 'POST', '/v1/devices', { id })).body as { secret: string })
          .secret;
        devices.push({ id, c: await device(h.url, id, secret) });
      }
      // interactive traffic waits: the guard trips, and its clock stands still (no tokens)
      for (let k = 0; k < 20; k++) g.observeRequest(0.2);
      clock.advance(TICK_MS);
      assert.equal(g.yielding(), true);
      let acked = 0;
      const sent: Promise<void>[] = [];
      for (const { id, c } of devices)
        for (let seq = 1; seq <= 10; seq++)
          sent.push(
            publish(
              c,
              `edgekeeper/v1/devices/${id}/report`,
              JSON.stringify({ seq, metrics: { x: seq } }),
              1,
            ).then(() => {
              acked++;
            }),
          );
      for (let i = 0; (await metricValue(h.registry, 'edgekeeper_ingest_held_reports')) === 0; i++) {
        assert.ok(i < 500, 'reports held');
        await new Promise((r) => setTimeout(r, 20));
      }
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(acked, 0, 'no PUBACK while held');
      assert.equal(reportCount(h.store), 0);
      // the interactive traffic gone: the guard lets go
      clock.advance(6000);
      assert.equal(g.yielding(), false);
      await Promise.all(sent);
      assert.equal(acked, 20);
      for (const { id } of devices) assert.equal(reportCount(h.store, id), 10, `every report of ${id}, once`);
      assert.equal(await metricValue(h.registry, 'edgekeeper_ingest_held_reports'), 0);
      for (const { c } of devices) await endClient(c);
    } finally {
      g.stop();
      await h.close();
    }
  });
});
