import { rename, writeFile } from 'node:fs/promises';
import { type CliCommand, DEFAULT_HTTP, defineCommand, fetchOrUnreachable, httpBase, io } from '../cli.js';
import { EdgeError } from '../errors.js';
import { SIZES } from './layout.js';

const USAGE = `Usage: edgekeeper frame [--size WxH] [--out FILE] [--http HOST:PORT]

Fetch the current status frame from a running daemon (GET /frame.png) and save it.

  --size WxH        one of ${Object.keys(SIZES).join(', ')} (default: the daemon's first size)
  --out FILE        where to write the PNG; "-" writes to stdout (default: status.png)
  --http HOST:PORT  the daemon's HTTP address (default: ${DEFAULT_HTTP})`;

const frameCommand = defineCommand({
  name: 'frame',
  summary: 'Save the status frame of a running daemon as a PNG',
  usage: USAGE,
  options: {
    size: { type: 'string', value: 'WxH', choices: Object.keys(SIZES) },
    out: { type: 'string', value: 'FILE', default: 'status.png' },
    http: { type: 'string', value: 'HOST:PORT', default: DEFAULT_HTTP },
  },
  async main({ values }) {
    const out = values.out as string;
    const size = values.size as string | undefined;
    const url = `${httpBase(values.http as string)}/frame.png${size ? `?size=${size}` : ''}`;
    const res = await fetchOrUnreachable(url, {}, 'is it running? (--http HOST:PORT)');
    const body = Buffer.from(await res.arrayBuffer());
    if (res.status !== 200 || res.headers.get('content-type') !== 'image/png') {
      let code = 'EDGE_ERR_INTERNAL';
      let msg = body.toString('utf8').slice(0, 500);
      try {
        const j = JSON.parse(msg) as { code?: string; message?: string };
        code = j.code ?? code;
        msg = j.message ?? msg;
      } catch {
        // not JSON: print as is
      }
      throw new EdgeError(code, `the daemon answered ${res.status}: ${msg}`, res.status);
    }
    if (out === '-') {
      io.out(body);
      return 0;
    }
    const tmp = `${out}.tmp-${process.pid}`;
    await writeFile(tmp, body);
    await rename(tmp, out);
    io.out(`wrote ${out} (${body.length} bytes)\n`);
    return 0;
  },
});

export const framesCliCommands: CliCommand[] = [frameCommand];
