"""`discovery: {type: file}`: a JSON or YAML list of endpoints, polled for changes."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from omnirelay.config import ConfigError, Endpoint
from omnirelay.config.endpoints import is_json_path, parse_endpoints
from omnirelay.config.model import Discovery

from .base import Apply, EndpointFeed

log = logging.getLogger("omnirelay.discovery")

# A write landing in the same mtime tick as our read changes neither size nor mtime; while the
# file's mtime is this recent, it is re-read on every poll (git's "racy clean" rule).
RACY_WINDOW = 2.0
_MAX_ISSUES = 10  # issues quoted in a problem report; the rest are counted


def _describe(err: ConfigError) -> str:
    lines = [str(issue) for issue in err.issues[:_MAX_ISSUES]]
    if len(err.issues) > _MAX_ISSUES:
        lines.append(f"and {len(err.issues) - _MAX_ISSUES} more issues")
    return "invalid endpoints: " + "; ".join(lines)


class FileFeed(EndpointFeed):
    """Reads `spec.path` on start and then every `spec.interval`, when its identity, size or
    mtime changed (or its mtime is too recent to trust), and delivers the list when its
    content differs from the last read. A missing, unreadable or invalid file is a problem:
    logged once per distinct reason, recorded in `status()`, and the cluster keeps the
    endpoints it has. Nothing here raises into the event loop."""

    type = "file"

    def __init__(self, cluster: str, spec: Discovery, apply: Apply) -> None:
        if spec.path is None:
            raise ValueError(f"cluster {cluster!r}: file discovery needs a path")
        super().__init__(cluster, spec, apply)
        self.path = Path(spec.path)
        self._json_only = is_json_path(self.path)
        self._signature: tuple[int, ...] | None = None
        self._racy = False
        self._data: bytes | None = None  # content of the last read, good or bad
        self._task: asyncio.Task[None] | None = None

    @property
    def source(self) -> str:
        return str(self.path)

    def start(self) -> None:
        if self._running:
            return
        super().start()
        # The first read is synchronous, so endpoints are in place before listeners open.
        self.poll()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"discovery {self.cluster} {self.path}"
        )

    def stop(self) -> None:
        super().stop()
        if self._task is not None:
            self._task.cancel()

    async def wait_stopped(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while self._running:
            await asyncio.sleep(self.spec.interval)
            try:
                self.poll()
            except Exception:  # a bug here must not end discovery for the cluster
                log.exception("cluster %s: polling %s failed", self.cluster, self.path)

    def poll(self) -> None:
        """Check the file once; deliver its endpoints if they changed."""
        if not self._running:
            return
        try:
            st = os.stat(self.path)
            signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if signature == self._signature and not self._racy:
                return
            data = self.path.read_bytes()
        except FileNotFoundError:
            self._forget()
            self._failed(f"{self.path}: no such file")
            return
        except OSError as exc:
            self._forget()
            self._failed(f"{self.path}: cannot read endpoints: {exc.strerror or exc}")
            return
        self._signature = signature
        self._racy = time.time() - st.st_mtime < RACY_WINDOW
        if data == self._data:
            return
        self._data = data
        try:
            endpoints = parse_endpoints(data, str(self.path), json_only=self._json_only)
        except ConfigError as err:
            self._failed(_describe(err))
            return
        self._offer(endpoints)

    def _offer(self, endpoints: tuple[Endpoint, ...]) -> None:
        if endpoints == self.endpoints:  # rewritten with the same list, or back after an error
            self._recovered()
            return
        try:
            self._deliver(endpoints)
        except Exception:
            # Recorded by _deliver; read the file again next time instead of trusting _data.
            log.debug("cluster %s: apply failed", self.cluster, exc_info=True)
            self._forget()

    def _forget(self) -> None:
        self._signature = None
        self._data = None
