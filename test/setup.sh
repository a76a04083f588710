#!/usr/bin/env bash
# The test command's set-up (npm test runs it first). Makes sure the system peers the suite
# talks to are installed: on Debian as root it installs what is missing; anywhere else it
# prints the exact command to run and fails. Fast and silent when everything is there.
set -euo pipefail

# package -> a file or command that proves it is installed
declare -A probe=(
  [etcd-server]="cmd:etcd"
  [etcd-client]="cmd:etcdctl"
  [mosquitto]="cmd:mosquitto"
  [mosquitto-clients]="cmd:mosquitto_pub"
  [bpftrace]="cmd:bpftrace"
  [postgresql]="glob:/usr/lib/postgresql/*/bin/initdb"
  [strace]="cmd:strace"
  [tesseract-ocr]="cmd:tesseract"
  [fonts-dejavu-core]="file:/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
  [systemd]="cmd:systemd-analyze"
  [util-linux]="cmd:unshare"
  [iproute2]="cmd:ip"
  [chromium]="cmd:chromium"
  [prometheus]="cmd:promtool"
  [golang-go]="cmd:go"
  [golang-etcd-server-dev]="file:/usr/share/gocode/src/go.etcd.io/etcd/clientv3/client.go"
  [e2fsprogs]="cmd:mkfs.ext4"
  [mount]="cmd:losetup"
  [zsh]="cmd:zsh"
  [gcc]="cmd:gcc"
  [libseccomp-dev]="file:/usr/include/seccomp.h"
  [mmdebstrap]="cmd:mmdebstrap"
  [curl]="cmd:curl"
  [patroni]="cmd:patroni"
)
order=(etcd-server etcd-client mosquitto mosquitto-clients bpftrace postgresql strace tesseract-ocr
  fonts-dejavu-core systemd util-linux iproute2 chromium prometheus golang-go golang-etcd-server-dev
  e2fsprogs mount zsh gcc libseccomp-dev mmdebstrap curl patroni)

present() {
  local kind="${1%%:*}" what="${1#*:}"
  case "$kind" in
    cmd) command -v "$what" >/dev/null 2>&1 || [ -x "/usr/sbin/$what" ] || [ -x "/sbin/$what" ] ;;
    file) [ -e "$what" ] ;;
    glob) compgen -G "$what" >/dev/null ;;
  esac
}

missing=()
for pkg in "${order[@]}"; do
  present "${probe[$pkg]}" || missing+=("$pkg")
done

is_root=0
[ "${EUID:-$(id -u)}" -eq 0 ] && is_root=1

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$is_root" -eq 1 ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null; then
    echo "test/setup.sh: installing missing system peers: ${missing[*]}" >&2
    # Debian starts a package's service on install under some inits; the tests start their own
    # instances on free loopback ports, so keep the packaged ones from starting at all.
    policy=/usr/sbin/policy-rc.d
    had_policy=0
    [ -e "$policy" ] && had_policy=1
    if [ "$had_policy" -eq 0 ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy"
      chmod 755 "$policy"
      trap 'rm -f "$policy"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "${missing[@]}"
    # Whatever started anyway (systemd as PID 1 ignores policy-rc.d): stop it.
    for svc in postgresql mosquitto etcd prometheus prometheus-node-exporter patroni; do
      if [ -d /run/systemd/system ]; then
        if systemctl is-active --quiet "$svc" 2>/dev/null; then
          systemctl stop "$svc" || true
          systemctl disable "$svc" >/dev/null 2>&1 || true
        fi
      elif [ -x "/etc/init.d/$svc" ]; then
        "/etc/init.d/$svc" status >/dev/null 2>&1 && { "/etc/init.d/$svc" stop || true; }
      fi
    done
    still=()
    for pkg in "${missing[@]}"; do
      present "${probe[$pkg]}" || still+=("$pkg")
    done
    if [ "${#still[@]}" -gt 0 ]; then
      echo "test/setup.sh: still missing after apt-get install: ${still[*]}" >&2
      exit 1
    fi
  else
    echo "test/setup.sh: the test suite needs these system packages: ${missing[*]}" >&2
    echo "Install them (Debian/Ubuntu), then run the tests again:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

# bpftrace attaches tracepoints through tracefs; containers often leave it unmounted.
if [ "$is_root" -eq 1 ] && [ -d /sys/kernel/tracing ] && [ -z "$(ls -A /sys/kernel/tracing 2>/dev/null)" ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi
exit 0
