/**
 * The one grammar of every `edgekeeper` command. A command declares its flags, its subcommands
 * (each with how many arguments it takes) and the formats it prints; `defineCommand` parses
 * against that declaration, so usage checks, help and shell completion cannot drift apart:
 *
 * - exit 0 success, 1 failure, 2 usage error, 78 invalid configuration;
 * - `-w, --write-out simple|table|json` wherever a command prints data (`--json` = `-w json`);
 * - every error is one line on stderr, `edgekeeper <command>: <what went wrong> [EDGE_ERR_...]`;
 *   a stack trace only with `--debug`;
 * - `-h, --help` prints the command's usage.
 */
import { parseArgs } from 'node:util';
import { AdminTokenError, adminFetch } from './admin.js';
import { parseHostPort } from './config/index.js';
import {
  ConfigError,
  EdgeError,
  FileError,
  SchemaTooNewError,
  UnreachableError,
  UsageError,
} from './errors.js';
import { isJournalStream } from './log.js';
import type { CliCommand, CliOption, OutputFormat } from './part.js';

export type { CliCommand, CliOption, OutputFormat } from './part.js';

export const OUTPUT_FORMATS: readonly OutputFormat[] = ['simple', 'table', 'json'];

/**
 * Where every command writes. Looked up at each call, so a test can point `out`/`err` elsewhere
 * (or replace process.stdout.write) without catching the test runner's own output.
 */
export const io = {
  out: (d: string | Uint8Array): void => {
    process.stdout.write(d);
  },
  err: (d: string): void => {
    process.stderr.write(d);
  },
};
const EXIT_FAILURE = 1;
const EXIT_USAGE = 2;
/** EX_DATAERR: the database was written by a newer edgekeeper; the unit does not restart on it. */
const EXIT_NEWER_DATABASE = 65;
const EXIT_CONFIG = 78;

/** What a command's `main` gets: checked values and arguments. */
export interface Invocation {
  values: Record<string, string | boolean | string[] | undefined>;
  /** The subcommand, when the command has them. */
  sub?: string;
  /** The arguments after the subcommand (or all of them). */
  args: string[];
  /** Everything after `--`, when the command passes it through (lock). */
  rest: string[];
  format: OutputFormat;
}

export interface CommandSpec {
  name: string;
  summary: string;
  usage: string | (() => string);
  options?: Record<string, CliOption>;
  /** Subcommand -> [least, most] arguments after it. */
  subcommands?: Record<string, readonly [number, number]>;
  /** Without subcommands: [least, most] arguments. Default none. */
  args?: readonly [number, number];
  /** The formats it prints (-w); the first is the default. Absent: it prints no data. */
  formats?: readonly OutputFormat[];
  /** The default format per subcommand, where it is not the first of `formats` (lists: table). */
  defaultFormat?: (sub: string | undefined) => OutputFormat;
  /** Arguments after `--` are not parsed but handed over (`lock NAME -- COMMAND ...`). */
  passthrough?: boolean;
  main(inv: Invocation): Promise<number>;
}

const COMMON: Record<string, CliOption> = {
  help: { type: 'boolean', short: 'h' },
  debug: { type: 'boolean' },
};
const OUTPUT: Record<string, CliOption> = {
  'write-out': { type: 'string', short: 'w', value: 'FORMAT' },
  json: { type: 'boolean' },
};

export function defineCommand(spec: CommandSpec): CliCommand {
  const usage = () => (typeof spec.usage === 'function' ? spec.usage() : spec.usage);
  return {
    name: spec.name,
    summary: spec.summary,
    get usage() {
      return usage();
    },
    options: { ...(spec.options ?? {}) },
    subcommands: spec.subcommands ? Object.keys(spec.subcommands) : undefined,
    formats: spec.formats,
    async run(argv) {
      const debug = argv.includes('--debug');
      try {
        const inv = parse(spec, argv);
        if (inv === 'help') {
          io.out(`${usage().trimEnd()}\n`);
          return 0;
        }
        return await spec.main(inv);
      } catch (err) {
        return report(spec.name, err, debug);
      }
    },
  };
}

function parse(spec: CommandSpec, argv: string[]): Invocation | 'help' {
  const dash = spec.passthrough ? argv.indexOf('--') : -1;
  const own = dash >= 0 ? argv.slice(0, dash) : argv;
  const declared = { ...COMMON, ...(spec.formats ? OUTPUT : {}), ...(spec.options ?? {}) };
  const options: Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }> = {};
  for (const [k, o] of Object.entries(declared))
    options[k] = {
      type: o.type,
      ...(o.short ? { short: o.short } : {}),
      ...(o.multiple ? { multiple: true } : {}),
    };
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: own, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError(
      (err as Error).message.split('\n')[0]!.replace(/\. To specify a positional.*$|\.$/, ''),
    );
  }
  const values = parsed.values as Invocation['values'];
  if (values.help) return 'help';
  for (const [k, o] of Object.entries(spec.options ?? {})) {
    if (values[k] === undefined) {
      const env = o.env ? process.env[o.env] : undefined;
      if (env !== undefined && env !== '') values[k] = env;
      else if (o.default !== undefined) values[k] = o.default;
    }
    const v = values[k];
    if (o.choices && typeof v === 'string' && !o.choices.includes(v))
      throw new UsageError(`--${k} must be one of ${o.choices.join(', ')}, got ${JSON.stringify(v)}`);
  }
  let format: OutputFormat = spec.formats?.[0] ?? 'simple';
  if (spec.defaultFormat) format = spec.defaultFormat(parsed.positionals[0]);
  if (spec.formats) {
    const w = values['write-out'] as string | undefined;
    if (w !== undefined && values.json && w !== 'json')
      throw new UsageError(`--json and -w ${w} contradict each other`);
    const want = values.json ? 'json' : w;
    if (want !== undefined) {
      if (!spec.formats.includes(want as OutputFormat))
        throw new UsageError(`-w must be one of ${spec.formats.join(', ')}, got ${JSON.stringify(want)}`);
      format = want as OutputFormat;
    }
  }
  let args = parsed.positionals;
  let sub: string | undefined;
  let range = spec.args ?? ([0, 0] as const);
  if (spec.subcommands) {
    const names = Object.keys(spec.subcommands);
    sub = args[0];
    if (sub === undefined) throw new UsageError(`needs a subcommand: ${names.join(', ')}`);
    if (!Object.hasOwn(spec.subcommands, sub))
      throw new UsageError(`unknown subcommand ${JSON.stringify(sub)}; one of ${names.join(', ')}`);
    range = spec.subcommands[sub]!;
    args = args.slice(1);
  }
  if (args.length < range[0] || args.length > range[1]) {
    const n =
      range[0] === range[1]
        ? `${range[0]} argument${range[0] === 1 ? '' : 's'}`
        : `${range[0]} to ${range[1]} arguments`;
    const extra = args.length > range[1] ? ` (${JSON.stringify(args[range[1]])} is one too many)` : '';
    throw new UsageError(`${sub ? `${sub} takes` : 'takes'} ${n}, got ${args.length}${extra}`);
  }
  return { values, sub, args, rest: dash >= 0 ? argv.slice(dash + 1) : [], format };
}

/** The system refused a file, a directory or a listen address: shown as FileError. */
const FILE_ERRNOS = new Set([
  'ENOENT',
  'EACCES',
  'EPERM',
  'EISDIR',
  'ENOTDIR',
  'EEXIST',
  'ENOSPC',
  'EROFS',
  'EMFILE',
  'ENAMETOOLONG',
  'EXDEV',
  'EADDRINUSE',
  'EADDRNOTAVAIL',
]);
/** Nothing answered at an address: shown as UnreachableError. */
const CONNECT_ERRNOS = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ETIMEDOUT',
  'ECONNRESET',
  'EAI_AGAIN',
]);

/** Prints `err` as one line with its code and returns the exit status. */
export function report(cmd: string, err: unknown, debug = false): number {
  if (err instanceof ConfigError) {
    // The one multi-line error: every configuration problem with its path.
    io.err(errorEntry(`edgekeeper: ${err.message}`));
    return EXIT_CONFIG;
  }
  const e = asEdgeError(err);
  const hint = e instanceof UsageError && cmd ? `; see 'edgekeeper ${cmd} --help'` : '';
  const internal = e.code === 'EDGE_ERR_INTERNAL' && !debug ? ' (run with --debug for the stack)' : '';
  io.err(
    errorEntry(`edgekeeper${cmd ? ` ${cmd}` : ''}: ${oneLine(e.message)}${hint}${internal} [${e.code}]`),
  );
  if (debug && err instanceof Error && err.stack) io.err(`${err.stack}\n`);
  if (e instanceof SchemaTooNewError) return EXIT_NEWER_DATABASE;
  return e instanceof UsageError ? EXIT_USAGE : EXIT_FAILURE;
}

/**
 * An error for stderr. When stderr is the journal (under the unit) it is one entry at priority
 * err, so `journalctl -p err -u edgekeeper` shows why the daemon would not start.
 */
function errorEntry(message: string): string {
  return isJournalStream(process.env, 2) ? `<3>${message.replace(/\s*\n\s*/g, ' ')}\n` : `${message}\n`;
}

function asEdgeError(err: unknown): EdgeError {
  if (err instanceof EdgeError) return err;
  const errno = err as NodeJS.ErrnoException | undefined;
  if (errno && typeof errno.code === 'string' && FILE_ERRNOS.has(errno.code))
    return new FileError(errno.message, { cause: err });
  if (errno && typeof errno.code === 'string' && CONNECT_ERRNOS.has(errno.code)) {
    const where = (errno as { address?: string; port?: number }).address;
    const port = (errno as { port?: number }).port;
    return new UnreachableError(
      where ? `${where}${port ? `:${port}` : ''}` : 'the address given',
      errno.code,
      { cause: err },
    );
  }
  const message = err instanceof Error ? err.message : String(err);
  return new EdgeError('EDGE_ERR_INTERNAL', `unexpected error: ${message}`, 500, { cause: err });
}

/** One line, no terminal control sequences: text from a daemon or a file may carry anything. */
export function oneLine(text: string): string {
  return clean(text).replace(/\s*\n\s*/g, '; ');
}

/** Control characters (ANSI escapes, bidi overrides) become visible escapes; newlines are kept. */
export function clean(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: neutralising control characters is the point
  return text.replace(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g, (c) =>
    c === '\t' ? ' ' : `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

// --- output ------------------------------------------------------------------------------------

/**
 * Prints data in the chosen format: `json` is the data itself (one document), `table` aligned
 * columns (rows of records; one record becomes KEY/VALUE rows), `simple` the command's own lines.
 */
export function output(
  format: OutputFormat,
  d: { json: unknown; table?: unknown; simple: () => string | string[] },
): void {
  let text: string;
  if (format === 'json') text = JSON.stringify(d.json);
  else if (format === 'table') text = table(d.table ?? d.json);
  else {
    const s = d.simple();
    text = (Array.isArray(s) ? s.join('\n') : s).replace(/\n$/, '');
  }
  if (text !== '') io.out(`${text}\n`);
}

/** Aligned columns with a header; nested values flattened to `a.b` keys (one record) or JSON. */
export function table(data: unknown): string {
  const rows: Record<string, unknown>[] = Array.isArray(data)
    ? data.map((r) => (r !== null && typeof r === 'object' ? (r as Record<string, unknown>) : { value: r }))
    : Object.entries(flatten(data)).map(([key, value]) => ({ key, value }));
  if (rows.length === 0) return '';
  const cols: string[] = [];
  for (const r of rows) for (const k of Object.keys(r)) if (!cols.includes(k)) cols.push(k);
  const cell = (v: unknown): string =>
    v === undefined || v === null ? '-' : oneLine(typeof v === 'object' ? JSON.stringify(v) : String(v));
  const body = rows.map((r) => cols.map((c) => cell(r[c])));
  const head = cols.map((c) => c.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase());
  const width = cols.map((_, i) => Math.max(head[i]!.length, ...body.map((r) => r[i]!.length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(width[i]!))).join('  ');
  return [line(head), ...body.map(line)].join('\n');
}

function flatten(v: unknown, prefix = '', out: Record<string, unknown> = {}): Record<string, unknown> {
  if (v !== null && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length > 0) {
    for (const [k, x] of Object.entries(v)) flatten(x, prefix ? `${prefix}.${k}` : k, out);
  } else out[prefix || 'value'] = v;
  return out;
}

// --- talking to the daemon ---------------------------------------------------------------------

export const DEFAULT_HTTP = '127.0.0.1:9480';
/** A local daemon answers in milliseconds; this only catches a hung one. */
const HTTP_TIMEOUT_MS = 30_000;

/** `--http HOST:PORT` -> base URL; a malformed address is a usage error. */
export function httpBase(hostPort: string, flag = '--http'): string {
  const hp = parseHostPort(hostPort);
  if (!hp) throw new UsageError(`${flag} must be HOST:PORT, got ${JSON.stringify(hostPort)}`);
  return `http://${hp.host.includes(':') ? `[${hp.host}]` : hp.host}:${hp.port}`;
}

/** fetch, with "nothing answers" as an UnreachableError naming the address (and `hint`). */
export async function fetchOrUnreachable(
  url: string,
  init: RequestInit = {},
  hint = 'is edgekeeper running?',
): Promise<Response> {
  try {
    // adminFetch adds the local admin token when the daemon asks for it (src/admin.ts)
    return await adminFetch(url, { signal: AbortSignal.timeout(HTTP_TIMEOUT_MS), ...init });
  } catch (err) {
    if (err instanceof AdminTokenError) throw new FileError(err.message, { cause: err });
    const c = (err as { cause?: { code?: string; message?: string } }).cause;
    const cause = c?.code ?? c?.message ?? (err as Error).message;
    throw new UnreachableError(new URL(url).host, `${cause}; ${hint}`, { cause: err });
  }
}

/**
 * A JSON request to the daemon's local API. A refusal becomes the daemon's own error (its code
 * and message); a 404 is returned to the caller when `allow404`.
 */
export async function daemonJson<T>(
  hostPort: string,
  method: string,
  path: string,
  body?: unknown,
  hint?: string,
): Promise<{ status: number; body: T }> {
  const res = await fetchOrUnreachable(
    `${httpBase(hostPort)}${path}`,
    {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    },
    hint,
  );
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new EdgeError(
      'EDGE_ERR_INTERNAL',
      `the daemon answered ${res.status} with no JSON: ${text.slice(0, 200)}`,
    );
  }
  if (!res.ok && res.status !== 404) {
    const j = json as { code?: unknown; message?: unknown };
    throw new EdgeError(
      typeof j.code === 'string' && j.code.startsWith('EDGE_ERR_') ? j.code : 'EDGE_ERR_INTERNAL',
      `the daemon refused: ${typeof j.message === 'string' ? j.message : text.slice(0, 200)}`,
      res.status,
    );
  }
  return { status: res.status, body: json as T };
}

// --- shell completion --------------------------------------------------------------------------

const PATH_VALUE = /^(FILE|DIR|PATH|SNAPSHOT)$/;

interface Completion {
  name: string;
  subs: string[];
  /** Flags, long and short. */
  flags: string[];
  /** Flags that take a value: their choices, 'path', or nothing to offer. */
  values: Map<string, string[] | 'path'>;
}

function completionData(commands: readonly CliCommand[]): Completion[] {
  return commands.map((c) => {
    const all: Record<string, CliOption> = {
      ...(c.formats
        ? { 'write-out': { ...OUTPUT['write-out']!, choices: c.formats }, json: OUTPUT.json! }
        : {}),
      ...(c.options ?? {}),
      ...COMMON,
    };
    const flags: string[] = [];
    const values = new Map<string, string[] | 'path'>();
    for (const [k, o] of Object.entries(all)) {
      const names = [`--${k}`, ...(o.short ? [`-${o.short}`] : [])];
      flags.push(...names);
      if (o.type === 'string') {
        const v = o.choices ? [...o.choices] : PATH_VALUE.test(o.value ?? '') ? 'path' : [];
        for (const n of names) values.set(n, v);
      }
    }
    return { name: c.name, subs: [...(c.subcommands ?? [])], flags, values };
  });
}

/** A completion script for `shell`, generated from the command table. */
export function completionScript(shell: 'bash' | 'zsh', commands: readonly CliCommand[]): string {
  const data = completionData(commands);
  const names = data.map((c) => c.name).join(' ');
  if (shell === 'bash') {
    const cases = data.map((c) => {
      const prev = [...c.values]
        .map(
          ([flag, v]) =>
            `        ${flag}) ${v === 'path' ? 'COMPREPLY=($(compgen -f -- "$cur"))' : v.length ? `COMPREPLY=($(compgen -W "${v.join(' ')}" -- "$cur"))` : ':'}; return ;;`,
        )
        .join('\n');
      return [
        `    ${c.name})`,
        `      case "$prev" in`,
        prev,
        '      esac',
        `      opts="${c.flags.join(' ')}"; subs="${c.name === 'help' ? names : c.subs.join(' ')}" ;;`,
      ].join('\n');
    });
    return [
      '# bash completion for edgekeeper; generated by `edgekeeper completion bash`.',
      '# Load it with: source <(edgekeeper completion bash)',
      '_edgekeeper() {',
      `  local cur="\${COMP_WORDS[COMP_CWORD]}" prev="\${COMP_WORDS[COMP_CWORD-1]}" opts="" subs=""`,
      '  if [ "$COMP_CWORD" -eq 1 ]; then',
      `    COMPREPLY=($(compgen -W "${names} --help --version" -- "$cur")); return`,
      '  fi',
      `  case "\${COMP_WORDS[1]}" in`,
      ...cases,
      '    *) return ;;',
      '  esac',
      '  if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W "$opts" -- "$cur")); return; fi',
      '  if [ "$COMP_CWORD" -eq 2 ] && [ -n "$subs" ]; then COMPREPLY=($(compgen -W "$subs" -- "$cur")); return; fi',
      '  COMPREPLY=($(compgen -f -- "$cur"))',
      '}',
      'complete -F _edgekeeper edgekeeper',
      '',
    ].join('\n');
  }
  const cases = data.map((c) => {
    const prev = [...c.values]
      .map(
        ([flag, v]) =>
          `        ${flag}) ${v === 'path' ? '_files' : v.length ? `compadd -- ${v.join(' ')}` : ':'}; return ;;`,
      )
      .join('\n');
    const subs = c.name === 'help' ? names : c.subs.join(' ');
    return [
      `    ${c.name})`,
      '      case $prev in',
      prev,
      '      esac',
      `      if [[ $cur == -* ]]; then compadd -- ${c.flags.join(' ')}; return; fi`,
      subs ? `      if (( CURRENT == 3 )); then compadd -- ${subs}; return; fi` : '',
      '      _files ;;',
    ]
      .filter(Boolean)
      .join('\n');
  });
  return [
    '#compdef edgekeeper',
    '# zsh completion for edgekeeper; generated by `edgekeeper completion zsh`.',
    '# Load it with: source <(edgekeeper completion zsh), or save it as _edgekeeper in your $fpath.',
    '_edgekeeper() {',
    `  local cur=\${words[CURRENT]} prev=\${words[CURRENT-1]}`,
    `  if (( CURRENT == 2 )); then compadd -- ${names} --help --version; return; fi`,
    `  case \${words[2]} in`,
    ...cases,
    '  esac',
    '}',
    `if [[ \${funcstack[1]} == _edgekeeper ]]; then _edgekeeper "$@"; else compdef _edgekeeper edgekeeper; fi`,
    '',
  ].join('\n');
}
