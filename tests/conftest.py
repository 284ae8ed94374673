"""Shared test plumbing: an asyncio runner for ``async def`` tests (no pytest-asyncio needed).

An ``async def test_...`` runs on a fresh uvloop loop, bounded by a timeout (default
``ASYNC_TEST_TIMEOUT`` seconds, override per test with ``@pytest.mark.async_timeout(s)``).
Any exception that reaches the loop's exception handler while the test runs (a protocol
callback of the proxy raising, a task dying unobserved) fails the test: the proxy runs
in-process, so that is how a "crash" shows up.

The data-path helpers live in ``tests/integration/harness.py``; this file puts that
directory on ``sys.path`` so ``import harness`` works from ``tests/core`` as well.
"""
from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

_INTEGRATION = str(Path(__file__).resolve().parent / "integration")
if _INTEGRATION not in sys.path:
    sys.path.insert(0, _INTEGRATION)

ASYNC_TEST_TIMEOUT = 20.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "async_timeout(seconds): time limit for one async test (default 20 s)")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    import harness  # on sys.path only once this module has run

    marker = pyfuncitem.get_closest_marker("async_timeout")
    timeout = float(marker.args[0]) if marker else ASYNC_TEST_TIMEOUT
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    env = harness.LoopEnv()
    try:
        env.run(fn(**kwargs), timeout=timeout)
    finally:
        env.close()
    env.check_errors()
    return True


@pytest.fixture(scope="module")
def loop_env():
    """A long-lived uvloop loop for sync (e.g. hypothesis) tests that need a proxy across
    examples: ``loop_env.run(coro)`` runs a coroutine to completion on it."""
    import harness

    env = harness.LoopEnv()
    yield env
    env.close()
    env.check_errors()
