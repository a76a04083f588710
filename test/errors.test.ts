/** Every error code in src/errors.ts is documented in docs/errors.md, and codes are unique per class. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import * as errors from '../src/errors.js';

const repo = join(import.meta.dirname, '..');
const source = readFileSync(join(repo, 'src', 'errors.ts'), 'utf8');
const readme = readFileSync(join(repo, 'docs', 'errors.md'), 'utf8');

test('every EDGE_ERR_* code in src/errors.ts is documented in docs/errors.md', () => {
  const codes = new Set([...source.matchAll(/'(EDGE_ERR_[A-Z0-9_]+)'/g)].map((m) => m[1]!));
  assert.ok(codes.size >= 10, `found only ${codes.size} codes; did the parser break?`);
  const missing = [...codes].filter((c) => !new RegExp(`\\b${c}\\b`).test(readme));
  assert.deepEqual(missing, [], `add these codes to docs/errors.md: ${missing.join(', ')}`);
});

test('every exported error class is an EdgeError with a stable EDGE_ERR_ code', () => {
  const classes = Object.entries(errors).filter(([, v]) => typeof v === 'function' && v !== errors.EdgeError);
  assert.ok(classes.length >= 10);
  for (const [name, cls] of classes) {
    assert.ok(
      (cls as { prototype: unknown }).prototype instanceof errors.EdgeError,
      `${name} extends EdgeError`,
    );
    const body = new RegExp(
      `class ${name} extends EdgeError[\\s\\S]*?super\\(\\s*'(EDGE_ERR_[A-Z0-9_]+)'`,
    ).exec(source);
    assert.ok(body, `${name} passes a literal EDGE_ERR_ code to super`);
  }
});
