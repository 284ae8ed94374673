"""The feed interface: one feed per cluster with `discovery`, delivering whole endpoint lists."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

from omnirelay.config import Endpoint
from omnirelay.config.model import Discovery

log = logging.getLogger("omnirelay.discovery")

# Replaces the endpoints of the feed's cluster; raises if they cannot be applied.
Apply = Callable[[tuple[Endpoint, ...]], None]


class EndpointFeed:
    """Delivers the endpoint lists of one cluster to `apply`, from `start()` until `stop()`.

    Subclasses fetch (a file, a push, later the control plane) and call `_delivered` or
    `_failed`; this class keeps what `status()` reports. Feeds run on the event loop's thread
    and never touch the request path: `apply` swaps the cluster's endpoints and that is all.
    """

    type: ClassVar[str] = ""

    def __init__(self, cluster: str, spec: Discovery, apply: Apply) -> None:
        self.cluster = cluster
        self.spec = spec
        self._apply = apply
        self._running = False
        self.endpoints: tuple[Endpoint, ...] | None = None  # last delivered list
        self.updates = 0
        self.last_update: float | None = None  # time.time() of the last delivered list
        self.last_error: str | None = None  # most recent problem, kept after recovery
        self.last_error_time: float | None = None
        self._problem: str | None = None  # the problem the source has right now, if any

    @property
    def source(self) -> str:
        """Where the endpoints come from, for logs and stats."""
        return self.type

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        """Begin delivering; a feed that polls needs a running event loop."""
        self._running = True

    def stop(self) -> None:
        """Stop delivering: once this returns, `apply` is not called again."""
        self._running = False

    async def wait_stopped(self) -> None:
        """Wait until background work started by the feed has finished (after `stop`)."""

    def status(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "source": self.source,
            "endpoints": None if self.endpoints is None else len(self.endpoints),
            "updates": self.updates,
            "last_update": self.last_update,
            "last_error": self.last_error,
            "last_error_time": self.last_error_time,
            "failing": self._problem is not None,
        }

    # -- for subclasses --------------------------------------------------------------------

    def _deliver(self, endpoints: tuple[Endpoint, ...]) -> None:
        """Apply `endpoints` and record the update; exceptions from `apply` propagate after
        being recorded as the feed's problem."""
        try:
            self._apply(endpoints)
        except Exception as exc:
            self._failed(f"cannot apply endpoints: {type(exc).__name__}: {exc}")
            raise
        self.endpoints = endpoints
        self.updates += 1
        self.last_update = time.time()
        self._recovered()
        log.info("cluster %s: %d endpoints from %s", self.cluster, len(endpoints), self.source)

    def _recovered(self) -> None:
        if self._problem is not None:
            self._problem = None
            log.info("cluster %s: %s is usable again", self.cluster, self.source)

    def _failed(self, reason: str) -> None:
        """Record a problem; it is logged once until a different one (or a recovery) occurs."""
        self.last_error = reason
        self.last_error_time = time.time()
        if reason != self._problem:
            self._problem = reason
            kept = ("no discovered endpoints yet" if self.endpoints is None
                    else f"keeping the last {len(self.endpoints)} discovered endpoints")
            log.warning("cluster %s: %s (%s)", self.cluster, reason, kept)
