/**
 * Layout: every text box is measured (with the real canvas and the bundled fonts) against its
 * slot, at every size, for long and hostile Unicode names; slots never overlap and stay on the
 * frame; shortened text keeps whole grapheme clusters; unknown is never drawn as 0.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  buildSnapshot,
  type FrameSnapshot,
  graphemes,
  type Layout,
  layout,
  overallStatus,
  Renderer,
  SIZES,
  sanitize,
  type TextElement,
} from '../../src/frames/index.js';
import { inputs, snapshots, T0 } from './fixtures.js';

const NAMES = [
  'sensor-with-a-really-long-name-that-goes-on-and-on-and-on-well-past-any-slot-width-0123456789',
  '温度センサー第三工場東棟二階冷却水ポンプ制御盤',
  '👩‍👩‍👧‍👦 family-sensor 🇩🇪🇫🇷🇯🇵 🧑🏽‍🔧 flags and zwj',
  'مستشعر درجة الحرارة في المصنع رقم ثلاثة',
  'חיישן טמפרטורה במפעל מספר שלוש',
  'Z̷̢̛̤͉̬̈́̂a̸̧͍̠̓l̶̡̪̔g̵̨̣̈o̶̲̅ ̵̞̌s̴̙̈́e̶͎̾n̸̰̈́s̷̖̄o̵̭͝r̶̠̈',
  'e\u0301e\u0301e\u0301e\u0301e\u0301e\u0301e\u0301e\u0301e\u0301e\u0301e\u0301e\u0301e\u0301e\u0301e\u0301e\u0301e\u0301e\u0301e\u0301e\u0301 combining',
  'mixed English עברית 中文 العربية 😀 ok',
  'control\u0000chars\u001b[31m\nnew\tline\u202eevil\u2066',
  'x'.repeat(100_000),
  'WWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWW',
  '',
];

const renderers = new Map<string, Renderer>();
function renderer(name: keyof typeof SIZES): Renderer {
  let r = renderers.get(name);
  if (!r) {
    r = new Renderer(SIZES[name]);
    renderers.set(name, r);
  }
  return r;
}

function hostileSnapshot(name: string): FrameSnapshot {
  return buildSnapshot({
    ...inputs.offline!,
    node: name,
    devices: {
      online: 123_456_789,
      offline: 98_765,
      attention: NAMES.map((n, i) => ({
        name: n || name,
        reason: (['offline', 'rejected', 'silent'] as const)[i % 3]!,
        sinceMs: T0 - i * 3_600_000,
      })),
      reportsPerMinute: [1, 2, 3, 1e9, 5, 6, 7, 8, 9, 10],
    },
    alerts: [
      { severity: 'critical', text: `${name} ${name}` },
      { severity: 'warning', text: name || 'empty' },
      { severity: 'info', text: 'x'.repeat(500) },
    ],
    uplink: {
      state: 'retrying',
      backlogRecords: 9_999_999_999,
      lastSuccessAt: T0 - 400 * 86_400_000,
      lastError: name,
    },
    probes: { fsync: { unavailable: name }, runqlat: { p99Ms: 123_456 } },
  });
}

const overlap = (a: TextElement, b: TextElement) =>
  a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h && a.w > 0 && b.w > 0;

function checkLayout(l: Layout, r: Renderer, label: string): void {
  const texts = l.elements.filter((e): e is TextElement => e.kind === 'text');
  assert.ok(texts.length > 5, `${label}: a frame has text`);
  for (const t of texts) {
    const where = `${label}: "${t.text}" in ${t.w}x${t.h} at ${t.x},${t.y}`;
    // Measured again, independently of the layout's own bookkeeping.
    const w = r.measure(t.text, t.font);
    assert.ok(w <= t.w + 0.01, `${where} is ${w.toFixed(1)} px wide`);
    assert.ok(
      t.x >= 0 && t.y >= 0 && t.x + t.w <= l.size.width && t.y + t.h <= l.size.height,
      `${where} leaves the frame`,
    );
    const px = Number(/^(\d+)px/.exec(t.font)?.[1]);
    assert.ok(px <= t.h, `${where}: font ${px}px taller than its slot`);
    // Shortened text is whole grapheme clusters of the original plus an ellipsis.
    if (t.text !== t.full) {
      assert.ok(t.text.endsWith('…'), `${where} shortened without an ellipsis`);
      const kept = graphemes(t.text.slice(0, -1));
      const orig = graphemes(t.full);
      for (let i = 0; i < kept.length; i++) assert.equal(kept[i], orig[i], `${where}: grapheme ${i} split`);
    }
  }
  for (let i = 0; i < texts.length; i++) {
    for (let j = i + 1; j < texts.length; j++) {
      assert.ok(!overlap(texts[i]!, texts[j]!), `${label}: "${texts[i]!.text}" overlaps "${texts[j]!.text}"`);
    }
  }
}

for (const size of Object.values(SIZES)) {
  test(`layout ${size.name}: fixtures fit their slots`, () => {
    const r = renderer(size.name);
    for (const [name, snap] of Object.entries(snapshots))
      checkLayout(layout(snap, size, r.measure), r, `${size.name} ${name}`);
  });

  test(`layout ${size.name}: long and Unicode names are shortened to fit, never overlap`, () => {
    const r = renderer(size.name);
    for (const name of NAMES)
      checkLayout(layout(hostileSnapshot(name), size, r.measure), r, `${size.name} ${name.slice(0, 20)}`);
    // A long name really is shortened (the test above would pass if nothing were drawn).
    const l = layout(hostileSnapshot(NAMES[0]!), size, r.measure);
    assert.ok(
      l.elements.some((e) => e.kind === 'text' && e.text.endsWith('…') && e.full.startsWith('sensor-with')),
    );
  });

  test(`layout ${size.name}: unknown values say unknown, never 0`, () => {
    const r = renderer(size.name);
    const l = layout(snapshots.unknown!, size, r.measure);
    const texts = l.elements.filter((e): e is TextElement => e.kind === 'text').map((t) => t.text);
    assert.ok(
      texts.some((t) => t.includes('unknown')),
      texts.join(' | '),
    );
    for (const t of texts)
      assert.ok(
        !/(^|\s)0(\s|%|$)/.test(t) && !t.startsWith('0 '),
        `"${t}" draws a zero for an unknown value`,
      );
    assert.ok(!texts.includes('no active alerts'), 'no alerts source: must not claim there are none');
  });
}

test('sanitize drops controls and bidi overrides, bounds length, keeps graphemes', () => {
  assert.equal(sanitize('a\u0000b\nc\u202ed\u2066e'), 'a b cde');
  assert.equal(graphemes(sanitize('y'.repeat(10_000))).length, 200);
  assert.deepEqual(graphemes('🇩🇪e\u0301👩‍👩‍👧'), ['🇩🇪', 'e\u0301', '👩‍👩‍👧']);
});

test('attention list names the worst first and counts the rest', () => {
  const r = renderer('800x480');
  const l = layout(snapshots.offline!, SIZES['800x480'], r.measure);
  const texts = l.elements.filter((e): e is TextElement => e.kind === 'text').map((t) => t.text);
  const first = texts.indexOf('oven-2-temp');
  const second = texts.indexOf('press-07-vibration');
  assert.ok(first >= 0 && second > first, 'rejected before offline');
  assert.ok(texts.some((t) => /^\+\d+ more need attention$/.test(t)));
});

const textsOf = (l: Layout) => l.elements.filter((e): e is TextElement => e.kind === 'text');

test('every size draws the status word, and it never contradicts the alert line', () => {
  for (const size of Object.values(SIZES)) {
    const r = renderer(size.name);
    for (const [name, snap] of Object.entries(snapshots)) {
      const texts = textsOf(layout(snap, size, r.measure));
      const word = overallStatus(snap).word;
      const badge = texts.find((t) => t.text === word && t.y < 24);
      assert.ok(badge, `${size.name} ${name}: no ${word} badge in the header`);
      const all = texts.map((t) => t.text);
      if (word === 'WARN' || word === 'ALERT') {
        assert.ok(
          !all.includes('no active alerts'),
          `${size.name} ${name}: ${word} above "no active alerts"`,
        );
        const worst = snap.alerts[0]!;
        assert.ok(
          texts.some((t) => t.full === worst.text),
          `${size.name} ${name}: the worst alert "${worst.text}" is not drawn`,
        );
      }
    }
  }
});

test('red where it is bad: no device online, a full disk; offline devices say for how long', () => {
  const snap = snapshots.failing!;
  for (const size of Object.values(SIZES)) {
    const r = renderer(size.name);
    const texts = textsOf(layout(snap, size, r.measure));
    // The first device named says how long it has been offline, on every size.
    const first = texts.find((t) => /offline 47m/.test(t.full));
    assert.ok(first, `${size.name}: "offline 47m" for the first device`);
    if (size.mono) continue;
    const zero = texts.find((t) => t.text === '0');
    assert.equal(zero?.tone, 'bad', `${size.name}: "0 online" with every device offline is red`);
    const disk = texts.find((t) => /99%/.test(t.text));
    assert.equal(disk?.tone, 'bad', `${size.name}: a 99% full disk is red`);
    assert.ok(
      texts.some((t) => t.text === 'CRIT'),
      size.name,
    );
  }
  // A healthy node's online count is green, a few offline devices are amber, not red.
  const r = renderer('800x480');
  const healthy = textsOf(layout(snapshots.healthy!, SIZES['800x480'], r.measure));
  assert.equal(healthy.find((t) => t.text === '42')?.tone, 'ok');
  const some = textsOf(layout(snapshots.offline!, SIZES['800x480'], r.measure));
  assert.equal(some.find((t) => t.text === '13')?.tone, 'warn');
  assert.equal(some.find((t) => t.text === 'offline 14m')?.tone, 'warn');
});

test('HTML in node, device and alert names is drawn as text, never interpreted', () => {
  const html = '<b>pump</b><script>alert(1)</script>&amp;';
  const snap = buildSnapshot({
    ...inputs.offline!,
    node: html,
    devices: { online: 1, offline: 1, attention: [{ name: html, reason: 'offline', sinceMs: T0 - 60_000 }] },
    alerts: [{ severity: 'critical', text: html }],
  });
  assert.equal(snap.node, html);
  assert.equal(snap.devices?.attention[0]?.name, html);
  assert.ok(snap.alerts.some((a) => a.text === html));
  const r = renderer('800x480');
  const texts = textsOf(layout(snap, SIZES['800x480'], r.measure));
  assert.ok(texts.filter((t) => t.full === html).length >= 3, 'node, device and alert keep their text');
});
