"""`Feeds`: one running feed per cluster with `discovery`, kept in step with the config."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from omnirelay.config import Config, Endpoint
from omnirelay.config.model import Discovery

from .api import ApiFeed
from .base import Apply, EndpointFeed
from .file import FileFeed

log = logging.getLogger("omnirelay.discovery")

FEED_TYPES: dict[str, type[EndpointFeed]] = {"file": FileFeed, "api": ApiFeed}


class EndpointSink(Protocol):
    """What feeds write to: the runtime's TableBuilder."""

    def update_endpoints(self, cluster_name: str, endpoints: tuple[Endpoint, ...]) -> None: ...


class Feeds:
    """The feeds of one Relay. `sync` after every (re)build, `close` on shutdown.

    Feeds only ever call `builder.update_endpoints(cluster, endpoints)`, then `on_update(cluster)`
    (the Relay uses it to let health checking follow the new endpoints).
    """

    def __init__(self, on_update: Callable[[str], None] | None = None) -> None:
        self._on_update = on_update
        self._feeds: dict[str, EndpointFeed] = {}
        self._sink: EndpointSink | None = None
        self._stopping: set[asyncio.Task[None]] = set()

    def __contains__(self, cluster: object) -> bool:
        return cluster in self._feeds

    def __getitem__(self, cluster: str) -> EndpointFeed:
        return self._feeds[cluster]

    def sync(self, config: Config, builder: EndpointSink) -> None:
        """Match the running feeds to `config`: start feeds for new discovery clusters,
        restart those whose discovery changed, stop those of clusters that lost it or are
        gone. Needs a running event loop."""
        if builder is not self._sink:
            for name in list(self._feeds):
                self._retire(name)
            self._sink = builder
        wanted = {c.name: c.discovery for c in config.spec.clusters if c.discovery is not None}
        for name in [n for n in self._feeds if n not in wanted]:
            self._retire(name)
        for name, spec in wanted.items():
            feed = self._feeds.get(name)
            if feed is not None and feed.spec == spec:
                continue
            if feed is not None and feed.type == spec.type == "api":
                feed.spec = spec  # nothing to restart: pushes carry on
                continue
            if feed is not None:
                self._retire(name)
            self._start(name, spec)

    def push(self, builder: EndpointSink, cluster: str, spec: Discovery,
             endpoints: tuple[Endpoint, ...]) -> None:
        """Apply validated endpoints to an `api` cluster. Works before the first `sync` too
        (the feed is created here, and kept by a later sync with the same discovery)."""
        if self._sink is None:
            self._sink = builder
        feed = self._feeds.get(cluster)
        if feed is None:
            feed = self._start(cluster, spec)
        if feed.type != ApiFeed.type:
            raise ValueError(
                f"cluster {cluster!r} gets its endpoints from {feed.type} discovery, "
                "not through the API"
            )
        assert isinstance(feed, ApiFeed)
        feed.push(endpoints)

    async def close(self) -> None:
        """Stop every feed and wait for their background work."""
        feeds = list(self._feeds.values())
        self._feeds.clear()
        self._sink = None
        for feed in feeds:
            feed.stop()
        await asyncio.gather(*(f.wait_stopped() for f in feeds), *self._stopping)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per cluster: type, source, endpoint count, updates, last update and last error."""
        return {name: feed.status() for name, feed in self._feeds.items()}

    # -- internals -------------------------------------------------------------------------

    def _start(self, name: str, spec: Discovery) -> EndpointFeed:
        try:
            cls = FEED_TYPES[spec.type]
        except KeyError:
            raise ValueError(f"cluster {name!r}: unknown discovery type {spec.type!r}") from None
        feed = self._feeds[name] = cls(name, spec, self._applier(name))
        feed.start()
        return feed

    def _retire(self, name: str) -> None:
        feed = self._feeds.pop(name)
        feed.stop()  # synchronous: a retired feed can no longer overwrite a newer one
        task = asyncio.get_running_loop().create_task(feed.wait_stopped())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def _applier(self, name: str) -> Apply:
        sink = self._sink
        assert sink is not None

        def apply(endpoints: tuple[Endpoint, ...]) -> None:
            sink.update_endpoints(name, endpoints)
            if self._on_update is not None:
                try:
                    self._on_update(name)
                except Exception:
                    log.exception("cluster %s: reacting to new endpoints failed", name)

        return apply
