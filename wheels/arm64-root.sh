#!/usr/bin/env bash
# An arm64 Debian root holding just Python 3.11 and the libraries it loads, for running the
# aarch64 wheel under qemu-user: `qemu-aarch64-static -L ROOT ROOT/usr/bin/python3.11`.
#   usage: wheels/arm64-root.sh ROOT
# The packages come from this machine's apt (arm64 multiarch: `dpkg --add-architecture arm64`,
# see the Makefile's wheel-sysdeps) and are unpacked with dpkg-deb, no maintainer scripts run:
# no debootstrap second stage, so no binfmt_misc needed. Idempotent: a stamp naming the
# package versions makes a rerun a no-op until one of them changes.
set -euo pipefail
ROOT=${1:?usage: $0 ROOT}
# libstdc++6: grpcio's extension links it (manylinux allows it: every real arm64 system has it).
SEEDS=(python3.11-minimal:arm64 libpython3.11-stdlib:arm64 libstdc++6:arm64)

die() { echo "arm64-root: $*" >&2; exit 1; }
command -v qemu-aarch64-static >/dev/null ||
  die "qemu-aarch64-static missing (apt-get install qemu-user-static)"
dpkg --print-foreign-architectures | grep -qx arm64 ||
  die "arm64 is not a dpkg architecture here (dpkg --add-architecture arm64 && apt-get update)"

# The arm64 packages the seeds need, recursively (Depends and Pre-Depends only).
mapfile -t pkgs < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
  --no-breaks --no-replaces --no-enhances "${SEEDS[@]}" 2>/dev/null \
  | grep -E '^[a-z0-9][^ ]*:arm64$' | grep -vE '^(dpkg|tar|install-info|perl[^:]*):' | sort -u)
[ ${#pkgs[@]} -gt 5 ] || die "apt-cache found no arm64 packages (apt-get update?)"
want=$(apt-cache policy "${pkgs[@]}" | awk '/^[^ ]/{p=$1} /Candidate:/{print p, $2}' | sort)
stamp="$ROOT/.omnirelay-arm64-root"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$ROOT/usr/bin/python3.11" ]; then
  exit 0
fi

echo "arm64-root: unpacking ${#pkgs[@]} arm64 packages into $ROOT"
rm -rf "$ROOT"
mkdir -p "$ROOT/.debs"
(cd "$ROOT/.debs" && apt-get download -q -o APT::Sandbox::User=root "${pkgs[@]}" >/dev/null)
for deb in "$ROOT"/.debs/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
rm -rf "$ROOT/.debs"
# Debian's usrmerge layout: /lib -> usr/lib (the loader is /lib/ld-linux-aarch64.so.1).
for d in bin lib sbin; do
  if [ -d "$ROOT/$d" ] && [ ! -L "$ROOT/$d" ]; then
    cp -a "$ROOT/$d/." "$ROOT/usr/$d/" && rm -rf "${ROOT:?}/$d"
  fi
  [ -e "$ROOT/$d" ] || ln -s "usr/$d" "$ROOT/$d"
done
qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3.11" -c 'import platform, ssl, sqlite3
print("arm64-root:", platform.machine(), platform.python_version())'
echo "$want" > "$stamp"
