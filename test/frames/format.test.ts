/** Frame number and clock formatting (done by hand where Intl would load ICU data). */
import assert from 'node:assert/strict';
import test from 'node:test';
import { fmtClock, fmtInt } from '../../src/frames/format.js';

test('fmtInt groups thousands like en-US', () => {
  for (const v of [0, 7, 999, 1000, 12_345, 999_999, 1_000_000, 1_234_567_890, -1, -1234, -999_999, 42.6]) {
    assert.equal(fmtInt(v), Math.round(v).toLocaleString('en-US'), String(v));
  }
  // toLocaleString says "-0"
  assert.equal(fmtInt(-0.4), '0');
  assert.equal(fmtInt(undefined), 'unknown');
  assert.equal(fmtInt(Number.NaN), 'unknown');
});

test('fmtClock gives HH:MM in the process zone or in a named zone', () => {
  const t = Date.UTC(2026, 0, 15, 23, 5);
  const local = new Intl.DateTimeFormat('en-GB', { hour: '2-digit', minute: '2-digit', hour12: false });
  assert.equal(fmtClock(t), local.format(t));
  assert.equal(fmtClock(Date.UTC(2026, 0, 15, 0, 7)), local.format(Date.UTC(2026, 0, 15, 0, 7)));
  assert.equal(fmtClock(t, 'UTC'), '23:05');
  assert.equal(fmtClock(t, 'Asia/Kolkata'), '04:35');
});
