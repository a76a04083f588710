/**
 * The main thread's handle on the ingest thread (thread-worker.ts), which runs the broker or the
 * external subscriber and the report path (edge.ts). It answers the thread's calls (commit a
 * batch, check a password) through `IngestCore`, applies its events, and stands in for the
 * transport towards the downlink: `reachable` from the events, `send` as a call.
 *
 * A thread that ends on its own (an uncaught error in the broker, say) is started again after
 * `RESTART_MS`, doubling up to `RESTART_MAX_MS` while it keeps failing to start. Nothing is
 * lost: what it had not acknowledged, devices (or the external broker) send again, and `seq`
 * de-duplicates what had committed. The etcd API is not affected meanwhile.
 */
import type { Worker } from 'node:worker_threads';
import type { Clock, Timer } from '../clock.js';
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

/** The embedded broker's bounds in use, sent once a second when they change. */
export type BrokerBounds = { buffered: number; pending: number; loginsWaiting: number };

const RESTART_MS = 1000;
const RESTART_MAX_MS = 30_000;

export class IngestThread implements CommandDelivery {
  private worker!: Worker;
  private peer!: Peer;
  private opts: IngestOptions;
  /** Reports waiting on the thread for a write, as it last said. */
  queued = 0;
  /** Why the thread ended on its own, until it runs again. */
  down: Error | undefined;
  /** Failed starts since the thread last ran, for the back-off. */
  private failures = 0;
  private restartTimer: Timer | undefined;
  private stopping = false;
  onReachable?: (device: string) => void;

  constructor(
    private readonly core: IngestCore,
    opts: IngestOptions,
    private readonly log: Logger,
    private readonly clock: Clock,
  ) {
    this.opts = opts;
    this.launch();
  }

  private launch(): void {
    const { admit: _admit, ...plain } = this.opts;
    const data: ThreadData = { opts: plain, level: this.log.level };
    // 4 MB semi-spaces (a young generation of 12 MB), as the unit gives the main thread. With
    // 1 MB, external mode took about 30% more CPU per report: in-flight reports outlive small
    // semi-spaces, are promoted and are then collected as old objects.
    const worker = startThread(import.meta.url, './thread-worker', data, {
      resourceLimits: { maxYoungGenerationSizeMb: 12 },
    });
    const core = this.core;
    const peer = new Peer(worker, {
      commit: (a: { batch: ReportBatch; queued: number }) => {
        this.setQueued(a.queued);
        return core.committer.commit(a.batch);
      },
      auth: (a: { device: string; password: Uint8Array }) =>
        core.checkPassword(
          a.device,
          Buffer.from(a.password.buffer, a.password.byteOffset, a.password.length),
        ),
      events: (a: { list: EdgeEvent[]; queued: number; bounds?: BrokerBounds }) => {
        this.setQueued(a.queued);
        if (a.bounds) {
          core.metrics.buffered.set(a.bounds.buffered);
          core.metrics.pending.set(a.bounds.pending);
          core.metrics.loginsWaiting.set(a.bounds.loginsWaiting);
        }
        core.apply(a.list, (device) => this.onReachable?.(device));
      },
    });
    let ended = false;
    // 'error' is followed by 'exit': handle the first
    const gone = (err: Error) => {
      if (ended) return;
      ended = true;
      peer.fail(err);
      if (!this.stopping) this.crashed(err);
    };
    worker.on('error', gone);
    worker.on('exit', (code) => gone(new Error(`ingest thread exited with code ${code}`)));
    this.worker = worker;
    this.peer = peer;
  }

  private crashed(err: Error): void {
    this.down = err;
    this.setQueued(0);
    this.core.threadGone(this.opts.mode === 'embedded');
    this.core.metrics.threadRestarts.inc();
    const delay = Math.min(RESTART_MAX_MS, RESTART_MS * 2 ** this.failures);
    this.log.error(
      { err, restartInMs: delay },
      'the ingest thread stopped; starting it again (devices reconnect and resend what was not acknowledged)',
    );
    this.restartTimer = this.clock.setTimeout(() => void this.relaunch(), delay);
  }

  private async relaunch(): Promise<void> {
    this.restartTimer = undefined;
    if (this.stopping) return;
    this.launch();
    try {
      await this.start();
      this.failures = 0;
      this.down = undefined;
      this.log.info('the ingest thread runs again');
    } catch (err) {
      // ending it counts as another failure, which schedules the next try
      this.failures++;
      this.log.warn({ err }, 'starting the ingest thread again failed');
      await this.worker.terminate();
    }
  }

  private setQueued(n: number): void {
    this.queued = n;
    this.core.committer.queued = n;
  }

  /**
   * Starts the broker (its listeners' addresses) or the subscriber. The addresses found are kept
   * for a restart, so a listener on port 0 comes back on the same port.
   */
  async start(): Promise<Address[]> {
    const addresses = await this.peer.call<Address[]>('start');
    const at = (tls: boolean) => {
      const a = addresses.find((x) => x.tls === tls);
      return a && `${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
    };
    this.opts = {
      ...this.opts,
      listen: at(false) ?? this.opts.listen,
      tlsListen: at(true) ?? this.opts.tlsListen,
    };
    return addresses;
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
    return this.down ? Promise.resolve() : this.peer.call<void>('flush');
  }

  /** Close the transport, let its reports commit, then end the thread. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.restartTimer?.cancel();
    try {
      if (!this.down) await this.peer.call('stop');
    } finally {
      await this.worker.terminate();
    }
  }
}
