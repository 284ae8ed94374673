"""Fixtures for the MeshKit tests; the helpers live in mkharness.py (put on sys.path here)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import mkharness


def _start(workdir: Path):
    server = mkharness.MeshKitProcess(workdir).start()
    return server


@pytest.fixture(scope="module")
def meshkit(tmp_path_factory):
    """A MeshKit process shared by the tests of one module (use distinct scopes/node ids)."""
    server = _start(tmp_path_factory.mktemp("meshkit"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def etcd(tmp_path_factory):
    """A real etcd (Debian's etcd-server) for the session; tests use distinct key prefixes."""
    from etcd_fixture import EtcdServer

    server = EtcdServer(tmp_path_factory.mktemp("etcd")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_meshkit(tmp_path):
    """A MeshKit process of its own, for tests that signal or stop it."""
    server = _start(tmp_path)
    try:
        yield server
    finally:
        server.stop()
