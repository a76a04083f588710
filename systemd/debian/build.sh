#!/usr/bin/env bash
# Builds the Debian package edgekeeper_<version>_<arch>.deb from this checkout (`npm run package`).
#
#   npm run package [-- --arch amd64|arm64|armhf] [--out DIR] [--version DEBIAN_VERSION]
#
# The package holds the compiled JavaScript, production node_modules with native addons built
# for <arch>, bpf/, the fonts, the proto files, the systemd unit, the default config (a conffile
# under /etc/edgekeeper), LICENSE and the copyright file listing every bundled module. It depends
# on Debian's (or NodeSource's) nodejs of the major version the addons are built for.
#
# Another architecture than this machine's is cross-built: npm fetches the prebuilt per-arch
# packages (@napi-rs/canvas, cbor-extract) with --cpu, and better-sqlite3 and unix-dgram are
# compiled with Debian's cross compiler (g++-aarch64-linux-gnu, g++-arm-linux-gnueabihf)
# against this node's headers. Compiled addons are kept in the build cache
# (EDGEKEEPER_BUILD_CACHE, default ~/.cache/edgekeeper-build), keyed by module version,
# architecture and node ABI; for this machine's architecture the addons npm already built in the
# checkout are reused when their version and ABI match.
set -euo pipefail

die() {
  echo "package: $*" >&2
  exit 1
}

repo=$(cd "$(dirname "$0")/../.." && pwd)
host_arch=$(dpkg --print-architecture)
arch=$host_arch
out=$repo/dist/deb
deb_version=""
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=${2:?--arch needs a value}; shift 2 ;;
    --out) out=${2:?--out needs a value}; shift 2 ;;
    --version) deb_version=${2:?--version needs a value}; shift 2 ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

case "$arch" in
  amd64) npm_cpu=x64 gyp_arch=x64 triplet=x86_64-linux-gnu elf_machine='Advanced Micro Devices X86-64' ;;
  arm64) npm_cpu=arm64 gyp_arch=arm64 triplet=aarch64-linux-gnu elf_machine=AArch64 ;;
  armhf) npm_cpu=arm gyp_arch=arm triplet=arm-linux-gnueabihf elf_machine=ARM ;;
  *) die "architecture $arch is not supported (amd64, arm64, armhf)" ;;
esac

for tool in node npm dpkg-deb readelf; do
  command -v "$tool" >/dev/null || die "$tool is needed"
done
cross=""
if [ "$arch" != "$host_arch" ]; then
  cross="$triplet-"
  command -v "${cross}g++" >/dev/null ||
    die "cross compiler ${cross}g++ missing: apt-get install g++-$triplet"
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
node_abi=$(node -p 'process.versions.modules')
# The addons are compiled against the running node's headers (Debian/NodeSource install them in
# <prefix>/include/node); node-gyp would otherwise download them.
node_dir=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")
[ -f "$node_dir/include/node/node.h" ] || die "no node headers in $node_dir/include/node (install nodejs' headers)"
node_gyp=$(dirname "$(readlink -f "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js
[ -f "$node_gyp" ] || die "node-gyp not found next to npm ($node_gyp)"

version=$(node -p "require('$repo/package.json').version")
deb_version=${deb_version:-$version}
cache=${EDGEKEEPER_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgekeeper-build}
mkdir -p "$cache/addons" "$out"
# Timestamps in the archive come from the last commit, so a rebuild gives the same files.
SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)
export SOURCE_DATE_EPOCH

work=$(mktemp -d "${TMPDIR:-/tmp}/edgekeeper-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
app=$root/usr/lib/edgekeeper
mkdir -p "$app" "$root/usr/bin" "$root/usr/lib/systemd/system" "$root/etc/edgekeeper" \
  "$root/usr/share/doc/edgekeeper" "$root/DEBIAN"

echo "package: compiling TypeScript" >&2
(cd "$repo" && npx tsc -p tsconfig.json)

echo "package: production node_modules for linux-$npm_cpu" >&2
cp "$repo/package.json" "$repo/package-lock.json" "$app/"
(cd "$app" && npm ci --omit=dev --ignore-scripts --os=linux --cpu="$npm_cpu" --libc=glibc \
  --no-audit --no-fund --loglevel=error >&2)

# name:output of the addons compiled from source; the others come prebuilt per architecture.
for addon in better-sqlite3:better_sqlite3 unix-dgram:unix_dgram; do
  name=${addon%%:*} file=${addon#*:}.node
  dir=$app/node_modules/$name
  ver=$(node -p "require('$dir/package.json').version")
  cached=$cache/addons/$name-$ver-$arch-node$node_abi.node
  if [ ! -f "$cached" ]; then
    local_build=$repo/node_modules/$name/build
    if [ "$arch" = "$host_arch" ] && [ -f "$local_build/Release/$file" ] &&
      [ "$(node -p "require('$repo/node_modules/$name/package.json').version")" = "$ver" ] &&
      grep -q "\"node_module_version\": $node_abi," "$local_build/config.gypi" 2>/dev/null; then
      echo "package: $name $ver: reusing the checkout's build" >&2
      cp "$local_build/Release/$file" "$cached.tmp"
    else
      echo "package: $name $ver: compiling for $arch (node ABI $node_abi)" >&2
      (cd "$dir" && CC=${cross}gcc CXX=${cross}g++ AR=${cross}ar LINK=${cross}g++ \
        node "$node_gyp" rebuild --release --arch="$gyp_arch" --nodedir="$node_dir" -j "$(nproc)" \
        >"$work/$name.log" 2>&1) || { tail -40 "$work/$name.log" >&2; die "building $name failed"; }
      cp "$dir/build/Release/$file" "$cached.tmp"
    fi
    "${cross}strip" --strip-unneeded "$cached.tmp"
    mv "$cached.tmp" "$cached"
  fi
  # Only the addon itself stays: no sources, objects or bundled SQLite amalgamation.
  rm -rf "$dir/build" "$dir/deps" "$dir/src" "$dir/binding.gyp"
  mkdir -p "$dir/build/Release"
  cp "$cached" "$dir/build/Release/$file"
done

# Trim what no running daemon reads; every licence file stays.
find "$app/node_modules" -type f \( -name '*.md' -o -name '*.markdown' -o -name '*.d.ts' -o -name '*.d.mts' \
  -o -name '*.d.cts' -o -name '*.map' -o -name '*.musl.node' -o -name '*.tsbuildinfo' \) \
  -not -iname 'licen[cs]e*' -delete
rm -rf "$app/package-lock.json" "$app/node_modules/.package-lock.json"
find "$app/node_modules" -name .bin -type d -prune -exec rm -rf {} +

# Every native addon must be for the target architecture.
wrong=""
while IFS= read -r -d '' f; do
  m=$(readelf -h "$f" | sed -n 's/^ *Machine: *//p')
  [ "$m" = "$elf_machine" ] || wrong="$wrong\n  $f: $m"
done < <(find "$app/node_modules" -name '*.node' -print0)
[ -z "$wrong" ] || die "native addons not built for $arch ($elf_machine):$(echo -e "$wrong")"

echo "package: application files" >&2
cp -r "$repo/dist" "$app/dist"
rm -rf "$app/dist/deb"
find "$app/dist" -type f -not -name '*.js' -delete
mkdir -p "$app/src/etcd"
cp -r "$repo/src/etcd/proto" "$app/src/etcd/"
cp -r "$repo/bpf" "$repo/assets" "$app/"
cp "$repo/LICENSE" "$app/"
# package.json stays for the version (the package's, which `edgekeeper --version` prints and
# the database records) and "type": "module"; npm's fields go.
node -e '
  const p = require(process.argv[1]);
  const keep = { name: p.name, version: process.argv[3], description: p.description, type: p.type,
    license: p.license, engines: p.engines };
  require("fs").writeFileSync(process.argv[2], JSON.stringify(keep, null, 2) + "\n");
' "$repo/package.json" "$app/package.json" "$deb_version"
find "$app" -type d -exec chmod 0755 {} +
find "$app" -type f -exec chmod 0644 {} +
find "$app/node_modules" -name '*.node' -exec chmod 0755 {} +

cat >"$root/usr/bin/edgekeeper" <<EOF
#!/bin/sh
# The native addons are built for the ABI of the node the package depends on (/usr/bin/node),
# so edgekeeper runs on it whatever else is first on PATH. A broken install gets one line
# instead of a stack trace (and exit 127, like a missing command).
if [ ! -x /usr/bin/node ]; then
  echo "edgekeeper: /usr/bin/node is missing; edgekeeper needs nodejs $node_major: apt install nodejs" >&2
  exit 127
fi
if [ ! -f /usr/lib/edgekeeper/dist/main.js ]; then
  echo "edgekeeper: the package is not fully installed (/usr/lib/edgekeeper is incomplete): apt install --reinstall edgekeeper" >&2
  exit 127
fi
exec /usr/bin/node /usr/lib/edgekeeper/dist/main.js "\$@"
EOF
chmod 0755 "$root/usr/bin/edgekeeper"

grep -q '^ExecStart=/usr/bin/edgekeeper ' "$repo/systemd/edgekeeper.service" ||
  die "systemd/edgekeeper.service must run /usr/bin/edgekeeper, where the package puts it"
install -m 0644 "$repo/systemd/edgekeeper.service" "$root/usr/lib/systemd/system/edgekeeper.service"
# The config may hold the uplink's token: readable by root only.
install -m 0640 "$repo/systemd/edgekeeper.json.example" "$root/etc/edgekeeper/edgekeeper.json"

# copyright: ours, the bundled fonts, then every bundled module with its own licence.
{
  sed "s/@YEAR@/$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)/" "$repo/systemd/debian/copyright"
  node -e '
    const fs = require("fs"), path = require("path");
    const base = process.argv[1], seen = [];
    const walk = (dir) => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        if (!e.isDirectory()) continue;
        const d = path.join(dir, e.name);
        if (e.name.startsWith("@")) { walk(d); continue; }
        const pj = path.join(d, "package.json");
        if (fs.existsSync(pj)) {
          const p = JSON.parse(fs.readFileSync(pj, "utf8"));
          const lic = typeof p.license === "string" ? p.license : (p.license && p.license.type) || "see its LICENSE file";
          seen.push({ dir: path.relative(base, d), name: p.name, version: p.version, lic });
        }
        if (fs.existsSync(path.join(d, "node_modules"))) walk(path.join(d, "node_modules"));
      }
    };
    walk(path.join(base, "node_modules"));
    for (const m of seen.sort((a, b) => a.dir.localeCompare(b.dir))) {
      process.stdout.write(`\nFiles: usr/lib/edgekeeper/${m.dir}/*\nComment: ${m.name} ${m.version}, bundled; its licence text is in that directory\nLicense: ${m.lic}\n`);
    }
  ' "$app"
} >"$root/usr/share/doc/edgekeeper/copyright"

installed_kb=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
# glibc: the newest symbol version any bundled addon needs.
glibc=$(find "$app/node_modules" -name '*.node' -exec "${cross}objdump" -T {} + 2>/dev/null |
  grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -Vu | tail -1)
sed -e "s/@VERSION@/$deb_version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$installed_kb/" \
  -e "s/@NODE_MAJOR@/$node_major/g" -e "s/@NODE_NEXT@/$((node_major + 1))/" -e "s/@GLIBC@/${glibc:-2.31}/" \
  "$repo/systemd/debian/control" >"$root/DEBIAN/control"
echo /etc/edgekeeper/edgekeeper.json >"$root/DEBIAN/conffiles"
for s in postinst prerm postrm; do
  sed "s/@VERSION@/$deb_version/" "$repo/systemd/debian/$s" >"$root/DEBIAN/$s"
  chmod 0755 "$root/DEBIAN/$s"
done
(cd "$root" && find . -type f -not -path './DEBIAN/*' -not -path './etc/*' -print0 | sort -z |
  xargs -0 md5sum | sed 's|  \./|  |' >DEBIAN/md5sums)

deb=$out/edgekeeper_${deb_version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz -z3 --build "$root" "$deb" >&2
echo "package: $deb ($(du -h "$deb" | cut -f1), installed $((installed_kb / 1024)) MiB)" >&2
echo "$deb"
