/**
 * The small interfaces the daemon hands every part. Parts import these and `src/store/`, never
 * each other; `src/daemon/` wires them together.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Registry } from 'prom-client';
import type { Clock } from './clock.js';
import type { Logger } from './log.js';
import type { Store } from './store/types.js';

/** Handles one HTTP route; errors thrown here become a JSON 4xx/5xx at the HTTP boundary. */
export type RouteHandler = (req: IncomingMessage, res: ServerResponse, url: URL) => Promise<void> | void;

export interface RouteOptions {
  /**
   * An admin route: it changes the node or reads its secrets, so it needs the local admin token
   * (`http.auth`, see src/admin.ts); other local processes get 401.
   */
  admin?: boolean;
}

export interface HttpRoutes {
  /** `path` is matched exactly (no patterns); one handler per method and path. */
  add(
    method: 'GET' | 'POST' | 'PUT' | 'DELETE',
    path: string,
    handler: RouteHandler,
    opts?: RouteOptions,
  ): void;
}

/** A readiness check: the daemon is ready while every check returns undefined. */
export type ReadinessCheck = () => string | undefined;

export interface PartContext {
  store: Store;
  logger: Logger;
  registry: Registry;
  clock: Clock;
  http: HttpRoutes;
  /** The state directory (holds the database; parts may keep small files here). */
  stateDir: string;
  /**
   * For files that need not survive a reboot and are rewritten often (a status frame every few
   * seconds): a tmpfs, so they cost the SD card nothing. Exists, mode 0700.
   */
  runtimeDir: string;
  nodeName: string;
  /** Register a readiness check that names what is wrong ("store commit p99 120 ms > 50 ms"). */
  addReadinessCheck(name: string, check: ReadinessCheck): void;
  /** Every readiness check run now (what /readyz answers); absent outside the daemon. */
  readiness?(): { ready: boolean; failing: Record<string, string> };
}

export interface Part {
  readonly name: string;
  start(): Promise<void>;
  /** Stop taking work, finish what is in flight, release everything; idempotent. */
  stop(): Promise<void>;
  /** Plain data for the status frame and `/v1/status` (no class instances, no Buffers). */
  status?(): Record<string, unknown>;
}

/** One `edgekeeper <name>` subcommand. */
export interface CliCommand {
  name: string;
  /** One line for `edgekeeper --help`. */
  summary: string;
  /** Full usage text for `edgekeeper <name> --help`. */
  usage: string;
  /** Returns the process exit code. Writes its own output to stdout/stderr. */
  run(args: string[]): Promise<number>;
}
