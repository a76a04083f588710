/**
 * Every failure edgekeeper reports has a stable string code. Parts throw these classes; the
 * boundaries translate them: `src/etcd/` to etcd's gRPC status and exact message, `src/http/` to
 * an HTTP status with a JSON body `{code, message}`, MQTT to a reject reason. Codes never change
 * meaning once released; `test/errors.test.ts` checks each one is documented in docs/errors.md.
 */
export class EdgeError extends Error {
  readonly code: string;
  /** HTTP status used at the HTTP boundary. */
  readonly status: number;
  constructor(code: string, message: string, status = 500, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.status = status;
  }
}

// --- store / etcd semantics -------------------------------------------------------------------

/** A read or watch asked for a revision older than the compaction point. */
export class CompactedError extends EdgeError {
  constructor(readonly compactRevision: number) {
    super('EDGE_ERR_COMPACTED', `revision has been compacted (compact revision ${compactRevision})`, 410);
  }
}

/** A read asked for a revision newer than the store's current revision. */
export class FutureRevisionError extends EdgeError {
  constructor(
    readonly requested: number,
    readonly current: number,
  ) {
    super('EDGE_ERR_FUTURE_REV', `revision ${requested} is in the future (current ${current})`, 400);
  }
}

export class LeaseNotFoundError extends EdgeError {
  constructor(readonly leaseId: bigint) {
    super('EDGE_ERR_LEASE_NOT_FOUND', `lease ${leaseId} not found`, 404);
  }
}

export class LeaseExistsError extends EdgeError {
  constructor(readonly leaseId: bigint) {
    super('EDGE_ERR_LEASE_EXISTS', `lease ${leaseId} already exists`, 409);
  }
}

export class LeaseTtlTooLargeError extends EdgeError {
  constructor(ttl: number, max: number) {
    super('EDGE_ERR_LEASE_TTL_TOO_LARGE', `lease TTL ${ttl}s exceeds the maximum ${max}s`, 400);
  }
}

export class RequestTooLargeError extends EdgeError {
  constructor(size: number, limit: number) {
    super('EDGE_ERR_REQUEST_TOO_LARGE', `request of ${size} bytes exceeds the limit of ${limit} bytes`, 413);
  }
}

export class TooManyOpsError extends EdgeError {
  constructor(count: number, limit: number) {
    super('EDGE_ERR_TOO_MANY_OPS', `txn has ${count} operations, the limit is ${limit}`, 400);
  }
}

export class EmptyKeyError extends EdgeError {
  constructor() {
    super('EDGE_ERR_EMPTY_KEY', 'key is not provided', 400);
  }
}

/** etcd refuses a txn branch that writes the same key twice. */
export class DuplicateKeyError extends EdgeError {
  constructor() {
    super('EDGE_ERR_DUPLICATE_KEY', 'duplicate key given in txn request', 400);
  }
}

/** `ignore_value` / `ignore_lease` on a key that does not exist. */
export class KeyNotFoundError extends EdgeError {
  constructor() {
    super('EDGE_ERR_KEY_NOT_FOUND', 'key not found', 404);
  }
}

/** The database passed its size quota: only deletes, compaction and lease revokes are allowed. */
export class NoSpaceError extends EdgeError {
  constructor(size: number, quota: number) {
    super(
      'EDGE_ERR_NO_SPACE',
      `database size ${size} bytes exceeds the quota of ${quota} bytes; delete keys and compact to free space`,
      507,
    );
  }
}

export class InvalidArgumentError extends EdgeError {
  constructor(message: string) {
    super('EDGE_ERR_INVALID_ARGUMENT', message, 400);
  }
}

export class UnsupportedError extends EdgeError {
  constructor(what: string) {
    super('EDGE_ERR_UNSUPPORTED', `${what} is not supported by edgekeeper`, 501);
  }
}

export class StoreClosedError extends EdgeError {
  constructor() {
    super('EDGE_ERR_CLOSED', 'the store is closed', 503);
  }
}

export class CorruptDatabaseError extends EdgeError {
  constructor(file: string, detail: string) {
    super(
      'EDGE_ERR_CORRUPT',
      `database ${file} failed its integrity check (${detail}); restore a backup with \`edgekeeper restore FILE\``,
      500,
    );
  }
}

/** A watcher fell further behind than its buffer allows and was cancelled. */
export class WatchOverflowError extends EdgeError {
  constructor(limit: number) {
    super('EDGE_ERR_WATCH_OVERFLOW', `watcher fell more than ${limit} events behind and was cancelled`, 503);
  }
}

/**
 * The database holds schema steps ("part version") this edgekeeper does not know: a newer version
 * upgraded it. It is left untouched; `hint` says how to get back (the daemon names the backups).
 */
export class SchemaTooNewError extends EdgeError {
  constructor(
    readonly file: string,
    readonly newer: string[],
    readonly known: string[],
    hint = 'install that newer edgekeeper again, or restore the backup taken before the upgrade (`edgekeeper restore FILE`)',
  ) {
    super(
      'EDGE_ERR_SCHEMA_TOO_NEW',
      `database ${file} was upgraded by a newer edgekeeper: it has schema ${newer.join(', ')}, this edgekeeper knows up to ${known.join(', ')}; it was not changed. To go on, ${hint}`,
      500,
    );
  }
}

/** The state directory (or the database in it) is not this process' to write. */
export class StateDirError extends EdgeError {
  constructor(path: string, owner: number, mode: number, euid: number, errno: string) {
    super(
      'EDGE_ERR_STATE_DIR',
      `cannot write ${path} (${errno}): it belongs to uid ${owner} with mode ${mode.toString(8).padStart(4, '0')}, and edgekeeper runs as uid ${euid}${euid === 0 ? ' without CAP_DAC_OVERRIDE under its unit' : ''}; give it to that user (chown -R ${euid}:${euid} ${path}) or set node.dataDir to a directory it owns`,
      500,
    );
  }
}

/** The backup taken before a schema upgrade failed; nothing was migrated. */
export class UpgradeBackupError extends EdgeError {
  constructor(file: string, backup: string, detail: string) {
    super(
      'EDGE_ERR_UPGRADE_BACKUP',
      `cannot back up ${file} to ${backup} before upgrading its schema (${detail}); nothing was migrated. Free space in that directory (store.backupDir) and start again`,
      500,
    );
  }
}

export class ConfigError extends EdgeError {
  constructor(readonly problems: string[]) {
    super('EDGE_ERR_CONFIG', `invalid configuration:\n  - ${problems.join('\n  - ')}`, 400);
  }
}

// --- other parts append their error classes below, one section per part -----------------------

// --- store: recipes and storage ---

/** v3election: the caller's leader key is gone or was replaced. */
export class NotLeaderError extends EdgeError {
  constructor() {
    super('EDGE_ERR_NOT_LEADER', 'election: not leader', 409);
  }
}

/** v3election: nobody is leader of this election. */
export class NoLeaderError extends EdgeError {
  constructor() {
    super('EDGE_ERR_NO_LEADER', 'election: no leader', 404);
  }
}

/** SQLite could not write (disk full, I/O error). Nothing of the failed transaction is kept. */
export class StorageError extends EdgeError {
  constructor(detail: string) {
    super('EDGE_ERR_STORAGE', `storage failure: ${detail}; check free disk space and the disk's health`, 503);
  }
}

// --- daemon / http ---

/** No route has this path (HTTP 404). */
export class RouteNotFoundError extends EdgeError {
  constructor(path: string) {
    super('EDGE_ERR_NOT_FOUND', `no route for ${path}; see docs/http.md`, 404);
  }
}

/** The path exists but not with this method (HTTP 405). */
export class MethodNotAllowedError extends EdgeError {
  constructor(
    method: string,
    path: string,
    readonly allow: string[],
  ) {
    super(
      'EDGE_ERR_METHOD_NOT_ALLOWED',
      `${method} is not allowed on ${path}; allowed: ${allow.join(', ')}`,
      405,
    );
  }
}

/** A request body without Content-Length: the body limit is checked before reading (HTTP 411). */
export class LengthRequiredError extends EdgeError {
  constructor() {
    super(
      'EDGE_ERR_LENGTH_REQUIRED',
      'request bodies need a Content-Length header (chunked bodies are refused)',
      411,
    );
  }
}

/** Bytes on the HTTP port that are not a valid HTTP request (HTTP 400, connection closed). */
export class MalformedRequestError extends EdgeError {
  constructor(detail: string) {
    super('EDGE_ERR_BAD_REQUEST', `malformed HTTP request: ${detail}`, 400);
  }
}

/** An unexpected failure; details stay in the daemon log, never in the response. */
export class InternalError extends EdgeError {
  constructor() {
    super('EDGE_ERR_INTERNAL', 'internal error; the daemon log has the details', 500);
  }
}

/** Another edgekeeper process uses this state directory. */
export class AlreadyRunningError extends EdgeError {
  constructor(dir: string, pid: number) {
    super(
      'EDGE_ERR_ALREADY_RUNNING',
      `edgekeeper (pid ${pid}) is running on ${dir}; stop it first (systemctl stop edgekeeper) or use --http to reach it`,
      409,
    );
  }
}

/** An admin route without the local admin token (HTTP 401); `tokenFile` says where it is. */
export class UnauthenticatedError extends EdgeError {
  constructor(readonly tokenFile: string) {
    super(
      'EDGE_ERR_UNAUTHENTICATED',
      `this route needs the admin token: send \`Authorization: Bearer <token>\` with the token from ${tokenFile}`,
      401,
    );
  }
}

/** An admin route with a token that is not the daemon's (HTTP 403). */
export class PermissionDeniedError extends EdgeError {
  constructor() {
    super(
      'EDGE_ERR_PERMISSION_DENIED',
      'the admin token is wrong (the daemon writes a new one at every start)',
      403,
    );
  }
}

/**
 * etcd auth refused a request or an auth change (etcd's API). The message is etcd's own text
 * ("etcdserver: permission denied", "etcdserver: invalid auth token", ...) and `grpcCode` its gRPC
 * status, because etcd clients match on both.
 */
export class EtcdAuthError extends EdgeError {
  constructor(
    readonly grpcCode: number,
    message: string,
  ) {
    super('EDGE_ERR_ETCD_AUTH', message, grpcCode === 7 ? 403 : grpcCode === 16 ? 401 : 400);
  }
}

/** A bound of the local HTTP server is reached (connections or request bytes in flight); retry later (HTTP 503). */
export class HttpBusyError extends EdgeError {
  constructor(what: string) {
    super('EDGE_ERR_HTTP_BUSY', `the HTTP server is at its limit of ${what}; retry later`, 503);
  }
}

/** The writer's queue is full: the caller should retry later (backpressure, nothing was written). */
export class BusyError extends EdgeError {
  constructor(limit: number) {
    super('EDGE_ERR_BUSY', `the store's write queue is full (${limit} requests); retry later`, 503);
  }
}

// --- sync --------------------------------------------------------------------------------------

/** A batch the receiver cannot read: corrupt compression, wrong CBOR, columns that do not add up. */
export class SyncBadBatchError extends EdgeError {
  constructor(detail: string) {
    super('EDGE_ERR_SYNC_BAD_BATCH', `bad batch: ${detail}`, 400);
  }
}

/** The node's token (or client certificate) does not match the node it names. */
export class SyncUnauthorizedError extends EdgeError {
  constructor(detail: string) {
    super('EDGE_ERR_SYNC_UNAUTHORIZED', `unauthorized: ${detail}`, 401);
  }
}

/** The receiver does not know the node; add it with `edgekeeper fleet-server --node NAME=TOKEN`. */
export class SyncUnknownNodeError extends EdgeError {
  constructor(node: string) {
    super(
      'EDGE_ERR_SYNC_UNKNOWN_NODE',
      `unknown node ${JSON.stringify(node)}; register it on the fleet server`,
      403,
    );
  }
}

/** A batch holds records the receiver already stored under another batch; refused whole. */
export class SyncConflictError extends EdgeError {
  constructor(seq: number) {
    super('EDGE_ERR_SYNC_CONFLICT', `batch ${seq} holds records already stored by another batch`, 409);
  }
}

/** An upload the receiver refused or that did not complete; the uplink retries it. */
export class SyncUploadError extends EdgeError {
  constructor(
    message: string,
    readonly httpStatus?: number,
    readonly retryAfterMs?: number,
  ) {
    super('EDGE_ERR_SYNC_UPLOAD', message, 502);
  }
}

/** The node's token or certificate is valid but the node was revoked or decommissioned on the receiver. */
export class SyncRevokedError extends EdgeError {
  constructor(node: string, status: string) {
    super(
      'EDGE_ERR_SYNC_REVOKED',
      `node ${JSON.stringify(node)} is ${status} on the fleet server; a new token (fleet-node rotate) lets a revoked node in again`,
      401,
    );
  }
}

/** Fleet server operator routes: admin credentials missing or wrong. */
export class FleetUnauthorizedError extends EdgeError {
  constructor(detail: string) {
    super('EDGE_ERR_FLEET_UNAUTHORIZED', `unauthorized: ${detail}`, 401);
  }
}

/** Fleet server: a write from a browser session without its CSRF token, from another site, or with Basic credentials. */
export class FleetCsrfError extends EdgeError {
  constructor(detail: string) {
    super('EDGE_ERR_FLEET_CSRF', `write refused: ${detail}`, 403);
  }
}

/** Fleet server: a node lifecycle action that the node's state does not allow (add an existing node, rotate a decommissioned one). */
export class FleetNodeStateError extends EdgeError {
  constructor(detail: string) {
    super('EDGE_ERR_FLEET_NODE_STATE', detail, 409);
  }
}

/** Fleet server: too many failed admin logins from one address; wait a minute. */
export class FleetTooManyAttemptsError extends EdgeError {
  constructor(readonly retryAfterSeconds: number) {
    super(
      'EDGE_ERR_FLEET_TOO_MANY_ATTEMPTS',
      `too many failed admin logins from this address; try again in ${retryAfterSeconds} s`,
      429,
    );
  }
}

// --- frames ---------------------------------------------------------------------------------------

/** `GET /frame.png?size=` or `edgekeeper frame --size` named a size edgekeeper does not lay out. */
export class FrameSizeError extends EdgeError {
  constructor(size: string, valid: readonly string[]) {
    super(
      'EDGE_ERR_FRAME_SIZE',
      `frame size ${JSON.stringify(size.slice(0, 32))} is not one of ${valid.join(', ')}`,
      400,
    );
  }
}

/** The framebuffer cannot be used (sysfs unreadable, unsupported depth, write failed). */
export class FramebufferError extends EdgeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('EDGE_ERR_FRAMEBUFFER', message, 500, options);
  }
}

// --- etcd snapshots -------------------------------------------------------------------------------

/**
 * An etcd snapshot (bbolt file) that is damaged: its SHA-256 does not match, it is truncated, a
 * meta page fails its checksum, a page or record is malformed. Nothing was imported.
 */
export class SnapshotCorruptError extends EdgeError {
  constructor(file: string, detail: string) {
    super(
      'EDGE_ERR_SNAPSHOT_CORRUPT',
      `etcd snapshot ${file} is damaged: ${detail}; nothing was imported`,
      422,
    );
  }
}

/**
 * A file that is not an etcd snapshot edgekeeper can read: not a bbolt database, an unknown bbolt
 * format version, or a bbolt database without etcd's `key` bucket. Nothing was imported.
 */
export class NotEtcdSnapshotError extends EdgeError {
  constructor(file: string, detail: string) {
    super(
      'EDGE_ERR_SNAPSHOT_NOT_ETCD',
      `${file} is not an etcd snapshot: ${detail}; nothing was imported`,
      422,
    );
  }
}

// --- command line ---------------------------------------------------------------------------------

/** The command line is wrong: an unknown command, subcommand or flag, a missing or extra argument. */
export class UsageError extends EdgeError {
  constructor(message: string) {
    super('EDGE_ERR_USAGE', message, 400);
  }
}

/** Nothing answers at the address a command was given (no daemon, no etcd, no fleet server). */
export class UnreachableError extends EdgeError {
  constructor(what: string, detail: string, options?: { cause?: unknown }) {
    super('EDGE_ERR_UNREACHABLE', `nothing answers at ${what} (${detail})`, 503, options);
  }
}

/** A file, directory or listen address a command needs could not be used (the OS's reason and path). */
export class FileError extends EdgeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('EDGE_ERR_IO', message, 500, options);
  }
}

/** An etcd server refused a request with a status edgekeeper has no code of its own for. */
export class EtcdRemoteError extends EdgeError {
  constructor(grpcCode: string, details: string) {
    super('EDGE_ERR_ETCD', `${details} (gRPC ${grpcCode})`, 502);
  }
}
