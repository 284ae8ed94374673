"""Fixtures for the config-client tests: MeshKit (tests/meshkit/mkharness.py) and real
`omnirelay` processes (tests/runtime/runtime_harness.py)."""
from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent
for _dir in (_TESTS / "meshkit", _TESTS / "runtime"):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))
