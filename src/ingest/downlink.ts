/**
 * Downlink commands through the store.
 *
 * A local application puts the command payload (any bytes; JSON is usual) under
 * `/edgekeeper/commands/<device>/<name>`. We publish it QoS 1 to
 * `edgekeeper/v1/devices/<device>/command` and write the delivery state as JSON under
 * `/edgekeeper/commands/<device>/<name>/state`:
 *   {state: "pending" | "delivered" | "published" | "expired" | "refused", revision, at, attempts, error?}
 * `revision` is the command key's mod revision the state belongs to; putting the command again
 * (a new revision) sends it again. Embedded mode keeps a command pending while its device is
 * not connected and subscribed, sends it when it is, and marks it `delivered` when the device
 * PUBACKs it; undelivered after `commandTtl` it becomes `expired`. External mode publishes it
 * retained (with an MQTT 5 message expiry) and marks it `published` when the broker PUBACKs;
 * the device's acknowledgement is not visible through a broker.
 * Delivery is at least once: a device may see a command twice around reconnects.
 */
import type { Clock, Timer } from '../clock.js';
import { type Logger, RepeatLimiter } from '../log.js';
import type { KeyValue, Store, WatchHandle } from '../store/types.js';
import { COMMANDS_PREFIX, validCommandName, validDeviceId } from './ids.js';
import type { IngestMetrics } from './metrics.js';

export interface CommandDelivery {
  /** True while the device has a connection subscribed to its command topic. */
  reachable(device: string): boolean;
  /** Publish QoS 1 and resolve when the device acknowledges (embedded) or the broker does (external). */
  send(device: string, payload: Buffer, timeoutMs: number): Promise<'delivered' | 'published'>;
  /** Called when a device becomes reachable (it subscribed to its command topic). */
  onReachable?: (device: string) => void;
}

const ACK_TIMEOUT_MS = 30_000;
const RETRY_MS = 10_000;

type CmdState = 'pending' | 'delivered' | 'published' | 'expired' | 'refused';
const FINAL = new Set<CmdState>(['delivered', 'published', 'expired', 'refused']);

interface Cmd {
  device: string;
  name: string;
  key: string;
  revision: number;
  payload: Buffer;
  /**
   * When it expires, on the monotonic clock: a wall-clock step neither expires every queued
   * command (forward) nor keeps them for the length of the step (back). A command loaded at start
   * keeps what its wall-clock age leaves of the TTL, at most the whole TTL.
   */
  deadline: number;
  attempts: number;
  sending: boolean;
}

function prefixEnd(p: Buffer): Buffer {
  const e = Buffer.from(p);
  e[e.length - 1]!++;
  return e;
}

export class Downlink {
  private readonly pending = new Map<string, Cmd>();
  private watch: WatchHandle | undefined;
  private timer: Timer | undefined;
  private stopped = false;
  /** Every delivery fails to record on a full disk: one line a minute, with a count. */
  private readonly repeats: RepeatLimiter;

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly transport: CommandDelivery,
    private readonly metrics: IngestMetrics,
    private readonly log: Logger,
    private readonly ttl: number,
  ) {
    this.repeats = new RepeatLimiter(log);
    transport.onReachable = (device) => this.deliverDevice(device);
  }

  start(): void {
    const key = Buffer.from(COMMANDS_PREFIX);
    const res = this.store.range({ key, rangeEnd: prefixEnd(key) });
    const states = new Map<string, { state: CmdState; revision: number; at: number }>();
    for (const kv of res.kvs) {
      const k = kv.key.toString();
      if (k.endsWith('/state')) {
        try {
          states.set(k.slice(0, -'/state'.length), JSON.parse(kv.value.toString()));
        } catch {
          // a broken state is treated as none: the command is sent again
        }
      }
    }
    for (const kv of res.kvs) {
      const k = kv.key.toString();
      if (k.endsWith('/state')) continue;
      const st = states.get(k);
      if (st && st.revision === kv.modRevision && FINAL.has(st.state)) continue;
      this.onPut(kv, st?.revision === kv.modRevision ? st.at : undefined);
    }
    this.watch = this.store.watch(
      { key, rangeEnd: prefixEnd(key), startRevision: res.header.revision + 1 },
      {
        onEvents: (events) => {
          for (const e of events) {
            const k = e.kv.key.toString();
            if (k.endsWith('/state')) continue;
            if (e.type === 'PUT') this.onPut(e.kv);
            else this.pending.delete(k);
          }
        },
        onCancel: (reason) => {
          if (!this.stopped)
            this.log.error(
              { err: reason },
              'the command watch ended; commands are not delivered until restart',
            );
        },
      },
    );
    const loop = () => {
      if (this.stopped) return;
      this.sweep();
      this.timer = this.clock.setTimeout(loop, RETRY_MS);
    };
    this.timer = this.clock.setTimeout(loop, RETRY_MS);
  }

  private onPut(kv: KeyValue, since?: number): void {
    const k = kv.key.toString();
    const rest = k.slice(COMMANDS_PREFIX.length).split('/');
    const [device, name] = rest;
    if (rest.length !== 2 || !validDeviceId(device) || !validCommandName(name)) {
      void this.setState(
        k,
        kv.modRevision,
        'refused',
        0,
        'key must be /edgekeeper/commands/<device id>/<name>',
      );
      return;
    }
    const cmd: Cmd = {
      device,
      name,
      key: k,
      revision: kv.modRevision,
      payload: kv.value,
      deadline:
        this.clock.monotonic() +
        this.ttl -
        (since === undefined ? 0 : Math.min(this.ttl, Math.max(0, this.clock.now() - since))),
      attempts: 0,
      sending: false,
    };
    this.pending.set(k, cmd);
    if (this.transport.reachable(device)) this.send(cmd);
    else if (since === undefined) void this.setState(k, kv.modRevision, 'pending', 0);
  }

  private deliverDevice(device: string): void {
    for (const c of this.pending.values()) if (c.device === device) this.send(c);
  }

  private sweep(): void {
    const now = this.clock.monotonic();
    for (const c of this.pending.values()) {
      if (now > c.deadline) {
        this.pending.delete(c.key);
        this.metrics.commands.inc({ state: 'expired' });
        void this.setState(c.key, c.revision, 'expired', c.attempts);
      } else if (this.transport.reachable(c.device)) this.send(c);
    }
  }

  private send(c: Cmd): void {
    if (c.sending || this.stopped) return;
    c.sending = true;
    c.attempts++;
    const remaining = Math.max(1000, c.deadline - this.clock.monotonic());
    this.transport.send(c.device, c.payload, Math.min(ACK_TIMEOUT_MS, remaining)).then(
      (state) => {
        c.sending = false;
        if (this.pending.get(c.key) !== c) return;
        this.pending.delete(c.key);
        this.metrics.commands.inc({ state });
        void this.setState(c.key, c.revision, state, c.attempts);
      },
      (err: Error) => {
        c.sending = false;
        this.log.debug(
          { device: c.device, command: c.name, err: err.message },
          'command not acknowledged yet; retrying',
        );
      },
    );
  }

  /** Write the state only while the command key still has the revision it belongs to. */
  private async setState(
    key: string,
    revision: number,
    state: CmdState,
    attempts: number,
    error?: string,
  ): Promise<void> {
    const value = JSON.stringify({
      state,
      revision,
      at: this.clock.now(),
      attempts,
      ...(error ? { error } : {}),
    });
    try {
      await this.store.txn({
        compare: [{ key: Buffer.from(key), target: 'MOD', result: 'EQUAL', modRevision: revision }],
        success: [{ put: { key: Buffer.from(`${key}/state`), value: Buffer.from(value) } }],
      });
    } catch (err) {
      if (!this.stopped) this.repeats.warn({ err, key }, 'could not write a command state');
    }
  }

  stop(): void {
    this.stopped = true;
    this.watch?.cancel();
    this.timer?.cancel();
  }

  pendingCount(): number {
    return this.pending.size;
  }
}
