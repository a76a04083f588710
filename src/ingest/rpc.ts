/**
 * Calls and notifications between the main thread and the ingest thread, the same on both
 * sides. A call `{c: id, op, a}` is answered `{r: id, v}` or `{r: id, e: message}`; a
 * notification `{n: op, a}` is not answered. Messages keep their order on the port.
 */

export interface Port {
  postMessage(msg: unknown): void;
  on(event: 'message', fn: (msg: unknown) => void): unknown;
}

type Message =
  | { c: number; op: string; a: unknown }
  | { r: number; v?: unknown; e?: string }
  | { n: string; a: unknown };

// biome-ignore lint/suspicious/noExplicitAny: each handler knows its own argument
export type Handlers = Record<string, (a: any) => unknown>;

export class Peer {
  private nextId = 0;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private failed: Error | undefined;

  constructor(
    private readonly port: Port,
    private readonly handlers: Handlers,
  ) {
    port.on('message', (m) => this.receive(m as Message));
  }

  call<T>(op: string, a?: unknown): Promise<T> {
    if (this.failed) return Promise.reject(this.failed);
    const id = ++this.nextId;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.port.postMessage({ c: id, op, a });
    });
  }

  notify(op: string, a?: unknown): void {
    if (!this.failed) this.port.postMessage({ n: op, a });
  }

  /** The other side is gone: fail every call waiting for it, and every later one. */
  fail(err: Error): void {
    this.failed ??= err;
    for (const w of this.waiting.values()) w.reject(err);
    this.waiting.clear();
  }

  private receive(m: Message): void {
    if ('r' in m) {
      const w = this.waiting.get(m.r);
      if (!w) return;
      this.waiting.delete(m.r);
      if (m.e !== undefined) w.reject(new Error(m.e));
      else w.resolve(m.v);
      return;
    }
    const op = 'c' in m ? m.op : m.n;
    const handler = this.handlers[op];
    if (!handler) throw new Error(`no handler for ${op}`);
    if ('n' in m) {
      handler(m.a);
      return;
    }
    const id = m.c;
    Promise.resolve()
      .then(() => handler(m.a))
      .then(
        (v) => this.port.postMessage({ r: id, v }),
        (e: Error) => this.port.postMessage({ r: id, e: e?.message ?? String(e) }),
      );
  }
}
