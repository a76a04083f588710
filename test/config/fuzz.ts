/**
 * Fuzz target of the configuration loader: a config file (random text, random JSON, and JSON
 * objects whose sections and keys are the real ones with hostile values: wrong types, units,
 * huge numbers, `__proto__`, nesting) and environment variables, with every part's sections.
 * Each loads into a frozen config or fails with one ConfigError listing its problems, nothing
 * else, and no value reaches the shared prototype.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { envName, loadConfig } from '../../src/config/index.js';
import { allSections } from '../../src/daemon/index.js';
import { ConfigError } from '../../src/errors.js';
import type { FuzzTarget } from '../fuzz.js';

const hostile = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.constantFrom(
    '64KiB',
    '1.5GiB',
    '-1',
    '10s',
    '5m',
    '1e400',
    '0x10',
    'NaN',
    '',
    ' ',
    '127.0.0.1:99999',
    '[::1]:0',
  ),
  fc.constantFrom(Number.MAX_SAFE_INTEGER, -0, 1e308, 0.5, -1),
  fc.string({ maxLength: 40 }),
);

export const configTarget: FuzzTarget = {
  name: 'config.load',
  async setup() {
    const sections = allSections();
    const keys = sections.flatMap((s) => Object.keys(s.fields).map((k) => [s.name, k] as const));
    const sectionNames = sections.map((s) => s.name);
    const known = fc.array(fc.tuple(fc.constantFrom(...keys), hostile), { maxLength: 12 }).map((pairs) => {
      const o: Record<string, Record<string, unknown>> = {};
      for (const [[s, k], v] of pairs) {
        o[s] ??= {};
        o[s][k] = v;
      }
      return o;
    });
    const data = fc.oneof(
      known,
      fc.jsonValue({ maxDepth: 3 }),
      fc.dictionary(
        fc.oneof(fc.constantFrom(...sectionNames, '__proto__', 'constructor'), fc.string()),
        hostile,
      ),
    );
    const text = fc.oneof(
      data.map((d) => JSON.stringify(d)),
      fc.string({ maxLength: 200 }),
      fc.constantFrom('{"__proto__": {"polluted": 1}}', '{"mqtt": {"__proto__": {"x": 1}}}', '{', '\uFEFF{}'),
    );
    const env = fc
      .array(fc.tuple(fc.constantFrom(...keys), fc.string({ maxLength: 20 })), { maxLength: 4 })
      .map((pairs) => Object.fromEntries(pairs.map(([[s, k], v]) => [envName(s, k), v])));
    const dir = mkdtempSync(join(tmpdir(), 'ek-fuzz-config-'));
    const file = join(dir, 'config.json');
    return {
      property: fc.property(text, env, (t, e) => {
        writeFileSync(file, t);
        try {
          const c = loadConfig({ file, env: e, sections });
          assert.ok(Object.isFrozen(c));
        } catch (err) {
          assert.ok(err instanceof ConfigError, `not a ConfigError: ${(err as Error)?.stack}`);
          assert.ok(err.problems.length > 0);
        }
        assert.deepEqual(Object.keys(Object.prototype), []);
      }),
      close: async () => rmSync(dir, { recursive: true, force: true }),
    };
  },
};

export const configTargets = [configTarget];
