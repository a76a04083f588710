import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import {
  type ConfigSection,
  configReference,
  daemonSections,
  envName,
  loadConfig,
  parseBytes,
  parseDuration,
  parseHostPort,
} from '../../src/config/index.js';
import { ConfigError } from '../../src/errors.js';

function problemsOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${err}`);
    assert.equal(err.code, 'EDGE_ERR_CONFIG');
    for (const p of err.problems) assert.ok(err.message.includes(p), 'every problem is in the one message');
    return err.problems;
  }
  assert.fail('expected a ConfigError');
}

describe('config defaults', () => {
  test('an empty config gives the documented defaults, on loopback', () => {
    const c = loadConfig({ env: {} });
    assert.equal(c.http.listen, '127.0.0.1:9480');
    assert.equal(c.http.maxBodyBytes, 1024 * 1024);
    assert.equal(c.node.dataDir, './data');
    assert.ok(c.node.name.length > 0);
    assert.equal(c.log.level, 'info');
    assert.equal(c.store.durability, 'fsync');
    assert.equal(c.store.quota, 2 * 1024 ** 3);
    assert.equal(c.store.maxRequestBytes, 1.5 * 1024 * 1024);
    assert.equal(c.store.maxTxnOps, 128);
    assert.equal(c.store.watchBufferLimit, 10_000);
    assert.equal(c.store.minLeaseTtl, 2000);
    assert.equal(c.store.compactionMode, 'periodic');
    assert.equal(c.store.compactionRetention, '1h');
    assert.equal(c.store.backupSchedule, '');
    assert.equal(c.store.backupDir, undefined);
    assert.equal(c.store.backupKeep, 7);
    assert.equal(c.store.commitP99Objective, 50);
  });

  test('the result is deep-frozen', () => {
    const c = loadConfig({ env: {}, fileData: { store: { quota: '1GiB' } } });
    assert.ok(Object.isFrozen(c));
    assert.ok(Object.isFrozen(c.store));
    assert.throws(() => {
      (c.store as { quota: number }).quota = 1;
    }, TypeError);
    assert.throws(() => {
      (c as unknown as Record<string, unknown>).extra = {};
    }, TypeError);
    assert.equal(c.store.quota, 1024 ** 3);
  });
});

describe('config validation', () => {
  test('every problem is reported with its path in one ConfigError', () => {
    const problems = problemsOf(() =>
      loadConfig({
        env: {},
        fileData: {
          http: { listen: 'localhost', lisen: 'x' },
          store: { quota: 'lots', maxTxnOps: 0, durability: 'sometimes' },
          log: { level: 'loud' },
          mqt: {},
        },
      }),
    );
    assert.equal(problems.length, 7, problems.join('\n'));
    const all = problems.join('\n');
    assert.match(all, /Expected `http\.listen` to be HOST:PORT .*got "localhost"/);
    assert.match(all, /Unknown key `http\.lisen`; did you mean `listen`\?/);
    assert.match(all, /Expected `store\.quota` to be a size .*got "lots"/);
    assert.match(all, /Expected `store\.maxTxnOps` to be an integer between 1 and 100000, got 0/);
    assert.match(all, /Expected `store\.durability` to be one of "fsync", "relaxed", got "sometimes"/);
    assert.match(all, /Expected `log\.level` to be one of .*got "loud"/);
    assert.match(all, /Unknown section `mqt`/);
  });

  test('wrong JSON types are refused, not coerced, in the file', () => {
    const problems = problemsOf(() =>
      loadConfig({ env: {}, fileData: { store: { maxTxnOps: '12' }, node: { name: 5 }, http: [] } }),
    );
    const all = problems.join('\n');
    assert.match(all, /`store\.maxTxnOps` to be an integer/);
    assert.match(all, /`node\.name` to be a string, got 5/);
    assert.match(all, /`http` to be an object, got \[\]/);
    assert.equal(problems.length, 3);
  });

  test('the file must hold an object', () => {
    const problems = problemsOf(() => loadConfig({ env: {}, fileData: [1, 2] }));
    assert.match(problems[0]!, /to hold a JSON object/);
  });

  test('renamed keys point to the new name (file and env)', () => {
    const problems = problemsOf(() =>
      loadConfig({
        env: { EDGEKEEPER_STORE_QUOTA_BACKEND_BYTES: '1GiB' },
        fileData: { node: { stateDir: '/x' }, store: { autoCompactionMode: 'revision' } },
      }),
    );
    const all = problems.join('\n');
    assert.match(all, /`node\.stateDir` was renamed to `node\.dataDir`/);
    assert.match(all, /`store\.autoCompactionMode` was renamed to `store\.compactionMode`/);
    assert.match(all, /EDGEKEEPER_STORE_QUOTA_BACKEND_BYTES was renamed to EDGEKEEPER_STORE_QUOTA/);
  });

  test('cross-field checks: retention must fit the compaction mode; the backup schedule must be cron', () => {
    let all = problemsOf(() =>
      loadConfig({ env: {}, fileData: { store: { compactionMode: 'revision', compactionRetention: '1h' } } }),
    ).join('\n');
    assert.match(all, /`store\.compactionRetention` to be a whole number of revisions/);
    all = problemsOf(() =>
      loadConfig({ env: {}, fileData: { store: { compactionRetention: 'ten', backupSchedule: 'daily' } } }),
    ).join('\n');
    assert.match(all, /`store\.compactionRetention` to be a duration/);
    assert.match(all, /`store\.backupSchedule` to be a cron expression/);
    const ok = loadConfig({
      env: {},
      fileData: {
        store: { compactionMode: 'revision', compactionRetention: '1000', backupSchedule: '0 3 * * *' },
      },
    });
    assert.equal(ok.store.compactionRetention, '1000');
  });

  test('null in the file means the default', () => {
    const c = loadConfig({ env: {}, fileData: { http: { listen: null } } });
    assert.equal(c.http.listen, '127.0.0.1:9480');
  });

  test('a file that does not parse or does not exist is a ConfigError naming the file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ek-config-'));
    try {
      const bad = join(dir, 'bad.json');
      writeFileSync(bad, '{"http": {"listen": }');
      assert.match(problemsOf(() => loadConfig({ env: {}, file: bad }))[0]!, /bad\.json is not valid JSON/);
      assert.match(
        problemsOf(() => loadConfig({ env: {}, file: join(dir, 'nope.json') }))[0]!,
        /Cannot read the configuration file .*nope\.json/,
      );
      const good = join(dir, 'good.json');
      writeFileSync(
        good,
        JSON.stringify({ '//': 'comment keys are allowed', http: { listen: '127.0.0.1:1234' } }),
      );
      assert.equal(loadConfig({ env: {}, file: good }).http.listen, '127.0.0.1:1234');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('config layers', () => {
  test('defaults < file < env < flags', () => {
    const fileData = {
      http: { listen: '127.0.0.1:1001' },
      node: { name: 'from-file' },
      log: { level: 'warn' },
    };
    const env = { EDGEKEEPER_HTTP_LISTEN: '127.0.0.1:1002', EDGEKEEPER_NODE_NAME: 'from-env' };
    const flags = { 'http-listen': '127.0.0.1:1003' };
    const c = loadConfig({ fileData, env, flags });
    assert.equal(c.http.listen, '127.0.0.1:1003');
    assert.equal(c.node.name, 'from-env');
    assert.equal(c.log.level, 'warn');
    assert.equal(loadConfig({ fileData, env }).http.listen, '127.0.0.1:1002');
    assert.equal(loadConfig({ fileData, env: {} }).http.listen, '127.0.0.1:1001');
  });

  test('env values are parsed by type, and a bad one names its variable', () => {
    const c = loadConfig({
      env: {
        EDGEKEEPER_STORE_QUOTA: '1GiB',
        EDGEKEEPER_STORE_MAX_TXN_OPS: '256',
        EDGEKEEPER_STORE_MIN_LEASE_TTL: '5s',
        EDGEKEEPER_STORE_COMMIT_P99_OBJECTIVE: '20ms',
        PATH: '/usr/bin',
      },
    });
    assert.equal(c.store.quota, 1024 ** 3);
    assert.equal(c.store.maxTxnOps, 256);
    assert.equal(c.store.minLeaseTtl, 5000);
    assert.equal(c.store.commitP99Objective, 20);
    const all = problemsOf(() =>
      loadConfig({ env: { EDGEKEEPER_STORE_MAX_TXN_OPS: 'many', EDGEKEEPER_HTTP_LISTN: 'x' } }),
    ).join('\n');
    assert.match(all, /Expected `store\.maxTxnOps` \(from EDGEKEEPER_STORE_MAX_TXN_OPS\) to be an integer/);
    assert.match(
      all,
      /Unknown environment variable EDGEKEEPER_HTTP_LISTN; did you mean `EDGEKEEPER_HTTP_LISTEN`/,
    );
  });

  test('env variables of other prefixes are not ours and are left alone', () => {
    const c = loadConfig({ env: { EDGEKEEPER_TEST_THING: '1', EDGEKEEPER_CONFIG: '/x' } });
    assert.equal(c.http.listen, '127.0.0.1:9480');
  });

  test('a bad flag value names the flag', () => {
    const all = problemsOf(() => loadConfig({ env: {}, flags: { 'http-listen': '127.0.0.1:99999' } })).join(
      '\n',
    );
    assert.match(all, /Expected `http\.listen` \(from --http-listen\) to be HOST:PORT/);
  });

  test('part sections and part flags are validated by the same schema', () => {
    const mqtt: ConfigSection = {
      name: 'mqtt',
      doc: 'test part',
      fields: {
        listen: { type: 'hostport', default: '127.0.0.1:1883', doc: 'x' },
        port: { type: 'integer', min: 1, max: 65535, optional: true, doc: 'x' },
        topics: { type: 'string[]', default: ['a'], doc: 'x' },
        tls: { type: 'boolean', default: false, doc: 'x' },
      },
    };
    const sections = [...daemonSections, mqtt];
    const flagSpecs = [{ flag: 'mqtt-listen', key: 'mqtt.listen' }];
    const c = loadConfig({
      sections,
      flagSpecs,
      env: { EDGEKEEPER_MQTT_TOPICS: 'x, y', EDGEKEEPER_MQTT_TLS: 'true' },
      flags: { 'mqtt-listen': '[::1]:1884' },
    });
    const m = c.mqtt as { listen: string; port?: number; topics: string[]; tls: boolean };
    assert.deepEqual(
      { ...m, topics: [...m.topics] },
      { listen: '[::1]:1884', port: undefined, topics: ['x', 'y'], tls: true },
    );
    const all = problemsOf(() => loadConfig({ sections, env: {}, fileData: { mqtt: { port: 70000 } } })).join(
      '\n',
    );
    assert.match(all, /Expected `mqtt\.port` to be an integer between 1 and 65535, got 70000/);
  });
});

describe('config value parsers', () => {
  test('durations, sizes, host:port and env names', () => {
    assert.equal(parseDuration('1h30m'), 5_400_000);
    assert.equal(parseDuration('500ms'), 500);
    assert.equal(parseDuration('250'), 250);
    assert.equal(parseDuration('7d'), 7 * 86_400_000);
    assert.equal(parseDuration('10 parsecs'), undefined);
    assert.equal(parseDuration(''), undefined);
    assert.equal(parseBytes('1.5MiB'), 1_572_864);
    assert.equal(parseBytes('64KiB'), 65_536);
    assert.equal(parseBytes('1GB'), 1_000_000_000);
    assert.equal(parseBytes('12 furlongs'), undefined);
    assert.deepEqual(parseHostPort('[::1]:2379'), { host: '::1', port: 2379 });
    assert.deepEqual(parseHostPort('127.0.0.1:0'), { host: '127.0.0.1', port: 0 });
    assert.equal(parseHostPort('127.0.0.1'), undefined);
    assert.equal(parseHostPort('127.0.0.1:65536'), undefined);
    assert.equal(parseHostPort('a b:1'), undefined);
    assert.equal(envName('store', 'maxRequestBytes'), 'EDGEKEEPER_STORE_MAX_REQUEST_BYTES');
  });

  test('the config reference lists every key with its env variable, and renamed keys', () => {
    const ref = configReference(daemonSections);
    for (const s of daemonSections) {
      for (const [k, f] of Object.entries(s.fields)) {
        if (f.type === 'renamed') assert.ok(ref.includes(`\`${s.name}.${k}\` → \`${s.name}.${f.to}\``));
        else assert.ok(ref.includes(`\`${envName(s.name, k)}\``), `${s.name}.${k} missing`);
      }
    }
  });
});

describe('config documentation', () => {
  const repo = join(import.meta.dirname, '..', '..');

  test('the documentation documents every key of every section, with its env variable', async () => {
    const { readFileSync, readdirSync } = await import('node:fs');
    const { allSections } = await import('../../src/daemon/index.js');
    const docs = join(repo, 'docs');
    const readme = readdirSync(docs)
      .filter((f) => f.endsWith('.md'))
      .map((f) => readFileSync(join(docs, f), 'utf8'))
      .join('\n');
    const missing: string[] = [];
    for (const s of allSections()) {
      for (const [k, f] of Object.entries(s.fields)) {
        if (f.type === 'renamed') {
          if (!readme.includes(`\`${s.name}.${k}\` → \`${s.name}.${f.to}\``))
            missing.push(`${s.name}.${k} (renamed)`);
        } else if (!readme.includes(`\`${s.name}.${k}\``) || !readme.includes(`\`${envName(s.name, k)}\``)) {
          missing.push(`${s.name}.${k}`);
        }
      }
    }
    assert.deepEqual(
      missing,
      [],
      `document these keys in docs/ (each part's configuration table): ${missing.join(', ')}`,
    );
  });

  test('the shipped example configuration is valid', () => {
    const c = loadConfig({ env: {}, file: join(repo, 'systemd', 'edgekeeper.json.example') });
    assert.equal(c.http.listen, '127.0.0.1:9480');
    assert.equal(c.store.backupSchedule, '0 3 * * *');
  });
});
