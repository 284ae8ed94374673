"""Fixtures for the runtime tests: upstreams in threads, `omnirelay` processes cleaned up."""
from __future__ import annotations

import pytest
from runtime_harness import RelayProcess, Upstream


@pytest.fixture
def upstreams():
    """Call with a greeting to start an upstream; all are closed after the test."""
    started: list[Upstream] = []

    def start(greeting: str) -> Upstream:
        up = Upstream(greeting)
        started.append(up)
        return up

    yield start
    for up in started:
        up.close()


@pytest.fixture
def relay():
    """Call with CLI arguments to start `omnirelay`; whatever still runs is killed after."""
    started: list[RelayProcess] = []

    def start(*args: str) -> RelayProcess:
        proc = RelayProcess(*map(str, args))
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.proc.poll() is None:
            proc.kill()
