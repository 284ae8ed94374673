"""Fixtures for the config-client tests: MeshKit (tests/meshkit/mkharness.py) and real
`omnirelay` processes (tests/runtime/runtime_harness.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent.parent
for _dir in (_TESTS / "meshkit", _TESTS / "runtime"):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))

import mkharness
from runtime_harness import Upstream


@pytest.fixture
def meshkit(tmp_path):
    """A real `meshkit serve` (SQLite, no auth, plaintext) in tmp_path/mk."""
    (tmp_path / "mk").mkdir()
    server = mkharness.MeshKitProcess(tmp_path / "mk").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def upstreams():
    """Two plain HTTP upstreams answering with their name: {"a": port, "b": port}."""
    a, b = Upstream("A"), Upstream("B")
    try:
        yield {"a": a.port, "b": b.port}
    finally:
        a.close()
        b.close()
