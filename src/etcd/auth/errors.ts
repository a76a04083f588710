/** etcd 3.4's auth errors (rpctypes): its exact text and gRPC code, as etcd clients match on both. */
import { status as Code } from '@grpc/grpc-js';
import { EtcdAuthError } from '../../errors.js';

const E = {
  rootUserNotExist: [Code.FAILED_PRECONDITION, 'etcdserver: root user does not exist'],
  rootRoleNotExist: [Code.FAILED_PRECONDITION, 'etcdserver: root user does not have root role'],
  userAlreadyExist: [Code.FAILED_PRECONDITION, 'etcdserver: user name already exists'],
  userEmpty: [Code.INVALID_ARGUMENT, 'etcdserver: user name is empty'],
  userNotFound: [Code.FAILED_PRECONDITION, 'etcdserver: user name not found'],
  roleAlreadyExist: [Code.FAILED_PRECONDITION, 'etcdserver: role name already exists'],
  roleNotFound: [Code.FAILED_PRECONDITION, 'etcdserver: role name not found'],
  roleEmpty: [Code.INVALID_ARGUMENT, 'etcdserver: role name is empty'],
  authFailed: [Code.INVALID_ARGUMENT, 'etcdserver: authentication failed, invalid user ID or password'],
  permissionNotGiven: [Code.INVALID_ARGUMENT, 'etcdserver: permission not given'],
  permissionDenied: [Code.PERMISSION_DENIED, 'etcdserver: permission denied'],
  roleNotGranted: [Code.FAILED_PRECONDITION, 'etcdserver: role is not granted to the user'],
  permissionNotGranted: [Code.FAILED_PRECONDITION, 'etcdserver: permission is not granted to the role'],
  authNotEnabled: [Code.FAILED_PRECONDITION, 'etcdserver: authentication is not enabled'],
  invalidAuthToken: [Code.UNAUTHENTICATED, 'etcdserver: invalid auth token'],
  invalidAuthMgmt: [Code.INVALID_ARGUMENT, 'etcdserver: invalid auth management'],
  // Not in etcd's gRPC table: etcd sends its auth package's text as UNKNOWN.
  noPasswordUser: [Code.UNKNOWN, 'auth: authentication failed, password was given for no password user'],
} as const satisfies Record<string, readonly [number, string]>;

export type AuthErrorKind = keyof typeof E;

/**
 * etcd's maintenance server returns its auth package's errors unconverted: gRPC code UNKNOWN and
 * the package's own text.
 */
const RAW: Partial<Record<AuthErrorKind, string>> = {
  userEmpty: 'auth: user name is empty',
  userNotFound: 'auth: user not found',
  permissionDenied: 'auth: permission denied',
  invalidAuthToken: 'auth: invalid auth token',
};

/** An auth error as etcd's maintenance server sends it. */
export function rawAuthError(err: unknown): unknown {
  if (!(err instanceof EtcdAuthError)) return err;
  for (const [kind, raw] of Object.entries(RAW))
    if (E[kind as AuthErrorKind][1] === err.message) return new EtcdAuthError(Code.UNKNOWN, raw);
  return err;
}

/** A watch's cancel reason for an auth error: etcd writes the gRPC status's Go text. */
export function cancelReason(err: unknown): string {
  const kind: AuthErrorKind =
    err instanceof EtcdAuthError && err.message === E.invalidAuthToken[1]
      ? 'invalidAuthToken'
      : err instanceof EtcdAuthError && err.message === E.userEmpty[1]
        ? 'userEmpty'
        : 'permissionDenied';
  const names: Record<number, string> = {
    3: 'InvalidArgument',
    7: 'PermissionDenied',
    16: 'Unauthenticated',
  };
  return `rpc error: code = ${names[E[kind][0]]} desc = ${E[kind][1]}`;
}

export function authError(kind: AuthErrorKind): EtcdAuthError {
  const [code, text] = E[kind];
  return new EtcdAuthError(code, text);
}
