#!/usr/bin/env bash
# Build the OmniRelay wheel for this machine's architecture into dist/.
#   PYTHON   interpreter to build with (default: .venv/bin/python, else python3)
#   DIST     output directory (default: dist)
# Cross-arch (aarch64) and manylinux builds come later; see wheels/README.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DIST=${DIST:-dist}

echo "wheels: building for $(uname -m) with $("$PYTHON" -V 2>&1) into $DIST/"
"$PYTHON" -m pip wheel . --no-deps --disable-pip-version-check -w "$DIST"

shopt -s nullglob
wheels=("$DIST"/omnirelay-*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
  echo "wheels: pip reported success but no omnirelay-*.whl is in $DIST/" >&2
  exit 1
fi
for whl in "${wheels[@]}"; do
  echo "wheels: $whl ($(du -h "$whl" | cut -f1))"
  if "$PYTHON" -m auditwheel --version >/dev/null 2>&1; then
    "$PYTHON" -m auditwheel show "$whl"
  elif command -v auditwheel >/dev/null 2>&1; then
    auditwheel show "$whl"
  else
    echo "wheels: auditwheel not installed; skipping 'auditwheel show'"
  fi
done
