import { rename, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import type { CliCommand } from '../part.js';
import { SIZES } from './layout.js';

const USAGE = `usage: edgekeeper frame [--size WxH] [--out FILE] [--http HOST:PORT]

Fetch the current status frame from a running daemon (GET /frame.png) and save it.

  --size WxH        one of ${Object.keys(SIZES).join(', ')} (default: the daemon's first size)
  --out FILE        where to write the PNG; "-" writes to stdout (default: status.png)
  --http HOST:PORT  the daemon's HTTP address (default: 127.0.0.1:9480)
`;

/** Longest we wait for the daemon; a frame takes milliseconds, so this only catches a hung one. */
const TIMEOUT_MS = 10_000;

async function frameCommand(args: string[]): Promise<number> {
  let values: { size?: string; out?: string; http?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      args,
      options: {
        size: { type: 'string' },
        out: { type: 'string' },
        http: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    process.stderr.write(`edgekeeper frame: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (values.size !== undefined && !Object.hasOwn(SIZES, values.size)) {
    process.stderr.write(
      `edgekeeper frame: --size ${values.size} is not one of ${Object.keys(SIZES).join(', ')}\n`,
    );
    return 2;
  }
  const http = values.http ?? '127.0.0.1:9480';
  if (!/^[\w.-]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/.test(http)) {
    process.stderr.write(`edgekeeper frame: --http must be HOST:PORT, got ${http}\n`);
    return 2;
  }
  const out = values.out ?? 'status.png';
  const url = `http://${http}/frame.png${values.size ? `?size=${values.size}` : ''}`;
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(TIMEOUT_MS) });
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
    process.stderr.write(
      `edgekeeper frame: cannot reach the daemon at ${http} (${cause}); is it running? (--http HOST:PORT)\n`,
    );
    return 1;
  }
  const body = Buffer.from(await res.arrayBuffer());
  if (res.status !== 200 || res.headers.get('content-type') !== 'image/png') {
    let msg = body.toString('utf8').slice(0, 500);
    try {
      msg = (JSON.parse(msg) as { message?: string }).message ?? msg;
    } catch {
      // not JSON: print as is
    }
    process.stderr.write(`edgekeeper frame: the daemon answered ${res.status}: ${msg}\n`);
    return 1;
  }
  if (out === '-') {
    process.stdout.write(body);
    return 0;
  }
  const tmp = `${out}.tmp-${process.pid}`;
  await writeFile(tmp, body);
  await rename(tmp, out);
  process.stdout.write(`wrote ${out} (${body.length} bytes)\n`);
  return 0;
}

export const framesCliCommands: CliCommand[] = [
  {
    name: 'frame',
    summary: 'Save the status frame of a running daemon as a PNG',
    usage: USAGE,
    run: frameCommand,
  },
];
