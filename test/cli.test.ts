/**
 * The command-line grammar (src/cli.ts) across every command of the table (src/main.ts), run
 * in-process: exit 2 for every kind of usage error with one line and EDGE_ERR_USAGE, 1 for
 * failures with their code, no stack unless --debug, -w checked everywhere, $ETCDCTL_ENDPOINTS
 * honoured, and shell completion generated from the table (bash run for real; zsh with compadd
 * stubbed). One real process proves the entry point.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { defineCommand, output, table } from '../src/cli.js';
import { commands, main } from '../src/main.js';
import { capture } from './capture.js';
import { freePort } from './etcd/helpers.js';

const repo = join(import.meta.dirname, '..');
const tmp = mkdtempSync(join(tmpdir(), 'ek-cli-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const run = (...args: string[]) => capture(() => main(args));
/** One line on stderr, ending with the code. */
const ONE_LINE = /^edgekeeper( [a-z-]+)?: [^\n]+ \[(EDGE_ERR_[A-Z_]+)\]\n$/;

function codeOf(err: string): string | undefined {
  return ONE_LINE.exec(err)?.[2];
}

describe('usage errors: exit 2, one line, EDGE_ERR_USAGE', () => {
  const cases: [string, string[], RegExp][] = [
    ['no command', [], /Usage: edgekeeper <command>/],
    ['unknown command', ['frobnicate'], /unknown command "frobnicate"/],
    ['unknown top-level option', ['--bogus'], /unknown option "--bogus"/],
    ['unknown flag', ['run', '--no-such-flag'], /Unknown option '--no-such-flag'/],
    ['unknown subcommand', ['kv', 'frob', 'x'], /unknown subcommand "frob"; one of get, put, del, watch/],
    ['missing subcommand', ['lease'], /needs a subcommand: grant, revoke, keep-alive, timetolive, list/],
    ['missing argument', ['kv', 'get'], /get takes 1 to 2 arguments, got 0/],
    ['a device command without its id', ['device', 'add'], /add takes 1 argument, got 0/],
    ['an argument where none is taken', ['device', 'list', 'extra'], /list takes 0 arguments, got 1/],
    ['one argument too many', ['backup', 'a', 'b'], /takes 1 argument, got 2 \("b" is one too many\)/],
    ['output format', ['status', '-w', 'yaml'], /-w must be one of simple, table, json, got "yaml"/],
    ['--json against -w table', ['device', 'list', '--json', '-w', 'table'], /contradict/],
    ['a table of a stream', ['kv', 'watch', 'k', '-w', 'table'], /simple or json/],
    ['-w where nothing is printed', ['lock', 'x', '-w', 'json'], /Unknown option '-w'/],
    [
      'a value outside its choices',
      ['backup', 'f', '--format', 'zip'],
      /--format must be one of sqlite, etcd/,
    ],
    ['frame size', ['frame', '--size', '1x1'], /--size must be one of 800x480/],
    ['a number that is not one', ['kv', 'get', 'k', '--rev', '1x'], /--rev must be a whole number/],
    ['a flag without its value', ['kv', 'get', 'k', '--rev', '-1'], /Option '--rev' argument is ambiguous;/],
    ['a TTL that is not one', ['lease', 'grant', '1e3'], /TTL in whole seconds/],
    ['a lease ID that is not hex', ['lease', 'revoke', 'zz'], /lease ID in hex, got "zz"/],
    ['HOST:PORT', ['status', '--http', 'localhost'], /--http must be HOST:PORT, got "localhost"/],
    ['sort target', ['kv', 'get', 'k', '--sort-by', 'size'], /--sort-by must be one of/],
    ['limit', ['ingest', 'rejects', '--limit', '0'], /--limit must be 1\.\.1000/],
    ['restore with both', ['restore', 'f', '--from-etcd', 's'], /not both/],
    ['restore with neither', ['restore'], /needs FILE/],
    ['fleet-node without a token', ['fleet-node', 'list'], /--admin-token/],
    ['fleet-server without a database', ['fleet-server'], /--database is required/],
    [
      'fleet-node state',
      ['fleet-node', 'list', '--state', 'sick', '--admin-token', 't'],
      /--state must be one of/,
    ],
    ['completion shell', ['completion', 'fish'], /unknown subcommand "fish"; one of bash, zsh/],
    ['help for nothing', ['help', 'nope'], /unknown command "nope"/],
  ];
  for (const [what, args, message] of cases) {
    test(`${what}: edgekeeper ${args.join(' ')}`, async () => {
      const saved = { ...process.env };
      delete process.env.EDGEKEEPER_FLEET_ADMIN_TOKEN;
      delete process.env.EDGEKEEPER_FLEET_DATABASE;
      try {
        const r = await run(...args);
        assert.equal(r.code, 2, r.err);
        assert.match(r.err, message);
        if (args.length > 0) {
          assert.equal(codeOf(r.err), 'EDGE_ERR_USAGE', r.err);
          assert.doesNotMatch(r.err, /\n\s+at /, 'no stack');
        }
      } finally {
        process.env = saved;
      }
    });
  }
});

describe('failures: exit 1, one line with the code, no stack', () => {
  test('nothing answers: the daemon, etcd, the fleet server', async () => {
    const port = await freePort();
    for (const args of [
      ['status', '--http', `127.0.0.1:${port}`],
      ['device', 'list', '--http', `127.0.0.1:${port}`],
      ['ingest', 'rejects', '--http', `127.0.0.1:${port}`],
      ['probes', '--http', `127.0.0.1:${port}`],
      ['sync', 'status', '--http', `127.0.0.1:${port}`],
      ['frame', '--http', `127.0.0.1:${port}`, '--out', join(tmp, 'f.png')],
      ['backup', join(tmp, 'b.db'), '--http', `127.0.0.1:${port}`],
      ['kv', 'get', 'k', '--endpoints', `127.0.0.1:${port}`],
      ['endpoint', 'status', '--endpoints', `127.0.0.1:${port}`],
      ['fleet-node', 'list', '--server', `http://127.0.0.1:${port}`, '--admin-token', 'x'],
    ]) {
      const r = await run(...args);
      assert.equal(r.code, 1, `${args.join(' ')}: ${r.err}`);
      assert.equal(codeOf(r.err), 'EDGE_ERR_UNREACHABLE', r.err);
      assert.match(r.err, new RegExp(`127\\.0\\.0\\.1:${port}`), r.err);
    }
  });

  test('$ETCDCTL_ENDPOINTS is the default endpoint; --endpoints wins over it', async () => {
    const [a, b] = [await freePort(), await freePort()];
    const saved = process.env.ETCDCTL_ENDPOINTS;
    process.env.ETCDCTL_ENDPOINTS = `127.0.0.1:${a},127.0.0.1:9`;
    try {
      for (const args of [
        ['kv', 'get', 'k'],
        ['lease', 'list'],
        ['endpoint', 'status'],
      ]) {
        const r = await run(...args);
        assert.match(r.err, new RegExp(`nothing answers at 127\\.0\\.0\\.1:${a} `), r.err);
      }
      const r = await run('kv', 'put', 'k', 'v', '--endpoints', `127.0.0.1:${b}`);
      assert.match(r.err, new RegExp(`127\\.0\\.0\\.1:${b} `), r.err);
    } finally {
      if (saved === undefined) delete process.env.ETCDCTL_ENDPOINTS;
      else process.env.ETCDCTL_ENDPOINTS = saved;
    }
  });

  test('a bad path is one line with EDGE_ERR_IO, not a stack', async () => {
    const empty = join(tmp, 'empty');
    for (const [args, message] of [
      [['backup', join(tmp, 'x.db'), '--data-dir', empty], /no database at/],
      [['restore', join(tmp, 'missing.db'), '--data-dir', empty], /no backup file at/],
      [
        ['device', 'list', '--data-dir', join(tmp, 'no', 'such', 'dir')],
        /no database at .*edgekeeper\.db: is .* a node's state directory\?/,
      ],
    ] as [string[], RegExp][]) {
      const r = await run(...args);
      assert.equal(r.code, 1, r.err);
      assert.match(r.err, message);
      assert.match(r.err, ONE_LINE, r.err);
      assert.doesNotMatch(r.err, /\n\s+at /);
    }
  });

  test('invalid configuration: every problem, exit 78', async () => {
    const file = join(tmp, 'bad.json');
    writeFileSync(file, JSON.stringify({ http: { listen: 'everywhere' }, store: { quota: -1 } }));
    const r = await run('run', '--config', file, '--data-dir', join(tmp, 'data'), '--log-level', 'chatty');
    assert.equal(r.code, 78);
    assert.match(r.err, /Expected `http\.listen` to be HOST:PORT/);
    assert.match(r.err, /Expected `store\.quota` to be a size/);
    assert.match(r.err, /Expected `log\.level` \(from --log-level\)/);
  });

  test('an unexpected error: one line and EDGE_ERR_INTERNAL; the stack only with --debug', async () => {
    const boom = defineCommand({
      name: 'boom',
      summary: 'x',
      usage: 'Usage: edgekeeper boom',
      main: async () => {
        throw new TypeError('cannot read properties of undefined');
      },
    });
    const quiet = await capture(() => boom.run([]));
    assert.equal(quiet.code, 1);
    assert.equal(
      quiet.err,
      'edgekeeper boom: unexpected error: cannot read properties of undefined (run with --debug for the stack) [EDGE_ERR_INTERNAL]\n',
    );
    const loud = await capture(() => boom.run(['--debug']));
    assert.equal(loud.code, 1);
    assert.match(
      loud.err,
      /^edgekeeper boom: unexpected error: .* \[EDGE_ERR_INTERNAL\]\nTypeError: .*\n\s+at /,
    );
  });

  test('terminal control characters in an error are shown escaped', async () => {
    const evil = defineCommand({
      name: 'evil',
      summary: 'x',
      usage: 'x',
      main: async () => {
        throw new Error('node \u001b[31mred\u001b[0m\u202eevil\nsecond line');
      },
    });
    const r = await capture(() => evil.run([]));
    assert.match(r.err, ONE_LINE);
    assert.ok(r.err.includes('\\u001b[31mred\\u001b[0m\\u202eevil; second line'), r.err);
  });
});

describe('help, version, completion: exit 0', () => {
  test('--help lists every command; <cmd> --help, -h and help <cmd> print its usage', async () => {
    const h = await run('--help');
    assert.equal(h.code, 0);
    for (const c of commands()) assert.match(h.out, new RegExp(`^  ${c.name} +\\S`, 'm'), c.name);
    for (const c of commands()) {
      for (const args of [
        [c.name, '--help'],
        [c.name, '-h'],
        ['help', c.name],
      ]) {
        const r = await run(...args);
        assert.equal(r.code, 0, `${args.join(' ')}: ${r.err}`);
        assert.match(r.out, /Usage/, args.join(' '));
      }
    }
    // --help after `--` belongs to the locked command, not to lock.
    assert.match((await run('lock', '--help')).out, /Usage: edgekeeper lock/);
    assert.match((await run('version')).err, /unknown command/);
    assert.match((await run('--version')).out, /^\d+\.\d+\.\d+\n$/);
  });

  test('every command that prints data takes -w simple|table|json', () => {
    const data = [
      'status',
      'kv',
      'lease',
      'endpoint',
      'device',
      'ingest',
      'probes',
      'doctor',
      'sync',
      'fleet-node',
    ];
    for (const name of data) {
      const c = commands().find((x) => x.name === name)!;
      assert.deepEqual([...(c.formats ?? [])].sort(), ['json', 'simple', 'table'], name);
    }
    assert.deepEqual(commands().find((c) => c.name === 'elect')?.formats, ['simple', 'json']);
  });

  test('bash completion: commands, subcommands, flags and their values, from the table', async () => {
    const script = (await run('completion', 'bash')).out;
    const file = join(tmp, 'edgekeeper.bash');
    writeFileSync(file, script);
    const complete = (...words: string[]) => {
      const r = spawnSync(
        'bash',
        [
          '-c',
          `source ${file}; COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _edgekeeper; printf '%s\\n' "\${COMPREPLY[@]}"`,
        ],
        { encoding: 'utf8' },
      );
      assert.equal(r.status, 0, r.stderr);
      return r.stdout.split('\n').filter(Boolean);
    };
    assert.deepEqual(complete('edgekeeper', ''), [...commands().map((c) => c.name), '--help', '--version']);
    assert.deepEqual(complete('edgekeeper', 'fl'), ['fleet-server', 'fleet-node']);
    assert.deepEqual(complete('edgekeeper', 'kv', ''), ['get', 'put', 'del', 'watch']);
    assert.deepEqual(complete('edgekeeper', 'completion', ''), ['bash', 'zsh']);
    assert.deepEqual(complete('edgekeeper', 'frame', '--size', ''), [
      '800x480',
      '480x320',
      '320x240',
      '250x122',
      '296x128',
    ]);
    assert.deepEqual(complete('edgekeeper', 'status', '-w', ''), ['simple', 'table', 'json']);
    assert.deepEqual(complete('edgekeeper', 'elect', '-w', ''), ['simple', 'json']);
    assert.deepEqual(complete('edgekeeper', 'kv', 'get', '--pre'), ['--prefix', '--prev-kv']);
    assert.ok(complete('edgekeeper', 'lock', '--').includes('--endpoints'));
    assert.ok(!complete('edgekeeper', 'lock', '--').includes('--write-out'), 'lock prints no data');
    assert.ok(complete('edgekeeper', 'help', '').includes('fleet-node'));
    writeFileSync(join(tmp, 'backup-target.db'), '');
    assert.deepEqual(complete('edgekeeper', 'restore', '--data-dir', join(tmp, 'backup-t')), [
      join(tmp, 'backup-target.db'),
    ]);
  });

  test('zsh completion parses and offers the same words', async () => {
    const script = (await run('completion', 'zsh')).out;
    const file = join(tmp, '_edgekeeper');
    writeFileSync(file, script);
    assert.equal(spawnSync('zsh', ['-n', file]).status, 0, 'zsh -n');
    const complete = (...words: string[]) => {
      const r = spawnSync(
        'zsh',
        [
          '-c',
          `compadd() { [[ $1 == -- ]] && shift; print -l -- "$@"; }; _files() { print FILES; }; compdef() { :; }
           source ${file}; words=(${words.map((w) => `'${w}'`).join(' ')}); CURRENT=${words.length}; _edgekeeper`,
        ],
        { encoding: 'utf8' },
      );
      assert.equal(r.status, 0, r.stderr);
      return r.stdout.split('\n').filter(Boolean);
    };
    assert.deepEqual(complete('edgekeeper', 'kv', ''), ['get', 'put', 'del', 'watch']);
    assert.deepEqual(complete('edgekeeper', 'status', '-w', ''), ['simple', 'table', 'json']);
    assert.deepEqual(complete('edgekeeper', 'backup', '--data-dir', ''), ['FILES']);
    assert.ok(complete('edgekeeper', '').includes('completion'));
  });
});

test('output: tables align, flatten one record, escape control characters, keep HTML as text', async () => {
  assert.equal(
    table([
      { id: 'pump-1', lastSeen: null, reports: 12 },
      { id: 'p2', lastSeen: '2026-01-01', reports: 3, extra: { a: 1 } },
    ]),
    [
      'ID      LAST_SEEN   REPORTS  EXTRA',
      'pump-1  -           12       -',
      'p2      2026-01-01  3        {"a":1}',
    ].join('\n'),
  );
  assert.equal(
    table({ node: '<b>n</b>\u001b[2J', store: { revision: 5 }, alarms: [] }),
    [
      'KEY             VALUE',
      'node            <b>n</b>\\u001b[2J',
      'store.revision  5',
      'alarms          []',
    ].join('\n'),
  );
  const r = await capture(async () => {
    output('json', { json: { a: 1 }, simple: () => 'x' });
    output('simple', { json: {}, simple: () => ['one', 'two'] });
    output('table', { json: [], simple: () => 'x' });
    return 0;
  });
  assert.equal(r.out, '{"a":1}\none\ntwo\n');
});

test('the installed entry point: exit codes and output of a real process', () => {
  const r = spawnSync(
    process.execPath,
    ['--import', 'tsx', join(repo, 'src', 'main.ts'), 'kv', 'frob', 'x'],
    {
      encoding: 'utf8',
      timeout: 60_000,
    },
  );
  assert.equal(r.status, 2);
  assert.equal(codeOf(r.stderr), 'EDGE_ERR_USAGE');
  const v = spawnSync(process.execPath, ['--import', 'tsx', join(repo, 'src', 'main.ts'), '--version'], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  assert.equal(v.status, 0);
  assert.match(v.stdout, /^\d+\.\d+\.\d+\n$/);
});
