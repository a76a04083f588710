/**
 * The `-f json` parser on real bpftrace 0.17 output recorded on this machine
 * (test/probes/fixtures/record.sh): every line shape, exit dumps, empty inner buckets, and bad
 * input.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { LineSplitter, MAX_LINE_BYTES, type ParsedLine, parseLine } from '../../src/probes/parser.js';

const fixtures = join(import.meta.dirname, 'fixtures');
const lines = (f: string) => readFileSync(join(fixtures, f), 'utf8').split('\n').slice(0, -1);
/**
 * The maps bpftrace dumps at exit (after its two empty lines): their totals are exact, since the
 * recorder's load (2 x 3 rounds x fsync+fdatasync on 10 files) is all that shapes.bt counts,
 * while where the interval prints fall within the load varies from run to run.
 */
const exitDump = (f: string) => {
  const all = lines(f).map(parseLine);
  const i = all.findIndex((p, j) => p.kind === 'empty' && all[j + 1]?.kind === 'empty');
  return all.slice(i + 2);
};

describe('parser on recorded bpftrace output', () => {
  it('parses every line of the shapes fixture, none bad', () => {
    const parsed = lines('shapes.jsonl').map(parseLine);
    assert.equal(parsed.filter((p) => p.kind === 'bad').length, 0);
    assert.deepEqual(parsed[0], { kind: 'attached', probes: 3 });
    const kinds = new Set(parsed.map((p) => p.kind));
    for (const k of ['attached', 'printf', 'hist', 'stats', 'map', 'empty'])
      assert.ok(kinds.has(k as ParsedLine['kind']), k);
  });

  it('reads printf text with its newline', () => {
    const p = parseLine(lines('shapes.jsonl').find((l) => l.includes('fsync fd='))!);
    assert.equal(p.kind, 'printf');
    assert.match((p as { text: string }).text, /^fsync fd=\d+\n$/);
  });

  it('reads an lhist whose last bucket is open-ended (no max)', () => {
    const p = exitDump('shapes.jsonl').find((x) => x.kind === 'hist' && x.name === 'lh')!;
    assert.equal(p.kind, 'hist');
    assert.ok('buckets' in p);
    const last = p.buckets.at(-1)!;
    assert.equal(last.min, 8);
    assert.equal(last.max, undefined);
    assert.ok(last.count > 0);
    assert.ok(p.buckets.slice(0, -1).every((b) => b.max !== undefined));
  });

  it('reads stats() and avg() (a bare number) as stats', () => {
    const st = exitDump('shapes.jsonl').filter((p) => p.kind === 'stats');
    const full = st.find((p) => p.name === 'st');
    assert.ok(full && full.count !== undefined);
    assert.equal(full.count, 120);
    assert.equal(full.average, Math.floor(full.total / full.count));
    const avg = st.find((p) => p.name === 'avg_fd');
    assert.ok(avg && avg.count === undefined && avg.average === 7);
  });

  it('reads keyed maps, multi-key maps (keys joined by ",") and keyed hists', () => {
    const all = exitDump('shapes.jsonl');
    const calls = all.find((p) => p.kind === 'map' && p.name === 'calls');
    assert.ok(calls && 'values' in calls);
    assert.equal(calls.values.get('tracepoint:syscalls:sys_enter_fsync'), 60);
    assert.equal(calls.values.get('tracepoint:syscalls:sys_enter_fdatasync'), 60);
    const two = all.find((p) => p.kind === 'map' && p.name === 'two_keys');
    assert.ok(two && 'values' in two);
    assert.ok([...two.values.keys()].every((k) => /^\d+,\d+$/.test(k)));
    const keyed = all.find((p) => p.kind === 'hist' && p.name === 'lat_by_fd');
    assert.ok(keyed && 'keyed' in keyed);
    assert.equal(keyed.keyed.get('3')![0]!.count, 12);
  });

  it('sees the exit dump: two empty lines, then the maps again', () => {
    const all = lines('shapes.jsonl').map(parseLine);
    const firstEmpty = all.findIndex((p) => p.kind === 'empty');
    assert.ok(firstEmpty > 0);
    assert.equal(all[firstEmpty + 1]!.kind, 'empty');
    const after = all.slice(firstEmpty + 2);
    assert.ok(after.some((p) => p.kind === 'hist' && p.name === 'lh'));
    assert.ok(after.some((p) => p.kind === 'map' && p.name === 'two_keys'));
  });

  it('keeps empty inner buckets (count 0) inside a histogram', () => {
    const gaps = exitDump('shapes.jsonl').find((p) => p.kind === 'hist' && p.name === 'gaps');
    assert.ok(gaps && 'buckets' in gaps);
    // Values are 4^fd: only buckets starting at a power of 4 can count; the ones between are 0.
    assert.equal(gaps.buckets[0]!.min, 64);
    for (const b of gaps.buckets) if (b.count > 0) assert.equal(Math.log2(b.min) % 2, 0, `bucket ${b.min}`);
    assert.equal(gaps.buckets[1]!.count, 0);
    assert.ok(gaps.buckets.at(-1)!.count > 0);
    assert.ok(gaps.buckets.some((b) => b.count === 0));
  });

  it('parses the real probe set output: every probe map, dev_t keys, the ready line', () => {
    const all = lines('all.jsonl').map(parseLine);
    assert.equal(all.filter((p) => p.kind === 'bad').length, 0);
    const hists = all.filter((p): p is Extract<ParsedLine, { kind: 'hist' }> => p.kind === 'hist');
    const names = new Set(hists.map((h) => h.name));
    for (const n of ['runq_us', 'fsync_us', 'bio_us']) assert.ok(names.has(n), n);
    const bio = hists.find((h) => h.name === 'bio_us');
    assert.ok(bio && 'keyed' in bio && [...bio.keyed.keys()].every((k) => /^\d+$/.test(k)));
    assert.ok(all.some((p) => p.kind === 'printf' && p.text === 'edgekeeper: probes attached\n'));
  });
});

describe('parser on bad input', () => {
  const bad = (l: string) => {
    const p = parseLine(l);
    assert.equal(p.kind, 'bad', l);
    return (p as { reason: string }).reason;
  };
  it('refuses malformed and hostile lines with a reason', () => {
    bad("ERROR: Unknown error -1: couldn't set RLIMIT_MEMLOCK");
    bad('{"type": "hist", "data": {"@x": [{"min": 1, "max": 0, "count": 1}]}}');
    bad('{"type": "hist", "data": {"@x": [{"min": 1, "count": 1}, {"min": 2, "max": 3, "count": 1}]}}');
    bad('{"type": "hist", "data": {"@x": [{"min": 1, "max": 2, "count": -5}]}}');
    bad('{"type": "map", "data": {"@a": 1, "@b": 2}}');
    bad('{"type": "map", "data": {"x": 1}}');
    bad('{"type": "map", "data": {"@a": {"k": "v"}}}');
    bad('{"type": "stats", "data": {"@s": {"count": 1}}}');
    bad('{"type": "printf", "data": 5}');
    bad('{"type": "rm -rf", "data": 1}');
    bad('[1,2,3]');
    bad('{"type": "map", "data": {"@a": {"__proto__": "x"}}}');
    bad('{"type": "hist", "data": {"@x"');
    assert.match(bad('x'.repeat(MAX_LINE_BYTES + 1)), /exceeds/);
  });

  it('parses a map keyed "__proto__" without touching prototypes', () => {
    const p = parseLine('{"type": "map", "data": {"@a": {"__proto__": 3, "constructor": 4}}}');
    assert.ok(p.kind === 'map' && 'values' in p);
    assert.equal(p.values.get('constructor'), 4);
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
  });
});

describe('LineSplitter', () => {
  it('joins lines split across chunks and flushes the last line at end', () => {
    const got: string[] = [];
    const s = new LineSplitter(
      (l) => got.push(l),
      () => assert.fail('no overflow'),
    );
    s.push('{"a"');
    s.push(':1}\n{"b":2}\n{"c"');
    s.push(':3}');
    s.end();
    assert.deepEqual(got, ['{"a":1}', '{"b":2}', '{"c":3}']);
  });

  it('drops an endless line once, then resumes at the next newline', () => {
    const got: string[] = [];
    let overflows = 0;
    const s = new LineSplitter(
      (l) => got.push(l),
      () => overflows++,
    );
    const chunk = 'y'.repeat(64 * 1024);
    for (let i = 0; i < 20; i++) s.push(chunk);
    s.push('tail of the long line\nnext\n');
    assert.equal(overflows, 1);
    assert.deepEqual(got, ['next']);
  });
});

describe('oomkill output', () => {
  it('reads the recorded OOM kill printf into pid, uid, memory and command', async () => {
    const { parseOomLine } = await import('../../src/probes/part.js');
    const all = lines('oomkill.jsonl').map(parseLine);
    const pf = all.find((p) => p.kind === 'printf');
    assert.ok(pf && pf.kind === 'printf');
    const ev = parseOomLine(pf.text);
    assert.ok(ev);
    assert.equal(ev.comm, 'python3');
    assert.ok(Number(ev.anonRssKb) > 20_000);
    assert.ok(all.some((p) => p.kind === 'map' && p.name === 'oomkill' && 'value' in p && p.value === 1));
    assert.equal(parseOomLine('oomkill pid=x'), undefined);
  });
});
