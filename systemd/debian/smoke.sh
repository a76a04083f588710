#!/usr/bin/env bash
# Installs an edgekeeper .deb into a clean Debian trixie root of its architecture and checks it
# the way a user meets it: install, the daemon run as its unit runs it (etcdctl put/get, one MQTT
# report, a status frame), an upgrade with a broken and then a fixed configuration while the old
# daemon keeps serving, a database from a newer version refused, remove, reinstall, purge, and the
# messages for a hand-installed unit and a data directory owned by another user. Another
# architecture runs under qemu-user-static (binfmt_misc).
#
#   systemd/debian/smoke.sh [--arch amd64|arm64|armhf] [--deb FILE] [--fresh-root]
#
# Without --deb it takes dist/deb/edgekeeper_<package.json version>_<arch>.deb (npm run package).
# The root (mmdebstrap --variant=apt with nodejs) is cached as a tarball in the build cache
# (EDGEKEEPER_BUILD_CACHE, default ~/.cache/edgekeeper-build); --fresh-root makes it again.
# Packages come from the Debian mirror of this machine's apt sources (EDGEKEEPER_DEBIAN_MIRROR
# overrides it). Everything runs in private mount, network (loopback only) and pid namespaces,
# so the daemon keeps its default ports, and nothing it mounts or starts outlives the script.
# Each check prints "ok - ..." or "FAIL - ..."; the exit code is the number of failures.
# Every wait is multiplied by EDGEKEEPER_SMOKE_SLOW: 1 for this machine's architecture, 10 for
# an emulated one (node under qemu-user starts 5-10 times slower, more on a busy machine).
# Needs root, mmdebstrap, etcdctl (etcd-client), mosquitto_pub (mosquitto-clients), node.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
self=$(readlink -f "$0")

if [ "${1:-}" != --inside ]; then
  arch=$(dpkg --print-architecture)
  deb=""
  fresh=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --arch) arch=${2:?}; shift 2 ;;
      --deb) deb=${2:?}; shift 2 ;;
      --fresh-root) fresh=1; shift ;;
      -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) echo "smoke: unknown argument $1" >&2; exit 2 ;;
    esac
  done
  [ "$(id -u)" = 0 ] || { echo "smoke: needs root (chroot, namespaces)" >&2; exit 2; }
  if [ -z "$deb" ]; then
    deb=$repo/dist/deb/edgekeeper_$(node -p "require('$repo/package.json').version")_$arch.deb
  fi
  [ -f "$deb" ] || { echo "smoke: no package at $deb; build it: npm run package -- --arch $arch" >&2; exit 2; }
  arch=$(dpkg-deb -f "$deb" Architecture)
  for tool in mmdebstrap etcdctl mosquitto_pub node unshare; do
    command -v "$tool" >/dev/null || { echo "smoke: $tool is needed (see test/setup.sh)" >&2; exit 2; }
  done
  if [ "$arch" != "$(dpkg --print-architecture)" ] && [ ! -e "/proc/sys/fs/binfmt_misc/qemu-${arch/arm64/aarch64}" ] &&
    [ ! -e /proc/sys/fs/binfmt_misc/qemu-arm ]; then
    echo "smoke: $arch binaries need qemu-user-static registered with binfmt_misc" \
      "(apt-get install qemu-user-static binfmt-support; update-binfmts --enable)" >&2
    exit 2
  fi
  mirror=${EDGEKEEPER_DEBIAN_MIRROR:-$(
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
      grep -oE 'https?://[^ ]+/debian/?( |$)' | head -1 | tr -d ' ' || true
  )}
  mirror=${mirror:-http://deb.debian.org/debian}
  cache=${EDGEKEEPER_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgekeeper-build}/roots
  mkdir -p "$cache"
  tarball=$cache/trixie-$arch.tar
  if [ "$fresh" = 1 ] || [ ! -s "$tarball" ]; then
    echo "smoke: making a Debian trixie $arch root from $mirror (cached in $tarball)" >&2
    started=$(date +%s)
    mmdebstrap --quiet --arch="$arch" --variant=apt --include=nodejs,ca-certificates trixie \
      "$cache/trixie-$arch.tmp.tar" "$mirror" >&2
    mv "$cache/trixie-$arch.tmp.tar" "$tarball"
    echo "smoke: root made in $(($(date +%s) - started)) s" >&2
  fi
  work=$(mktemp -d "${TMPDIR:-/tmp}/edgekeeper-smoke.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  mkdir "$work/root"
  tar -C "$work/root" -xf "$tarball"
  cp "$deb" "$work/root/tmp/edgekeeper.deb"
  # The same package as a newer version, to upgrade to.
  mkdir "$work/next"
  dpkg-deb -R "$deb" "$work/next/root"
  old=$(dpkg-deb -f "$deb" Version)
  sed -i "s/^Version: .*/Version: $old+smoke1/" "$work/next/root/DEBIAN/control"
  sed -i "s/$old/$old+smoke1/g" "$work/next/root/DEBIAN/postinst"
  sed -i "s/\"version\": \"$old\"/\"version\": \"$old+smoke1\"/" "$work/next/root/usr/lib/edgekeeper/package.json"
  (cd "$work/next/root" && find . -type f -not -path './DEBIAN/*' -not -path './etc/*' -print0 | sort -z |
    xargs -0 md5sum | sed 's|  \./|  |' >DEBIAN/md5sums)
  dpkg-deb --root-owner-group -Zxz -z0 --build "$work/next/root" "$work/root/tmp/edgekeeper-next.deb" >/dev/null
  slow=${EDGEKEEPER_SMOKE_SLOW:-$([ "$arch" = "$(dpkg --print-architecture)" ] && echo 1 || echo 10)}
  status=0
  EDGEKEEPER_SMOKE_SLOW=$slow unshare --mount --net --pid --fork --kill-child --propagation private bash \
    "$self" --inside "$work/root" "$old" || status=$?
  exit "$status"
fi

# ---- inside the namespaces -------------------------------------------------------------------
R=$2
OLD=$3
NEXT=$OLD+smoke1
SLOW=${EDGEKEEPER_SMOKE_SLOW:-1}
fails=0
ok() { echo "ok - $*"; }
fail() {
  echo "FAIL - $*"
  fails=$((fails + 1))
}
check() { # check "what" command...
  local what=$1
  shift
  if "$@" >/dev/null 2>&1; then ok "$what"; else fail "$what"; fi
}
in_root() { chroot "$R" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  DEBIAN_FRONTEND=noninteractive "$@"; }
etcd() { ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:2379 --dial-timeout=$((5 * SLOW))s \
  --command-timeout=$((20 * SLOW))s "$@"; }
wait_for() { # wait_for SECONDS command... (SECONDS times SLOW)
  local until=$(($(date +%s) + $1 * SLOW))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$until" ] || return 1
    sleep 0.5
  done
}
http_get() { node -e '
  fetch(process.argv[1]).then(async (r) => {
    const b = Buffer.from(await r.arrayBuffer());
    if (process.argv[2] === "png") process.exit(r.status === 200 && b.subarray(1, 4).toString() === "PNG" ? 0 : 1);
    process.stdout.write(b); process.exit(r.status === 200 ? 0 : 1);
  }, () => process.exit(1));' "$@"; }

ip link set lo up
mount -t proc proc "$R/proc"
for d in null zero full random urandom tty; do
  touch "$R/dev/$d" 2>/dev/null || true
  mount --bind "/dev/$d" "$R/dev/$d"
done
mount -t tmpfs tmpfs "$R/run"
mount -t tmpfs tmpfs "$R/dev/shm" 2>/dev/null || true

# Recording stand-ins for systemctl and deb-systemd-invoke (systemd is not PID 1 in a chroot): the
# maintainer scripts' calls are checked, and they find /run/systemd/system as on a booted node.
# /usr/sbin comes first in the PATH apt gives dpkg (DPkg::Path).
mkdir -p "$R/run/systemd/system"
for t in systemctl deb-systemd-invoke; do
  printf '#!/bin/sh\necho "%s $*" >>/run/systemd-calls\nexit 0\n' "$t" >"$R/usr/sbin/$t"
  chmod 755 "$R/usr/sbin/$t"
done
calls() {
  cat "$R/run/systemd-calls" 2>/dev/null || true
  : >"$R/run/systemd-calls"
}

unit_cmd() { # the unit's ExecStart and Environment=, as systemd would run them
  local exec env
  exec=$(sed -n 's/^ExecStart=//p' "$R/usr/lib/systemd/system/edgekeeper.service")
  env=$(sed -n 's/^Environment=//p' "$R/usr/lib/systemd/system/edgekeeper.service" | tr '\n' ' ')
  echo "$env $exec"
}
daemon_pid=""
start_daemon() { # as systemd: StateDirectory= and RuntimeDirectory= made 0700, then ExecStart with the unit's environment
  mkdir -p -m 0700 "$R/var/lib/edgekeeper" "$R/run/edgekeeper"
  # shellcheck disable=SC2046
  chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin RUNTIME_DIRECTORY=/run/edgekeeper $(unit_cmd) \
    >"$R/tmp/daemon.log" 2>&1 </dev/null &
  daemon_pid=$!
}
stop_daemon() {
  kill -TERM "$daemon_pid" 2>/dev/null || true
  local code=0
  wait "$daemon_pid" || code=$?
  daemon_pid=""
  return "$code"
}
# /healthz: /readyz may say "not ready" on a loaded machine (the commit p99 objective).
ready() { http_get http://127.0.0.1:9480/healthz; }

echo "# install ($(date +%T))"
if in_root apt-get install -y --no-install-recommends /tmp/edgekeeper.deb >"$R/tmp/install.log" 2>&1; then
  ok "apt-get install ./edgekeeper_${OLD}.deb"
else
  fail "apt-get install: $(tail -5 "$R/tmp/install.log")"
fi
check "edgekeeper --version is $OLD" test "$(in_root edgekeeper --version)" = "$OLD"
check "the unit runs /usr/bin/edgekeeper" grep -q '^ExecStart=/usr/bin/edgekeeper ' "$R/usr/lib/systemd/system/edgekeeper.service"
check "enabled (multi-user.target.wants)" test -L "$R/etc/systemd/system/multi-user.target.wants/edgekeeper.service"
check "not started on first install" grep -q "installed and enabled, not started" "$R/tmp/install.log"
check "no start or restart asked of systemd" sh -c "! grep -qE 'invoke (start|restart|try-restart)' $R/run/systemd-calls"
calls >/dev/null
check "nothing made in /var/lib/edgekeeper (StateDirectory= makes it)" test ! -e "$R/var/lib/edgekeeper"
check "/etc/edgekeeper/edgekeeper.json is a conffile" sh -c "chroot $R dpkg-query -W -f='\${Conffiles}' edgekeeper | grep -q /etc/edgekeeper/edgekeeper.json"
check "LICENSE and copyright shipped" test -s "$R/usr/lib/edgekeeper/LICENSE" -a -s "$R/usr/share/doc/edgekeeper/copyright"
check "the configuration checks out" in_root edgekeeper run --config /etc/edgekeeper/edgekeeper.json --check

echo "# the daemon, run as the unit runs it ($(date +%T))"
start_daemon
if wait_for 120 ready; then ok "serving on 127.0.0.1:9480"; else fail "not serving: $(tail -5 "$R/tmp/daemon.log")"; fi
check "etcdctl put" etcd put /smoke/key hello
check "etcdctl get" test "$(etcd get --print-value-only /smoke/key)" = hello
# Under emulation on a busy machine the daemon may answer after the CLI's 30 s request timeout
# (the secret's scrypt hash alone is slow there): then the device may exist, and rotate re-keys it.
secret=""
for sub in add rotate rotate; do
  out=$(in_root edgekeeper device "$sub" smoke-1 2>&1) && { secret=$(echo "$out" | awk 'END { print $NF }'); break; }
  echo "# device $sub: $out"
done
check "edgekeeper device add smoke-1" test -n "$secret"
check "MQTT report acknowledged (QoS 1)" mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -i smoke-1 -u smoke-1 -P "$secret" \
  -t edgekeeper/v1/devices/smoke-1/report -m '{"metrics":{"temperature":21.5}}'
check "the device is mirrored to /edgekeeper/devices/smoke-1" wait_for 60 \
  sh -c "ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:2379 --command-timeout=$((20 * SLOW))s get --print-value-only /edgekeeper/devices/smoke-1 | grep -q smoke-1"
check "a status frame (GET /frame.png)" wait_for 60 http_get http://127.0.0.1:9480/frame.png png
check "the frame file is in RuntimeDirectory= (/run/edgekeeper)" wait_for 30 sh -c "ls $R/run/edgekeeper/frame-*.png"
check "the database is in /var/lib/edgekeeper" test -s "$R/var/lib/edgekeeper/edgekeeper.db"

echo "# upgrade with an invalid configuration: refused, the old daemon keeps serving ($(date +%T))"
cp "$R/etc/edgekeeper/edgekeeper.json" "$R/tmp/edgekeeper.json.good"
echo '{"http": {"listen": "everywhere"}}' >"$R/etc/edgekeeper/edgekeeper.json"
if in_root dpkg --force-confold -i /tmp/edgekeeper-next.deb >"$R/tmp/upgrade.log" 2>&1; then
  fail "the upgrade went through with an invalid configuration"
else
  ok "the upgrade stops at configure"
fi
check "it says why (http.listen)" grep -q 'Expected `http.listen`' "$R/tmp/upgrade.log"
check "and that the old daemon keeps running" grep -q "keeps running as $OLD" "$R/tmp/upgrade.log"
check "the old daemon still serves" etcd get /smoke/key
check "no restart was asked of systemd" sh -c "! grep -q 'try-restart' $R/run/systemd-calls"
cp "$R/tmp/edgekeeper.json.good" "$R/etc/edgekeeper/edgekeeper.json"
if in_root dpkg --configure -a >"$R/tmp/configure.log" 2>&1; then
  ok "configured once the file is fixed"
else
  fail "dpkg --configure -a: $(tail -5 "$R/tmp/configure.log")"
fi
check "upgraded to $NEXT" test "$(in_root dpkg-query -W -f='${Version}' edgekeeper)" = "$NEXT"
check "edgekeeper --version is $NEXT" test "$(in_root edgekeeper --version)" = "$NEXT"
check "the running daemon is restarted (try-restart)" grep -q 'deb-systemd-invoke try-restart edgekeeper.service' "$R/run/systemd-calls"
calls >/dev/null
if stop_daemon; then ok "SIGTERM: exit 0"; else fail "SIGTERM: exit $?"; fi
start_daemon
if wait_for 120 ready; then ok "the new version serves the same data"; else fail "not ready after upgrade"; fi
check "etcdctl get after the upgrade" test "$(etcd get --print-value-only /smoke/key)" = hello
stop_daemon || true

echo "# a database from a newer edgekeeper ($(date +%T))"
db=/var/lib/edgekeeper/edgekeeper.db
in_root node --input-type=module -e "
  import { createRequire } from 'node:module';
  const Database = createRequire('/usr/lib/edgekeeper/')('better-sqlite3');
  const db = new Database('$db');
  db.prepare(\"INSERT INTO schema_migrations (part, version) VALUES ('daemon', 99)\").run();
  db.close();"
before=$(md5sum "$R$db" | cut -d' ' -f1)
code=0
# shellcheck disable=SC2046
chroot "$R" /usr/bin/env -i PATH=/usr/bin:/bin $(unit_cmd) >"$R/tmp/newer.log" 2>&1 || code=$?
check "refused with exit 65 (not restarted by the unit)" test "$code" = 65
check "the message names both versions" grep -q 'has schema daemon 99, this edgekeeper knows up to daemon [0-9]' "$R/tmp/newer.log"
check "and which version to install again" grep -qF "apt install edgekeeper=$NEXT" "$R/tmp/newer.log"
check "the database is untouched" test "$(md5sum "$R$db" | cut -d' ' -f1)" = "$before"
in_root node --input-type=module -e "
  import { createRequire } from 'node:module';
  const Database = createRequire('/usr/lib/edgekeeper/')('better-sqlite3');
  const db = new Database('$db');
  db.prepare(\"DELETE FROM schema_migrations WHERE part = 'daemon' AND version = 99\").run();
  db.close();"

echo "# remove keeps the data, reinstall finds it, purge keeps nothing ($(date +%T))"
if in_root apt-get remove -y edgekeeper >"$R/tmp/remove.log" 2>&1; then ok "apt-get remove"; else fail "apt-get remove"; fi
check "the program is gone" test ! -e "$R/usr/lib/edgekeeper" -a ! -e "$R/usr/bin/edgekeeper"
check "the database is kept" test -s "$R/var/lib/edgekeeper/edgekeeper.db"
check "the configuration is kept" test -s "$R/etc/edgekeeper/edgekeeper.json"
check "the daemon was stopped" grep -q 'deb-systemd-invoke stop edgekeeper.service' "$R/run/systemd-calls"
calls >/dev/null
if in_root dpkg -i /tmp/edgekeeper-next.deb >"$R/tmp/reinstall.log" 2>&1; then ok "reinstall"; else fail "reinstall: $(tail -3 "$R/tmp/reinstall.log")"; fi
start_daemon
if wait_for 120 ready; then ok "the reinstalled daemon serves the kept data"; else fail "not ready after reinstall"; fi
check "etcdctl get after reinstall" test "$(etcd get --print-value-only /smoke/key)" = hello
stop_daemon || true
# A half-removed install (files gone, dpkg still lists it) and a node removed with --force: one line each.
mv "$R/usr/lib/edgekeeper/dist/main.js" "$R/tmp/main.js.off"
out=$(in_root edgekeeper --version 2>&1) && code=0 || code=$?
check "a half-removed install: one line and exit 127" test "$code" = 127 -a "$(echo "$out" | wc -l)" = 1
check "which says to reinstall" sh -c "echo '$out' | grep -q 'apt install --reinstall edgekeeper'"
if in_root dpkg -i /tmp/edgekeeper-next.deb >/dev/null 2>&1; then ok "reinstall repairs it"; else fail "reinstall did not repair it"; fi
check "edgekeeper --version after the repair" test "$(in_root edgekeeper --version)" = "$NEXT"
mv "$R/usr/bin/node" "$R/tmp/node.off"
out=$(in_root edgekeeper --version 2>&1) && code=0 || code=$?
check "no /usr/bin/node: one line naming nodejs (exit $code)" sh -c "test $code = 127 && echo '$out' | grep -q 'needs nodejs'"
mv "$R/tmp/node.off" "$R/usr/bin/node"
if in_root apt-get purge -y edgekeeper >"$R/tmp/purge.log" 2>&1; then ok "apt-get purge"; else fail "apt-get purge"; fi
check "purge keeps nothing: /var/lib/edgekeeper" test ! -e "$R/var/lib/edgekeeper"
check "purge keeps nothing: /etc/edgekeeper" test ! -e "$R/etc/edgekeeper"
check "purge keeps nothing: no unit links" sh -c "! find $R/etc/systemd -name 'edgekeeper*' | grep -q ."
check "purge keeps nothing: dpkg forgets it" sh -c "! chroot $R dpkg-query -W edgekeeper"

echo "# a hand-installed unit and a data directory owned by another user ($(date +%T))"
printf '[Service]\nExecStart=/usr/local/bin/edgekeeper run\n' >"$R/etc/systemd/system/edgekeeper.service"
mkdir -p -m 0700 "$R/var/lib/edgekeeper"
chown 1000:1000 "$R/var/lib/edgekeeper"
in_root dpkg -i /tmp/edgekeeper.deb >"$R/tmp/conflict.log" 2>&1 || true
check "names the unit that hides the package's" grep -q '/etc/systemd/system/edgekeeper.service overrides' "$R/tmp/conflict.log"
check "names the foreign owner of the data" grep -q '/var/lib/edgekeeper belongs to .*uid 1000' "$R/tmp/conflict.log"
# Under the unit the daemon has no CAP_DAC_OVERRIDE; setpriv drops it here too.
code=0
chroot "$R" /usr/bin/setpriv --inh-caps=-all --bounding-set=-all,+bpf,+perfmon,+sys_resource \
  /usr/bin/edgekeeper run --data-dir /var/lib/edgekeeper >"$R/tmp/owner.log" 2>&1 || code=$?
check "the daemon refuses it with one clear line (exit $code)" grep -q 'cannot write .*/var/lib/edgekeeper.*uid 1000' "$R/tmp/owner.log"

echo "# $fails failed ($(date +%T))"
exit "$fails"
