#!/usr/bin/env node
/**
 * The `edgekeeper` command line: one table of commands (the daemon's, each part's, `completion`
 * and `help`), every one following the grammar of src/cli.ts. Exit codes: 0 ok, 1 failure,
 * 2 usage error, 65 the database was written by a newer edgekeeper (EX_DATAERR), 78 invalid
 * configuration (EX_CONFIG); the systemd unit restarts on neither.
 */
import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { completionScript, defineCommand, io, report } from './cli.js';
import { daemonCliCommands, partCommands, VERSION } from './daemon/index.js';
import { UsageError } from './errors.js';
import type { CliCommand } from './part.js';

const completion = defineCommand({
  name: 'completion',
  summary: 'Print a shell completion script (bash or zsh) for every command',
  usage: `Usage: edgekeeper completion bash|zsh

Prints a completion script generated from the command table: commands, subcommands, flags and
the values they accept.
  bash:  source <(edgekeeper completion bash)     (or save it in /etc/bash_completion.d/edgekeeper)
  zsh:   source <(edgekeeper completion zsh)      (or save it as _edgekeeper in a directory of $fpath)`,
  subcommands: { bash: [0, 0], zsh: [0, 0] },
  async main({ sub }) {
    io.out(completionScript(sub as 'bash' | 'zsh', commands()));
    return 0;
  },
});

const help = defineCommand({
  name: 'help',
  summary: 'Show the full usage of a command',
  usage: 'Usage: edgekeeper help [COMMAND]',
  args: [0, 1],
  async main({ args }) {
    if (args[0] === undefined) {
      io.out(`${topHelp()}\n`);
      return 0;
    }
    const cmd = commands().find((c) => c.name === args[0]);
    if (!cmd) throw new UsageError(`unknown command ${JSON.stringify(args[0])}`);
    io.out(`${cmd.usage.trimEnd()}\n`);
    return 0;
  },
});

let table: CliCommand[] | undefined;

/** Every command, in the order `--help` lists them; names are unique. */
export function commands(): CliCommand[] {
  if (table) return table;
  const all = [...daemonCliCommands, ...partCommands(), completion, help];
  const seen = new Set<string>();
  for (const c of all) {
    if (seen.has(c.name)) throw new Error(`CLI command ${c.name} is declared twice`);
    seen.add(c.name);
  }
  table = all;
  return all;
}

function topHelp(): string {
  const cmds = commands();
  const width = Math.max(8, ...cmds.map((c) => c.name.length)) + 2;
  return [
    `edgekeeper ${VERSION}: one daemon per edge node. etcd v3 on SQLite, MQTT device reports,`,
    'status frames, eBPF probes and store-and-forward fleet sync.',
    '',
    'Usage: edgekeeper <command> [options]',
    '',
    'Commands:',
    ...cmds.map((c) => `  ${c.name.padEnd(width)}${c.summary}`),
    '',
    'Options:',
    '  -h, --help     show this help',
    '  -V, --version  print the version',
    '',
    'Every command: -h/--help for its usage, --debug for a stack trace with an unexpected error;',
    'commands that print data take -w simple|table|json. Exit status: 0 ok, 1 failure, 2 usage',
    'error, 65 database upgraded by a newer edgekeeper, 78 invalid configuration.',
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [first, ...rest] = argv;
  if (first === undefined) {
    io.err(`${topHelp()}\n`);
    return 2;
  }
  if (first === '--help' || first === '-h') {
    io.out(`${topHelp()}\n`);
    return 0;
  }
  if (first === '--version' || first === '-V') {
    io.out(`${VERSION}\n`);
    return 0;
  }
  const cmd = commands().find((c) => c.name === first);
  if (!cmd) {
    const what = first.startsWith('-') ? 'option' : 'command';
    return report('', new UsageError(`unknown ${what} ${JSON.stringify(first)}; see 'edgekeeper --help'`));
  }
  return cmd.run(rest);
}

/** Run when this file is the program (not when a test imports `main`). */
function isEntry(): boolean {
  try {
    return !!process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href;
  } catch {
    return false;
  }
}

if (isEntry()) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => process.exit(report('', err, process.argv.includes('--debug'))),
  );
}
