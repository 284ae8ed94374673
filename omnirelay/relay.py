"""The embedding API: run OmniRelay's listeners inside an existing asyncio app.

    async with Relay("edge.yaml") as relay:
        print(relay.url())          # http://127.0.0.1:PORT
        ...

The same class is what each worker process of `omnirelay run` runs.
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Self

from omnirelay._core import ListenerRuntime, pool_stats
from omnirelay.clusters import HealthCheckers
from omnirelay.config import Config, load_config
from omnirelay.runtime.build import TableBuilder

log = logging.getLogger("omnirelay")

SWEEP_INTERVAL = 1.0


def _as_config(source: Config | str | Path | dict | bytes) -> Config:
    return source if isinstance(source, Config) else load_config(source)


class Relay:
    """Listeners, clusters and route tables of one process, on the running loop."""

    def __init__(self, config: Config | str | Path | dict | bytes, *,
                 reuse_port: bool = False, ports: dict[str, int] | None = None):
        self._builder = TableBuilder()
        self._built = self._builder.build(_as_config(config))
        self._health = HealthCheckers()
        self._reuse_port = reuse_port
        self._ports = dict(ports or {})
        self._listeners: dict[str, ListenerRuntime] = {}
        self._bound: dict[str, tuple[str, int]] = {}
        self._binding: dict[str, tuple[str, int]] = {}
        self._sweeper: asyncio.Task | None = None
        self._started = False
        self.config_version = self._built.config.metadata.version

    @property
    def config(self) -> Config:
        return self._built.config

    # ---- lifecycle ----
    async def start(self) -> None:
        if self._started:
            raise RuntimeError("Relay already started")
        self._started = True
        try:
            self._health.sync(self.config, self._builder.clusters)
            for lst in self.config.spec.listeners:
                await self._start_listener(lst, self._built.listeners[lst.name])
        except BaseException:
            await self.stop(drain_timeout=0)
            raise
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def _start_listener(self, lst, state) -> None:
        runtime = ListenerRuntime(state)
        port = self._ports.get(lst.name, lst.port)
        host, bound_port = await runtime.start(lst.address, port, reuse_port=self._reuse_port)
        self._listeners[lst.name] = runtime
        self._bound[lst.name] = (host, bound_port)
        self._binding[lst.name] = (lst.address, lst.port)
        log.info("listener %s on %s:%d", lst.name, host, bound_port)

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish up to the deadline, then close."""
        await self._health.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await self._drain(list(self._listeners.values()), drain_timeout)
        self._listeners.clear()
        for c in self._builder.clusters.values():
            c.close_idle()
        self._started = False

    async def _drain(self, runtimes: list[ListenerRuntime], timeout: float) -> None:
        for r in runtimes:
            r.start_drain()
        deadline = time.monotonic() + timeout
        while any(r.active_connections for r in runtimes) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for r in runtimes:
            r.abort_all()
            if r.server is not None:
                await r.server.wait_closed() if hasattr(r.server, "wait_closed") else None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- reload ----
    async def reload(self, config: Config | str | Path | dict | bytes) -> None:
        """Swap to a new config. Raises ConfigError/FilterConfigError and keeps
        serving the current config if the new one is invalid."""
        cfg = _as_config(config)
        built = self._builder.build(cfg)
        new_names = {lst.name for lst in cfg.spec.listeners}
        gone = []
        for name, runtime in list(self._listeners.items()):
            lst = next((x for x in cfg.spec.listeners if x.name == name), None)
            if lst is None or (lst.address, lst.port) != self._binding[name]:
                gone.append(self._listeners.pop(name))
                self._bound.pop(name, None)
        for lst in cfg.spec.listeners:
            if lst.name in self._listeners:
                self._listeners[lst.name].swap(built.listeners[lst.name])
            elif self._started:
                await self._start_listener(lst, built.listeners[lst.name])
        self._built = built
        if self._started:
            self._health.sync(cfg, self._builder.clusters)
        self.config_version = cfg.metadata.version
        if gone:
            asyncio.get_running_loop().create_task(self._drain(gone, 30.0))
        log.info("config %s active (%d listeners)", self.config_version, len(new_names))

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for r in self._listeners.values():
                r.sweep(now)
            self._builder.sweep(now)

    # ---- introspection ----
    def address(self, listener: str | None = None) -> tuple[str, int]:
        name = listener or next(iter(self._bound))
        return self._bound[name]

    def url(self, listener: str | None = None) -> str:
        host, port = self.address(listener)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        return dict(self._bound)

    def stats(self) -> dict[str, Any]:
        return {
            "config_version": self.config_version,
            "listeners": {n: r.stats.as_dict() | {"connections": r.active_connections}
                          for n, r in self._listeners.items()},
            "clusters": {n: c.stats() for n, c in self._builder.clusters.items()},
            "buffers": pool_stats(),
            "health": self._health.status(),
        }
