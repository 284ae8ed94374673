"""Active HTTP health checking of the endpoints of core clusters.

A `HealthChecker` runs one asyncio task per endpoint of one core cluster. Each task sends
`GET <path>` over a fresh HTTP/1.1 connection every `interval`, bounded by `timeout`, and
flips the core endpoint's `healthy` flag at the configured thresholds: an endpoint starts
healthy, turns unhealthy after `unhealthy_threshold` consecutive failures and healthy again
after `healthy_threshold` consecutive successes. The core's load balancing skips unhealthy
endpoints (unless all of them are, Envoy's panic mode).

`HealthCheckers` keeps one checker per cluster that has a `health_check` in the config, for
the Relay to start, resync on reload and stop.

The core objects are used duck-typed (`cluster.name`, `cluster.endpoints`, and on each
endpoint `host`, `port` and the settable `healthy`), so this module needs no core import.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omnirelay.config import Config, HealthCheck

log = logging.getLogger("omnirelay.health")

USER_AGENT = "omnirelay-healthcheck"
_STATUS_LINE_LIMIT = 8192

Key = tuple[str, int]


@dataclass(slots=True)
class _EndpointState:
    endpoint: Any  # the core Endpoint; rebound on update
    healthy: bool = True
    consecutive_successes: int = 0
    consecutive_failures: int = 0
    checks: int = 0
    last_status: int | None = None
    last_error: str | None = None
    last_check: float | None = None  # time.time() of the last finished check

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "consecutive_successes": self.consecutive_successes,
            "consecutive_failures": self.consecutive_failures,
            "checks": self.checks,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "last_check": self.last_check,
        }


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _request(hc: HealthCheck, host: str, port: int) -> bytes:
    return (
        f"GET {hc.path} HTTP/1.1\r\n"
        f"Host: {hc.host or _authority(host, port)}\r\n"
        f"User-Agent: {USER_AGENT}\r\n"
        "Accept: */*\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode("ascii")


def _parse_status(line: bytes) -> int:
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3:
        raise ValueError(f"bad status line {line[:80]!r}")
    return int(parts[1])


async def probe(host: str, port: int, hc: HealthCheck) -> tuple[int | None, str | None]:
    """One check: (status, None) if the endpoint answered, else (None, reason)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(hc.timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=_STATUS_LINE_LIMIT)
            writer.write(_request(hc, host, port))
            await writer.drain()
            line = await reader.readline()
        if not line:
            return None, "connection closed before a response"
        return _parse_status(line), None
    except TimeoutError:
        return None, f"timed out after {hc.timeout:g}s"
    except (OSError, ValueError, asyncio.LimitOverrunError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            writer.close()


class HealthChecker:
    """Active health checking of one core cluster, one task per endpoint."""

    def __init__(self, cluster: Any, hc: HealthCheck) -> None:
        self._cluster = cluster
        self._hc = hc
        self._states: dict[Key, _EndpointState] = {}
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._retired: set[asyncio.Task[None]] = set()
        self._running = False
        self._bind(cluster)

    @property
    def config(self) -> HealthCheck:
        return self._hc

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        """Start one check loop per endpoint; needs a running event loop."""
        if self._running:
            return
        self._running = True
        for key in self._states:
            self._spawn(key)

    async def stop(self) -> None:
        """Cancel every check loop and wait for them; endpoints are left marked healthy,
        so a cluster whose checking stops is not stuck with endpoints taken out."""
        self._running = False
        tasks = [*self._tasks.values(), *self._retired]
        self._tasks.clear()
        self._retired.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for state in self._states.values():
            state.endpoint.healthy = True

    def update(self, cluster: Any, hc: HealthCheck) -> None:
        """Follow a reload: the new settings apply from each endpoint's next check; endpoints
        that stay (same host and port) keep their counters and health."""
        self._cluster = cluster
        self._hc = hc
        gone = self._bind(cluster)
        for key in gone:
            task = self._tasks.pop(key, None)
            if task is not None:
                task.cancel()
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)
        if self._running:
            for key in self._states:
                if key not in self._tasks:
                    self._spawn(key)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per endpoint ("host:port"): health, counters and the last result."""
        return {_authority(*key): state.as_dict() for key, state in self._states.items()}

    # -- internals -------------------------------------------------------------------------

    def _bind(self, cluster: Any) -> list[Key]:
        """Track the cluster's current endpoints; returns the keys no longer present."""
        current: dict[Key, Any] = {(e.host, e.port): e for e in cluster.endpoints}
        gone = [key for key in self._states if key not in current]
        for key in gone:
            del self._states[key]
        for key, endpoint in current.items():
            state = self._states.get(key)
            if state is None:
                self._states[key] = _EndpointState(endpoint)
            else:
                state.endpoint = endpoint
            # A new core Endpoint object starts healthy; carry over what we know.
            endpoint.healthy = self._states[key].healthy
        return gone

    def _spawn(self, key: Key) -> None:
        name = f"healthcheck {self._cluster.name} {_authority(*key)}"
        self._tasks[key] = asyncio.get_running_loop().create_task(self._run(key), name=name)

    async def _run(self, key: Key) -> None:
        host, port = key
        while True:
            hc = self._hc
            try:
                status, error = await probe(host, port, hc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a check must never kill its loop
                log.exception("health check of %s failed unexpectedly", _authority(host, port))
                status, error = None, f"{type(exc).__name__}: {exc}"
            state = self._states.get(key)
            if state is None:  # removed by an update while the check was running
                return
            self._record(key, state, hc, status, error)
            await asyncio.sleep(self._hc.interval)

    def _record(
        self,
        key: Key,
        state: _EndpointState,
        hc: HealthCheck,
        status: int | None,
        error: str | None,
    ) -> None:
        state.checks += 1
        state.last_check = time.time()
        state.last_status = status
        ok = status is not None and status in hc.expected_statuses
        if status is not None and not ok:
            error = f"unexpected status {status}"
        state.last_error = error
        where = f"cluster {self._cluster.name}: {_authority(*key)}"
        if ok:
            state.consecutive_successes += 1
            state.consecutive_failures = 0
            if not state.healthy and state.consecutive_successes >= hc.healthy_threshold:
                state.healthy = True
                state.endpoint.healthy = True
                log.info(
                    "%s is healthy again after %d passed checks",
                    where,
                    state.consecutive_successes,
                )
        else:
            state.consecutive_failures += 1
            state.consecutive_successes = 0
            if state.healthy and state.consecutive_failures >= hc.unhealthy_threshold:
                state.healthy = False
                state.endpoint.healthy = False
                log.warning(
                    "%s is unhealthy after %d failed checks (%s)",
                    where,
                    state.consecutive_failures,
                    error,
                )


class HealthCheckers:
    """One `HealthChecker` per core cluster whose config has a `health_check`."""

    def __init__(self) -> None:
        self._checkers: dict[str, HealthChecker] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    def __getitem__(self, cluster_name: str) -> HealthChecker:
        return self._checkers[cluster_name]

    def __contains__(self, cluster_name: object) -> bool:
        return cluster_name in self._checkers

    def sync(self, config: Config, clusters: Mapping[str, Any]) -> None:
        """Make the running checkers match `config` (core clusters by name in `clusters`):
        start new ones, update kept ones, stop the ones whose cluster or check is gone."""
        wanted = {c.name: c.health_check for c in config.spec.clusters if c.health_check}
        for name in [n for n in self._checkers if n not in wanted]:
            task = asyncio.get_running_loop().create_task(self._checkers.pop(name).stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        for name, hc in wanted.items():
            checker = self._checkers.get(name)
            if checker is None:
                checker = self._checkers[name] = HealthChecker(clusters[name], hc)
            else:
                checker.update(clusters[name], hc)
            checker.start()

    async def stop(self) -> None:
        checkers = list(self._checkers.values())
        self._checkers.clear()
        await asyncio.gather(*(c.stop() for c in checkers), *self._stopping)

    def status(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {name: checker.status() for name, checker in self._checkers.items()}
