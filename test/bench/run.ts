/**
 * The bench runner: `npm run bench -- [filter...]` runs every `test/bench/**\/*.bench.ts`
 * whose path contains one of the filters (all of them when none is given), one after another
 * in this process. Each bench prints its JSON result lines to stdout; this runner writes only
 * to stderr (a header per file and a summary), so `npm run bench > results.jsonl` keeps clean
 * JSON lines. Exit code 1 when any bench threw, 2 when the filters match nothing.
 */
import { readdirSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');

function find(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...find(p));
    else if (e.isFile() && e.name.endsWith('.bench.ts')) out.push(p);
  }
  return out.sort();
}

async function main(): Promise<number> {
  const filters = process.argv.slice(2).filter((a) => a !== '--');
  const files = find(here).filter((f) => {
    const rel = relative(root, f);
    return filters.length === 0 || filters.some((x) => rel.includes(x));
  });
  if (files.length === 0) {
    process.stderr.write(`bench: no test/bench/**/*.bench.ts matches ${JSON.stringify(filters)}\n`);
    return 2;
  }
  let failed = 0;
  for (const f of files) {
    const rel = relative(root, f);
    process.stderr.write(`\n=== ${rel} ===\n`);
    const started = performance.now();
    try {
      const mod = (await import(pathToFileURL(f).href)) as { default?: () => Promise<void> };
      if (typeof mod.default !== 'function') throw new Error('no default export function');
      await mod.default();
      process.stderr.write(
        `=== ${rel}: done in ${((performance.now() - started) / 1000).toFixed(1)} s ===\n`,
      );
    } catch (err) {
      failed++;
      process.stderr.write(`=== ${rel}: FAILED: ${(err as Error)?.stack ?? String(err)} ===\n`);
    }
  }
  process.stderr.write(`\nbench: ${files.length - failed}/${files.length} bench files finished\n`);
  return failed > 0 ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);
