/**
 * The main thread's handle on the ingest thread (thread-worker.ts), which runs the broker or the
 * external subscriber and the report path (edge.ts). It answers the thread's calls (commit a
 * batch, check a password) through `IngestCore`, applies its events, and stands in for the
 * transport towards the downlink: `reachable` from the events, `send` as a call.
 */
import type { Worker } from 'node:worker_threads';
import type { Logger } from '../log.js';
import { startThread } from '../thread.js';
import type { IngestOptions } from './config.js';
import type { IngestCore } from './core.js';
import type { CommandDelivery } from './downlink.js';
import type { EdgeEvent } from './edge.js';
import { Peer } from './rpc.js';
import type { ReportBatch } from './writer.js';

/** What the thread starts with: the options (without `admit`, a function stays here) and the log level. */
export interface ThreadData {
  opts: Omit<IngestOptions, 'admit'>;
  level: string;
}

export type Address = { host: string; port: number; tls: boolean };

export class IngestThread implements CommandDelivery {
  private readonly worker: Worker;
  private readonly peer: Peer;
  /** Reports waiting on the thread for a write, as it last said. */
  queued = 0;
  /** Why the thread stopped when it was not asked to. */
  failed: Error | undefined;
  private stopping = false;
  onReachable?: (device: string) => void;

  constructor(
    private readonly core: IngestCore,
    private readonly opts: IngestOptions,
    log: Logger,
  ) {
    const { admit: _admit, ...plain } = opts;
    const data: ThreadData = { opts: plain, level: log.level };
    this.worker = startThread(import.meta.url, './thread-worker', data);
    this.peer = new Peer(this.worker, {
      commit: (a: { batch: ReportBatch; queued: number }) => {
        this.setQueued(a.queued);
        return core.committer.commit(a.batch);
      },
      auth: (a: { device: string; password: Uint8Array }) =>
        core.checkPassword(
          a.device,
          Buffer.from(a.password.buffer, a.password.byteOffset, a.password.length),
        ),
      events: (a: { list: EdgeEvent[]; queued: number }) => {
        this.setQueued(a.queued);
        core.apply(a.list, (device) => this.onReachable?.(device));
      },
    });
    const gone = (err: Error) => {
      this.peer.fail(err);
      if (this.stopping) return;
      this.failed ??= err;
      log.error(
        { err },
        'the ingest thread stopped: devices cannot report until edgekeeper is restarted (systemctl restart edgekeeper)',
      );
    };
    this.worker.on('error', gone);
    this.worker.on('exit', (code) => gone(new Error(`ingest thread exited with code ${code}`)));
  }

  private setQueued(n: number): void {
    this.queued = n;
    this.core.committer.queued = n;
  }

  /** Starts the broker (its listeners' addresses) or the subscriber. */
  start(): Promise<Address[]> {
    return this.peer.call<Address[]>('start');
  }

  /** External: resolves once connected and subscribed for the first time. */
  ready(): Promise<void> {
    return this.peer.call<void>('ready');
  }

  reachable(device: string): boolean {
    return this.opts.mode === 'external' ? this.core.linkUp : this.core.reachable.has(device);
  }

  send(device: string, payload: Buffer, timeoutMs: number): Promise<'delivered' | 'published'> {
    return this.peer.call('send', { device, payload, timeoutMs });
  }

  /** Forget the device's password check and close its connections (after remove or rotate). */
  revoke(device: string): void {
    this.core.forgetPassword(device);
    this.peer.notify('revoke', { device });
  }

  /** Resolves when the thread has sent every event it holds (sightings included). */
  flush(): Promise<void> {
    return this.peer.call<void>('flush');
  }

  /** Close the transport, let its reports commit, then end the thread. */
  async stop(): Promise<void> {
    try {
      if (!this.failed) await this.peer.call('stop');
    } finally {
      this.stopping = true;
      await this.worker.terminate();
    }
  }
}
