/**
 * The small interfaces the daemon hands every part. Parts import these and `src/store/`, never
 * each other; `src/daemon/` wires them together.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Registry } from 'prom-client';
import type { Clock } from './clock.js';
import type { HostReader } from './host.js';
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

/**
 * The SLO guard's face to the parts (src/slo/ says how it decides). Bulk work asks it before it
 * adds load; interactive work reports how long it took. Absent outside the daemon: then nothing
 * yields.
 */
export interface LoadGuard {
  /** True while interactive traffic is waiting: bulk work (uploads, frames, probe stores) holds back. */
  yielding(): boolean;
  /** May `n` bulk rows (device reports) be written now? false: hold them and ask again later. */
  admitBulk(n: number): boolean;
  /** An interactive request (an etcd unary RPC) was answered after `seconds`. */
  observeRequest(seconds: number): void;
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
  /** The daemon's reader of CPU, memory, disk and temperature (the one /metrics uses). */
  host?: HostReader;
  /** The SLO guard (see LoadGuard); absent outside the daemon. */
  slo?: LoadGuard;
}

export interface Part {
  readonly name: string;
  start(): Promise<void>;
  /** Stop taking work, finish what is in flight, release everything; idempotent. */
  stop(): Promise<void>;
  /** Plain data for the status frame and `/v1/status` (no class instances, no Buffers). */
  status?(): Record<string, unknown>;
}

/** How a command prints data: `-w simple|table|json` (`--json` is `-w json`). */
export type OutputFormat = 'simple' | 'table' | 'json';

/** One flag of a command, as the parser checks it and shell completion offers it. */
export interface CliOption {
  type: 'string' | 'boolean';
  short?: string;
  multiple?: boolean;
  /** The value's placeholder in usage text; FILE, DIR and PATH complete as paths. */
  value?: string;
  /** The only values allowed (the parser refuses others; completion offers them). */
  choices?: readonly string[];
  /** Used when the flag is absent and `env` is unset. */
  default?: string;
  /** Environment variable used when the flag is absent (ETCDCTL_ENDPOINTS). */
  env?: string;
}

/** One `edgekeeper <name>` subcommand. Commands are made with `defineCommand` (src/cli.ts). */
export interface CliCommand {
  name: string;
  /** One line for `edgekeeper --help`. */
  summary: string;
  /** Full usage text for `edgekeeper <name> --help`. */
  usage: string;
  /** Its flags (without the common --help, --debug and -w). */
  options?: Readonly<Record<string, CliOption>>;
  /** The words allowed as its first argument, if it has subcommands. */
  subcommands?: readonly string[];
  /** The output formats it prints data in (-w), if it prints data. */
  formats?: readonly OutputFormat[];
  /**
   * Returns the process exit code: 0 success, 1 failure, 2 usage error, 78 invalid
   * configuration. Never throws: errors are printed as one line with their code.
   */
  run(args: string[]): Promise<number>;
}
