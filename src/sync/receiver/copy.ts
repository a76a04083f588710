/**
 * `COPY ... FROM STDIN` over node-postgres without another dependency: a "submittable" query
 * object (pg calls submit() and then one handler per protocol message). COPY stores rows at
 * roughly twice the rate of INSERT ... SELECT from json_to_recordset, which is what lets one
 * receiver keep up with a node draining its backlog.
 *
 * Protocol (PostgreSQL "COPY Operations"): Query -> CopyInResponse -> CopyData* -> CopyDone ->
 * CommandComplete -> ReadyForQuery; an error is ErrorResponse then ReadyForQuery.
 */
import type pg from 'pg';

interface CopyConnection {
  query(text: string): void;
  sendCopyFromChunk(chunk: Buffer): void;
  endCopyFrom(): void;
}

class CopyIn {
  readonly done: Promise<number>;
  private resolve!: (n: number) => void;
  private reject!: (e: Error) => void;
  private rows = 0;
  private failed = false;
  constructor(
    private readonly text: string,
    private readonly data: Buffer,
  ) {
    this.done = new Promise((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
  }
  submit(c: CopyConnection): void {
    c.query(this.text);
  }
  handleCopyInResponse(c: CopyConnection): void {
    // CopyData messages may be any size; large ones are split so no single message is huge.
    const step = 1 << 20;
    for (let i = 0; i < this.data.length; i += step) c.sendCopyFromChunk(this.data.subarray(i, i + step));
    c.endCopyFrom();
  }
  handleCommandComplete(msg: { text?: string }): void {
    const m = /COPY (\d+)/.exec(msg.text ?? '');
    if (m) this.rows = Number(m[1]);
  }
  handleReadyForQuery(): void {
    if (!this.failed) this.resolve(this.rows);
  }
  handleError(err: Error): void {
    this.failed = true;
    this.reject(err);
  }
  // Messages a COPY FROM never gets; present because pg may call them on a confused server.
  handleRowDescription(): void {}
  handleDataRow(): void {}
  handleEmptyQuery(): void {}
  handleCopyData(): void {}
}

/** Run `COPY <table> (<cols>) FROM STDIN` with text-format rows; resolves with the row count. */
export function copyIn(client: pg.PoolClient, sql: string, data: Buffer): Promise<number> {
  const q = new CopyIn(sql, data);
  (client as unknown as { query(q: unknown): unknown }).query(q);
  return q.done;
}

/** One field in COPY text format; null is \N. */
export function copyText(v: string | null): string {
  if (v === null) return '\\N';
  // COPY text escapes: backslash, tab, newline, carriage return; U+0000 is refused by PostgreSQL.
  if (!/[\\\t\n\r\0]/.test(v)) return v;
  return v.replace(/[\\\t\n\r\0]/g, (c) =>
    c === '\\' ? '\\\\' : c === '\t' ? '\\t' : c === '\n' ? '\\n' : c === '\r' ? '\\r' : '\uFFFD',
  );
}

export function copyNumber(v: number | null): string {
  return v === null ? '\\N' : String(v);
}
